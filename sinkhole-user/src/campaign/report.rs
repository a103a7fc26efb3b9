//! The campaigns report (`sinkhole campaigns`): the session log grouped by signature set, with
//! who, when, which DNSBLs, which recipients and which advertised hosts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use super::log::{Entry, LogError, LoggedSession, StoredLog, parse_time, sessions_since};
use super::urls::url_hosts;
use crate::signature::Signature;

/// Session ids shown per campaign.
pub const EXAMPLES: usize = 5;
/// Bytes of each captured message searched for URLs.
pub const MAX_MESSAGE_SCAN: u64 = 1 << 20;
/// Distinct recipients (and URL hosts) counted per campaign; later new ones are not counted,
/// so a log of random dictionary addresses cannot grow the report without bound.
pub const MAX_DISTINCT: usize = 100_000;

/// What to report.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only sessions that started at or after this.
    pub since: Option<SystemTime>,
    /// How many of each ranked list to show: recipients and URL hosts per campaign
    /// (`campaigns`), signature sets per address (`addresses`).
    pub top: usize,
}

/// One campaign: every session with the same signature set. Serialized as the documented
/// `campaigns --json` element plus `recipients`, `url_hosts` and `messages`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Campaign {
    pub signatures: Vec<String>,
    pub sessions: u64,
    pub clients: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// Sessions listed, per zone.
    pub dnsbl: BTreeMap<String, u64>,
    pub examples: Vec<String>,
    /// Most-tried recipients, with the number of `RCPT TO`s.
    pub recipients: Vec<Ranked>,
    /// Hosts of URLs in the captured messages, with the number of messages naming them.
    pub url_hosts: Vec<Ranked>,
    /// Captured messages read for URLs.
    pub messages: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ranked {
    pub name: String,
    pub count: u64,
}

