//! The session log, `STORAGE/sessions.jsonl`: one JSON object per finished session.
//!
//! Lines are serialised into a buffer and the buffer is appended with one `write` (whole lines
//! only), so a crash leaves at most one torn line at the end.

use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::log_file::LogFile;
use crate::score::DnsblListing;
use crate::smtp::{Direction, SessionRecord, TranscriptLine};
use crate::syn::Syn;

/// How a session ended, as the log's `verdict` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// At least one message was answered 250 (stored, or counted with `capture = false`).
    Accepted,
    /// No message was accepted, and the client was refused: a MAIL or a message (its end of
    /// data) was, or recipients were given and every one was.
    Rejected,
    /// Closed right after accept: the client is in the block table.
    Blocked,
    /// Closed right after accept with 421: a connection limit was reached.
    Refused,
    /// Anything else: no recipient was tried, or the client left before a message.
    NoMail,
}

impl Verdict {
    /// The verdict of a session that ran (not closed at accept).
    pub fn of(record: &SessionRecord) -> Verdict {
        let transactions = &record.transactions;
        if transactions.iter().any(|t| t.data_code == Some(250)) {
            Verdict::Accepted
        } else if transactions
            .iter()
            .any(|t| t.mail_code >= 400 || t.data_code.is_some_and(|c| c >= 400))
            || (transactions.iter().any(|t| !t.rcpts.is_empty())
                && transactions
                    .iter()
                    .flat_map(|t| &t.rcpts)
                    .all(|r| r.code >= 400))
        {
            Verdict::Rejected
        } else {
            Verdict::NoMail
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Blocked => "blocked",
            Verdict::Refused => "refused",
            Verdict::NoMail => "no-mail",
        }
    }
}

/// A finished session, as handed to the log.
#[derive(Debug)]
pub struct SessionEnd {
    pub id: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub client: SocketAddr,
    pub rdns: Option<String>,
    pub fcrdns: Option<bool>,
    /// The TLS the session ended in (after STARTTLS and a completed handshake).
    pub tls: Option<TlsInfo>,
    pub dnsbl: Vec<DnsblListing>,
    pub score: Option<i32>,
    /// A complete score came within `dnsbl.timeout` of accept (else recipients were decided
    /// without it, or the session ended first).
    pub scored: bool,
    pub verdict: Verdict,
    pub record: SessionRecord,
    /// The SYN that opened the connection, when the XDP program saw it.
    pub syn: Option<Syn>,
}

/// A negotiated TLS session: `{"version":"TLSv1_3","cipher":"TLS13_AES_256_GCM_SHA384",
/// "sni":"mx.example.org"|null}` in the log (rustls' names).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
    /// The name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
}

/// What every line starts with: the session and its client.
#[derive(Serialize)]
struct Head<'a> {
    id: &'a str,
    start: String,
    end: String,
    client_ip: String,
    client_port: u16,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    rdns: Option<&'a str>,
    fcrdns: Option<bool>,
    helo: Option<&'a str>,
    /// `false` without TLS (as before TLS was supported), else the [`TlsInfo`] object.
    #[serde(serialize_with = "tls_or_false")]
    tls: Option<&'a TlsInfo>,
    /// Absent when the XDP program did not see the SYN (not attached, or evicted).
    #[serde(skip_serializing_if = "Option::is_none")]
    syn: Option<&'a Syn>,
    pipelined: bool,
    /// The code the connection was greeted with (220, or a policy refusal); null when the
    /// session ended before its greeting.
    connect_code: Option<u16>,
    /// The code of the reply to the latest HELO/EHLO; null without one.
    helo_code: Option<u16>,
    dnsbl: Vec<Listing<'a>>,
    score: Option<i32>,
    scored: bool,
    signatures: Vec<&'static str>,
    verdict: &'static str,
    transactions: Vec<Transaction<'a>>,
    transcript: Vec<(u64, &'static str, &'a str)>,
    /// Transcript lines not kept (the marker line says so too); 0 when nothing was cut.
    transcript_dropped: usize,
    /// Their bytes, as they would have been kept.
    transcript_bytes_dropped: usize,
    /// Transactions and recipients not kept (the record's byte or count bound).
    transactions_dropped: usize,
    rcpts_dropped: usize,
    /// Why the session closed with 421 (`timeout`, `errors`, `junk-commands`, `shutdown`);
    /// null when it did not.
    closed_by: Option<&'static str>,
}

