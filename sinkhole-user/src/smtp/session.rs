//! The session state machine: input bytes in, replies, events and the record out.
//!
//! Sequence rules (RFC 5321 4.1.4 and what Postfix/sendmail do):
//! - MAIL needs a HELO/EHLO first (sendmail's "Polite people say HELO first", as 503) and no
//!   transaction in progress; RCPT needs an accepted MAIL; DATA/BDAT need an accepted RCPT:
//!   if RCPTs were sent but all refused, DATA gets `554 5.5.1 No valid recipients` (RFC 2920),
//!   otherwise 503. DATA after BDAT in one transaction is 503 (RFC 3030).
//! - HELO/EHLO, RSET and STARTTLS end a transaction; after STARTTLS the client must EHLO again.
//! - The connection, each HELO/EHLO, each MAIL and each RCPT are decided by the host (policy,
//!   at every phase): a refused HELO leaves the client ungreeted, a refused MAIL leaves no
//!   transaction (so what depended on it gets 503), a refused connection is answered 5xx
//!   instead of the banner and then only QUIT is served (RFC 5321 §3.1). A 421 from any
//!   decision closes the session.
//! - Bad commands (500, 501, 502, 503, 555, over-long lines) are counted; past
//!   [`MAX_BAD_COMMANDS`] the session closes with 421 after the error reply.
//! - Junk commands (NOOP, RSET, VRFY, HELP) are counted too, and the count starts again when a
//!   message is accepted (as Postfix's `smtpd_junk_command_limit`); past
//!   [`SessionConfig::max_junk_commands`] the command gets 421 instead of its reply and the
//!   session closes.
//! - After a refused DATA the lines that follow are read as commands, as real servers do; a
//!   pipelining client that sent its message body anyway soon hits the bad-command limit.
//!
//! Pipelining is judged by stream offsets: a command line that begins before the reply to the
//! previous command was produced was sent without waiting for it (`pipelined`); one that
//! depends on a refused command and was sent before that refusal was produced ran ahead of it
//! (`pipelined-run-ahead`).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use super::command::{self, Command, ParamError, ParseError};
use super::data::{Body, DataReader};
use super::reply::{self, Output};
use super::transcript;
use super::{CloseReason, Direction, Event, Reply, SessionConfig, SessionRecord};
use crate::signature::Signature;

/// Longest command line accepted, without its line ending (RFC 5321 asks for 512 at least).
pub const MAX_COMMAND_LINE: usize = 2048;
/// Bad commands tolerated; the next one closes the session with 421.
pub const MAX_BAD_COMMANDS: u32 = 10;
/// Unwritten output past which no more input is processed and [`Session::wants_read`] is false.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Most bytes to feed per [`Session::receive`] ([`super::receive`] cuts a read into such pieces).
pub const MAX_RECEIVE: usize = 64 * 1024;
/// Unprocessed input kept while the session waits (for a decision or for output to drain);
/// bytes fed past it are dropped and noted in the transcript. A server that feeds at most
/// [`MAX_RECEIVE`] per [`Session::receive`], and only while [`Session::wants_read`], never
/// reaches it: what is unprocessed when the session starts to wait is at most one receive and
/// the start of a command line, and nothing more is fed until it reads again.
pub const INPUT_CAP: usize = 2 * MAX_RECEIVE;

/// Where the session is between accept and close. Every change goes through
/// [`Session::set_lifecycle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    /// Accepted, banner not sent yet (the connection may be waiting for its decision): bytes
    /// fed now are `pregreet`, kept for after it.
    Connected,
    /// The banner's first line (`220-`) is out and its last line (`220 `) waits until this
    /// instant ([`SessionConfig::greet_wait`]): bytes fed now are `pregreet` too, kept for after
    /// it, as postscreen's greet wait finds bots that talk before the banner is complete.
    Greeting { until: Instant },
    /// Reading and answering commands.
    Open,
    /// The connection was refused with 5xx instead of the banner: QUIT is answered, every
    /// other command gets 503 (and counts as a bad command).
    Refused,
    /// STARTTLS was answered 220 in the middle of working through input: the rest of that
    /// input is plaintext sent before the handshake, to be discarded (RFC 3207). It lasts until
    /// that input is gone, within the same call.
    StartingTls,
    /// The daemon is stopping while a decision is pending: its reply is followed by 421.
    Closing,
    /// QUIT was answered or 421 sent: nothing more is read or said.
    Finished,
}

/// The client's HELO or EHLO, since the session began or STARTTLS reset it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hello {
    None,
    Helo,
    Ehlo,
}

/// What the input currently is.
#[derive(Debug)]
enum Phase {
    Command,
    /// The rest of an over-long command line, discarded up to its end.
    DiscardLine {
        discarded: u64,
    },
    /// A DATA body, up to `CRLF.CRLF`.
    Data(DataReader),
    /// A BDAT chunk: `remaining` of `size` bytes still to come; `refusal` is the reply it gets
    /// once read, when it cannot be accepted.
    Bdat {
        remaining: u64,
        size: u64,
        last: bool,
        refusal: Option<Refusal>,
    },
}

/// Why a DATA or BDAT cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    OutOfSequence,
    NoValidRecipients,
}

