//! What the fuzz targets share: the input layout, a driver that plays a [`Session`] through
//! `sinkhole::smtp`'s [`Host`] functions as the server loop does, and the invariants every
//! session keeps whatever it is fed.
//!
//! Input layout: `STREAM [MARKER SCHEDULE]`. `STREAM` is what the client sends, so a plain SMTP
//! conversation is a meaningful seed on its own; the optional `SCHEDULE` after [`MARKER`] is
//! read with [`arbitrary::Unstructured`] into how the stream is cut into reads, when time
//! passes, how decisions come out, and so on. Without a schedule a target uses a default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sinkhole::signature::Signature;
use sinkhole::smtp::{
    self, BODY_BUFFER, Direction, Event, Host, MAX_RECEIVE, MAX_RECORD_BYTES, MAX_RECORDED,
    MAX_TRANSCRIPT_LINE_BYTES, MAX_TRANSCRIPT_LINES, OUTPUT_LIMIT, RcptRecord, Reply, Session,
    SessionConfig, SessionRecord, TransactionRecord, TranscriptLine,
};

/// Separates the client stream from the schedule.
pub const MARKER: &[u8] = b"\0SCHEDULE\0";

/// Most one call can add to the output once it is past [`OUTPUT_LIMIT`]: the reply to one
/// command (EHLO's is the longest we compose), a decided reply (at most [`MAX_REPLY_TEXT`]) and
/// a closing 421.
pub const MAX_REPLY_BATCH: usize = 4096;

/// Longest reply text the driver hands to `resolve_*`.
pub const MAX_REPLY_TEXT: usize = 512;

/// Longest transcript line: every kept byte may be escaped to `\xNN` (4 bytes), plus our own
/// prefix (`<discarded after STARTTLS> `) and the cut marker (`…[+N bytes]`).
pub const MAX_TRANSCRIPT_LINE_LEN: usize = 4 * MAX_TRANSCRIPT_LINE_BYTES + 64;

pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Junk commands a session takes; small, so that inputs reach the limit.
pub const MAX_JUNK_COMMANDS: usize = 20;

/// `(stream, schedule)`; the schedule is empty when there is no marker.
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(MARKER.len()).position(|w| w == MARKER) {
        Some(i) => (&data[..i], &data[i + MARKER.len()..]),
        None => (data, &[]),
    }
}

pub fn session_config(
    starttls: bool,
    max_message_bytes: u64,
    max_recipients: usize,
) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.fuzz.example".into(),
        max_message_bytes,
        max_recipients,
        max_junk_commands: MAX_JUNK_COMMANDS,
        idle_timeout: IDLE_TIMEOUT,
        greet_wait: std::time::Duration::ZERO,
        starttls,
        keep_bodies: true,
    })
}

/// The reply code class a decision comes out with.
#[derive(Clone, Copy, Debug, arbitrary::Arbitrary)]
pub enum Code {
    Accept,
    Tempfail,
    Reject,
    /// The policy's `disconnect`: 421, and the session closes.
    Disconnect,
}

