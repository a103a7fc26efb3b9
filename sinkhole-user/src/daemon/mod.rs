//! Daemon start-up: `sinkhole run` from the configuration to the serving event loop.
//!
//! [`run`] refuses to start beside a daemon already running on the same storage (or, with
//! `--takeover`, replaces it: [`crate::handover`]), raises the open files limit, sets up the
//! [`Server`] with the kernel module's blocker, starts `/metrics`, drops privileges, writes the
//! pid file and then serves until stopped.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::handover;
use crate::kernel::Blocker;
use crate::metrics::{Endpoint, Sources};
use crate::notify::Notifier;
use crate::privilege::{self, PrivilegeError};
use crate::sandbox::{self, Enforced, SandboxError};
use crate::server::{Server, ServerError};

/// Why the daemon did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error("confining the daemon: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("storage {dir}: {source}")]
    Storage { dir: PathBuf, source: io::Error },
    #[error(
        "already running as pid {pid} on this storage ({file}); `sinkhole run --takeover` replaces it"
    )]
    AlreadyRunning { pid: i32, file: PathBuf },
    #[error("pid file {file}: {source}")]
    PidFile { file: PathBuf, source: io::Error },
}

/// `sinkhole run`: sets up the daemon from `config` (read from `config_file`, if any; with the
/// kernel module's blocker) and serves until stopped. With `takeover`, replaces the daemon
/// running on the same storage (see [`crate::handover`]); without, refuses to start beside it.
pub fn run(config: &Config, config_file: Option<&Path>, takeover: bool) -> Result<(), DaemonError> {
    let storage = &config.storage;
    let previous = handover::running(&storage.dir);
    if let (Some(pid), false) = (previous, takeover) {
        return Err(DaemonError::AlreadyRunning {
            pid: pid.as_raw_nonzero().get(),
            file: storage.dir.join(handover::PID_FILE),
        });
    }
    // Two per client (its socket, and the file its message streams into while it sends one),
    // the files waiting to be named, the resolver's sockets, and a few dozen more (listeners,
    // the log, the Maildir, epoll).
    let wanted = (2 * config.smtp.max_connections.get()
        + crate::capture::MAX_OPEN_FILES
        + crate::score::Limits::default().in_flight
        + 64) as u64;
    let files = raise_fd_limit(wanted);
    reserve_fd_table(files.min(wanted));
    if files < wanted {
        tracing::warn!(
            "open files limit {files} is below the {wanted} that smtp.max_connections ({}), \
             capture and DNS need; accept will fail earlier",
            config.smtp.max_connections
        );
    }
    // Everything that needs a privilege, while this is the only thread.
    match crate::listeners::migrate_queued_on_close() {
        Ok(true) => tracing::info!(
            "net.ipv4.tcp_migrate_req set to 1: a takeover hands the connections waiting in the \
             old daemon's queues to the new one"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            "cannot turn net.ipv4.tcp_migrate_req on ({e}): a takeover resets the connections \
             waiting in the old daemon's queues"
        ),
    }
    let blocking = crate::kernel::open_blocker(config);
    let bound = Server::bind(config)?;
    let metrics = match Endpoint::bind(config.metrics.listen) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            // A trap that cannot serve metrics still traps.
            tracing::warn!("{e}; /metrics is off");
            None
        }
    };
    let metrics_maps = Sources::pinned_maps(&config.xdp.pin_dir);
    let metrics_interfaces = Sources::interfaces(&config.xdp.interfaces);
    let notifier = Notifier::from_env();
    drop_privileges(config, blocking.blocker.as_ref())?;
    confine(config, config_file, blocking.blocker.as_ref())?;
    // Every thread starts from here on, with neither privilege nor reach.
    let listening = bound.local_addrs().map_err(ServerError::Io)?;
    let server = bound.start(config, blocking, notifier)?;
    if let Some(endpoint) = metrics {
        let addr = endpoint.local_addr();
        let sources = Sources {
            daemon: server.counters(),
            score: Some(server.score_counters()),
            maps: metrics_maps,
            interfaces: metrics_interfaces,
        };
        match endpoint.serve(sources) {
            Ok(()) => tracing::info!("metrics on http://{addr}/metrics"),
            Err(e) => tracing::warn!("{e}; /metrics is off"),
        }
    }
    let _pid_file =
        handover::PidFile::write(&storage.dir).map_err(|source| DaemonError::PidFile {
            file: storage.dir.join(handover::PID_FILE),
            source,
        })?;
    // Serving: said once the pid file names this process.
    for addr in listening {
        tracing::info!("listening on {addr}");
    }
    // The service manager may count on it, and (after a takeover) on this process.
    server.notify(&format!(
        "MAINPID={}\nREADY=1\nSTATUS=serving",
        std::process::id()
    ));
    match previous {
        Some(pid) => {
            let pid_n = pid.as_raw_nonzero();
            match handover::stop(pid) {
                Ok(()) => tracing::info!("took over from pid {pid_n}: asked it to stop"),
                Err(e) => tracing::warn!("cannot stop the previous daemon (pid {pid_n}): {e}"),
            }
        }
        None if takeover => tracing::info!("--takeover: no daemon was running on this storage"),
        None => {}
    }
    tracing::info!(
        "storage {} (messages {})",
        storage.dir.display(),
        if storage.capture {
            "captured to maildir/new"
        } else {
            "counted, not stored"
        }
    );
    Ok(server.run()?)
}

