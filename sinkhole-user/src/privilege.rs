//! Least privilege: after start-up as root (XDP attached, maps, storage and listeners open),
//! the daemon becomes `smtp.run_as` and keeps only the capabilities it still needs.
//!
//! Capabilities are per thread. [`become_user`] runs on the loop thread before any other thread
//! starts, so threads spawned afterwards inherit the reduced sets; a thread that existed before
//! would lose every capability at the uid change (it lacks `PR_SET_KEEPCAPS`), which is safe.

use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User, chown, setgid, setgroups, setuid};

/// What the daemon keeps after dropping root: `CAP_BPF` to update and sweep the block maps
/// (`kernel.unprivileged_bpf_disabled` forbids bpf() without it) and `CAP_NET_ADMIN` to detach
/// the XDP program at shutdown.
pub const DAEMON_CAPABILITIES: &[Capability] = &[Capability::CAP_BPF, Capability::CAP_NET_ADMIN];

/// A user to become.
#[derive(Clone, Debug)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Why a user name names no account.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("no user `{0}` (create it, e.g. with `cargo xtask deploy`)")]
    NoSuchUser(String),
    #[error("looking up `{0}`: {1}")]
    Lookup(String, nix::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("smtp.run_as: {0}")]
    Account(#[from] AccountError),
    #[error("smtp.run_as = `{0}` needs the daemon to start as root")]
    NotRoot(String),
    #[error("giving {path} to `{user}`: {source}")]
    Chown {
        path: String,
        user: String,
        source: nix::Error,
    },
    #[error("becoming `{user}`: {step}: {source}")]
    Credentials {
        user: String,
        step: &'static str,
        source: nix::Error,
    },
    #[error("shrinking the capability bounding set: {0}")]
    Bounding(caps::errors::CapsError),
    #[error("becoming `{user}`: {step}: {source}")]
    Capabilities {
        user: String,
        step: &'static str,
        source: caps::errors::CapsError,
    },
}

/// The account `name` names, whoever asks (`check-config` uses it as is).
pub fn account(name: &str) -> Result<Account, AccountError> {
    let user = User::from_name(name)
        .map_err(|e| AccountError::Lookup(name.to_owned(), e))?
        .ok_or_else(|| AccountError::NoSuchUser(name.to_owned()))?;
    Ok(Account {
        name: name.to_owned(),
        uid: user.uid,
        gid: user.gid,
    })
}

/// Looks up `name`. Starting as a non-root user is fine only when it is that user already.
pub fn lookup(name: &str) -> Result<Account, PrivilegeError> {
    let account = account(name)?;
    let me = Uid::effective();
    if !me.is_root() && me != account.uid {
        return Err(PrivilegeError::NotRoot(name.to_owned()));
    }
    Ok(account)
}

/// Gives the daemon's writable paths (storage directory, Maildir folders, session log) to the
/// account, so it can still create files in them after the switch.
pub fn hand_over<'a>(
    account: &Account,
    paths: impl IntoIterator<Item = &'a Path>,
) -> Result<(), PrivilegeError> {
    use std::os::unix::fs::MetadataExt;
    for path in paths {
        let Ok(meta) = path.metadata() else { continue };
        // Already theirs (e.g. made by `cargo xtask deploy`): no CAP_CHOWN needed.
        if meta.uid() != account.uid.as_raw() || meta.gid() != account.gid.as_raw() {
            chown(path, Some(account.uid), Some(account.gid)).map_err(|source| {
                PrivilegeError::Chown {
                    path: path.display().to_string(),
                    user: account.name.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

/// Shrinks the bounding set to `keep`, so that no thread can ever regain anything else (not
/// even through exec). Per thread like every capability set, and inherited by threads spawned
/// later: call it first thing, before any other thread exists. It leaves the permitted set
/// alone, so start-up keeps its privileges until [`become_user`]. Needs CAP_SETPCAP; under the
/// packaged systemd unit that is absent and `CapabilityBoundingSet=` has done the shrinking.
pub fn limit_bounding_set(keep: &[Capability]) -> Result<(), PrivilegeError> {
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        return Ok(());
    }
    for c in caps::all() {
        if !keep.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c).map_err(PrivilegeError::Bounding)?;
        }
    }
    Ok(())
}

/// Becomes `account`, keeping exactly `keep` as permitted and effective capabilities of the
/// calling thread, and nothing inheritable or ambient; other threads keep no capabilities. A
/// no-op when already that user and not root.
pub fn become_user(account: &Account, keep: &[Capability]) -> Result<(), PrivilegeError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let cred = |step| {
        move |source| PrivilegeError::Credentials {
            user: account.name.clone(),
            step,
            source,
        }
    };
    let cap = |step| {
        move |source| PrivilegeError::Capabilities {
            user: account.name.clone(),
            step,
            source,
        }
    };
    let keep: CapsHashSet = keep.iter().copied().collect();

    nix::sys::prctl::set_keepcaps(true).map_err(cred("PR_SET_KEEPCAPS"))?;
    setgroups(&[account.gid]).map_err(cred("setgroups"))?;
    setgid(account.gid).map_err(cred("setgid"))?;
    setuid(account.uid).map_err(cred("setuid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(cred("PR_SET_KEEPCAPS"))?;

    caps::clear(None, CapSet::Ambient).map_err(cap("clearing ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(cap("clearing inheritable capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(cap("setting permitted capabilities"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(cap("setting effective capabilities"))?;
    log::info!(
        "running as {} (uid {}), keeping {:?}",
        account.name,
        account.uid,
        keep
    );
    Ok(())
}

/// Says once, at start-up, that a root daemon with no `run_as` keeps every privilege.
pub fn warn_if_root() {
    if Uid::effective().is_root() {
        log::warn!(
            "running as root with every capability: set smtp.run_as to an unprivileged user"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "SINKHOLE_PRIVILEGE_CHILD";

    /// Runs in a fresh process (see `drops_to_the_user_keeping_only_the_daemon_capabilities`),
    /// so the uid change does not leak into the other tests.
    #[test]
    fn child_becomes_nobody() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let nobody = lookup("nobody").unwrap();
        limit_bounding_set(DAEMON_CAPABILITIES).unwrap();
        become_user(&nobody, DAEMON_CAPABILITIES).unwrap();
        // Capabilities are per thread: show this one's.
        print!(
            "{}",
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        );
    }

    #[test]
    fn drops_to_the_user_keeping_only_the_daemon_capabilities() {
        if !Uid::effective().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root"
            );
            eprintln!("skipped: needs root to change credentials");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privilege::tests::child_becomes_nobody",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{status}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        let nobody = User::from_name("nobody").unwrap().unwrap();
        assert!(field("Uid:").iter().all(|u| *u == nobody.uid.to_string()));
        assert!(field("Gid:").iter().all(|g| *g == nobody.gid.to_string()));
        assert_eq!(field("Groups:"), vec![nobody.gid.to_string()]);
        // CAP_NET_ADMIN is bit 12 and CAP_BPF bit 39: 0x8000001000.
        let wanted = format!("{:016x}", (1u64 << 12) | (1u64 << 39));
        assert_eq!(field("CapEff:"), vec![wanted.as_str()]);
        assert_eq!(field("CapPrm:"), vec![wanted.as_str()]);
        assert_eq!(field("CapBnd:"), vec![wanted.as_str()]);
        assert_eq!(field("CapInh:"), vec!["0000000000000000"]);
        assert_eq!(field("CapAmb:"), vec!["0000000000000000"]);
    }
}