impl Code {
    pub fn reply(self, text: Option<&str>) -> Reply {
        let (code, default) = match self {
            Code::Accept => (250, "2.1.5 Ok"),
            Code::Tempfail => (451, "4.3.0 Try again later"),
            Code::Reject => (550, "5.1.1 No such user"),
            Code::Disconnect => (421, "4.7.0 Closing connection"),
        };
        let text = text.map_or(default, |t| cut(t, MAX_REPLY_TEXT));
        Reply {
            code,
            text: text.to_owned(),
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A decision that depends only on what is decided, so that two runs can be compared: the
/// length of the HELO name, sender or recipient picks the code (the connection is accepted),
/// a message is refused when its body length is odd.
fn default_code(seed: usize) -> Code {
    match seed % 7 {
        0 | 3 | 5 => Code::Accept,
        1 => Code::Tempfail,
        6 => Code::Disconnect,
        _ => Code::Reject,
    }
}

/// The decision the session waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The connection: what the client sends meanwhile is still read (as pregreet).
    Connect,
    /// A HELO, MAIL or RCPT ([`Session::resolve`]).
    Command,
    Message,
}

/// Plays a session as the server does and checks the invariants after every call (in
/// [`Host::flush`], which `smtp::settle` runs after each).
pub struct Driver {
    pub session: Session,
    config: Arc<SessionConfig>,
    pub now: Instant,
    /// What the client sent before the banner; `None` once the banner is out.
    early: Option<Vec<u8>>,
    /// The decision the session asked for and has not had yet.
    pub decision: Option<Decision>,
    /// Every event, as `Debug` text, a message's with the body bytes handed out for it (kept
    /// only when `keep` is set).
    pub events: Vec<String>,
    /// The body bytes handed out since the last message or discard (kept only when `keep` is
    /// set), and how many there were.
    body: Vec<u8>,
    body_len: u64,
    /// Every byte written to the client (kept only when `keep` is set).
    pub written: Vec<u8>,
    keep: bool,
    /// `session.output().len()` after the last check.
    output_len: usize,
    /// `session.is_finished()` at the last check: before the call being checked.
    finished: bool,
    /// The length of what the pending decision is about; picks its deterministic outcome.
    decision_seed: usize,
    stored: usize,
}

impl Driver {
    /// `keep`: remember every event and written byte (for comparing runs).
    pub fn new(config: Arc<SessionConfig>, keep: bool) -> Driver {
        let now = Instant::now();
        Driver {
            session: Session::new(Arc::clone(&config), now),
            config,
            now,
            early: Some(Vec::new()),
            decision: None,
            events: Vec::new(),
            body: Vec::new(),
            body_len: 0,
            written: Vec::new(),
            keep,
            output_len: 0,
            finished: false,
            decision_seed: 0,
            stored: 0,
        }
    }

    /// Bytes that were waiting at accept; only before the banner, as in the server.
    pub fn early(&mut self, bytes: &[u8]) {
        if let Some(early) = &mut self.early {
            early.extend_from_slice(bytes);
        }
    }

    pub fn greet(&mut self) {
        if let Some(early) = self.early.take() {
            smtp::accept(&mut self.session, &early, self.now);
            smtp::settle(self);
        }
    }

    /// One read.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.greet();
        smtp::receive(self, bytes, self.now);
    }

    /// Time passes; the timer fires (whether or not the deadline is reached: before it, the
    /// session must ignore it).
    pub fn wait(&mut self, ms: u64) {
        self.greet();
        self.now += Duration::from_millis(ms);
        let due = self.now >= self.session.deadline();
        let idle = due && self.decision.is_none() && !self.session.is_finished();
        let before = self.output_len;
        self.call(|s, now| s.handle_timeout(now));
        if !due {
            assert_eq!(
                self.output_len, before,
                "handle_timeout before the deadline wrote"
            );
        }
        if idle {
            assert!(
                self.session.is_finished(),
                "idle past the deadline, not closed"
            );
        }
    }

    /// `n` bytes of output were written to the client.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.session.output().len());
        if self.keep {
            self.written.extend_from_slice(&self.session.output()[..n]);
        }
        self.output_len -= n;
        self.call(|s, _| s.consume_output(n));
    }

    pub fn consume_all(&mut self) {
        self.consume(self.session.output().len());
    }

    /// Resolves a pending connection, HELO, MAIL or RCPT (when none is pending, the session
    /// must ignore it).
    pub fn resolve_command(&mut self, reply: Reply) {
        let expected = matches!(
            self.decision,
            Some(Decision::Connect | Decision::Command)
        );
        if expected {
            self.decision = None;
        }
        self.resolve(expected, |s, now| s.resolve(reply, now));
    }

    /// Resolves a pending message (when none is pending, the session must ignore it).
    pub fn resolve_message(&mut self, reply: Reply, stored_as: Option<String>) {
        let expected = self.decision == Some(Decision::Message);
        if expected {
            self.decision = None;
        }
        self.resolve(expected, |s, now| s.resolve_message(reply, stored_as, now));
    }

    fn resolve(&mut self, expected: bool, f: impl FnOnce(&mut Session, Instant)) {
        let before = self.output_len;
        self.call(f);
        if !expected {
            assert_eq!(
                self.output_len, before,
                "a resolve nobody asked for was answered"
            );
        }
    }

    pub fn shutdown(&mut self) {
        self.greet();
        self.call(|s, now| s.shutdown(now));
        if self.decision.is_none() {
            assert!(
                self.session.is_finished(),
                "shutdown did not finish the session"
            );
        }
    }

    /// Writes everything out and makes every decision the deterministic way, until the session
    /// is quiet.
    pub fn settle(&mut self) {
        loop {
            if !self.session.output().is_empty() {
                self.consume_all();
                continue;
            }
            match self.decision {
                Some(Decision::Connect) => self.resolve_command(Code::Accept.reply(None)),
                Some(Decision::Command) => {
                    // The code comes from the event's text, so equal events get equal replies.
                    let seed = self.decision_seed;
                    self.resolve_command(default_code(seed).reply(None));
                }
                Some(Decision::Message) => {
                    let seed = self.decision_seed;
                    if seed % 2 == 0 {
                        self.stored += 1;
                        let name = format!("msg{}", self.stored);
                        let reply = Reply {
                            code: 250,
                            text: format!("2.0.0 Ok: queued as {name}"),
                        };
                        self.resolve_message(reply, Some(name));
                    } else {
                        self.resolve_message(Code::Tempfail.reply(None), None);
                    }
                }
                None => break,
            }
        }
    }