/// A decision the server has to make before the session goes on.
#[derive(Debug)]
enum Pending {
    /// Answered by [`Session::resolve`].
    Decision(Ask),
    /// Answered by [`Session::resolve_message`].
    Message,
}

/// What a pending [`Session::resolve`] is about.
#[derive(Debug)]
enum Ask {
    Greeting,
    Helo { hello: Hello },
    Mail { mail_from: String },
    Recipient { addr: String },
}

/// The mail transaction in progress (after an accepted MAIL).
#[derive(Debug)]
struct Transaction {
    mail_from: String,
    accepted: Vec<String>,
    /// RCPTs answered (accepted or not).
    rcpts_answered: usize,
    /// A BDAT chunk was accepted: DATA is no longer allowed.
    chunking: bool,
    /// Index in `SessionRecord::transactions`, unless the record was full.
    record: Option<usize>,
}

/// One SMTP session, from accept to close.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    start: Instant,
    /// The instant of the latest call that gave one.
    now: Instant,
    /// The idle timer runs from here.
    idle_since: Instant,
    lifecycle: Lifecycle,
    /// Received input; `input[input_pos..]` is not processed yet. `input_offset` is the stream
    /// offset of `input[0]`.
    input: Vec<u8>,
    input_pos: usize,
    input_offset: u64,
    /// Stream offset just past the last byte received.
    received: u64,
    output: Output,
    events: VecDeque<Event>,
    phase: Phase,
    pending: Option<Pending>,
    hello: Hello,
    /// STARTTLS was accepted. Kept apart from the lifecycle: it is a property of the channel,
    /// which the `Received:` protocol still names once the session is closing or finished.
    tls: bool,
    transaction: Option<Transaction>,
    body: Body,
    bad_commands: u32,
    /// Junk commands since the session began or a message was accepted.
    junk_commands: usize,
    /// Stream offset where the command line being handled starts.
    line_start: u64,
    /// Input received (stream offset) when the last reply to a command was produced.
    last_reply_at: u64,
    /// ... when a command that later ones depend on (HELO, MAIL, RCPT) was last refused.
    last_refusal_at: u64,
    /// ... when DATA or BDAT was last refused: whatever was sent before that ran ahead of it.
    last_data_refusal_at: u64,
    /// The reverse path of the last MAIL the host refused (until the next HELO, MAIL or RSET):
    /// a recipient pipelined behind it that equals it still shows `mail-from-eq-rcpt-to`.
    refused_sender: Option<String>,
    /// The server says storage is short: MAIL gets 452 (see [`Session::refuse_new_mail`]).
    refuse_mail: bool,
    /// MAIL commands answered 452 for that.
    storage_refusals: u32,
    record: SessionRecord,
}

impl Session {
    pub fn new(config: Arc<SessionConfig>, now: Instant) -> Session {
        let body = Body::new(config.max_message_bytes, config.keep_bodies);
        Session {
            config,
            start: now,
            now,
            idle_since: now,
            lifecycle: Lifecycle::Connected,
            input: Vec::new(),
            input_pos: 0,
            input_offset: 0,
            received: 0,
            output: Output::default(),
            events: VecDeque::new(),
            phase: Phase::Command,
            pending: None,
            hello: Hello::None,
            tls: false,
            transaction: None,
            body,
            bad_commands: 0,
            junk_commands: 0,
            line_start: 0,
            last_reply_at: 0,
            last_refusal_at: 0,
            last_data_refusal_at: 0,
            refused_sender: None,
            refuse_mail: false,
            storage_refusals: 0,
            record: SessionRecord::default(),
        }
    }

    /// Whether storage is too short for new mail (the disk floor, `capture::floor`): while it
    /// is, a MAIL that would otherwise be accepted gets `452 4.3.1`, and what depends on it
    /// `503`. A transaction already under way goes on. The server sets it before each turn.
    pub fn refuse_new_mail(&mut self, refuse: bool) {
        self.refuse_mail = refuse;
    }

    /// MAIL commands refused for want of storage so far.
    pub fn storage_refusals(&self) -> u32 {
        self.storage_refusals
    }

    /// Bytes that were waiting before the banner was sent.
    pub fn receive_early(&mut self, bytes: &[u8], now: Instant) {
        self.now = now;
        if bytes.is_empty() {
            return;
        }
        self.signal(Signature::Pregreet);
        let kept = self.buffer_input(bytes);
        if kept < bytes.len() {
            self.drop_input(bytes.len() - kept);
        }
    }

    /// Asks for the decision on the connection ([`Event::Connect`]); its [`Session::resolve`]
    /// sends the banner (or the refusal; with a
    /// [`SessionConfig::greet_wait`], only the banner's first line `220-`, its last following at
    /// [`Session::deadline`]) and works through any early bytes. Only once, and not
    /// at all for a session that already finished (timed out or shut down before its banner).
    pub fn greet(&mut self, now: Instant) {
        if self.lifecycle != Lifecycle::Connected || self.pending.is_some() {
            return;
        }
        self.now = now;
        self.idle_since = now;
        self.events.push_back(Event::Connect);
        self.pending = Some(Pending::Decision(Ask::Greeting));
    }

