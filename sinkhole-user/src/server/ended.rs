//! A session whose connection is closed, before it is logged: what the session log, the
//! end-of-session escalation and the `unscored` counter need, and nothing of the socket.

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use crate::campaign::features::{Key, Shape};
use crate::capture::session_log::{SessionEnd, TlsInfo};
use crate::score::Answer;
use crate::signature::Signature;
use crate::smtp::{Direction, SessionRecord, TranscriptLine};
use crate::syn::Syn;
use crate::verdict::{ClientJudge, Escalation, Rules};

#[derive(Debug)]
pub struct EndedSession {
    id: String,
    start: SystemTime,
    end: SystemTime,
    peer: SocketAddr,
    judge: ClientJudge,
    tls: Option<TlsInfo>,
    record: SessionRecord,
    syn: Option<Syn>,
}

impl EndedSession {
    /// A session that started at `start` and ends now.
    pub fn new(
        id: String,
        peer: SocketAddr,
        start: SystemTime,
        judge: ClientJudge,
        tls: Option<TlsInfo>,
        record: SessionRecord,
    ) -> EndedSession {
        EndedSession {
            id,
            start,
            end: SystemTime::now(),
            peer,
            judge,
            tls,
            record,
            syn: None,
        }
    }

    /// The SYN fingerprint of the connection, when the XDP program recorded one.
    pub fn set_syn(&mut self, syn: Option<Syn>) {
        self.syn = syn;
    }

    /// Adds a line of the loop's own to the transcript (within its cap).
    pub fn note(&mut self, line: String) {
        let ms = self.start.elapsed().unwrap_or_default().as_millis();
        self.record.push_line(TranscriptLine {
            ms: u64::try_from(ms).unwrap_or(u64::MAX),
            direction: Direction::Client,
            line,
        });
    }

    /// The resolver still owes the session an answer (see [`ClientJudge::awaits_answers`]).
    pub fn awaits_answers(&self) -> bool {
        self.judge.awaits_answers()
    }

    /// An answer the resolver owed.
    pub fn take_answer(&mut self, answer: Answer, now: Instant) {
        self.judge.take_answer(answer, now);
    }

    /// The client's address as it is blocked (IPv4-mapped as IPv4).
    pub fn client_ip(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }

    /// Every signature the session showed, merged in report order.
    pub fn signatures(&self) -> Vec<Signature> {
        let record = &self.record;
        self.judge
            .signatures(&record.signatures, record.helo.as_deref())
    }

    /// The session's campaign key (what its software fixed), with `signatures` as its own.
    pub fn campaign_key(&self, signatures: &[Signature]) -> Key {
        let record = &self.record;
        Key::of(Shape {
            signatures: signatures.iter().copied(),
            pipelined: record.pipelined,
            transaction: record.transactions.first().map(|t| {
                (
                    t.mail_from.as_str(),
                    t.rcpts.iter().map(|r| r.addr.as_str()),
                )
            }),
            syn: self.syn.as_ref(),
        })
    }

    /// The block due now that the session is over, if none was made yet.
    pub fn escalation(&self, rules: &Rules, signatures: &[Signature]) -> Option<Escalation> {
        self.judge.escalation_at_end(rules, signatures)
    }

    /// The recipients the session accepted (in every transaction).
    pub fn accepted_rcpts(&self) -> impl Iterator<Item = &str> {
        self.record
            .transactions
            .iter()
            .flat_map(|t| &t.rcpts)
            .filter(|r| (200..300).contains(&r.code))
            .map(|r| r.addr.as_str())
    }

    /// Recipients were given, and no complete score came in time to judge them.
    pub fn went_unscored(&self) -> bool {
        !self.judge.is_scored() && self.record.transactions.iter().any(|t| !t.rcpts.is_empty())
    }

    /// The session log's record, with `signatures` as the session's.
    pub fn into_log(self, signatures: Vec<Signature>) -> SessionEnd {
        let EndedSession {
            id,
            start,
            end,
            peer,
            judge,
            tls,
            mut record,
            syn,
        } = self;
        record.signatures = signatures;
        let (rdns, fcrdns) = judge.rdns();
        SessionEnd {
            rdns,
            fcrdns,
            tls,
            dnsbl: judge.listings(),
            score: judge.score().map(|s| s.score),
            scored: judge.is_scored(),
            syn,
            ..SessionEnd::new(id, peer, start, end, record)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::policy::Policy;
    use crate::smtp::{RcptRecord, TransactionRecord};

    fn ended(record: SessionRecord) -> EndedSession {
        let rules = Rules::new(&Config::default());
        let policy = Arc::new(Policy::parse("", "policy.toml").unwrap());
        let judge = ClientJudge::new(policy, &rules);
        let peer = "[::ffff:192.0.2.9]:25".parse().unwrap();
        EndedSession::new("x".into(), peer, SystemTime::now(), judge, None, record)
    }

    #[test]
    fn notes_stay_within_the_transcript_cap() {
        let mut session = ended(SessionRecord::default());
        session.note("<TLS handshake failed>".into());
        assert_eq!(session.record.transcript.len(), 1);
        assert_eq!(session.record.transcript[0].direction, Direction::Client);
        session.record.transcript = (0..crate::smtp::MAX_TRANSCRIPT_LINES)
            .map(|_| session.record.transcript[0].clone())
            .collect();
        session.note("<one more>".into());
        assert_eq!(
            session.record.transcript.len(),
            crate::smtp::MAX_TRANSCRIPT_LINES
        );
        assert_eq!(session.record.transcript_dropped, 1);
    }

    #[test]
    fn only_sessions_with_recipients_go_unscored() {
        assert!(!ended(SessionRecord::default()).went_unscored());
        let rcpt = RcptRecord {
            addr: "b@y".into(),
            code: 550,
        };
        let session = ended(SessionRecord {
            transactions: vec![TransactionRecord {
                rcpts: vec![rcpt],
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(session.went_unscored());
        assert_eq!(session.client_ip().to_string(), "192.0.2.9");
        let log = session.into_log(vec![Signature::Pregreet]);
        assert_eq!(log.record.signatures, vec![Signature::Pregreet]);
        assert!(!log.scored && log.score.is_none());
    }
}
