//! Confinement of the serving daemon. Once start-up has opened what needs privileges (XDP, the
//! maps, port 25, the TLS key) and dropped them, the process, one thread still, sets
//! `NoNewPrivs`, restricts its files and TCP ports with Landlock ([`filesystem`]) and its system
//! calls with seccomp ([`syscalls`]). Every thread it starts afterwards (the resolver, capture,
//! commit, `/metrics`, the per-address files, log compression) inherits all three.

pub mod filesystem;
pub mod syscalls;

use std::path::{Path, PathBuf};

pub use filesystem::{Enforced, Reach};

use crate::config::Config;

/// Files read after start-up: the resolver's, when it uses the system's configuration; the CPU
/// list aya reads for each per-CPU counter lookup; the process's own `/proc` entries and the
/// boot time, for the `process_*` series of `/metrics`.
const SYSTEM_FILES: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/sys/devices/system/cpu/possible",
    "/proc/self",
    "/proc/stat",
];

/// The DNS port, for TCP queries to the system's resolvers.
const DNS_PORT: u16 = 53;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    #[error("Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error(transparent)]
    Filter(#[from] syscalls::FilterError),
    #[error("installing the seccomp filter: {0}")]
    Seccomp(seccompiler::Error),
}

/// Confines this process to `reach` and to the daemon's system calls, for good. Call it while
/// the process has a single thread: Landlock binds the calling thread and those it starts
/// later (binding existing threads needs Landlock ABI 8); the seccomp filter binds them all.
pub fn confine(reach: &Reach) -> Result<Enforced, SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    let enforced = filesystem::restrict(reach)?;
    let filter = syscalls::filter(std::process::id())?;
    seccompiler::apply_filter_all_threads(&filter).map_err(SandboxError::Seccomp)?;
    Ok(enforced)
}

/// What the daemon run with `config` (read from `config_file`) needs once it serves: its
/// storage and `policy.addresses_dir`; the configuration, and the directory of the policy file (SIGHUP re-reads it, and
/// editors replace a file by renaming a new one over it); [`SYSTEM_FILES`]; the XDP link
/// pins when it attached the program (it unpins them at stop); DNS over TCP.
pub fn daemon_reach(config: &Config, config_file: Option<&Path>, xdp_attached: bool) -> Reach {
    let mut read_only: Vec<PathBuf> = SYSTEM_FILES.iter().map(PathBuf::from).collect();
    read_only.extend(config_file.map(Path::to_path_buf));
    if !config.policy.file.as_os_str().is_empty() {
        read_only.push(parent_or_self(&config.policy.file));
    }
    let mut connect_tcp = vec![DNS_PORT];
    connect_tcp.extend(config.dnsbl.nameservers.iter().map(|ns| ns.port()));
    connect_tcp.sort_unstable();
    connect_tcp.dedup();
    let mut read_write = vec![config.storage.dir.clone()];
    // Read on every change, written by `auto_close`.
    if !config.policy.addresses_dir.as_os_str().is_empty() {
        read_write.push(config.policy.addresses_dir.clone());
    }
    Reach {
        read_write,
        read_only,
        remove: if xdp_attached {
            vec![config.xdp.pin_dir.clone()]
        } else {
            Vec::new()
        },
        connect_tcp,
    }
}

/// The directory holding `file` (`.` for a bare name).
fn parent_or_self(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests;
