//! Daemon start-up: `sinkhole run` from the configuration to the serving event loop.
//!
//! [`run`] refuses to start beside a daemon already running on the same storage (or, with
//! `--takeover`, replaces it: [`handover`]), raises the open files limit, sets up the
//! [`Server`] with the kernel module's blocker, starts `/metrics`, drops privileges, writes the
//! pid file and then serves until stopped.

pub mod handover;

use std::io;
use std::path::PathBuf;

use crate::config::Config;
use crate::metrics::{self, Sources};
use crate::privilege::{self, PrivilegeError};
use crate::server::{Server, ServerError};

/// Why the daemon did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(
        "already running as pid {pid} on this storage ({file}); `sinkhole run --takeover` replaces it"
    )]
    AlreadyRunning { pid: i32, file: PathBuf },
    #[error("pid file {file}: {source}")]
    PidFile { file: PathBuf, source: io::Error },
}

/// `sinkhole run`: sets up the daemon from `config` (with the kernel module's blocker) and
/// serves until stopped. With `takeover`, replaces the daemon running on the same storage (see
/// [`handover`]); without, refuses to start beside it.
pub fn run(config: &Config, takeover: bool) -> Result<(), DaemonError> {
    let storage = &config.storage;
    let previous = handover::running(&storage.dir);
    if let (Some(pid), false) = (previous, takeover) {
        return Err(DaemonError::AlreadyRunning {
            pid: pid.as_raw_nonzero().get(),
            file: storage.dir.join(handover::PID_FILE),
        });
    }
    if !config.smtp.run_as.is_empty() {
        // Before any thread is spawned, so that all of them inherit it.
        privilege::limit_bounding_set(privilege::DAEMON_CAPABILITIES)?;
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
        log::warn!(
            "open files limit {files} is below the {wanted} that smtp.max_connections ({}), \
             capture and DNS need; accept will fail earlier",
            config.smtp.max_connections
        );
    }
    let server = Server::new(config, crate::kernel::open_blocker(config))?;
    spawn_metrics(config, &server);
    // Everything privileged is open now: XDP, the maps, the listeners, the storage.
    drop_privileges(config)?;
    for addr in server.local_addrs().map_err(ServerError::Io)? {
        log::info!("listening on {addr}");
    }
    let _pid_file =
        handover::PidFile::write(&storage.dir).map_err(|source| DaemonError::PidFile {
            file: storage.dir.join(handover::PID_FILE),
            source,
        })?;
    match previous {
        Some(pid) => {
            let pid_n = pid.as_raw_nonzero();
            match handover::stop(pid) {
                Ok(()) => log::info!("took over from pid {pid_n}: asked it to stop"),
                Err(e) => log::warn!("cannot stop the previous daemon (pid {pid_n}): {e}"),
            }
        }
        None if takeover => log::info!("--takeover: no daemon was running on this storage"),
        None => {}
    }
    log::info!(
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
        log::debug!("cannot pre-size the descriptor table to {size}: {e}");
    }
}

/// Becomes `smtp.run_as` (after handing it the storage), or warns once when staying root.
fn drop_privileges(config: &Config) -> Result<(), PrivilegeError> {
    if config.smtp.run_as.is_empty() {
        privilege::warn_if_root();
        return Ok(());
    }
    let account = privilege::lookup(&config.smtp.run_as)?;
    let paths = config.storage.written_paths();
    privilege::hand_over(&account, paths.iter().map(PathBuf::as_path))?;
    privilege::become_user(&account, privilege::DAEMON_CAPABILITIES)?;
    Ok(())
}

/// Starts `/metrics` on `metrics.listen`. A trap that cannot serve metrics still traps: the
/// failure is logged, not fatal.
fn spawn_metrics(config: &Config, server: &Server) {
    let sources = Sources {
        daemon: server.counters(),
        score: Some(server.score_counters()),
        maps: Sources::pinned_maps(&config.xdp.pin_dir),
    };
    match metrics::spawn(config.metrics.listen, sources) {
        Ok(handle) => log::info!("metrics on http://{}/metrics", handle.local_addr()),
        Err(e) => log::warn!("{e}; /metrics is off"),
    }
}
