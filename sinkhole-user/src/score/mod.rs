//! Client scoring: DNSBL zones with weights and reply-code filters, reverse DNS with forward
//! confirmation, and the HELO name check, all answered by a resolver thread.
//!
//! The event loop never waits on DNS. At accept it calls [`Resolver::request`]; at HELO,
//! [`Resolver::check_helo`]. Both return at once. The resolver thread (a tokio current-thread
//! runtime with hickory) answers through a channel and wakes the loop's `mio::Waker`; the loop
//! then drains [`Resolver::try_recv`]. Every answer arrives within `dnsbl.timeout` of its
//! request, complete or not ([`ClientScore::timed_out`]).
//!
//! Bounded: requests outstanding ([`Limits::outstanding`], beyond it `Busy`), DNS queries in
//! flight ([`Limits::in_flight`], beyond it a query waits for a slot until the deadline, then
//! counts as no answer), cache entries
//! ([`Limits::cache_entries`], least recently used first). [`ScoreCounters`] count what was
//! refused.
//!
//! Answers are cached per (address, zone) and per address for reverse DNS, for their TTL
//! clamped to 1 min–1 h; a server's error (SERVFAIL, REFUSED, an unreachable port) is cached
//! like an answer for the minimum, so a client that reconnects at once is not looked up again.
//! No answer in time is not cached.
//!
//! An upstream that stops answering (a zone, or the names behind reverse DNS) is noticed after a
//! run of unanswered queries and then only probed, once a second, until it answers again; its
//! clients meanwhile go unscored at once ([`DOWN_AFTER`], [`PROBE_EVERY`]).

mod cache;
mod counters;
mod lookup;
mod outage;
mod query;
mod resolver;
mod zone;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub use counters::{ScoreCounters, ZoneCounters};
pub use outage::{DOWN_AFTER, PROBE_EVERY};
pub use query::{ptr_name, reverse_name};
pub use resolver::{Busy, Limits, Resolver, ScoreError};

use crate::signature::Signature;
use crate::smtp::Reply;

/// What the resolver thread hands back, tagged with the token given in the request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// For [`Resolver::request`].
    Client { token: u64, score: ClientScore },
    /// For [`Resolver::check_helo`].
    Helo { token: u64, check: HeloCheck },
}

impl Answer {
    pub fn token(&self) -> u64 {
        match self {
            Answer::Client { token, .. } | Answer::Helo { token, .. } => *token,
        }
    }
}

/// One zone that listed the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneHit {
    pub zone: Arc<str>,
    /// The return codes that passed the zone's filter, ascending.
    pub codes: Vec<Ipv4Addr>,
    pub weight: i32,
}

/// The session log's `dnsbl:[{zone,codes}]` element.
impl serde::Serialize for ZoneHit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("ZoneHit", 2)?;
        s.serialize_field("zone", &*self.zone)?;
        s.serialize_field("codes", &self.codes)?;
        s.end()
    }
}

/// A listing of the client in one DNSBL zone as the session log and the trace headers give
/// it: the zone and the answers it gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsblListing {
    pub zone: String,
    pub codes: Vec<String>,
}

/// Everything known about a client address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientScore {
    /// The address scored (IPv4-mapped IPv6 addresses are scored as IPv4).
    pub ip: IpAddr,
    /// Zones that listed it, in configuration order.
    pub dnsbl: Vec<ZoneHit>,
    /// The sum of the listing zones' weights (each zone once).
    pub score: i32,
    /// The first PTR name, lowercased, without the trailing dot.
    pub rdns: Option<String>,
    /// The PTR name's A/AAAA records contain the address.
    pub fcrdns: bool,
    /// Both the PTR and (for a name) the forward lookup got a definite answer, so `rdns` and
    /// `fcrdns` are facts, not gaps: only then do `no-rdns` / `rdns-no-forward` apply.
    pub rdns_checked: bool,
    /// Some lookup got no answer in time (or was not sent: too many in flight); its zone
    /// counts as not listing.
    pub timed_out: bool,
}

impl ClientScore {
    /// The zones with a positive weight that listed the client.
    pub fn blocking_zones(&self) -> impl Iterator<Item = &str> {
        self.dnsbl
            .iter()
            .filter(|hit| hit.weight > 0)
            .map(|hit| &*hit.zone)
    }

    /// Whether the score reaches `threshold` on the word of at least one zone that lists
    /// (so a threshold of 0 or less does not refuse unlisted clients).
    pub fn reaches(&self, threshold: i32) -> bool {
        self.score >= threshold && self.blocking_zones().next().is_some()
    }

    /// The RCPT reply when the score reaches `dnsbl.reject_threshold`:
    /// `550 5.7.1 Service unavailable; client [IP] blocked using ZONE, ZONE`.
    pub fn reject_reply(&self, reject_threshold: i32) -> Option<Reply> {
        if !self.reaches(reject_threshold) {
            return None;
        }
        let mut text = format!(
            "5.7.1 Service unavailable; client [{}] blocked using ",
            self.ip
        );
        join_zones(&mut text, self.blocking_zones(), ", ");
        Some(Reply { code: 550, text })
    }

    /// Whether the client goes into the drop map (`dnsbl.block_threshold`).
    pub fn should_block(&self, block_threshold: i32) -> bool {
        self.reaches(block_threshold)
    }

