//! The `sinkhole addresses` report: per trap address (every recipient the log names, and every
//! address with a file), the sessions that named it, the messages it received, its distinct
//! clients, its top signature sets (campaigns), when it was first and last seen, and its state.
//!
//! One pass over the log, bounded: at most [`MAX_ADDRESSES`] addresses, [`MAX_PAIRS`]
//! (address, client) pairs and [`MAX_SETS`] signature sets are told apart; what is left out is
//! counted in [`Totals`], so a report that reached a bound says so.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::campaign::log::{self, LoggedSession, parse_time};
pub use crate::campaign::report::Options;
use crate::policy::book::AddressBook;
use crate::policy::pattern::Mailbox;
use crate::signature::Signature;

/// Addresses told apart; recipients past it are counted in [`Totals::addresses_left_out`].
pub const MAX_ADDRESSES: usize = 100_000;
/// Distinct (address, client) pairs counted, all addresses together.
pub const MAX_PAIRS: usize = 2_000_000;
/// Distinct signature sets told apart, all addresses together.
pub const MAX_SETS: usize = 10_000;

/// One address. Serialized as an element of `addresses --json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AddressReport {
    pub address: String,
    /// Sessions that gave it as a recipient.
    pub sessions: u64,
    /// Its `RCPT TO`s refused.
    pub refused: u64,
    /// Messages it received (answered 250).
    pub messages: u64,
    /// Distinct client addresses that gave it as a recipient.
    pub clients: u64,
    /// Its most frequent signature sets, with their sessions.
    pub campaigns: Vec<SetCount>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// `open` or `closed` when a file speaks for it, else null.
    pub state: Option<&'static str>,
    /// The file that speaks for it, if any.
    pub file: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SetCount {
    pub signatures: Vec<String>,
    pub sessions: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub totals: Totals,
    pub addresses: Vec<AddressReport>,
}

/// What was read, and what the bounds left out.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Sessions read (after `--since`).
    pub sessions: u64,
    /// Recipients of addresses past [`MAX_ADDRESSES`].
    pub addresses_left_out: u64,
    /// Clients not counted for lack of room ([`MAX_PAIRS`]): `clients` is then a lower bound.
    pub clients_left_out: u64,
    /// Sessions whose signature set was not told apart ([`MAX_SETS`]).
    pub sets_left_out: u64,
}

#[derive(Default)]
struct Counts {
    sessions: u64,
    refused: u64,
    messages: u64,
    clients: HashSet<IpAddr>,
    /// Sessions per signature set (an index into the sets).
    sets: HashMap<u32, u64>,
    first: Option<(SystemTime, String)>,
    last: Option<(SystemTime, String)>,
    /// The number of the last session counted, so that each counts once.
    last_session: u64,
}

/// A signature set as a key: the known signatures as bits (report order), and any name this
/// version does not know, sorted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SetKey {
    known: u32,
    unknown: Vec<String>,
}

impl SetKey {
    fn of(names: &[String]) -> SetKey {
        let mut key = SetKey {
            known: 0,
            unknown: Vec::new(),
        };
        for name in names {
            match name.parse::<Signature>() {
                Ok(signature) => key.known |= 1 << signature as u32,
                Err(_) => key.unknown.push(name.clone()),
            }
        }
        key.unknown.sort_unstable();
        key.unknown.dedup();
        key
    }

    /// The names in report order, unknown ones after.
    fn names(&self) -> Vec<String> {
        let known = Signature::ALL
            .iter()
            .filter(|s| self.known & (1 << **s as u32) != 0)
            .map(|s| s.as_str().to_owned());
        known.chain(self.unknown.iter().cloned()).collect()
    }
}

/// The bounded tallies of one report.
struct Tallies {
    counts: HashMap<Mailbox, Counts>,
    sets: HashMap<SetKey, u32>,
    totals: Totals,
    pairs: usize,
}

