//! Least privilege: after start-up as root (XDP attached, maps, storage and listeners open),
//! the daemon becomes `smtp.run_as` and keeps no capability at all.
//!
//! Nothing the serving daemon does needs one on Linux 5.19 or later: the kernel checks
//! `kernel.unprivileged_bpf_disabled` when a map or program is created, not when a map opened
//! before is read or written through its descriptor; the link pins it removes at stop are in a
//! directory handed to it ([`hand_over`]). Capabilities are per thread: [`drop_all`] runs while
//! the loop thread is the only one, so every thread started later has none either.

use std::path::Path;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Uid, User, chown, setgid, setgroups, setuid};

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
    #[error("dropping capabilities: {step}: {source}")]
    Capabilities {
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

/// Gives up every capability for good: empties the bounding set (so that nothing can be
/// regained, not even through exec), then the ambient, inheritable, effective and permitted
/// sets of the calling thread. Call it while that thread is the only one.
pub fn drop_all() -> Result<(), PrivilegeError> {
    empty_bounding_set()?;
    let cap = |step| move |source| PrivilegeError::Capabilities { step, source };
    caps::clear(None, CapSet::Ambient).map_err(cap("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(cap("clearing the inheritable set"))?;
    caps::clear(None, CapSet::Effective).map_err(cap("clearing the effective set"))?;
    caps::clear(None, CapSet::Permitted).map_err(cap("clearing the permitted set"))?;
    Ok(())
}

/// Empties the bounding set. Needs CAP_SETPCAP (kept in the effective set until the uid
/// changes); under the packaged systemd unit it is absent and `CapabilityBoundingSet=` has
/// done the emptying.
fn empty_bounding_set() -> Result<(), PrivilegeError> {
    if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        return Ok(());
    }
    for c in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c).map_err(|source| {
                PrivilegeError::Capabilities {
                    step: "shrinking the bounding set",
                    source,
                }
            })?;
        }
    }
    Ok(())
}

/// Becomes `account` (its group alone as supplementary group) and drops every capability. A
/// no-op when already that user and not root.
pub fn become_user(account: &Account) -> Result<(), PrivilegeError> {
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
    empty_bounding_set()?;
    setgroups(&[account.gid]).map_err(cred("setgroups"))?;
    setgid(account.gid).map_err(cred("setgid"))?;
    setuid(account.uid).map_err(cred("setuid"))?;
    drop_all()?;
    tracing::info!(
        "running as {} (uid {}) with no capabilities",
        account.name,
        account.uid
    );
    Ok(())
}

/// Says once, at start-up, that a daemon with no `run_as` started as root stays uid 0: with no
/// capability left, but owning the system's files.
pub fn warn_if_root() {
    if Uid::effective().is_root() {
        tracing::warn!(
            "running as root (uid 0, no capabilities): set smtp.run_as to an unprivileged user"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "SINKHOLE_PRIVILEGE_CHILD";

    /// Runs in a fresh process (see `drops_to_the_user_keeping_no_capability`),
    /// so the uid change does not leak into the other tests.
    #[test]
    fn child_becomes_nobody() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let nobody = lookup("nobody").unwrap();
        become_user(&nobody).unwrap();
        // Capabilities are per thread: show this one's.
        print!(
            "{}",
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        );
    }

    #[test]
    fn drops_to_the_user_keeping_no_capability() {
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
        for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(set), vec!["0000000000000000"], "{set}");
        }
    }
}