/// The line of a session logged while free space is below `storage.min_free`
/// (`capture::floor`): who and when, the verdict, and counts instead of what was said.
#[derive(Serialize)]
struct ShortLine<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    verdict: &'static str,
    transactions: usize,
    rcpts: usize,
    messages: usize,
    short: bool,
}

#[derive(Serialize)]
struct Listing<'a> {
    zone: &'a str,
    codes: &'a [String],
}

#[derive(Serialize)]
struct Transaction<'a> {
    mail_from: &'a str,
    mail_code: u16,
    rcpts: Vec<Rcpt<'a>>,
    data_code: Option<u16>,
    message: Option<&'a str>,
    size: u64,
}

#[derive(Serialize)]
struct Rcpt<'a> {
    addr: &'a str,
    code: u16,
}

fn tls_or_false<S: serde::Serializer>(tls: &Option<&TlsInfo>, s: S) -> Result<S::Ok, S::Error> {
    match tls {
        Some(info) => info.serialize(s),
        None => s.serialize_bool(false),
    }
}

impl SessionEnd {
    /// A session of `client` from `start` to `end`, with its verdict from `record` and nothing
    /// known about the client but its address (the loop adds what its score says).
    pub fn new(
        id: String,
        client: SocketAddr,
        start: SystemTime,
        end: SystemTime,
        record: SessionRecord,
    ) -> SessionEnd {
        SessionEnd {
            id,
            start,
            end,
            client,
            rdns: None,
            fcrdns: None,
            tls: None,
            dnsbl: Vec::new(),
            score: None,
            scored: false,
            verdict: Verdict::of(&record),
            record,
            syn: None,
        }
    }

    /// A connection closed right after accept, `at`, with `verdict`; `said` is the one line it
    /// was sent, if any (the whole transcript).
    pub fn closed_at_accept(
        id: String,
        client: SocketAddr,
        at: SystemTime,
        verdict: Verdict,
        said: Option<&[u8]>,
    ) -> SessionEnd {
        let transcript = said
            .map(|line| TranscriptLine {
                ms: 0,
                direction: Direction::Server,
                line: String::from_utf8_lossy(line).trim_end().to_string(),
            })
            .into_iter()
            .collect();
        let record = SessionRecord {
            transcript,
            ..SessionRecord::default()
        };
        SessionEnd {
            verdict,
            ..SessionEnd::new(id, client, at, at, record)
        }
    }

