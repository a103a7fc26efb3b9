//! The Landlock ruleset: which files and TCP ports the serving daemon may still reach.

use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, path_beneath_rules,
};

/// The newest ABI the ruleset asks for (Linux 6.15); older kernels enforce what they know.
const ABI_WANTED: ABI = ABI::V7;

/// Where the serving daemon may go. Paths that do not exist are left out (nothing there to
/// protect or to reach).
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// Everything below (storage: Maildir, session log, pid file).
    pub read_write: Vec<PathBuf>,
    /// Read below (the configuration, the policy's directory, the resolver's files).
    pub read_only: Vec<PathBuf>,
    /// Remove files below and read them (the XDP link pins, unpinned at stop).
    pub remove: Vec<PathBuf>,
    /// TCP ports it may connect to (DNS over TCP). No TCP port may be bound.
    pub connect_tcp: Vec<u16>,
}

/// How much of the ruleset the kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    Partially,
    /// No Landlock in this kernel (or it is disabled at boot).
    Not,
}

/// Restricts the calling thread (and every thread and process it starts afterwards) to
/// `reach`.
pub fn restrict(reach: &Reach) -> Result<Enforced, RulesetError> {
    let all = AccessFs::from_all(ABI_WANTED);
    // Storage holds data, never programs.
    let read_write = all & !AccessFs::Execute;
    let read = AccessFs::from_read(ABI_WANTED) & !AccessFs::Execute;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .handle_access(AccessNet::from_all(ABI_WANTED))?
        // Not Scope::Signal: `--takeover` signals the daemon it replaces, in another domain.
        .scope(Scope::AbstractUnixSocket)?
        .create()?
        .add_rules(path_beneath_rules(&reach.read_write, read_write))?
        .add_rules(path_beneath_rules(&reach.read_only, read))?
        .add_rules(path_beneath_rules(
            &reach.remove,
            read | AccessFs::RemoveFile,
        ))?
        .add_rules(
            reach
                .connect_tcp
                .iter()
                .map(|&port| Ok::<_, RulesetError>(NetPort::new(port, AccessNet::ConnectTcp))),
        )?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partially,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}
