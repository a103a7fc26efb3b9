//! `sinkhole policy replay`: the logged sessions run through a changed policy (its rule file,
//! its per-address files, `dnsbl.reject_threshold`, `auto_close`), counting the decisions whose
//! outcome would change, by the rule that would make the new one, with example sessions.
//!
//! Each session is walked as the daemon would have: the connection, the HELO, each MAIL, each
//! recipient, each message's end of data. A decision is compared with the reply logged for it
//! (`connect_code`, `helo_code`, `mail_code`, each recipient's code, `data_code`; a log written
//! before a field existed counts as accepted there) by its kind: accept (2xx), tempfail (4xx),
//! reject (5xx), disconnect (421). Where the new policy refuses, what the client did after it
//! in that session is not replayed (it would have met 503 or a closed connection). What the
//! protocol or the disk decided (too many recipients, a message over the size limit, a
//! storage error) is not a policy decision and is not compared.
//!
//! Facts are those the log keeps: the client, its reverse name and whether it was
//! forward-confirmed, the HELO, the DNSBL zones and score, and the session's signatures, all of
//! them at every phase (the daemon knew some only later). Sessions closed at accept (blocked,
//! over a connection limit) are not replayed.
//!
//! `auto_close` is played out in log order from the first session replayed: a close the files
//! say `auto_close` made is undone first and made again when the new counts reach it; a close
//! made by hand holds from its `closed_at` (from the start without one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::campaign::log::{Entry, LoggedSession, parse_time, sessions_since};
use crate::policy::auto_close::{Delivery, Seen};
use crate::policy::book::{AddressBook, PastClose};
use crate::policy::pattern::Mailbox;
use crate::policy::{Facts, Phase, Policy, To, Verdict};
use crate::signature::Signature;

/// Sessions named per change.
pub const EXAMPLES: usize = 5;

/// The policy to replay.
#[derive(Debug)]
pub struct Setup {
    /// The rule file, with `policy.local_domains_phase`.
    pub policy: Policy,
    /// The per-address files (an empty book without any).
    pub book: AddressBook,
    /// `dnsbl.reject_threshold`.
    pub reject_threshold: i32,
}

/// A decision's outcome, by its reply's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Accept,
    Tempfail,
    Reject,
    Disconnect,
}

impl Kind {
    pub fn of(code: u16) -> Kind {
        match code {
            421 => Kind::Disconnect,
            200..=399 => Kind::Accept,
            400..=499 => Kind::Tempfail,
            _ => Kind::Reject,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Accept => "accept",
            Kind::Tempfail => "tempfail",
            Kind::Reject => "reject",
            Kind::Disconnect => "disconnect",
        }
    }
}

/// Decisions that would change the same way, by the same rule.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    pub phase: &'static str,
    /// What would decide now: `rule[3]`, `local_domains`, `score`,
    /// `address:chris.toml:closed`, `default` (no rule: accepted).
    pub rule: String,
    pub from: Kind,
    pub to: Kind,
    pub decisions: u64,
    pub sessions: u64,
    pub examples: Vec<String>,
}

/// An address the replay closed by `auto_close`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AutoClosed {
    pub address: String,
    pub at: String,
    pub reason: String,
}

/// The whole report.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Sessions replayed.
    pub sessions: u64,
    /// Of those, sessions with at least one changed decision.
    pub sessions_changed: u64,
    /// Sessions closed at accept, not replayed.
    pub not_replayed: u64,
    /// Decisions compared.
    pub decisions: u64,
    pub decisions_changed: u64,
    /// Most decisions first.
    pub changes: Vec<Change>,
    pub auto_closed: Vec<AutoClosed>,
}

/// What to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only sessions that started at or after this.
    pub since: Option<SystemTime>,
}

/// What the new policy would answer.
enum Outcome {
    Verdict(Verdict),
    /// Refused by the score at `dnsbl.reject_threshold`.
    Score(i32),
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Outcome {
        Outcome::Verdict(verdict)
    }
}