    fn head(&self) -> Head<'_> {
        Head {
            id: &self.id,
            start: humantime::format_rfc3339_millis(self.start).to_string(),
            end: humantime::format_rfc3339_millis(self.end).to_string(),
            client_ip: self.client.ip().to_canonical().to_string(),
            client_port: self.client.port(),
        }
    }

    /// The short JSON line ([`ShortLine`]), with its newline.
    pub fn to_short_line(&self, out: &mut Vec<u8>) {
        let transactions = &self.record.transactions;
        let line = ShortLine {
            head: self.head(),
            verdict: self.verdict.as_str(),
            transactions: transactions.len() + self.record.transactions_dropped,
            rcpts: transactions.iter().map(|t| t.rcpts.len()).sum::<usize>()
                + self.record.rcpts_dropped,
            messages: transactions
                .iter()
                .filter(|t| t.data_code == Some(250))
                .count(),
            short: true,
        };
        // As in `to_line`.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }

    /// The JSON line, with its newline.
    pub fn to_line(&self, out: &mut Vec<u8>) {
        let record = &self.record;
        let mut transcript: Vec<(u64, &'static str, &str)> = record
            .transcript
            .iter()
            .map(|l| {
                let who = match l.direction {
                    Direction::Client => "c",
                    Direction::Server => "s",
                };
                (l.ms, who, l.line.as_str())
            })
            .collect();
        let marker;
        if record.transcript_dropped > 0 {
            marker = format!(
                "[sinkhole: {} more lines not kept]",
                record.transcript_dropped
            );
            // Between the session's first lines and its latest.
            let at = record.transcript_cut.unwrap_or(transcript.len());
            let ms = at.checked_sub(1).map_or(0, |i| transcript[i].0);
            transcript.insert(at, (ms, "s", &marker));
        }
        let line = Line {
            head: self.head(),
            rdns: self.rdns.as_deref(),
            fcrdns: self.fcrdns,
            helo: record.helo.as_deref(),
            tls: self.tls.as_ref(),
            syn: self.syn.as_ref(),
            pipelined: record.pipelined,
            connect_code: record.connect_code,
            helo_code: record.helo_code,
            dnsbl: self
                .dnsbl
                .iter()
                .map(|l| Listing {
                    zone: &l.zone,
                    codes: &l.codes,
                })
                .collect(),
            score: self.score,
            scored: self.scored,
            signatures: record.signatures.iter().map(|s| s.as_str()).collect(),
            verdict: self.verdict.as_str(),
            transactions: record
                .transactions
                .iter()
                .map(|t| Transaction {
                    mail_from: &t.mail_from,
                    mail_code: t.mail_code,
                    rcpts: t
                        .rcpts
                        .iter()
                        .map(|r| Rcpt {
                            addr: &r.addr,
                            code: r.code,
                        })
                        .collect(),
                    data_code: t.data_code,
                    message: t.message.as_deref(),
                    size: t.size,
                })
                .collect(),
            transcript,
            transcript_dropped: record.transcript_dropped,
            transcript_bytes_dropped: record.transcript_bytes_dropped,
            transactions_dropped: record.transactions_dropped,
            rcpts_dropped: record.rcpts_dropped,
            closed_by: record.closed_by.map(|c| c.as_str()),
        };
        // Serialising plain structs of strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

/// A session id: sortable by time, unique per daemon (milliseconds and a counter), 13
/// characters of Crockford base32.
pub fn session_id(now: SystemTime, counter: u64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let value = (ms << 20) | (counter & 0xf_ffff);
    (0..13)
        .rev()
        .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// The log file and its pending lines.
pub struct SessionLog {
    file: LogFile,
    pending: Vec<u8>,
    lines: u64,
}

/// Pending bytes past which the log is written out before its flush interval.
const FLUSH_BYTES: usize = 256 * 1024;

impl SessionLog {
    /// The log written into `file`.
    pub fn new(file: LogFile) -> SessionLog {
        SessionLog {
            file,
            pending: Vec::with_capacity(FLUSH_BYTES),
            lines: 0,
        }
    }

    /// Queues a session's line ([`SessionEnd::to_short_line`] when `short`); writes out when
    /// enough is pending. Returns the lines that were lost to a failed write, if one happened.
    pub fn append(&mut self, session: &SessionEnd, short: bool) -> Result<(), (u64, io::Error)> {
        match short {
            true => session.to_short_line(&mut self.pending),
            false => session.to_line(&mut self.pending),
        }
        self.lines += 1;
        if self.pending.len() >= FLUSH_BYTES {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Writes every pending line with one `write`. On failure the pending lines are dropped
    /// (the buffer stays bounded) and their count is returned with the error.
    pub fn flush(&mut self) -> Result<(), (u64, io::Error)> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.file.write(&self.pending, SystemTime::now());
        let lines = std::mem::take(&mut self.lines);
        self.pending.clear();
        result.map_err(|e| (lines, e))
    }

    /// Writes out what is pending, then opens the file anew (`SIGUSR1`).
    pub fn reopen(&mut self) -> Result<(), (u64, io::Error)> {
        let flushed = self.flush();
        self.file.reopen();
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{CloseReason, RcptRecord, TransactionRecord};

    #[test]
    fn a_short_line_keeps_who_when_and_counts() {
        let mut record = SessionRecord {
            helo: Some("bot".into()),
            ..SessionRecord::default()
        };
        record.transactions.push(TransactionRecord {
            mail_from: "a@x".into(),
            rcpts: vec![RcptRecord {
                addr: "b@y".into(),
                code: 250,
            }],
            data_code: Some(250),
            ..Default::default()
        });
        record.rcpts_dropped = 2;
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        let session = SessionEnd::new(
            "s1".into(),
            "192.0.2.1:4000".parse().unwrap(),
            at,
            at,
            record,
        );
        let (mut short, mut full) = (Vec::new(), Vec::new());
        session.to_short_line(&mut short);
        session.to_line(&mut full);
        assert_eq!(
            String::from_utf8(short).unwrap(),
            "{\"id\":\"s1\",\"start\":\"1970-01-01T00:00:01.500Z\",\"end\":\
             \"1970-01-01T00:00:01.500Z\",\"client_ip\":\"192.0.2.1\",\"client_port\":4000,\
             \"verdict\":\"accepted\",\"transactions\":1,\"rcpts\":3,\"messages\":1,\
             \"short\":true}\n"
        );
        let full = String::from_utf8(full).unwrap();
        assert!(
            full.starts_with(
                "{\"id\":\"s1\",\"start\":\"1970-01-01T00:00:01.500Z\",\"end\":\
                 \"1970-01-01T00:00:01.500Z\",\"client_ip\":\"192.0.2.1\",\"client_port\":4000,\
                 \"rdns\":null,"
            ),
            "{full}"
        );
    }

    #[test]
    fn verdicts() {
        let mut record = SessionRecord::default();
        assert_eq!(Verdict::of(&record), Verdict::NoMail);
        record.transactions.push(TransactionRecord {
            mail_from: "a@x".into(),
            rcpts: vec![RcptRecord {
                addr: "b@y".into(),
                code: 550,
            }],
            ..Default::default()
        });
        assert_eq!(Verdict::of(&record), Verdict::Rejected);
        let refused_mail = SessionRecord {
            transactions: vec![TransactionRecord {
                mail_from: "a@x".into(),
                mail_code: 550,
                ..Default::default()
            }],
            ..SessionRecord::default()
        };
        assert_eq!(Verdict::of(&refused_mail), Verdict::Rejected);
        record.transactions.push(TransactionRecord {
            mail_from: "a@x".into(),
            rcpts: vec![RcptRecord {
                addr: "c@y".into(),
                code: 250,
            }],
            data_code: Some(250),
            ..Default::default()
        });
        assert_eq!(Verdict::of(&record), Verdict::Accepted);
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let now = SystemTime::now();
        let a = session_id(now, 1);
        let b = session_id(now, 2);
        let c = session_id(now + std::time::Duration::from_millis(1), 0);
        assert_eq!(a.len(), 13);
        assert!(a < b && b < c);
    }

    #[test]
    fn a_line_has_every_contract_field_and_the_cut_marker() {
        let record = SessionRecord {
            helo: Some("h".into()),
            pipelined: true,
            transcript: vec![
                TranscriptLine {
                    ms: 3,
                    direction: Direction::Server,
                    line: "220 hi".into(),
                },
                TranscriptLine {
                    ms: 9,
                    direction: Direction::Server,
                    line: "421 bye".into(),
                },
            ],
            transcript_cut: Some(1),
            transcript_dropped: 7,
            transcript_bytes_dropped: 300,
            rcpts_dropped: 2,
            closed_by: Some(CloseReason::JunkCommands),
            ..Default::default()
        };
        let end = SessionEnd::new(
            "x".into(),
            "[::ffff:192.0.2.9]:25".parse().unwrap(),
            UNIX_EPOCH,
            UNIX_EPOCH + std::time::Duration::from_millis(1500),
            record,
        );
        let mut out = Vec::new();
        end.to_line(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for key in [
            "id",
            "start",
            "end",
            "client_ip",
            "client_port",
            "rdns",
            "fcrdns",
            "helo",
            "tls",
            "pipelined",
            "connect_code",
            "helo_code",
            "dnsbl",
            "score",
            "scored",
            "signatures",
            "verdict",
            "transactions",
            "transcript",
            "transcript_dropped",
            "transcript_bytes_dropped",
            "transactions_dropped",
            "rcpts_dropped",
            "closed_by",
        ] {
            assert!(value.get(key).is_some(), "{key}");
        }
        assert_eq!(value["start"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["end"], "1970-01-01T00:00:01.500Z");
        assert_eq!(value["client_ip"], "192.0.2.9");
        assert_eq!(value["verdict"], "no-mail");
        assert_eq!(
            value["transcript"][0],
            serde_json::json!([3, "s", "220 hi"])
        );
        // The marker sits where lines were left out: after the first lines, before the latest.
        assert_eq!(
            value["transcript"][1],
            serde_json::json!([3, "s", "[sinkhole: 7 more lines not kept]"])
        );
        assert_eq!(value["transcript"][2][2], "421 bye");
        assert_eq!(value["transcript_bytes_dropped"], 300);
        assert_eq!(value["rcpts_dropped"], 2);
        assert_eq!(value["transactions_dropped"], 0);
        assert_eq!(value["closed_by"], "junk-commands");
        assert_eq!(value["tls"], false);
    }

    #[test]
    fn a_connection_closed_at_accept_has_the_line_it_was_sent() {
        let client = "192.0.2.9:25".parse().unwrap();
        let line = |end: SessionEnd| {
            let mut out = Vec::new();
            end.to_line(&mut out);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let refused = line(SessionEnd::closed_at_accept(
            "x".into(),
            client,
            UNIX_EPOCH,
            Verdict::Refused,
            Some(b"421 4.7.0 Too many connections\r\n"),
        ));
        assert_eq!(refused["verdict"], "refused");
        assert_eq!(refused["start"], refused["end"]);
        assert_eq!(
            refused["transcript"],
            serde_json::json!([[0, "s", "421 4.7.0 Too many connections"]])
        );
        assert_eq!(refused["scored"], false);
        assert_eq!(refused["dnsbl"], serde_json::json!([]));
        let blocked = line(SessionEnd::closed_at_accept(
            "y".into(),
            client,
            UNIX_EPOCH,
            Verdict::Blocked,
            None,
        ));
        assert_eq!(blocked["verdict"], "blocked");
        assert_eq!(blocked["transcript"], serde_json::json!([]));
    }

    #[test]
    fn negotiated_tls_is_an_object() {
        let mut end = SessionEnd {
            tls: Some(TlsInfo {
                version: "TLSv1_3",
                cipher: "TLS13_AES_256_GCM_SHA384",
                sni: Some("mx.example.org".into()),
            }),
            ..SessionEnd::new(
                "x".into(),
                "192.0.2.9:25".parse().unwrap(),
                UNIX_EPOCH,
                UNIX_EPOCH,
                SessionRecord::default(),
            )
        };
        let mut out = Vec::new();
        end.to_line(&mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value["tls"],
            serde_json::json!({"version": "TLSv1_3", "cipher": "TLS13_AES_256_GCM_SHA384",
                "sni": "mx.example.org"})
        );
        end.tls.as_mut().unwrap().sni = None;
        out.clear();
        end.to_line(&mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["tls"]["sni"], serde_json::Value::Null);
    }
}
