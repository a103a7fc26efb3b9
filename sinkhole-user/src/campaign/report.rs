//! The campaigns report (`sinkhole campaigns`): the session log's sessions grouped into
//! campaigns ([`super::grouping`]), each with its variants (the exact signature sets under it),
//! why its sessions were grouped, its clients, recipients, URL hosts, SYN fingerprints, first
//! and last seen and sessions per hour.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::features::{Key, Shape};
use super::grouping::{Features, Grouping, MIN_SESSIONS};
use super::log::{Entry, LogError, LoggedSession, StoredLog, parse_time};
use super::similarity::body_hash;
use super::urls::url_hosts;
use crate::signature::Signature;

/// Session ids shown per campaign.
pub const EXAMPLES: usize = 5;
/// Bytes of each captured message searched for URLs.
pub const MAX_MESSAGE_SCAN: u64 = 1 << 20;
/// Distinct recipients (and URL hosts, clients, variants, SYN fingerprints) counted per
/// campaign; later new ones are not counted, so a log of random dictionary addresses cannot
/// grow the report without bound.
pub const MAX_DISTINCT: usize = 100_000;
/// Hours with sessions kept per campaign for its timeline (a year); later new hours are not.
pub const MAX_HOURS: usize = 366 * 24;

/// What to report.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only sessions that started at or after this.
    pub since: Option<SystemTime>,
    /// How many of each ranked list to show: recipients and URL hosts per campaign
    /// (`campaigns`), signature sets per address (`addresses`).
    pub top: usize,
}

/// The report: the campaigns, most sessions first, and what fell outside them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub campaigns: Vec<Campaign>,
    /// Sessions read (within `since`), on the second pass.
    pub sessions: u64,
    /// Sessions in no campaign: nothing they showed joined them to another session.
    pub unclustered: u64,
    /// Sessions with a feature the grouping could not file (its table was full).
    pub refused: u64,
}

