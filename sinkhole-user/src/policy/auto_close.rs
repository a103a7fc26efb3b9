//! `auto_close`: when an address closes itself. A rule (in an address's file, or the default in
//! the policy file) and what an address has seen; pure, so the daemon and `policy replay` count
//! the same way.
//!
//! ```toml
//! [auto_close]
//! messages = 10                       # after this many messages
//! dnsbl = true                        # on the first message from a DNSBL-listed client
//! signatures = [["mail-from-eq-rcpt-to", "no-rdns"]]   # on the first session showing a set
//! clients = 5                         # after this many distinct clients ...
//! window = "1h"                       # ... within this long
//! ```

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::{count, duration};
use crate::signature::Signature;

/// An `[auto_close]` table. Every trigger is optional; none: the address never closes itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AutoClose {
    /// After this many messages (1..=1000000).
    #[serde(default, deserialize_with = "messages")]
    pub messages: Option<u32>,
    /// On the first message from a client some DNSBL zone listed.
    #[serde(default)]
    pub dnsbl: bool,
    /// On the first session (that gave the address as a recipient) showing every signature of
    /// one set.
    #[serde(default)]
    pub signatures: Vec<Vec<Signature>>,
    /// After this many distinct clients (2..=10000) sent it messages within `window`.
    #[serde(default, deserialize_with = "clients")]
    pub clients: Option<u32>,
    /// 1m..=30d; 1h when not given.
    #[serde(
        default = "one_hour",
        deserialize_with = "duration::<_, 60_000, 2_592_000_000>"
    )]
    pub window: Duration,
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
}

fn messages<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count::<D, 1, 1_000_000>(d).map(|n| Some(n.get() as u32))
}

fn clients<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count::<D, 2, 10_000>(d).map(|n| Some(n.get() as u32))
}

/// A message one address received.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub client: IpAddr,
    /// Some DNSBL zone (of positive weight) listed the client.
    pub listed: bool,
    pub at: SystemTime,
}

/// What one address has seen, as far as its rule counts: messages, and the distinct clients of
/// the window (at most `clients` of them).
#[derive(Clone, Debug, Default)]
pub struct Seen {
    messages: u32,
    /// Each client's latest message within the window.
    clients: Vec<(IpAddr, SystemTime)>,
}

impl AutoClose {
    /// Whether the rule closes anything at all.
    pub fn is_empty(&self) -> bool {
        self.messages.is_none()
            && !self.dnsbl
            && self.signatures.is_empty()
            && self.clients.is_none()
    }

    /// Counts a message; why the address closes with it, if it does
    /// (`auto_close: 10 messages`).
    pub fn on_message(&self, seen: &mut Seen, delivery: Delivery) -> Option<String> {
        seen.messages = seen.messages.saturating_add(1);
        if let Some(limit) = self.clients {
            let since = delivery.at.checked_sub(self.window);
            seen.clients
                .retain(|&(_, at)| since.is_none_or(|since| at >= since));
            match seen
                .clients
                .iter_mut()
                .find(|(ip, _)| *ip == delivery.client)
            {
                Some((_, at)) => *at = delivery.at,
                None => seen.clients.push((delivery.client, delivery.at)),
            }
            if seen.clients.len() >= limit as usize {
                return Some(format!(
                    "auto_close: {limit} clients within {}",
                    humantime::format_duration(self.window)
                ));
            }
        }
        if self.messages.is_some_and(|limit| seen.messages >= limit) {
            return Some(format!("auto_close: {} messages", seen.messages));
        }
        if self.dnsbl && delivery.listed {
            return Some(format!(
                "auto_close: a message from {}, DNSBL-listed",
                delivery.client
            ));
        }
        None
    }

    /// A session that gave the address as a recipient ended with `signatures`; why the address
    /// closes, if it does.
    pub fn on_session(&self, signatures: &[Signature]) -> Option<String> {
        self.signatures
            .iter()
            .filter(|set| !set.is_empty())
            .find(|set| set.iter().all(|s| signatures.contains(s)))
            .map(|set| {
                let names: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
                format!("auto_close: a session showing {}", names.join("+"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> AutoClose {
        crate::config::parse_toml(text, "a.toml").unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn delivery(last: u8, secs: u64, listed: bool) -> Delivery {
        Delivery {
            client: IpAddr::from([192, 0, 2, last]),
            listed,
            at: at(secs),
        }
    }

    #[test]
    fn after_n_messages() {
        let rule = rule("messages = 3");
        let mut seen = Seen::default();
        assert_eq!(rule.on_message(&mut seen, delivery(1, 0, true)), None);
        assert_eq!(rule.on_message(&mut seen, delivery(1, 1, false)), None);
        assert_eq!(
            rule.on_message(&mut seen, delivery(2, 2, false)).as_deref(),
            Some("auto_close: 3 messages")
        );
    }

    #[test]
    fn on_a_listed_client() {
        let rule = rule("dnsbl = true");
        let mut seen = Seen::default();
        assert_eq!(rule.on_message(&mut seen, delivery(1, 0, false)), None);
        assert_eq!(
            rule.on_message(&mut seen, delivery(7, 1, true)).as_deref(),
            Some("auto_close: a message from 192.0.2.7, DNSBL-listed")
        );
    }

    #[test]
    fn distinct_clients_within_the_window() {
        let rule = rule("clients = 3\nwindow = \"10m\"");
        let mut seen = Seen::default();
        assert_eq!(rule.on_message(&mut seen, delivery(1, 0, false)), None);
        assert_eq!(rule.on_message(&mut seen, delivery(1, 60, false)), None);
        assert_eq!(rule.on_message(&mut seen, delivery(2, 120, false)), None);
        // Client 1's latest was at 60: out of the window at 700, so only 2 and 3 count.
        assert_eq!(rule.on_message(&mut seen, delivery(3, 700, false)), None);
        assert_eq!(
            rule.on_message(&mut seen, delivery(4, 710, false))
                .as_deref(),
            Some("auto_close: 3 clients within 10m")
        );
    }

    #[test]
    fn on_a_signature_set() {
        let rule = rule("signatures = [[\"no-rdns\", \"pregreet\"], []]");
        assert_eq!(rule.on_session(&[Signature::NoRdns]), None);
        assert_eq!(
            rule.on_session(&[Signature::NoRdns, Signature::Pregreet])
                .as_deref(),
            Some("auto_close: a session showing no-rdns+pregreet")
        );
        assert!(
            AutoClose {
                signatures: vec![],
                ..rule
            }
            .on_session(&[])
            .is_none()
        );
    }

    #[test]
    fn ranges_and_names_are_checked() {
        let err = |text: &str| {
            crate::config::parse_toml::<AutoClose>(text, "a.toml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("messages = 0"),
            "a.toml:1: messages: 0 is outside 1..=1000000"
        );
        assert_eq!(
            err("clients = 1"),
            "a.toml:1: clients: 1 is outside 2..=10000"
        );
        assert_eq!(
            err("clients = 2\nwindow = \"1s\""),
            "a.toml:2: window: 1s is outside 1m..=30d"
        );
        assert!(err("signatures = [[\"bogus\"]]").starts_with("a.toml:1: signatures[0][0]: "));
        assert!(err("after = 3").contains("unknown field `after`"));
        assert!(rule("").is_empty());
    }
}
