//! A daemon with a policy file of the test's, asking a local `nsd` that knows no name (so
//! scoring answers at once, and no query leaves loopback) and no DNSBL zone.

use std::fs;
use std::path::PathBuf;

use crate::daemon::{Daemon, dns_without_zones};
use crate::dns::{Nsd, start_nsd, zone_file};
use crate::{TempDir, temp_dir};

/// The daemon, its policy file and the DNS server it asks.
pub struct PolicyDaemon {
    pub daemon: Daemon,
    /// The policy file (`policy.file`), to rewrite before a reload.
    pub policy: PathBuf,
    /// Holds the policy file, and anything else the test keeps beside it.
    pub dir: TempDir,
    _dns: Nsd,
}

impl PolicyDaemon {
    /// A daemon with `policy` as its policy file and `policy_extra` more `[policy]` lines.
    pub fn start(policy: &str, policy_extra: &str) -> PolicyDaemon {
        PolicyDaemon::start_with(policy, policy_extra, |rest| {
            Daemon::start_with_tables("", "", rest)
        })
    }

    /// [`PolicyDaemon::start`], with the daemon started by `start` from the config's extra
    /// tables.
    pub fn start_with(
        policy: &str,
        policy_extra: &str,
        start: impl FnOnce(&str) -> Daemon,
    ) -> PolicyDaemon {
        let dns = start_nsd(&[("127.in-addr.arpa", &zone_file(""))]).expect("nsd");
        let dir = temp_dir("policy");
        let path = dir.path().join("policy.toml");
        fs::write(&path, policy).expect("write the policy file");
        let rest = format!(
            "{}[policy]\nfile = \"{}\"\n{policy_extra}\n",
            dns_without_zones(dns.addr),
            path.display()
        );
        PolicyDaemon {
            daemon: start(&rest),
            policy: path,
            dir,
            _dns: dns,
        }
    }
}