impl Outcome {
    fn code(&self) -> u16 {
        match self {
            Outcome::Verdict(verdict) => verdict.reply.code,
            Outcome::Score(_) => 550,
        }
    }

    /// What decides it, as the report names it.
    fn rule(&self) -> String {
        match self {
            Outcome::Verdict(verdict) => verdict.source.name(),
            Outcome::Score(threshold) => format!("score (dnsbl.reject_threshold {threshold})"),
        }
    }
}

/// One change's tally while replaying.
struct Tally {
    decisions: u64,
    sessions: u64,
    /// The last session counted (its number), so each counts once.
    last: u64,
    examples: Vec<String>,
}

/// The replay in progress.
struct Replay<'a> {
    setup: &'a Setup,
    book: AddressBook,
    /// Closes made by hand with a time, latest first (popped as sessions pass them).
    scheduled: Vec<(SystemTime, Mailbox, String)>,
    seen: HashMap<Mailbox, Seen>,
    tallies: HashMap<(Phase, String, Kind, Kind), Tally>,
    report: Report,
    /// The number of the session being replayed, and whether it changed.
    session: u64,
    changed: bool,
}

/// Replays the sessions of `log` through `setup`; skipped log lines go to `warn`.
pub fn replay<E>(
    log: impl IntoIterator<Item = Result<Entry, E>>,
    setup: &Setup,
    options: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<Report, E> {
    let (mut book, closes) = setup.book.reopened();
    let mut scheduled = Vec::new();
    for PastClose {
        address,
        at,
        reason,
    } in closes
    {
        let reason = reason.unwrap_or_default();
        if reason.starts_with("auto_close") {
            continue;
        }
        match at {
            Some(at) => scheduled.push((at, address, reason)),
            None => book = book.with_closed(address.as_str(), SystemTime::UNIX_EPOCH, &reason),
        }
    }
    scheduled.sort_by_key(|(at, _, _)| std::cmp::Reverse(*at));
    let mut replay = Replay {
        setup,
        book,
        scheduled,
        seen: HashMap::new(),
        tallies: HashMap::new(),
        report: Report::default(),
        session: 0,
        changed: false,
    };
    for session in sessions_since(log, options.since, warn) {
        let (session, started) = session?;
        if matches!(session.verdict.as_deref(), Some("blocked" | "refused")) {
            replay.report.not_replayed += 1;
            continue;
        }
        replay.session(&session, started.unwrap_or(SystemTime::UNIX_EPOCH));
    }
    Ok(replay.finish())
}

impl Replay<'_> {
    fn session(&mut self, session: &LoggedSession, started: SystemTime) {
        while self
            .scheduled
            .last()
            .is_some_and(|(at, _, _)| *at <= started)
        {
            if let Some((at, address, reason)) = self.scheduled.pop() {
                self.book = self.book.with_closed(address.as_str(), at, &reason);
            }
        }
        self.session += 1;
        self.changed = false;
        self.report.sessions += 1;
        let ended = session
            .end
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(started);
        let client: IpAddr = session
            .client_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let zones: Vec<String> = session.dnsbl.iter().map(|d| d.zone.clone()).collect();
        let signatures: Vec<Signature> = session
            .signatures
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        let base = Facts {
            client_ip: client,
            rdns: session.rdns.as_deref(),
            fcrdns: session.fcrdns.unwrap_or(false),
            helo: session.helo.as_deref(),
            mail_from: None,
            to: To::None,
            dnsbl_zones: &zones,
            score: session.score,
            signatures: &signatures,
        };
        let policy = &self.setup.policy;
        let id = &session.id;
        let connect = policy.decide(Phase::Connect, &base);
        if !self.compare(
            Phase::Connect,
            session.connect_code.unwrap_or(220),
            &connect.into(),
            id,
        ) {
            return self.end();
        }
        if session.helo.is_some() {
            let helo = policy.decide(Phase::Helo, &base);
            if !self.compare(
                Phase::Helo,
                session.helo_code.unwrap_or(250),
                &helo.into(),
                id,
            ) {
                return self.end();
            }
        }
        let listed = session.score.is_some_and(|s| s > 0) && !zones.is_empty();
        let mut accepted_in_session: Vec<String> = Vec::new();
        for t in &session.transactions {
            let facts = Facts {
                mail_from: Some(&t.mail_from),
                ..base
            };
            let mail = policy.decide(Phase::Mail, &facts);
            let old_mail = t.mail_code.unwrap_or(250);
            if !self.compare(Phase::Mail, old_mail, &mail.into(), id) || old_mail >= 400 {
                continue;
            }
            let mut accepted: Vec<String> = Vec::new();
            for rcpt in &t.rcpts {
                // Past `smtp.max_recipients`: the protocol's limit, not the policy's.
                if rcpt.code == Some(452) {
                    continue;
                }
                let facts = Facts {
                    to: To::One(&rcpt.addr),
                    ..facts
                };
                let outcome = self.recipient(&facts);
                if self.compare(Phase::Rcpt, rcpt.code.unwrap_or(250), &outcome, id) {
                    accepted.push(rcpt.addr.clone());
                }
            }
            // The size limit and the disk decide 552 and 451/452: no policy decision.
            let Some(old_data) = t.data_code.filter(|c| !matches!(c, 451 | 452 | 552)) else {
                continue;
            };
            if accepted.is_empty() {
                continue;
            }
            let facts = Facts {
                to: To::All(&accepted),
                ..facts
            };
            let data = policy.decide(Phase::Data, &facts);
            if self.compare(Phase::Data, old_data, &data.into(), id) {
                let delivery = Delivery {
                    client,
                    listed,
                    at: ended,
                };
                for rcpt in &accepted {
                    self.delivered(rcpt, delivery);
                }
                accepted_in_session.extend(accepted);
            }
        }
        for rcpt in &accepted_in_session {
            self.session_ended(rcpt, &signatures, ended);
        }
        self.end();
    }

    /// A recipient's outcome: the score's refusal (`dnsbl.reject_threshold`), else the rules'
    /// and the address files' verdict.
    fn recipient(&self, facts: &Facts) -> Outcome {
        let threshold = self.setup.reject_threshold;
        if facts.score.is_some_and(|s| s >= threshold) && !facts.dnsbl_zones.is_empty() {
            return Outcome::Score(threshold);
        }
        self.setup.policy.decide_recipient(&self.book, facts).into()
    }

    /// Compares a logged reply with the new outcome; whether the new one accepts (so the
    /// session goes on past it).
    fn compare(&mut self, phase: Phase, old: u16, new: &Outcome, id: &str) -> bool {
        self.report.decisions += 1;
        let (from, to) = (Kind::of(old), Kind::of(new.code()));
        if from != to {
            let rule = new.rule();
            self.report.decisions_changed += 1;
            self.changed = true;
            let tally = self
                .tallies
                .entry((phase, rule, from, to))
                .or_insert(Tally {
                    decisions: 0,
                    sessions: 0,
                    last: 0,
                    examples: Vec::new(),
                });
            tally.decisions += 1;
            if tally.last != self.session {
                tally.last = self.session;
                tally.sessions += 1;
                if tally.examples.len() < EXAMPLES && !id.is_empty() {
                    tally.examples.push(id.to_owned());
                }
            }
        }
        to == Kind::Accept
    }

    /// A message the new policy delivers to `rcpt`: `auto_close` counts it.
    fn delivered(&mut self, rcpt: &str, delivery: Delivery) {
        let Some((key, _, rule)) = self.setup.policy.auto_close_for(&self.book, rcpt) else {
            return;
        };
        let rule = rule.clone();
        let seen = self.seen.entry(key.clone()).or_default();
        if let Some(reason) = rule.on_message(seen, delivery) {
            self.close(key, delivery.at, reason);
        }
    }

    fn session_ended(&mut self, rcpt: &str, signatures: &[Signature], at: SystemTime) {
        let closes = self
            .setup
            .policy
            .auto_close_for(&self.book, rcpt)
            .and_then(|(key, _, rule)| Some((key, rule.on_session(signatures)?)));
        if let Some((key, reason)) = closes {
            self.close(key, at, reason);
        }
    }

    fn close(&mut self, address: Mailbox, at: SystemTime, reason: String) {
        self.book = self.book.with_closed(address.as_str(), at, &reason);
        self.seen.remove(&address);
        self.report.auto_closed.push(AutoClosed {
            address: address.to_string(),
            at: humantime::format_rfc3339_seconds(at).to_string(),
            reason,
        });
    }

    fn end(&mut self) {
        if self.changed {
            self.report.sessions_changed += 1;
        }
    }

    fn finish(mut self) -> Report {
        let mut changes: Vec<Change> = self
            .tallies
            .into_iter()
            .map(|((phase, rule, from, to), t)| Change {
                phase: phase.name(),
                rule,
                from,
                to,
                decisions: t.decisions,
                sessions: t.sessions,
                examples: t.examples,
            })
            .collect();
        changes.sort_by(|a, b| {
            b.decisions
                .cmp(&a.decisions)
                .then_with(|| a.phase.cmp(b.phase))
                .then_with(|| a.rule.cmp(&b.rule))
        });
        self.report.changes = changes;
        self.report
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::campaign::log::LogReader;
    use crate::policy::address::AddressFile;
    use crate::policy::book::Entry as BookEntry;

    /// The seed session as the old daemon logged it (local_domains at RCPT): MAIL 250, RCPT
    /// 550; a clean session with a message; a bot from a listed client.
    const LOG: &str = concat!(
        r#"{"id":"seed","start":"2026-03-01T10:00:00Z","client_ip":"192.0.2.1","helo":"host11.190-230-18.telecom.net.ar","signatures":["mail-from-eq-rcpt-to","mail-from-local-domain"],"transactions":[{"mail_from":"trap@example.org","rcpts":[{"addr":"trap@example.org","code":550}]}]}"#,
        "\n",
        r#"{"id":"m1","start":"2026-03-01T11:00:00Z","client_ip":"198.51.100.2","helo":"mx.ok.example","signatures":[],"transactions":[{"mail_from":"a@ok.example","mail_code":250,"rcpts":[{"addr":"shop@example.org","code":250}],"data_code":250}]}"#,
        "\n",
        r#"{"id":"m2","start":"2026-03-01T12:00:00Z","client_ip":"198.51.100.3","helo":"mx.ok.example","signatures":[],"transactions":[{"mail_from":"b@ok.example","mail_code":250,"rcpts":[{"addr":"shop@example.org","code":250}],"data_code":250}]}"#,
        "\n",
        r#"{"id":"blocked","start":"2026-03-01T12:30:00Z","client_ip":"203.0.113.9","verdict":"blocked","transactions":[]}"#,
        "\n",
    );

    fn setup(policy: &str, files: &[(&str, &str)]) -> Setup {
        let entries = files
            .iter()
            .map(|(name, text)| {
                Arc::new(BookEntry {
                    name: Arc::from(*name),
                    file: AddressFile::parse(text, name).unwrap(),
                })
            })
            .collect();
        Setup {
            policy: Policy::parse(policy, "new.toml").unwrap(),
            book: AddressBook::new(entries, &mut |w| panic!("{w}")),
            reject_threshold: 3,
        }
    }

    fn run(setup: &Setup) -> Report {
        replay(
            LogReader::new(LOG.as_bytes()),
            setup,
            &Options { since: None },
            &mut |w| panic!("{w}"),
        )
        .unwrap()
    }

    #[test]
    fn the_same_policy_changes_nothing() {
        let report = run(&setup("", &[]));
        // The seed RCPT was refused by the old local_domains at RCPT: with no rule it is
        // accepted now, which is a change; everything else is the same.
        assert_eq!((report.sessions, report.not_replayed), (3, 1));
        // seed: connect, HELO, MAIL, RCPT; m1 and m2 a message each (and its end of data).
        assert_eq!(report.decisions, 4 + 5 + 5);
        assert_eq!(report.decisions_changed, 1);
        assert_eq!(report.changes[0].rule, "default");
    }

    #[test]
    fn local_domains_at_mail_refuse_the_seed_session_at_mail() {
        let report = run(&setup("local_domains = [\"example.org\"]\n", &[]));
        assert_eq!(
            report.changes,
            [Change {
                phase: "mail",
                rule: "local_domains".into(),
                from: Kind::Accept,
                to: Kind::Reject,
                decisions: 1,
                sessions: 1,
                examples: vec!["seed".into()],
            }]
        );
        assert_eq!(report.sessions_changed, 1);
    }

    #[test]
    fn a_closed_address_and_auto_close_are_played_out_in_order() {
        // Closing after one message: m1 delivers and closes it, m2's recipient is refused.
        let files = [(
            "shop.toml",
            "addresses = [\"shop@example.org\"]\nstate = \"closed\"\nclosed_reason = \"auto_close: 9 messages\"\n[auto_close]\nmessages = 1\n",
        )];
        let report = run(&setup("local_domains = [\"example.org\"]\n", &files));
        assert_eq!(report.auto_closed.len(), 1);
        assert_eq!(report.auto_closed[0].address, "shop@example.org");
        assert_eq!(report.auto_closed[0].reason, "auto_close: 1 messages");
        let rcpt = report.changes.iter().find(|c| c.phase == "rcpt").unwrap();
        assert_eq!(
            (
                rcpt.rule.as_str(),
                rcpt.from,
                rcpt.to,
                rcpt.examples.clone()
            ),
            (
                "address:shop.toml:closed",
                Kind::Accept,
                Kind::Reject,
                vec!["m2".to_owned()]
            )
        );
        // Closed by hand at 11:30: m2 only; without a time: both.
        let by_hand = |at: &str| {
            let text = format!("addresses = [\"shop@example.org\"]\nstate = \"closed\"\n{at}");
            let report = run(&setup("", &[("shop.toml", &text)]));
            report
                .changes
                .iter()
                .find(|c| c.phase == "rcpt" && c.rule.starts_with("address:"))
                .map(|c| c.examples.clone())
                .unwrap_or_default()
        };
        assert_eq!(by_hand("closed_at = \"2026-03-01T11:30:00Z\"\n"), ["m2"]);
        assert_eq!(by_hand(""), ["m1", "m2"]);
    }

    #[test]
    fn a_refusal_at_connect_or_data_is_counted_once_where_it_happens() {
        let policy = "[[rule]]\nphase = \"connect\"\nhost = \"198.51.100.2\"\naction = \"disconnect\"\n\
                      [[rule]]\nphase = \"data\"\nto = \"shop@example.org\"\naction = \"reject\"\n";
        let report = run(&setup(policy, &[]));
        let by_phase: Vec<(&str, Kind, &[String])> = report
            .changes
            .iter()
            .map(|c| (c.phase, c.to, c.examples.as_slice()))
            .collect();
        assert!(by_phase.contains(&("connect", Kind::Disconnect, &["m1".to_owned()][..])));
        assert!(by_phase.contains(&("data", Kind::Reject, &["m2".to_owned()][..])));
        // m1 refused at connect: its MAIL, RCPT and DATA are not compared.
        assert_eq!(report.decisions, 4 + 1 + 5);
    }
}