    /// Feeds the rest of the client stream, settling as it goes, then lets the session idle
    /// out: every session ends, whatever it was sent.
    pub fn finish(&mut self, rest: &[u8]) {
        self.greet();
        self.settle();
        let mut rest = rest;
        while !rest.is_empty() && !self.session.is_finished() {
            assert!(self.session.wants_read(), "a settled session does not read");
            let n = rest.len().min(MAX_RECEIVE);
            self.receive(&rest[..n]);
            rest = &rest[n..];
            self.settle();
        }
        for _ in 0..2 {
            if self.session.is_finished() {
                break;
            }
            let ms = u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
            self.wait(ms);
            self.settle();
        }
        assert!(
            self.session.is_finished(),
            "session still open after idling out"
        );
        self.settle();
        assert!(self.session.output().is_empty());
    }

    /// One call into the session, then its events and the invariants.
    fn call(&mut self, f: impl FnOnce(&mut Session, Instant)) {
        f(&mut self.session, self.now);
        smtp::settle(self);
    }

    /// The invariants, after a call and its events.
    fn check(&mut self) {
        let output = self.session.output();
        assert!(
            output.len() >= self.output_len,
            "output shrank without being consumed"
        );
        let added = &output[self.output_len..];
        if self.finished {
            assert!(added.is_empty(), "a finished session wrote {added:?}");
        }
        check_replies(added);
        assert!(
            output.len() <= OUTPUT_LIMIT + MAX_REPLY_BATCH,
            "output grew to {} bytes",
            output.len()
        );
        self.output_len = output.len();
        if self.decision.is_some_and(|d| d != Decision::Connect) {
            assert!(
                !self.session.wants_read(),
                "reads while a decision is pending"
            );
        }
        if self.session.is_finished() {
            assert!(!self.session.wants_read(), "a finished session reads");
        }
        check_record(self.session.record());
        if self.session.record().closed_by.is_some() {
            assert!(self.session.is_finished(), "closed but not finished");
        }
        self.finished = self.session.is_finished();
    }

    fn check_event(&mut self, event: &Event) {
        assert!(!self.finished, "a finished session raised {event:?}");
        match event {
            Event::Connect => self.expect_decision(Decision::Connect),
            Event::Helo { name } => {
                assert!(!name.chars().any(char::is_control));
                self.expect_decision(Decision::Command);
                self.decision_seed = name.len();
            }
            Event::Mail { mail_from } => {
                assert!(!mail_from.chars().any(char::is_control));
                self.expect_decision(Decision::Command);
                self.decision_seed = mail_from.len();
            }
            Event::Recipient { rcpt, .. } => {
                assert!(!rcpt.is_empty() && !rcpt.chars().any(char::is_control));
                self.expect_decision(Decision::Command);
                self.decision_seed = rcpt.len();
            }
            Event::Message { rcpts, size, .. } => {
                assert!(!rcpts.is_empty(), "a message without recipients");
                let handed = if self.config.keep_bodies { *size } else { 0 };
                assert_eq!(self.body_len, handed, "the body handed out is not the message");
                assert!(
                    *size <= self.config.max_message_bytes,
                    "a message over the size limit was handed over"
                );
                self.expect_decision(Decision::Message);
                self.decision_seed = usize::try_from(*size).unwrap_or(usize::MAX);
            }
            Event::Discard => assert!(self.config.keep_bodies, "a body discarded, none kept"),
            Event::StartTls => assert!(self.config.starttls, "STARTTLS not offered"),
        }
        // What a discard drops depends on how much was handed out before the limit was passed,
        // so on the cut: a message's bytes are compared, a discard's are not.
        let body = match event {
            Event::Message { .. } | Event::Discard => {
                self.body_len = 0;
                std::mem::take(&mut self.body)
            }
            _ => Vec::new(),
        };
        if self.keep {
            match event {
                Event::Message { .. } => self.events.push(format!("{event:?} {body:?}")),
                _ => self.events.push(format!("{event:?}")),
            }
        }
    }

    fn expect_decision(&mut self, decision: Decision) {
        assert_eq!(
            self.decision, None,
            "a second decision asked for while one is pending"
        );
        self.decision = Some(decision);
    }
}