    /// The banner's last line: the session reads commands from here on, the early ones first.
    fn open(&mut self, now: Instant) {
        self.now = now;
        self.idle_since = now;
        self.set_lifecycle(Lifecycle::Open);
        let config = Arc::clone(&self.config);
        self.say(220, false, format_args!("{} ESMTP", config.hostname));
        // The banner is no reply to a command: early commands are `pregreet`, not pipelining.
        self.last_reply_at = 0;
        self.process();
    }

    /// Bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        if matches!(
            self.lifecycle,
            Lifecycle::Connected | Lifecycle::Greeting { .. }
        ) {
            return self.receive_early(bytes, now);
        }
        self.now = now;
        if self.is_finished() || bytes.is_empty() {
            return;
        }
        self.idle_since = now;
        let mut rest = bytes;
        while !rest.is_empty() {
            let kept = self.buffer_input(rest);
            if kept == 0 {
                self.drop_input(rest.len());
                break;
            }
            rest = &rest[kept..];
            self.process();
        }
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        self.output.pending()
    }

    /// `n` bytes of [`Session::output`] were written. May process buffered input (and so
    /// produce events) once the output is below [`OUTPUT_LIMIT`] again.
    pub fn consume_output(&mut self, n: usize) {
        let was_blocked = self.output.pending().len() > OUTPUT_LIMIT;
        self.output.consume(n);
        if was_blocked {
            self.process();
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Body bytes waiting for the host (dot-unstuffed, at most [`super::BODY_BUFFER`]), taken out of
    /// the session; give the buffer back with [`Session::body_taken`]. Empty unless
    /// [`SessionConfig::keep_bodies`]. [`super::settle`] hands them to [`super::Host::body`]
    /// before the events that follow them.
    pub fn take_body(&mut self) -> Vec<u8> {
        self.body.take_buffer()
    }

    /// The host has the bytes [`Session::take_body`] gave: the buffer is reused, and input held
    /// back while it was full is worked through.
    pub fn body_taken(&mut self, buffer: Vec<u8>) {
        if self.body.drained(buffer) {
            self.process();
        }
    }

    /// The decision for the pending [`Event::Connect`], [`Event::Helo`], [`Event::Mail`] or
    /// [`Event::Recipient`] (see each for what the reply does).
    pub fn resolve(&mut self, reply: Reply, now: Instant) {
        let Some(Pending::Decision(ask)) =
            self.pending.take_if(|p| matches!(p, Pending::Decision(_)))
        else {
            return;
        };
        self.now = now;
        self.idle_since = now;
        let accepted = (200..300).contains(&reply.code);
        match ask {
            Ask::Greeting => return self.greeted(&reply),
            Ask::Helo { hello } if accepted => self.helo_accepted(hello),
            Ask::Mail { mail_from } if accepted => {
                self.start_transaction(mail_from);
                self.reply(250, reply::MAIL_OK);
            }
            Ask::Recipient { addr } => {
                self.say_decided(&reply);
                self.record_rcpt(addr, reply.code, accepted);
            }
            Ask::Helo { .. } => {
                self.hello = Hello::None;
                self.record.helo_code = Some(reply.code);
                self.say_decided(&reply);
            }
            Ask::Mail { mail_from } => {
                self.record.start_transaction(&mail_from, reply.code);
                self.refused_sender = Some(mail_from);
                self.say_decided(&reply);
            }
        }
        if !accepted {
            self.last_refusal_at = self.received;
        }
        if reply.code == 421 {
            return self.closed_by_decision();
        }
        self.after_decision();
    }

    /// The outcome for the pending [`Event::Message`]; `stored_as` is its Maildir name.
    pub fn resolve_message(&mut self, reply: Reply, stored_as: Option<String>, now: Instant) {
        if self
            .pending
            .take_if(|p| matches!(p, Pending::Message))
            .is_none()
        {
            return;
        }
        self.now = now;
        self.idle_since = now;
        self.say_decided(&reply);
        if (200..300).contains(&reply.code) {
            // As Postfix: the junk command count starts again once mail is delivered.
            self.junk_commands = 0;
        }
        self.end_transaction(reply.code, stored_as);
        self.after_decision();
    }

    /// When [`Session::handle_timeout`] must next be called: the end of the greet wait, or
    /// the idle deadline.
    pub fn deadline(&self) -> Instant {
        if let Lifecycle::Greeting { until } = self.lifecycle {
            return until;
        }
        self.idle_since
            .checked_add(self.config.idle_timeout)
            .unwrap_or(self.idle_since)
    }

    /// The decision on the connection: the banner, or the refusal instead of it.
    fn greeted(&mut self, reply: &Reply) {
        if self.lifecycle == Lifecycle::Closing {
            // Stopping before the banner went out: the 421 alone.
            return self.close_for_shutdown();
        }
        if (200..300).contains(&reply.code) {
            self.record.connect_code = Some(220);
            let config = Arc::clone(&self.config);
            if config.greet_wait.is_zero() {
                return self.open(self.now);
            }
            // The first line now, the last after the greet wait (`handle_timeout`).
            self.say(220, true, format_args!("{} ESMTP", config.hostname));
            let until = self.now.checked_add(config.greet_wait).unwrap_or(self.now);
            return self.set_lifecycle(Lifecycle::Greeting { until });
        } else {
            self.record.connect_code = Some(reply.code);
            self.say_decided(reply);
            if reply.code / 100 != 5 {
                return self.closed_by_decision();
            }
            self.set_lifecycle(Lifecycle::Refused);
        }
        // The banner is no reply to a command: early commands are `pregreet`, not pipelining.
        self.last_reply_at = 0;
        self.process();
    }

    /// A decision said 421: it is out, and the session is over.
    fn closed_by_decision(&mut self) {
        self.record.closed_by = Some(CloseReason::Policy);
        self.set_lifecycle(Lifecycle::Finished);
    }

    /// Closes the session with 421 when it has been idle past the deadline. While a decision is
    /// pending the client is waiting for us, not idle: the timer restarts instead.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.is_finished() || now < self.deadline() {
            return;
        }
        if let Lifecycle::Greeting { .. } = self.lifecycle {
            return self.open(now);
        }
        if self.pending.is_some() {
            self.idle_since = now;
            return;
        }
        let config = Arc::clone(&self.config);
        self.close(
            CloseReason::Timeout,
            format_args!("4.4.2 {} Error: timeout exceeded", config.hostname),
        );
    }

    /// The daemon is stopping: queue 421 and finish (unless a decision is pending, in which
    /// case the 421 follows its reply).
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        if self.pending.is_some() {
            self.set_lifecycle(Lifecycle::Closing);
        } else {
            self.close_for_shutdown();
        }
    }

    /// False while a decision is pending (except the one on the connection: what the client
    /// sends before the banner is read as `pregreet`), too much output is unwritten or the body
    /// buffer is full (backpressure).
    pub fn wants_read(&self) -> bool {
        // Before the banner, what comes is read (and kept, bounded) as `pregreet`.
        !self.is_finished()
            && (self.pending.is_none() || self.lifecycle == Lifecycle::Connected)
            && self.output.pending().len() <= OUTPUT_LIMIT
            && self.body.room() > 0
    }

    /// The session is over (QUIT answered, 421 sent): close once the output is written.
    pub fn is_finished(&self) -> bool {
        self.lifecycle == Lifecycle::Finished
    }

    pub fn record(&self) -> &SessionRecord {
        &self.record
    }

    /// The envelope of the transaction in progress, whose body [`super::Host::body`] is being
    /// handed: its reverse path (empty for the null sender `<>`) and accepted recipients.
    pub fn envelope(&self) -> Option<(&str, &[String])> {
        self.transaction
            .as_ref()
            .map(|t| (t.mail_from.as_str(), t.accepted.as_slice()))
    }

    /// The protocol a `Received:` line names for this session's messages (RFC 3848): `SMTP`
    /// after HELO, `ESMTP` after EHLO, `ESMTPS` inside TLS.
    pub fn protocol(&self) -> &'static str {
        match (self.tls, self.hello) {
            (true, _) => "ESMTPS",
            (false, Hello::Ehlo) => "ESMTP",
            (false, Hello::Helo | Hello::None) => "SMTP",
        }
    }

    pub fn into_record(self) -> SessionRecord {
        self.record
    }

    // --- input ---

    /// Appends as much of `bytes` as [`INPUT_CAP`] allows; returns how much that was.
    fn buffer_input(&mut self, bytes: &[u8]) -> usize {
        // Processed input is let go here, once per read, rather than after every step.
        self.input.drain(..self.input_pos);
        self.input_offset += self.input_pos as u64;
        self.input_pos = 0;
        let keep = (INPUT_CAP - self.input.len()).min(bytes.len());
        self.input.extend_from_slice(&bytes[..keep]);
        self.received += keep as u64;
        keep
    }

    fn drop_input(&mut self, n: usize) {
        // Dropped bytes still count as received, so they end up "before" every later reply. They
        // leave a gap: the next bytes received directly follow the buffered ones.
        self.received += n as u64;
        let ms = self.ms();
        self.record.note(
            ms,
            Direction::Client,
            format_args!("<{n} bytes dropped: input buffer full>"),
        );
    }

    fn can_process(&self) -> bool {
        matches!(self.lifecycle, Lifecycle::Open | Lifecycle::Refused)
            && self.pending.is_none()
            && self.output.pending().len() <= OUTPUT_LIMIT
            && self.body.room() > 0
    }

    /// Works through buffered input as far as the session may go.
    fn process(&mut self) {
        let input = std::mem::take(&mut self.input);
        let mut pos = self.input_pos;
        while pos < input.len() && self.can_process() {
            let start = self.input_offset + pos as u64;
            match self.step(&input[pos..], start) {
                Some(used) => pos += used,
                None => break,
            }
        }
        if self.lifecycle == Lifecycle::StartingTls {
            self.set_lifecycle(Lifecycle::Open);
            if pos < input.len() {
                let ms = self.ms();
                self.record.log(
                    ms,
                    Direction::Client,
                    "<discarded after STARTTLS> ",
                    &input[pos..],
                );
            }
            pos = input.len();
        }
        self.input = input;
        self.input_pos = pos;
        if pos == self.input.len() {
            self.input_offset += pos as u64;
            self.input.clear();
            self.input_pos = 0;
        }
    }

    /// Handles the start of `rest` (which begins at stream offset `start`); returns how many
    /// bytes were used, or `None` when more input is needed.
    fn step(&mut self, rest: &[u8], start: u64) -> Option<usize> {
        match &mut self.phase {
            Phase::Command => self.command_step(rest, start),
            Phase::DiscardLine { discarded } => {
                let lf = rest.iter().position(|&b| b == b'\n');
                let used = lf.map_or(rest.len(), |i| i + 1);
                let before = *discarded / MAX_COMMAND_LINE as u64;
                *discarded += lf.unwrap_or(rest.len()) as u64;
                // An endless line counts as one more bad command every MAX_COMMAND_LINE bytes.
                let extra = *discarded / MAX_COMMAND_LINE as u64 - before;
                if lf.is_some() {
                    self.phase = Phase::Command;
                }
                for _ in 0..extra {
                    self.count_bad_command();
                }
                Some(used)
            }
            Phase::Data(reader) => {
                if start < self.last_reply_at {
                    // The body came before the 354 was produced.
                    self.record.pipelined = true;
                }
                let room = self.body.room();
                if room == 0 {
                    return None;
                }
                let fed = &rest[..rest.len().min(room)];
                let was_oversize = self.body.is_oversize();
                let end = reader.feed(fed, &mut self.body);
                self.check_body_limit(was_oversize);
                match end {
                    Some(used) => {
                        self.phase = Phase::Command;
                        self.end_of_data();
                        Some(used)
                    }
                    None => Some(fed.len()),
                }
            }
            Phase::Bdat {
                remaining, refusal, ..
            } => {
                let mut used = (*remaining).min(rest.len() as u64) as usize;
                if refusal.is_none() {
                    used = used.min(self.body.room());
                    if used == 0 {
                        return None;
                    }
                    let was_oversize = self.body.is_oversize();
                    self.body.extend(&rest[..used]);
                    *remaining -= used as u64;
                    self.check_body_limit(was_oversize);
                } else {
                    *remaining -= used as u64;
                }
                if matches!(self.phase, Phase::Bdat { remaining: 0, .. }) {
                    self.end_of_chunk();
                }
                Some(used)
            }
        }
    }

    fn command_step(&mut self, rest: &[u8], start: u64) -> Option<usize> {
        let window = &rest[..rest.len().min(MAX_COMMAND_LINE + 2)];
        match window.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                self.line_start = start;
                if lf > 0 && rest[lf - 1] == b'\r' {
                    self.command_line(&rest[..lf - 1], &rest[..lf - 1]);
                } else {
                    // A bare LF ending: accepted, and logged (as `\x0a`) so it shows.
                    self.command_line(&rest[..lf], &rest[..=lf]);
                }
                Some(lf + 1)
            }
            None if window.len() == MAX_COMMAND_LINE + 2 => {
                self.line_start = start;
                self.line_too_long(window);
                self.phase = Phase::DiscardLine { discarded: 0 };
                Some(window.len())
            }
            None => None,
        }
    }

    // --- commands ---

    /// One command line: `line` without its ending, `logged` as it goes into the transcript.
    fn command_line(&mut self, line: &[u8], logged: &[u8]) {
        if line.len() > MAX_COMMAND_LINE {
            return self.line_too_long(logged);
        }
        self.log_client(logged);
        if self.line_start < self.last_reply_at {
            self.record.pipelined = true;
        }
        if self.line_start < self.last_data_refusal_at {
            self.signal(Signature::PipelinedRunAhead);
        }
        let parsed = command::parse(line);
        if self.lifecycle == Lifecycle::Refused && !matches!(parsed, Ok(Command::Quit)) {
            // Refused at connect: only QUIT is served (RFC 5321 §3.1).
            return self.out_of_sequence();
        }
        match parsed {
            Ok(Command::Ehlo(name)) => self.helo(name, Hello::Ehlo),
            Ok(Command::Helo(name)) => self.helo(name, Hello::Helo),
            Ok(Command::Mail { path, params }) => self.mail(path, params),
            Ok(Command::Rcpt { path, params }) => self.rcpt(path, params),
            Ok(Command::Data) => self.data(),
            Ok(Command::Bdat { size, last }) => self.bdat(size, last),
            Ok(Command::Rset | Command::Noop | Command::Vrfy | Command::Help)
                if self.junk_limit_reached() => {}
            Ok(Command::Rset) => {
                self.reset_transaction();
                self.refused_sender = None;
                self.reply(250, reply::OK);
            }
            Ok(Command::Noop) => self.reply(250, reply::OK),
            Ok(Command::Vrfy) => self.reply(252, reply::VRFY),
            Ok(Command::Help) => self.reply(214, reply::HELP),
            Ok(Command::Quit) => {
                self.reply(221, reply::BYE);
                self.set_lifecycle(Lifecycle::Finished);
            }
            Ok(Command::StartTls) => self.starttls(),
            Ok(Command::NotImplemented) => self.bad_command(502, reply::NOT_IMPLEMENTED),
            Err(ParseError::Unknown) => self.bad_command(500, reply::UNRECOGNIZED),
            Err(ParseError::Syntax(text)) => {
                // A MAIL/RCPT/EHLO that cannot be read is refused like one that was read.
                self.last_refusal_at = self.received;
                self.bad_command(501, text);
            }
        }
    }

    /// Counts a junk command (NOOP, RSET, VRFY, HELP: what Postfix's
    /// `smtpd_junk_command_limit` counts, and HELP); past `max_junk_commands` answers it 421 and
    /// closes. EXPN, ETRN and the other commands we do not offer are bad commands already.
    fn junk_limit_reached(&mut self) -> bool {
        self.junk_commands += 1;
        if self.junk_commands <= self.config.max_junk_commands {
            return false;
        }
        let config = Arc::clone(&self.config);
        self.close(
            CloseReason::JunkCommands,
            format_args!("4.7.0 {} Error: too many junk commands", config.hostname),
        );
        true
    }

    fn line_too_long(&mut self, logged: &[u8]) {
        self.log_client(logged);
        self.bad_command(500, reply::LINE_TOO_LONG);
    }

    /// HELO/EHLO: the name is recorded, then decided ([`Event::Helo`]).
    fn helo(&mut self, name: &[u8], hello: Hello) {
        self.reset_transaction();
        self.refused_sender = None;
        let name = transcript::escape(name);
        self.record.helo = Some(name.clone());
        if let Some(signature) = helo_signature(name.as_bytes()) {
            self.signal(signature);
        }
        self.events.push_back(Event::Helo { name });
        self.pending = Some(Pending::Decision(Ask::Helo { hello }));
    }

    /// The decided HELO/EHLO was accepted: our reply.
    fn helo_accepted(&mut self, hello: Hello) {
        self.hello = hello;
        self.record.helo_code = Some(250);
        let config = Arc::clone(&self.config);
        if hello == Hello::Helo {
            return self.say(250, false, format_args!("{}", config.hostname));
        }
        self.say(250, true, format_args!("{}", config.hostname));
        self.say(250, true, format_args!("PIPELINING"));
        self.say(250, true, format_args!("SIZE {}", config.max_message_bytes));
        if config.starttls && !self.tls {
            self.say(250, true, format_args!("STARTTLS"));
        }
        for extension in ["8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"] {
            self.say(250, true, format_args!("{extension}"));
        }
        self.say(250, false, format_args!("CHUNKING"));
    }

    fn mail(&mut self, path: &[u8], params: &[u8]) {
        if self.hello == Hello::None || self.transaction.is_some() {
            self.out_of_sequence();
            self.last_refusal_at = self.received;
            return;
        }
        let refusal = match (address(path), command::parse_mail_params(params)) {
            (None, _) => Some((501, reply::BAD_SENDER)),
            (_, Err(ParamError::Unknown)) => Some((555, reply::UNKNOWN_PARAMETER)),
            (_, Err(ParamError::Syntax)) => Some((501, reply::BAD_PARAMETER)),
            (_, Ok(p))
                if p.size
                    .is_some_and(|size| size > self.config.max_message_bytes) =>
            {
                Some((552, reply::SIZE_EXCEEDED))
            }
            (Some(_), Ok(_)) if self.refuse_mail => {
                self.storage_refusals += 1;
                Some((452, reply::INSUFFICIENT_STORAGE))
            }
            (Some(mail_from), Ok(_)) => {
                self.refused_sender = None;
                self.events.push_back(Event::Mail {
                    mail_from: mail_from.clone(),
                });
                self.pending = Some(Pending::Decision(Ask::Mail { mail_from }));
                None
            }
        };
        match refusal {
            None => {}
            Some((code, text)) => {
                self.last_refusal_at = self.received;
                if code == 552 || code == 452 {
                    self.reply(code, text);
                } else {
                    self.bad_command(code, text);
                }
            }
        }
    }

    fn rcpt(&mut self, path: &[u8], params: &[u8]) {
        let Some(transaction) = self
            .transaction
            .as_ref()
            .filter(|_| self.hello != Hello::None)
        else {
            // Behind a MAIL that was refused, the bot still shows what it meant to send.
            if let (Some(sender), Some(addr)) = (&self.refused_sender, address(path))
                && same_address(sender, &addr)
            {
                self.signal(Signature::MailFromEqRcptTo);
            }
            return self.out_of_sequence();
        };
        let Some(addr) = address(path).filter(|a| !a.is_empty()) else {
            return self.bad_command(501, reply::BAD_RECIPIENT);
        };
        if !params.is_empty() {
            return self.bad_command(555, reply::UNKNOWN_PARAMETER);
        }
        let full = transaction.accepted.len() >= self.config.max_recipients;
        let mail_from = transaction.mail_from.clone();
        if same_address(&mail_from, &addr) {
            self.signal(Signature::MailFromEqRcptTo);
        }
        if full {
            self.reply(452, reply::TOO_MANY_RECIPIENTS);
            self.last_refusal_at = self.received;
            return self.record_rcpt(addr, 452, false);
        }
        self.events.push_back(Event::Recipient {
            mail_from,
            rcpt: addr.clone(),
        });
        self.pending = Some(Pending::Decision(Ask::Recipient { addr }));
    }

    /// Why DATA/BDAT cannot be accepted now, if it cannot.
    fn data_refusal(&self) -> Option<Refusal> {
        match &self.transaction {
            Some(t) if self.hello != Hello::None && !t.accepted.is_empty() => None,
            Some(t) if self.hello != Hello::None && t.rcpts_answered > 0 => {
                Some(Refusal::NoValidRecipients)
            }
            _ => Some(Refusal::OutOfSequence),
        }
    }

    fn data(&mut self) {
        let refusal = match self.data_refusal() {
            None if self.transaction.as_ref().is_some_and(|t| t.chunking) => {
                Some(Refusal::OutOfSequence)
            }
            refusal => refusal,
        };
        if let Some(refusal) = refusal {
            return self.refuse_data(refusal);
        }
        self.reply(354, reply::START_DATA);
        self.body.end();
        self.phase = Phase::Data(DataReader::default());
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let refusal = self.data_refusal();
        if refusal.is_none() && !self.transaction.as_ref().is_some_and(|t| t.chunking) {
            self.body.end();
        }
        self.phase = Phase::Bdat {
            remaining: size,
            size,
            last,
            refusal,
        };
        if size == 0 {
            self.end_of_chunk();
        }
    }

    fn refuse_data(&mut self, refusal: Refusal) {
        self.last_data_refusal_at = self.received;
        match refusal {
            Refusal::OutOfSequence => self.out_of_sequence(),
            Refusal::NoValidRecipients => {
                if self.line_start < self.last_refusal_at {
                    self.signal(Signature::PipelinedRunAhead);
                }
                self.reply(554, reply::NO_VALID_RECIPIENTS);
            }
        }
    }

    fn end_of_data(&mut self) {
        let ms = self.ms();
        self.record.note(
            ms,
            Direction::Client,
            format_args!("<{} bytes>", self.body.size()),
        );
        self.record.note(ms, Direction::Client, format_args!("."));
        self.finish_message();
    }

    /// After body bytes: when they took the body past its limit, the host drops what it was
    /// handed of it (the message gets 552 at its end).
    fn check_body_limit(&mut self, was_oversize: bool) {
        if !was_oversize && self.body.is_oversize() && self.config.keep_bodies {
            self.events.push_back(Event::Discard);
        }
    }

    fn end_of_chunk(&mut self) {
        let Phase::Bdat {
            size,
            last,
            refusal,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        let ms = self.ms();
        self.record
            .note(ms, Direction::Client, format_args!("<{size} bytes>"));
        if let Some(refusal) = refusal {
            return self.refuse_data(refusal);
        }
        if let Some(transaction) = self.transaction.as_mut() {
            transaction.chunking = true;
        }
        if last || self.body.is_oversize() {
            return self.finish_message();
        }
        self.reply_fmt(250, format_args!("2.0.0 Ok: {size} octets received"));
    }

    /// The message is complete (or over the limit): hand it over, or refuse it.
    fn finish_message(&mut self) {
        let size = self.body.size();
        if let Some(index) = self.transaction.as_ref().and_then(|t| t.record) {
            self.record.transactions[index].size = size;
        }
        if self.body.is_oversize() {
            self.reply(552, reply::SIZE_EXCEEDED);
            self.body.end();
            return self.end_transaction(552, None);
        }
        let Some(transaction) = self.transaction.as_mut() else {
            return;
        };
        // Its last bytes are still in the buffer: `settle` hands them over before this event.
        self.events.push_back(Event::Message {
            mail_from: transaction.mail_from.clone(),
            rcpts: transaction.accepted.clone(),
            size,
        });
        self.body.handed_over();
        self.pending = Some(Pending::Message);
    }

    fn starttls(&mut self) {
        if !self.config.starttls {
            return self.bad_command(502, reply::NOT_IMPLEMENTED);
        }
        if self.tls {
            return self.out_of_sequence();
        }
        self.reply(220, reply::START_TLS);
        self.events.push_back(Event::StartTls);
        self.tls = true;
        self.hello = Hello::None;
        self.reset_transaction();
        self.set_lifecycle(Lifecycle::StartingTls);
    }

    fn out_of_sequence(&mut self) {
        self.signal(Signature::OutOfSequence);
        if self.line_start < self.last_refusal_at {
            self.signal(Signature::PipelinedRunAhead);
        }
        self.bad_command(503, reply::OUT_OF_SEQUENCE);
    }

    fn bad_command(&mut self, code: u16, text: &str) {
        self.reply(code, text);
        self.count_bad_command();
    }

    fn count_bad_command(&mut self) {
        if self.is_finished() {
            return;
        }
        self.bad_commands += 1;
        if self.bad_commands > MAX_BAD_COMMANDS {
            let config = Arc::clone(&self.config);
            self.close(
                CloseReason::Errors,
                format_args!("4.7.0 {} Error: too many errors", config.hostname),
            );
        }
    }

    // --- transactions ---

    fn start_transaction(&mut self, mail_from: String) {
        let record = self.record.start_transaction(&mail_from, 250);
        self.transaction = Some(Transaction {
            mail_from,
            accepted: Vec::new(),
            rcpts_answered: 0,
            chunking: false,
            record,
        });
    }

    fn record_rcpt(&mut self, addr: String, code: u16, accepted: bool) {
        let Some(transaction) = self.transaction.as_mut() else {
            return;
        };
        transaction.rcpts_answered += 1;
        self.record.add_rcpt(transaction.record, &addr, code);
        if accepted {
            transaction.accepted.push(addr);
        }
    }

    /// The end of data was answered with `code`: the transaction is over.
    fn end_transaction(&mut self, code: u16, stored_as: Option<String>) {
        if let Some(index) = self.transaction.take().and_then(|t| t.record) {
            let record = &mut self.record.transactions[index];
            record.data_code = Some(code);
            record.message = stored_as;
        }
    }

    fn reset_transaction(&mut self) {
        self.transaction = None;
        // A BDAT transaction abandoned halfway: what the host was handed is no message.
        if self.body.handed_out() {
            self.events.push_back(Event::Discard);
        }
        self.body.end();
    }

    // --- lifecycle ---

    /// The one place the lifecycle changes. The transitions it allows are the only ones the
    /// session makes; a debug build stops on any other.
    fn set_lifecycle(&mut self, next: Lifecycle) {
        use Lifecycle::*;
        debug_assert!(
            matches!(
                (self.lifecycle, next),
                (
                    Connected,
                    Open | Greeting { .. } | Refused | Closing | Finished
                ) | (Greeting { .. }, Open | Finished)
                    | (Open, StartingTls | Closing | Finished)
                    | (Refused, Closing | Finished)
                    | (StartingTls, Open)
                    | (Closing, Closing | Finished)
            ),
            "lifecycle {:?} -> {next:?}",
            self.lifecycle
        );
        self.lifecycle = next;
    }

    fn after_decision(&mut self) {
        if self.lifecycle == Lifecycle::Closing {
            self.close_for_shutdown();
        } else {
            self.process();
        }
    }

    // --- output ---

    fn ms(&self) -> u64 {
        u64::try_from(self.now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX)
    }

    fn log_client(&mut self, bytes: &[u8]) {
        let ms = self.ms();
        self.record.log(ms, Direction::Client, "", bytes);
    }

    /// Writes one reply line and logs it; the last line of a reply marks the input received so
    /// far as sent before the reply.
    fn say(&mut self, code: u16, more: bool, text: std::fmt::Arguments<'_>) {
        let range = self.output.line(code, more, text);
        self.log_server(range);
        if !more {
            self.record.replies.add(code);
            self.last_reply_at = self.received;
        }
    }

    fn reply(&mut self, code: u16, text: &str) {
        self.say(code, false, format_args!("{text}"));
    }

    fn reply_fmt(&mut self, code: u16, text: std::fmt::Arguments<'_>) {
        self.say(code, false, text);
    }

    fn say_decided(&mut self, reply: &Reply) {
        let range = self.output.decided(reply.code, &reply.text);
        self.log_server(range);
        self.record.replies.add(reply.code);
        self.last_reply_at = self.received;
    }

    fn log_server(&mut self, range: std::ops::Range<usize>) {
        let ms = self.ms();
        self.record
            .log(ms, Direction::Server, "", self.output.bytes(range));
    }

    fn close(&mut self, reason: CloseReason, text: std::fmt::Arguments<'_>) {
        self.say(421, false, text);
        self.record.closed_by = Some(reason);
        self.set_lifecycle(Lifecycle::Finished);
    }

    fn close_for_shutdown(&mut self) {
        let config = Arc::clone(&self.config);
        self.close(
            CloseReason::Shutdown,
            format_args!("4.3.2 {} Service shutting down", config.hostname),
        );
    }

    fn signal(&mut self, signature: Signature) {
        if let Err(i) = self.record.signatures.binary_search(&signature) {
            self.record.signatures.insert(i, signature);
        }
    }
}