/// Raises the open files limit to at least `wanted` (every connection is a descriptor): the
/// hard limit too when we may (root), else the soft limit up to the hard one. Returns the limit
/// in force.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|soft| soft < wanted) {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: limit.maximum.map(|hard| hard.max(wanted)),
        };
        if setrlimit(Resource::Nofile, raised).is_err() {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: limit.maximum,
                    maximum: limit.maximum,
                },
            );
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Grows the descriptor table to `size` slots now, while this is the only thread: in a
/// multi-threaded process every later growth waits for an RCU grace period (milliseconds) in
/// whichever thread allocates the descriptor, typically the loop in `accept()` while the
/// resolver's sockets pile up behind a dead DNS server.
fn reserve_fd_table(size: u64) {
    let Ok(highest) = i32::try_from(size.saturating_sub(1)) else {
        return;
    };
    // A duplicate at the highest slot makes the kernel size the table; closing it keeps the size.
    if let Err(e) = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), highest) {
        tracing::debug!("cannot pre-size the descriptor table to {size}: {e}");
    }
}

/// Becomes `smtp.run_as` (after handing it the storage, and the XDP link pins it removes at
/// stop), or stays the user it is; either way with no capability left.
fn drop_privileges(config: &Config, blocker: &dyn Blocker) -> Result<(), DaemonError> {
    let storage = &config.storage.dir;
    // Made now, so that it is the user's and Landlock can name it.
    std::fs::create_dir_all(storage).map_err(|source| DaemonError::Storage {
        dir: storage.clone(),
        source,
    })?;
    if config.smtp.run_as.is_empty() {
        privilege::drop_all()?;
        privilege::warn_if_root();
        return Ok(());
    }
    let account = privilege::lookup(&config.smtp.run_as)?;
    let mut paths = config.storage.written_paths();
    if blocker.is_attached() {
        paths.push(config.xdp.pin_dir.clone());
    }
    privilege::hand_over(&account, paths.iter().map(PathBuf::as_path))?;
    privilege::become_user(&account)?;
    Ok(())
}

/// Confines the daemon to what it needs once it serves, saying once if the kernel cannot
/// restrict its files.
fn confine(
    config: &Config,
    config_file: Option<&Path>,
    blocker: &dyn Blocker,
) -> Result<(), DaemonError> {
    let reach = sandbox::daemon_reach(config, config_file, blocker.is_attached());
    match sandbox::confine(&reach)? {
        Enforced::Fully => tracing::info!(
            "confined: seccomp filter, no new privileges, Landlock on {} and {} read-only",
            config.storage.dir.display(),
            reach.read_only.len()
        ),
        Enforced::Partially => tracing::warn!(
            "confined: seccomp filter, no new privileges; this kernel's Landlock enforces part of the filesystem and port rules"
        ),
        Enforced::Not => tracing::warn!(
            "confined: seccomp filter, no new privileges; no Landlock in this kernel, so the daemon's files are not restricted"
        ),
    }
    Ok(())
}