impl Host for Driver {
    fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Body bytes come a bounded buffer at a time, and only when bodies are kept.
    fn body(&mut self, chunk: &[u8]) {
        assert!(!self.finished, "a finished session handed out body bytes");
        assert!(self.config.keep_bodies, "body bytes handed out, none kept");
        assert!(
            !chunk.is_empty() && chunk.len() <= BODY_BUFFER,
            "a body chunk of {} bytes",
            chunk.len()
        );
        self.body_len += chunk.len() as u64;
        assert!(
            self.body_len <= self.config.max_message_bytes,
            "body bytes handed out past the size limit"
        );
        if self.keep {
            self.body.extend_from_slice(chunk);
        }
    }

    /// Decisions are made later: by the schedule, or in [`Driver::settle`].
    fn event(&mut self, event: Event) {
        self.check_event(&event);
    }

    /// The client reads only when the schedule says so ([`Driver::consume`]), so this writes
    /// nothing; it is where every call ends, and so where the invariants are checked.
    fn flush(&mut self) {
        self.check();
    }
}

/// Output the session adds is whole reply lines, `DDD-text` or `DDD text`, each ending in CRLF
/// and without CR or LF inside, and the last line of a batch ends its reply.
pub fn check_replies(added: &[u8]) {
    let mut rest = added;
    let mut last_separator = b' ';
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("output does not end a line: {rest:?}"));
        let line = &rest[..end];
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && (line[3] == b' ' || line[3] == b'-')
                && !line.iter().any(|&b| b == b'\r' || b == b'\n'),
            "malformed reply line {:?}",
            String::from_utf8_lossy(line)
        );
        last_separator = line[3];
        rest = &rest[end + 2..];
    }
    assert_eq!(last_separator, b' ', "a reply batch ends mid-reply");
}

/// The record stays within its caps.
pub fn check_record(record: &SessionRecord) {
    assert!(record.transcript.len() <= MAX_TRANSCRIPT_LINES);
    for line in &record.transcript {
        assert!(
            line.line.len() <= MAX_TRANSCRIPT_LINE_LEN,
            "transcript line of {} bytes",
            line.line.len()
        );
    }
    assert!(record.transactions.len() <= MAX_RECORDED);
    let rcpts: usize = record.transactions.iter().map(|t| t.rcpts.len()).sum();
    assert!(rcpts <= MAX_RECORDED);
    // Within its bytes: what the budget counts, and (at most that) what the record holds.
    let held = record.budget.bytes();
    assert!(held <= MAX_RECORD_BYTES, "the record holds {held} bytes");
    let text: usize = record
        .transcript
        .iter()
        .map(|l| size_of::<TranscriptLine>() + l.line.len())
        .chain(record.transactions.iter().map(|t| {
            let rcpts = t
                .rcpts
                .iter()
                .map(|r| size_of::<RcptRecord>() + r.addr.len());
            size_of::<TransactionRecord>() + t.mail_from.len() + rcpts.sum::<usize>()
        }))
        .sum();
    assert!(text <= held, "{text} bytes in the record, {held} counted");
    assert!(
        record
            .transcript_cut
            .is_none_or(|cut| cut <= record.transcript.len())
    );
    assert!(record.transcript_dropped == 0 || record.transcript_cut.is_some());
    assert!(
        record.signatures.windows(2).all(|w| w[0] < w[1]),
        "signatures not sorted and unique"
    );
}

/// What two runs of the same stream must agree on, however it was cut into reads. Pipelining
/// (the `pipelined` flag and `pipelined-run-ahead`) is judged by what arrived together, so it is
/// left out; so is time (both runs are fed the same instant).
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub written: String,
    pub events: Vec<String>,
    pub finished: bool,
    pub helo: Option<String>,
    pub signatures: Vec<Signature>,
    pub transcript: Vec<(bool, String)>,
    pub transactions: String,
}

impl Outcome {
    pub fn of(driver: Driver) -> Outcome {
        let finished = driver.session.is_finished();
        let record = driver.session.into_record();
        Outcome {
            written: String::from_utf8_lossy(&driver.written).into_owned(),
            events: driver.events,
            finished,
            helo: record.helo,
            signatures: record
                .signatures
                .into_iter()
                .filter(|s| *s != Signature::PipelinedRunAhead)
                .collect(),
            transcript: record
                .transcript
                .into_iter()
                .map(|l| (l.direction == Direction::Client, l.line))
                .collect(),
            transactions: format!("{:?}", record.transactions),
        }
    }
}