/// One campaign. Serialized as the documented `campaigns --json` element.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Campaign {
    /// A stable name: the id of the feature that joined most of its sessions.
    pub id: String,
    /// The signatures every one of its sessions showed.
    pub signatures: Vec<String>,
    pub sessions: u64,
    pub clients: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// Sessions listed, per zone.
    pub dnsbl: BTreeMap<String, u64>,
    pub examples: Vec<String>,
    /// Why its sessions are one campaign: the features that joined them, with the sessions
    /// that showed each.
    pub grouped_by: Vec<GroupedBy>,
    /// The exact signature sets of its sessions, with their counts, most first.
    pub variants: Vec<Variant>,
    /// Clients with the most sessions.
    pub top_clients: Vec<Ranked>,
    /// Most-tried recipients, with the number of `RCPT TO`s.
    pub recipients: Vec<Ranked>,
    /// Hosts of URLs in the captured messages, with the number of messages naming them.
    pub url_hosts: Vec<Ranked>,
    /// Captured messages read for URLs.
    pub messages: u64,
    /// SYN fingerprints (`Syn::line`), with their sessions; none without XDP.
    pub syn: Vec<Ranked>,
    /// Sessions per hour (by start, UTC), for every hour that had any.
    pub per_hour: Vec<Hour>,
    /// Sessions over the hours from the first to the last (at least one).
    pub sessions_per_hour: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ranked {
    pub name: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GroupedBy {
    /// `key`, `url-hosts` or `body`.
    pub feature: &'static str,
    pub id: String,
    pub value: String,
    pub sessions: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Variant {
    pub signatures: Vec<String>,
    pub sessions: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Hour {
    /// The hour's start, `2026-03-01T10:00:00Z`.
    pub hour: String,
    pub sessions: u64,
}

/// Reads the session log in `storage`, rotated files included (and the messages in
/// `STORAGE/maildir/new`), twice; each skipped log line is passed to `warn`.
pub fn from_storage(
    storage: &Path,
    options: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<Report, LogError> {
    let maildir_new = storage.join("maildir").join("new");
    campaigns(
        || StoredLog::open(storage, options.since),
        &maildir_new,
        options,
        warn,
    )
}

/// Groups the sessions of the log `open` opens (twice: once to file their features, once to
/// add them up), sorted by sessions (most first).
pub fn campaigns<L, E>(
    open: impl Fn() -> Result<L, E>,
    maildir_new: &Path,
    options: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<Report, E>
where
    L: IntoIterator<Item = Result<Entry, E>>,
{
    let mut grouping = Grouping::default();
    let mut buf = Vec::new();
    let mut report = Report::default();
    for session in sessions(open()?, options, Some(warn)) {
        let session = session?;
        grouping.add(&Content::read(&session, maildir_new, &mut buf).features(&session));
    }
    grouping.finish();
    report.refused = grouping.refused;
    let mut groups: HashMap<u32, Group> = HashMap::new();
    for session in sessions(open()?, options, None) {
        let session = session?;
        report.sessions += 1;
        let content = Content::read(&session, maildir_new, &mut buf);
        if let Some(root) = grouping.campaign_of(&content.features(&session)) {
            groups.entry(root).or_default().add(&session, &content);
        }
    }
    let members = grouping.members();
    report.campaigns = groups
        .into_iter()
        .filter(|(_, group)| group.sessions >= MIN_SESSIONS)
        .map(|(root, group)| {
            let mut grouped_by: Vec<GroupedBy> = members
                .get(&root)
                .into_iter()
                .flatten()
                .map(|node| GroupedBy {
                    feature: node.feature.kind(),
                    id: node.feature.id(),
                    value: node.feature.value(),
                    sessions: node.sessions,
                })
                .collect();
            grouped_by.sort_by(|a, b| b.sessions.cmp(&a.sessions).then_with(|| a.id.cmp(&b.id)));
            group.into_campaign(grouped_by, options.top)
        })
        .collect();
    report
        .campaigns
        .sort_by(|a, b| b.sessions.cmp(&a.sessions).then_with(|| a.id.cmp(&b.id)));
    // Sessions in no campaign, and those of sets that had fewer than MIN_SESSIONS on the second
    // pass (lines the log gained or lost between the passes).
    let grouped: u64 = report.campaigns.iter().map(|c| c.sessions).sum();
    report.unclustered = report.sessions - grouped;
    Ok(report)
}

/// The sessions of `log` within `options.since`; skipped lines go to `warn`, when given.
fn sessions<'w, L, E>(
    log: L,
    options: &Options,
    mut warn: Option<&'w mut dyn FnMut(&str)>,
) -> impl Iterator<Item = Result<Box<LoggedSession>, E>> + 'w
where
    L: IntoIterator<Item = Result<Entry, E>>,
    L::IntoIter: 'w,
{
    let since = options.since;
    log.into_iter().filter_map(move |entry| match entry {
        Err(e) => Some(Err(e)),
        Ok(Entry::Skipped(why)) => {
            if let Some(warn) = warn.as_mut() {
                warn(&why);
            }
            None
        }
        Ok(Entry::Session(session)) => {
            let started = session.start.as_deref().and_then(parse_time);
            let early = since.is_some_and(|since| started.is_none_or(|t| t < since));
            (!early).then_some(Ok(session))
        }
    })
}

/// What a session's captured messages hold.
struct Content {
    /// The distinct URL hosts of its messages, in order of appearance.
    hosts: Vec<String>,
    /// The simhash of the first body with enough words.
    body: Option<u64>,
    /// Messages read.
    messages: u64,
}

impl Content {
    fn read(session: &LoggedSession, maildir_new: &Path, buf: &mut Vec<u8>) -> Content {
        let mut content = Content {
            hosts: Vec::new(),
            body: None,
            messages: 0,
        };
        for transaction in &session.transactions {
            let Some(file) = transaction.message.as_deref().filter(|m| is_plain_name(m)) else {
                continue;
            };
            if read_capped(&maildir_new.join(file), buf).is_err() {
                continue;
            }
            content.messages += 1;
            for host in url_hosts(buf) {
                if !content.hosts.contains(&host) {
                    content.hosts.push(host);
                }
            }
            if content.body.is_none() {
                content.body = body_hash(buf);
            }
        }
        content
    }

    fn features(&self, session: &LoggedSession) -> Features {
        let signatures = session
            .signatures
            .iter()
            .filter_map(|name| name.parse::<Signature>().ok());
        let transaction = session.transactions.first().map(|t| {
            (
                t.mail_from.as_str(),
                t.rcpts.iter().map(|r| r.addr.as_str()),
            )
        });
        let mut hosts = self.hosts.clone();
        hosts.sort_unstable();
        Features {
            key: Key::of(Shape {
                signatures,
                pipelined: session.pipelined,
                transaction,
                syn: session.syn.as_ref(),
            }),
            url_hosts: (!hosts.is_empty()).then(|| hosts.join(" ")),
            body: self.body,
        }
    }
}

/// The signature set of a session: each name once, known signatures in report order, unknown
/// ones after.
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
    clients: Tally<IpAddr>,
    first: Option<(SystemTime, String)>,
    last: Option<(SystemTime, String)>,
    dnsbl: Tally<String>,
    examples: Vec<String>,
    /// The signatures every session so far showed.
    common: Option<Vec<String>>,
    variants: Tally<Vec<String>>,
    recipients: Tally<String>,
    url_hosts: Tally<String>,
    messages: u64,
    syn: Tally<String>,
    /// Sessions by hour (seconds since 1970 / 3600).
    hours: BTreeMap<u64, u64>,
}

impl Group {
    fn add(&mut self, session: &LoggedSession, content: &Content) {
        self.sessions += 1;
        if let Some(ip) = session
            .client_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        {
            self.clients.add(ip.to_canonical());
        }
        let started = session.start.as_deref().and_then(parse_time);
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
        if let Some(hour) = started.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            let hour = hour.as_secs() / 3600;
            if self.hours.len() < MAX_HOURS || self.hours.contains_key(&hour) {
                *self.hours.entry(hour).or_default() += 1;
            }
        }
        let zones: HashSet<String> = session
            .dnsbl
            .iter()
            .map(|d| d.zone.to_ascii_lowercase())
            .collect();
        for zone in zones {
            self.dnsbl.add(zone);
        }
        if self.examples.len() < EXAMPLES && !session.id.is_empty() {
            self.examples.push(session.id.clone());
        }
        let set = signature_set(&session.signatures);
        match &mut self.common {
            Some(common) => common.retain(|s| set.contains(s)),
            None => self.common = Some(set.clone()),
        }
        self.variants.add(set);
        for transaction in &session.transactions {
            for rcpt in &transaction.rcpts {
                self.recipients.add_name(&rcpt.addr);
            }
        }
        self.messages += content.messages;
        for host in &content.hosts {
            self.url_hosts.add_name(host);
        }
        if let Some(syn) = &session.syn {
            self.syn.add(syn.line());
        }
    }

    fn into_campaign(self, grouped_by: Vec<GroupedBy>, top: usize) -> Campaign {
        let first = self.first.as_ref().map(|(t, _)| *t);
        let last = self.last.as_ref().map(|(t, _)| *t);
        let hours = match (first, last) {
            (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default().as_secs_f64() / 3600.0,
            _ => 0.0,
        };
        let rate = self.sessions as f64 / hours.max(1.0);
        Campaign {
            id: grouped_by.first().map(|g| g.id.clone()).unwrap_or_default(),
            signatures: self.common.unwrap_or_default(),
            sessions: self.sessions,
            clients: self.clients.0.len() as u64,
            first_seen: self.first.map(|(_, text)| text),
            last_seen: self.last.map(|(_, text)| text),
            dnsbl: self.dnsbl.0.into_iter().collect(),
            examples: self.examples,
            grouped_by,
            variants: self
                .variants
                .top(usize::MAX)
                .into_iter()
                .map(|(signatures, sessions)| Variant {
                    signatures,
                    sessions,
                })
                .collect(),
            top_clients: ranked(self.clients.top(top)),
            recipients: ranked(self.recipients.top(top)),
            url_hosts: ranked(self.url_hosts.top(top)),
            messages: self.messages,
            syn: ranked(self.syn.top(top)),
            per_hour: self
                .hours
                .into_iter()
                .map(|(hour, sessions)| Hour {
                    hour: humantime::format_rfc3339_seconds(
                        UNIX_EPOCH + std::time::Duration::from_secs(hour * 3600),
                    )
                    .to_string(),
                    sessions,
                })
                .collect(),
            sessions_per_hour: (rate * 10.0).round() / 10.0,
        }
    }
}

fn ranked<T: ToString>(list: Vec<(T, u64)>) -> Vec<Ranked> {
    list.into_iter()
        .map(|(name, count)| Ranked {
            name: name.to_string(),
            count,
        })
        .collect()
}

/// Counts per value, at most [`MAX_DISTINCT`] values.
struct Tally<T>(HashMap<T, u64>);

impl<T> Default for Tally<T> {
    fn default() -> Self {
        Tally(HashMap::new())
    }
}

impl<T: std::hash::Hash + Eq + Ord + Clone> Tally<T> {
    fn add(&mut self, value: T) {
        let full = self.0.len() >= MAX_DISTINCT;
        match self.0.get_mut(&value) {
            Some(count) => *count += 1,
            None if !full => {
                self.0.insert(value, 1);
            }
            None => {}
        }
    }

    /// The `n` values counted most, ties in value order.
    fn top(self, n: usize) -> Vec<(T, u64)> {
        let mut all: Vec<(T, u64)> = self.0.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

impl Tally<String> {
    /// Counts a name; names that differ in case only are spellings of one address, zone or
    /// host (see policy::pattern).
    fn add_name(&mut self, name: &str) {
        if !name.is_empty() {
            self.add(name.to_ascii_lowercase());
        }
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

    fn line(id: &str, start: &str, client: &str, signatures: &[&str], from: &str) -> String {
        serde_json::json!({
            "id": id, "start": start, "client_ip": client, "pipelined": true,
            "signatures": signatures,
            "transactions": [{"mail_from": from, "rcpts": [{"addr": "t@example.org", "code": 550}]}],
        })
        .to_string()
    }

    fn report(log: &str, since: Option<&str>) -> Report {
        let options = Options {
            since: since.and_then(parse_time),
            top: 10,
        };
        campaigns(
            || Ok::<_, io::Error>(LogReader::new(log.as_bytes())),
            Path::new("/nonexistent"),
            &options,
            &mut |w| panic!("{w}"),
        )
        .unwrap()
    }

    #[test]
    fn variants_under_one_campaign_and_the_rest_in_none() {
        let log = [
            line(
                "a1",
                "2026-03-01T10:00:00Z",
                "192.0.2.1",
                &["mail-from-eq-rcpt-to", "no-rdns", "dnsbl-listed"],
                "t@example.org",
            ),
            line(
                "a2",
                "2026-03-01T10:30:00Z",
                "192.0.2.2",
                &["mail-from-eq-rcpt-to", "helo-ip-literal"],
                "T@example.org",
            ),
            line(
                "a3",
                "2026-03-01T12:10:00Z",
                "192.0.2.2",
                &["dnsbl-listed", "mail-from-eq-rcpt-to", "no-rdns"],
                "t@example.org",
            ),
            line(
                "x1",
                "2026-03-01T11:00:00Z",
                "198.51.100.1",
                &["no-rdns"],
                "news@list.example",
            ),
        ]
        .join("\n");
        let r = report(&log, None);
        assert_eq!((r.sessions, r.unclustered, r.refused), (4, 1, 0));
        assert_eq!(r.campaigns.len(), 1);
        let c = &r.campaigns[0];
        assert_eq!((c.sessions, c.clients), (3, 2));
        assert_eq!(c.signatures, ["mail-from-eq-rcpt-to"]);
        assert_eq!(
            c.variants,
            [
                Variant {
                    signatures: vec![
                        "mail-from-eq-rcpt-to".into(),
                        "no-rdns".into(),
                        "dnsbl-listed".into()
                    ],
                    sessions: 2
                },
                Variant {
                    signatures: vec!["mail-from-eq-rcpt-to".into(), "helo-ip-literal".into()],
                    sessions: 1
                },
            ]
        );
        assert_eq!(c.grouped_by.len(), 1);
        assert_eq!(c.id, c.grouped_by[0].id);
        assert_eq!(
            c.top_clients[0],
            Ranked {
                name: "192.0.2.2".into(),
                count: 2
            }
        );
        let hours: Vec<(&str, u64)> = c
            .per_hour
            .iter()
            .map(|h| (h.hour.as_str(), h.sessions))
            .collect();
        assert_eq!(
            hours,
            [("2026-03-01T10:00:00Z", 2), ("2026-03-01T12:00:00Z", 1)]
        );
        // Three sessions over 2h10m.
        assert_eq!(c.sessions_per_hour, 1.4);
        // Since 10:15, the campaign keeps two sessions.
        let later = report(&log, Some("2026-03-01T10:15:00Z"));
        assert_eq!((later.sessions, later.campaigns[0].sessions), (3, 2));
    }
}