    /// The block reason shown by `sinkhole list`: `dnsbl:ZONE,ZONE`.
    pub fn block_reason(&self) -> String {
        let mut reason = String::from("dnsbl:");
        join_zones(&mut reason, self.blocking_zones(), ",");
        reason
    }

    /// The session signatures this score shows: `dnsbl-listed`, `no-rdns`, `rdns-no-forward`.
    pub fn signatures(&self) -> Vec<Signature> {
        let mut found = Vec::new();
        if self.rdns_checked {
            match self.rdns {
                None => found.push(Signature::NoRdns),
                Some(_) if !self.fcrdns => found.push(Signature::RdnsNoForward),
                Some(_) => {}
            }
        }
        if self.blocking_zones().next().is_some() {
            found.push(Signature::DnsblListed);
        }
        found.sort_unstable();
        found
    }

    /// `helo-is-rdns`: the HELO name is the client's PTR name (case and a trailing dot aside).
    pub fn helo_is_rdns(&self, helo: &str) -> bool {
        self.rdns
            .as_deref()
            .is_some_and(|rdns| normalize_name(helo) == rdns)
    }
}

/// The forward lookup of a HELO name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeloCheck {
    pub ip: IpAddr,
    /// The name as checked: lowercased, without a trailing dot.
    pub helo: String,
    /// `Some(true)`: its A/AAAA records contain the client; `Some(false)`: they do not (or it
    /// does not exist); `None`: not a domain name (address literals, single labels), or no
    /// answer in time.
    pub resolves_to_client: Option<bool>,
}

impl HeloCheck {
    /// `helo-mismatch`: a domain name that does not resolve to the client.
    pub fn is_mismatch(&self) -> bool {
        self.resolves_to_client == Some(false)
    }
}

/// Lowercased, without the trailing dot: how names are compared and reported.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn join_zones<'a>(out: &mut String, zones: impl Iterator<Item = &'a str>, separator: &str) {
    for (i, zone) in zones.enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(zone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(zone: &str, weight: i32, codes: &[&str]) -> ZoneHit {
        ZoneHit {
            zone: zone.into(),
            codes: codes.iter().map(|c| c.parse().unwrap()).collect(),
            weight,
        }
    }

    fn scored(dnsbl: Vec<ZoneHit>) -> ClientScore {
        ClientScore {
            ip: "192.0.2.7".parse().unwrap(),
            score: dnsbl.iter().map(|h| h.weight).sum(),
            dnsbl,
            rdns: Some("mail.example.net".into()),
            fcrdns: true,
            rdns_checked: true,
            timed_out: false,
        }
    }

    #[test]
    fn reply_names_the_positive_zones() {
        let s = scored(vec![
            hit("zen.example", 3, &["127.0.0.2"]),
            hit("allow.example", -2, &["127.0.0.2"]),
            hit("bl.example", 2, &["127.0.0.4"]),
        ]);
        assert_eq!(s.score, 3);
        assert_eq!(
            s.reject_reply(3),
            Some(Reply {
                code: 550,
                text: "5.7.1 Service unavailable; client [192.0.2.7] blocked using zen.example, bl.example"
                    .into()
            })
        );
        assert_eq!(s.reject_reply(4), None);
        assert!(s.should_block(3));
        assert!(!s.should_block(5));
        assert_eq!(s.block_reason(), "dnsbl:zen.example,bl.example");
    }

    #[test]
    fn thresholds_need_a_listing() {
        let clean = scored(vec![]);
        assert_eq!(clean.reject_reply(0), None);
        assert!(!clean.should_block(-1));
        let allowed = scored(vec![hit("allow.example", -5, &["127.0.0.2"])]);
        assert_eq!(allowed.reject_reply(-10), None);
        assert_eq!(allowed.signatures(), vec![]);
    }

    #[test]
    fn rdns_signatures_only_from_facts() {
        let mut s = scored(vec![hit("zen.example", 1, &["127.0.0.2"])]);
        assert_eq!(s.signatures(), vec![Signature::DnsblListed]);
        s.fcrdns = false;
        assert_eq!(
            s.signatures(),
            vec![Signature::RdnsNoForward, Signature::DnsblListed]
        );
        s.rdns = None;
        assert_eq!(
            s.signatures(),
            vec![Signature::NoRdns, Signature::DnsblListed]
        );
        s.rdns_checked = false;
        assert_eq!(s.signatures(), vec![Signature::DnsblListed]);
    }

    #[test]
    fn helo_is_rdns_ignores_case_and_root_dot() {
        let s = scored(vec![]);
        assert!(s.helo_is_rdns("Mail.Example.NET."));
        assert!(!s.helo_is_rdns("example.net"));
        let check = HeloCheck {
            ip: s.ip,
            helo: "x.example".into(),
            resolves_to_client: Some(false),
        };
        assert!(check.is_mismatch());
        assert!(
            !HeloCheck {
                resolves_to_client: None,
                ..check
            }
            .is_mismatch()
        );
    }

    #[test]
    fn zone_hit_serializes_as_the_session_log_wants() {
        let json =
            serde_json::to_string(&hit("zen.example", 2, &["127.0.0.2", "127.0.0.4"])).unwrap();
        assert_eq!(
            json,
            r#"{"zone":"zen.example","codes":["127.0.0.2","127.0.0.4"]}"#
        );
    }
}