/// Reads the session log in `storage`, rotated files included (and the messages in
/// `STORAGE/maildir/new`); each skipped log line is passed to `warn`.
pub fn from_storage(
    storage: &Path,
    options: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<Campaign>, LogError> {
    let log = StoredLog::open(storage, options.since)?;
    let maildir_new = storage.join("maildir").join("new");
    campaigns(log, &maildir_new, options, warn)
}

/// Groups the sessions of `log`, sorted by sessions (most first).
pub fn campaigns<E>(
    log: impl IntoIterator<Item = Result<Entry, E>>,
    maildir_new: &Path,
    options: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<Campaign>, E> {
    let mut groups: HashMap<Vec<String>, Group> = HashMap::new();
    let mut body = Vec::new();
    for session in sessions_since(log, options.since, warn) {
        let (session, started) = session?;
        groups
            .entry(signature_set(&session.signatures))
            .or_default()
            .add(&session, started, maildir_new, &mut body);
    }
    let mut report: Vec<Campaign> = groups
        .into_iter()
        .map(|(signatures, group)| group.into_campaign(signatures, options.top))
        .collect();
    report.sort_by(|a, b| {
        b.sessions
            .cmp(&a.sessions)
            .then_with(|| a.signatures.cmp(&b.signatures))
    });
    Ok(report)
}

/// The group key: each name once, known signatures in report order, unknown ones after.
pub fn signature_set(names: &[String]) -> Vec<String> {
    let rank = |name: &str| name.parse::<Signature>().map_or(usize::MAX, |s| s as usize);
    let mut set = names.to_vec();
    set.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
    set.dedup();
    set
}

#[derive(Default)]
struct Group {
    sessions: u64,
    clients: HashSet<IpAddr>,
    first: Option<(SystemTime, String)>,
    last: Option<(SystemTime, String)>,
    dnsbl: Tally,
    examples: Vec<String>,
    recipients: Tally,
    url_hosts: Tally,
    messages: u64,
}

impl Group {
    fn add(
        &mut self,
        session: &LoggedSession,
        started: Option<SystemTime>,
        maildir_new: &Path,
        body: &mut Vec<u8>,
    ) {
        self.sessions += 1;
        if let Some(ip) = session
            .client_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        {
            self.clients.insert(ip.to_canonical());
        }
        if let (Some(t), Some(text)) = (started, &session.start)
            && self.first.as_ref().is_none_or(|(first, _)| t < *first)
        {
            self.first = Some((t, text.clone()));
        }
        let ended = session
            .end
            .as_deref()
            .and_then(parse_time)
            .map(|t| (t, session.end.as_ref()));
        let ended = ended.or(started.map(|t| (t, session.start.as_ref())));
        if let Some((t, Some(text))) = ended
            && self.last.as_ref().is_none_or(|(last, _)| t > *last)
        {
            self.last = Some((t, text.clone()));
        }
        let mut zones: Vec<&str> = session.dnsbl.iter().map(|d| d.zone.as_str()).collect();
        zones.sort_unstable();
        zones.dedup();
        for zone in zones {
            self.dnsbl.add(zone);
        }
        if self.examples.len() < EXAMPLES && !session.id.is_empty() {
            self.examples.push(session.id.clone());
        }
        for transaction in &session.transactions {
            for rcpt in &transaction.rcpts {
                self.recipients.add(&rcpt.addr);
            }
            let Some(file) = transaction.message.as_deref().filter(|m| is_plain_name(m)) else {
                continue;
            };
            if read_capped(&maildir_new.join(file), body).is_ok() {
                self.messages += 1;
                for host in url_hosts(body) {
                    self.url_hosts.add(&host);
                }
            }
        }
    }

    fn into_campaign(self, signatures: Vec<String>, top: usize) -> Campaign {
        Campaign {
            signatures,
            sessions: self.sessions,
            clients: self.clients.len() as u64,
            first_seen: self.first.map(|(_, text)| text),
            last_seen: self.last.map(|(_, text)| text),
            dnsbl: self.dnsbl.0.into_iter().collect(),
            examples: self.examples,
            recipients: self.recipients.top(top),
            url_hosts: self.url_hosts.top(top),
            messages: self.messages,
        }
    }
}

/// Counts per name, at most [`MAX_DISTINCT`] names.
#[derive(Default)]
struct Tally(HashMap<String, u64>);

impl Tally {
    fn add(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        // Names that differ in case only are spellings of one address, zone or host (see
        // policy::pattern).
        let name = name.to_ascii_lowercase();
        let full = self.0.len() >= MAX_DISTINCT;
        match self.0.get_mut(&name) {
            Some(count) => *count += 1,
            None if !full => {
                self.0.insert(name, 1);
            }
            None => {}
        }
    }

    fn top(self, n: usize) -> Vec<Ranked> {
        let mut all: Vec<Ranked> = self
            .0
            .into_iter()
            .map(|(name, count)| Ranked { name, count })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        all.truncate(n);
        all
    }
}

/// A Maildir file name from the log: one path component, never `..` or hidden.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

/// Reads the first [`MAX_MESSAGE_SCAN`] bytes of `path` into `buf`.
fn read_capped(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::open(path)?.take(MAX_MESSAGE_SCAN).read_to_end(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::log::LogReader;

    #[test]
    fn groups_count_and_sort() {
        let log = concat!(
            r#"{"id":"a1","start":"2026-03-01T10:00:00Z","end":"2026-03-01T10:00:05Z","client_ip":"203.0.113.1","signatures":["no-rdns","mail-from-eq-rcpt-to"],"dnsbl":[{"zone":"z.example","codes":["127.0.0.2"]}],"transactions":[{"rcpts":[{"addr":"T@example.org","code":250},{"addr":"t@example.org","code":250}],"message":"../escape"}]}"#,
            "\n",
            r#"{"id":"a2","start":"2026-03-01T09:00:00Z","client_ip":"203.0.113.1","signatures":["mail-from-eq-rcpt-to","no-rdns","no-rdns"],"dnsbl":[{"zone":"z.example"},{"zone":"z.example"}],"transactions":[{"rcpts":[{"addr":"u@example.org"}],"message":"missing"}]}"#,
            "\n",
            r#"{"id":"b1","start":"2026-03-02T00:00:00+02:00","client_ip":"::ffff:198.51.100.2","signatures":[]}"#,
            "\n",
        );
        let options = Options {
            since: None,
            top: 10,
        };
        let mut warnings = Vec::new();
        let report = campaigns(
            LogReader::new(log.as_bytes()),
            Path::new("/nonexistent"),
            &options,
            &mut |w| warnings.push(w.to_owned()),
        )
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(report.len(), 2);
        let a = &report[0];
        assert_eq!(a.signatures, ["mail-from-eq-rcpt-to", "no-rdns"]);
        assert_eq!((a.sessions, a.clients, a.messages), (2, 1, 0));
        assert_eq!(a.first_seen.as_deref(), Some("2026-03-01T09:00:00Z"));
        assert_eq!(a.last_seen.as_deref(), Some("2026-03-01T10:00:05Z"));
        assert_eq!(a.dnsbl, BTreeMap::from([("z.example".to_owned(), 2)]));
        assert_eq!(a.examples, ["a1", "a2"]);
        assert_eq!(
            a.recipients,
            [
                Ranked {
                    name: "t@example.org".into(),
                    count: 2
                },
                Ranked {
                    name: "u@example.org".into(),
                    count: 1
                }
            ]
        );
        assert_eq!(report[1].signatures, Vec::<String>::new());

        let since = Options {
            since: parse_time("2026-03-01T09:30:00Z"),
            top: 1,
        };
        let report = campaigns(
            LogReader::new(log.as_bytes()),
            Path::new("/nonexistent"),
            &since,
            &mut |_| {},
        )
        .unwrap();
        // Equal sizes sort by signature set: the empty set first.
        assert_eq!(report[0].signatures, Vec::<String>::new());
        assert_eq!(report[0].sessions, 1);
        assert_eq!((report[1].sessions, report[1].recipients.len()), (1, 1));
        assert_eq!(report[1].examples, ["a1"]);
    }
}