/// An address from a MAIL/RCPT path: UTF-8 without control characters, kept as given.
fn address(path: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(path).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(text.to_owned())
}

/// `local@domain` equal to another: the local part exactly, the domain in any case.
fn same_address(a: &str, b: &str) -> bool {
    if a.is_empty() {
        return false;
    }
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((a_local, a_domain)), Some((b_local, b_domain))) => {
            a_local == b_local && a_domain.eq_ignore_ascii_case(b_domain)
        }
        _ => a == b,
    }
}

/// `helo-ip-literal` for `[192.0.2.1]` / `[IPv6:2001:db8::1]`, `helo-bare-ip` for `192.0.2.1`.
fn helo_signature(name: &[u8]) -> Option<Signature> {
    let name = name.split(|&b| b == b' ').next()?;
    let name = std::str::from_utf8(name).ok()?;
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let is_v6 = literal
            .get(..5)
            .is_some_and(|tag| tag.eq_ignore_ascii_case("IPv6:"))
            && literal[5..].parse::<Ipv6Addr>().is_ok();
        return (is_v6 || literal.parse::<Ipv4Addr>().is_ok()).then_some(Signature::HeloIpLiteral);
    }
    name.parse::<IpAddr>()
        .is_ok()
        .then_some(Signature::HeloBareIp)
}