/// Counts the sessions of `log` per address; `book` gives the states. Skipped lines go to
/// `warn`.
pub fn report<E>(
    log: impl IntoIterator<Item = Result<log::Entry, E>>,
    book: &AddressBook,
    options: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<Report, E> {
    let mut t = Tallies {
        counts: HashMap::new(),
        sets: HashMap::new(),
        totals: Totals::default(),
        pairs: 0,
    };
    for session in log::sessions_since(log, options.since, warn) {
        let (session, started) = session?;
        t.totals.sessions += 1;
        t.add(&session, started);
    }
    // Addresses with a file are reported even when the log does not name them.
    for entry in book.entries() {
        for address in &entry.file.addresses {
            if !t.counts.contains_key(address) && t.counts.len() < MAX_ADDRESSES {
                t.counts.insert(address.clone(), Counts::default());
            }
        }
    }
    let mut names = vec![Vec::new(); t.sets.len()];
    for (set, i) in &t.sets {
        names[*i as usize] = set.names();
    }
    let mut addresses: Vec<AddressReport> = t
        .counts
        .into_iter()
        .map(|(address, c)| {
            let entry = book.lookup(address.as_str());
            let mut campaigns: Vec<SetCount> = c
                .sets
                .iter()
                .map(|(&i, &sessions)| SetCount {
                    signatures: names[i as usize].clone(),
                    sessions,
                })
                .collect();
            campaigns.sort_by(|a, b| {
                b.sessions
                    .cmp(&a.sessions)
                    .then_with(|| a.signatures.cmp(&b.signatures))
            });
            campaigns.truncate(options.top);
            AddressReport {
                address: address.to_string(),
                sessions: c.sessions,
                refused: c.refused,
                messages: c.messages,
                clients: c.clients.len() as u64,
                campaigns,
                first_seen: c.first.map(|(_, text)| text),
                last_seen: c.last.map(|(_, text)| text),
                state: entry.map(|e| match e.file.closure(&address) {
                    Some(_) => "closed",
                    None => "open",
                }),
                file: entry.map(|e| e.name.to_string()),
            }
        })
        .collect();
    addresses.sort_by(|a, b| {
        b.sessions
            .cmp(&a.sessions)
            .then_with(|| a.address.cmp(&b.address))
    });
    Ok(Report {
        totals: t.totals,
        addresses,
    })
}

impl Tallies {
    /// Counts one session for every address it names, in one pass over its recipients.
    fn add(&mut self, session: &LoggedSession, started: Option<SystemTime>) {
        if session.transactions.iter().all(|t| t.rcpts.is_empty()) {
            return;
        }
        let number = self.totals.sessions;
        let set = self.set_index(&session.signatures);
        let client = session
            .client_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical());
        let first = started.zip(session.start.as_ref());
        let last = session
            .end
            .as_deref()
            .and_then(parse_time)
            .zip(session.end.as_ref())
            .or(first);
        for transaction in &session.transactions {
            let delivered = transaction.data_code == Some(250);
            for rcpt in &transaction.rcpts {
                let full = self.counts.len() >= MAX_ADDRESSES;
                let c = match self.counts.entry(Mailbox::key(&rcpt.addr)) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(_) if full => {
                        self.totals.addresses_left_out += 1;
                        continue;
                    }
                    Entry::Vacant(entry) => entry.insert(Counts::default()),
                };
                match rcpt.code {
                    Some(code) if (200..300).contains(&code) => c.messages += u64::from(delivered),
                    Some(_) => c.refused += 1,
                    None => {}
                }
                // The rest once per session.
                if c.last_session == number {
                    continue;
                }
                c.last_session = number;
                c.sessions += 1;
                if let Some(i) = set {
                    *c.sets.entry(i).or_default() += 1;
                }
                match client {
                    Some(ip) if self.pairs < MAX_PAIRS => {
                        self.pairs += usize::from(c.clients.insert(ip));
                    }
                    Some(ip) if !c.clients.contains(&ip) => self.totals.clients_left_out += 1,
                    _ => {}
                }
                if let Some((t, text)) = first
                    && c.first.as_ref().is_none_or(|(at, _)| t < *at)
                {
                    c.first = Some((t, text.clone()));
                }
                if let Some((t, text)) = last
                    && c.last.as_ref().is_none_or(|(at, _)| t > *at)
                {
                    c.last = Some((t, text.clone()));
                }
            }
        }
    }

    /// The index of a session's signature set, unless the sets are full.
    fn set_index(&mut self, signatures: &[String]) -> Option<u32> {
        let key = SetKey::of(signatures);
        if let Some(&i) = self.sets.get(&key) {
            return Some(i);
        }
        if self.sets.len() >= MAX_SETS {
            self.totals.sets_left_out += 1;
            return None;
        }
        let i = self.sets.len() as u32;
        self.sets.insert(key, i);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::log::LogReader;
    use crate::policy::address::AddressFile;
    use crate::policy::book::Entry as BookEntry;
    use std::sync::Arc;

    const LOG: &str = concat!(
        r#"{"id":"a","start":"2026-03-01T10:00:00Z","end":"2026-03-01T10:00:02Z","client_ip":"192.0.2.1","signatures":["no-rdns"],"transactions":[{"rcpts":[{"addr":"Trap@example.org","code":250},{"addr":"x@example.org","code":550}],"data_code":250}]}"#,
        "\n",
        r#"{"id":"b","start":"2026-03-01T11:00:00Z","client_ip":"192.0.2.2","signatures":["pregreet","no-rdns"],"transactions":[{"rcpts":[{"addr":"trap@example.org","code":250}],"data_code":451},{"rcpts":[{"addr":"trap@example.org","code":250}],"data_code":250}]}"#,
        "\n",
        r#"{"id":"c","start":"2026-03-01T12:00:00Z","client_ip":"192.0.2.1","signatures":["no-rdns"],"transactions":[{"mail_from":"a@example.org","mail_code":550,"rcpts":[]}]}"#,
        "\n",
        "not json\n",
    );

    #[test]
    fn per_address_sessions_messages_clients_campaigns_and_state() {
        let file = AddressFile::parse(
            "addresses = [\"trap@example.org\", \"quiet@example.org\"]\nstate = \"closed\"\n",
            "trap.toml",
        )
        .unwrap();
        let book = AddressBook::new(
            vec![Arc::new(BookEntry {
                name: "trap.toml".into(),
                file,
            })],
            &mut |w| panic!("{w}"),
        );
        let mut warnings = Vec::new();
        let report = report(
            LogReader::new(LOG.as_bytes()),
            &book,
            &Options {
                since: None,
                top: 5,
            },
            &mut |w| warnings.push(w.to_owned()),
        )
        .unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(report.totals.sessions, 3);
        let trap = &report.addresses[0];
        assert_eq!(trap.address, "trap@example.org");
        assert_eq!(
            (trap.sessions, trap.messages, trap.refused, trap.clients),
            (2, 2, 0, 2)
        );
        assert_eq!(trap.first_seen.as_deref(), Some("2026-03-01T10:00:00Z"));
        assert_eq!(trap.last_seen.as_deref(), Some("2026-03-01T11:00:00Z"));
        assert_eq!(
            (trap.state, trap.file.as_deref()),
            (Some("closed"), Some("trap.toml"))
        );
        assert_eq!(
            trap.campaigns,
            [
                SetCount {
                    signatures: vec!["no-rdns".into()],
                    sessions: 1
                },
                SetCount {
                    signatures: vec!["no-rdns".into(), "pregreet".into()],
                    sessions: 1
                },
            ]
        );
        let x = report
            .addresses
            .iter()
            .find(|a| a.address == "x@example.org")
            .unwrap();
        assert_eq!(
            (x.sessions, x.refused, x.messages, x.state),
            (1, 1, 0, None)
        );
        // An address with a file and no session is there too.
        let quiet = report
            .addresses
            .iter()
            .find(|a| a.address == "quiet@example.org")
            .unwrap();
        assert_eq!((quiet.sessions, quiet.state), (0, Some("closed")));
        // --since.
        let later = super::report(
            LogReader::new(LOG.as_bytes()),
            &AddressBook::default(),
            &Options {
                since: parse_time("2026-03-01T10:30:00Z"),
                top: 1,
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(later.totals.sessions, 2);
        assert_eq!(later.addresses[0].sessions, 1);
        assert_eq!(later.addresses[0].campaigns.len(), 1);
    }
}
