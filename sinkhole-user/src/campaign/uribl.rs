//! The URL hosts of campaigns as an rbldnsd `dnset` dataset: a URI blocklist (URIBL) that other
//! MTAs and a fleet of traps query for the hosts a message names
//! (`pharma.example.uribl.example.org` answers `127.0.0.2` when listed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use super::report::Report;

/// The dataset's file name under `--output DIR`.
pub const FILE: &str = "uribl";
/// The A record a listed host gets.
const LISTED: &str = "127.0.0.2";

/// The dataset: every DNS name among the URL hosts of the campaigns with at least
/// `min_sessions` sessions, each with a TXT naming its campaign (the largest one naming it).
/// Address literals are left out (a `dnset` holds names). Returns it and how many hosts it
/// lists.
pub fn dataset(report: &Report, min_sessions: u64, exported: SystemTime) -> (String, usize) {
    // Host -> (sessions, campaign id) of the largest campaign naming it.
    let mut hosts: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for campaign in report
        .campaigns
        .iter()
        .filter(|c| c.sessions >= min_sessions)
    {
        for host in &campaign.url_hosts {
            if !is_name(&host.name) {
                continue;
            }
            let entry = hosts.entry(&host.name).or_insert((0, &campaign.id));
            if campaign.sessions > entry.0 {
                *entry = (campaign.sessions, &campaign.id);
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# sinkhole: URL hosts of campaigns with at least {min_sessions} sessions, exported {}\n\
         # rbldnsd dnset; a listed host answers {LISTED}\n\
         :{LISTED}:Named by spam campaign $ seen by sinkhole",
        humantime::format_rfc3339_seconds(exported)
    );
    for (host, (sessions, id)) in &hosts {
        let _ = writeln!(
            out,
            "{host} :{LISTED}:Named by spam campaign {id} ({sessions} sessions) seen by sinkhole"
        );
    }
    (out, hosts.len())
}

/// A DNS name as `url_hosts` keeps them (lowercase labels of letters, digits, `-` and `_`), not
/// an address literal.
fn is_name(host: &str) -> bool {
    !host.starts_with('[')
        && host.parse::<IpAddr>().is_err()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::report::{Campaign, Ranked};

    fn campaign(id: &str, sessions: u64, hosts: &[&str]) -> Campaign {
        Campaign {
            id: id.into(),
            signatures: Vec::new(),
            sessions,
            clients: sessions,
            first_seen: None,
            last_seen: None,
            dnsbl: BTreeMap::new(),
            examples: Vec::new(),
            grouped_by: Vec::new(),
            variants: Vec::new(),
            top_clients: Vec::new(),
            recipients: Vec::new(),
            url_hosts: hosts
                .iter()
                .map(|h| Ranked {
                    name: (*h).into(),
                    count: 1,
                })
                .collect(),
            messages: 1,
            syn: Vec::new(),
            per_hour: Vec::new(),
            sessions_per_hour: 0.0,
        }
    }

    #[test]
    fn hosts_of_big_enough_campaigns_and_no_literals() {
        let report = Report {
            campaigns: vec![
                campaign(
                    "k-1",
                    40,
                    &[
                        "pharma.example",
                        "192.0.2.7",
                        "[2001:db8::1]",
                        "cdn.example",
                    ],
                ),
                campaign("k-2", 9, &["cdn.example", "loans.example"]),
                campaign("k-3", 2, &["tiny.example"]),
            ],
            ..Report::default()
        };
        let (text, n) = dataset(&report, 5, SystemTime::UNIX_EPOCH);
        assert_eq!(n, 3, "{text}");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(['#', ':']))
            .collect();
        assert_eq!(
            lines,
            [
                "cdn.example :127.0.0.2:Named by spam campaign k-1 (40 sessions) seen by sinkhole",
                "loans.example :127.0.0.2:Named by spam campaign k-2 (9 sessions) seen by sinkhole",
                "pharma.example :127.0.0.2:Named by spam campaign k-1 (40 sessions) seen by sinkhole",
            ]
        );
        assert!(!text.contains("tiny.example"));
    }
}
