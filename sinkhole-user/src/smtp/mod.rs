//! The SMTP protocol, sans-IO (RFC 5321 receiver side, with PIPELINING, CHUNKING, SIZE,
//! 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8).
//!
//! A [`Session`] never touches a socket or a clock: it is fed bytes and instants and hands back
//! bytes to write, events that need a decision, and a record of everything that happened.
//! The server loop only moves bytes; all protocol logic lives (and is tested) here.
//!
//! Driving a session: through [`accept`], [`receive`] and [`settle`] (module `drive`), which
//! hold the call order; the caller implements [`Host`] (keep the session, answer its events,
//! write its output). Besides:
//! - Call [`Session::handle_timeout`] at [`Session::deadline`], then [`settle`]. While a
//!   decision is pending the idle timer does not fire (it restarts).
//! - A body streams: its bytes go to [`Host::body`] a buffer at a time, at most
//!   [`BODY_BUFFER`], as they arrive; [`Event::Message`] ends it, [`Event::Discard`] drops it.
//! - A decision event ([`Event::Connect`], [`Event::Helo`], [`Event::Mail`],
//!   [`Event::Recipient`], [`Event::Message`]) suspends the session (no further input is
//!   processed, [`Session::wants_read`] is false) until [`Session::resolve`] (or, for a
//!   message, [`Session::resolve_message`]) gives its reply. One decision is pending at a time;
//!   a `resolve*` with nothing of its kind pending is ignored. A `421` reply to any of them
//!   closes the session after it (policy action `disconnect`).
//! - [`Event::StartTls`]: what followed STARTTLS in the same read was discarded (and logged);
//!   flush the `220` in plaintext, run the handshake, then feed decrypted bytes only.
//! - When [`Session::is_finished`] and the output is written, close; keep
//!   [`Session::into_record`] for the session log.

mod command;
mod data;
mod drive;
mod reply;
mod session;
mod transcript;

#[cfg(test)]
mod tests;

/// The command-line parser, reachable for the fuzz targets in `fuzz/` (a crate of its own, so
/// `pub(crate)` cannot serve). Not part of the library's interface.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::command::{Command, ParseError, parse, parse_mail_params};
}

use std::time::Duration;

pub use data::BODY_BUFFER;
pub use drive::{Host, accept, receive, settle};
pub use session::{
    INPUT_CAP, MAX_BAD_COMMANDS, MAX_COMMAND_LINE, MAX_RECEIVE, OUTPUT_LIMIT, Session,
};
pub use transcript::{
    MAX_LINE_BYTES as MAX_TRANSCRIPT_LINE_BYTES, MAX_LINES as MAX_TRANSCRIPT_LINES,
    MAX_RECORD_BYTES, MAX_RECORDED, RecordBudget, TAIL_BYTES, escape,
};

/// Limits and names a session needs; shared by every session of a daemon.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our name in the banner and EHLO reply.
    pub hostname: String,
    /// SIZE advertised; larger messages get 552 after the data is drained.
    pub max_message_bytes: u64,
    /// Recipients past this get 452.
    pub max_recipients: usize,
    /// Junk commands (NOOP, RSET, VRFY, HELP) tolerated since the session began or a message
    /// was accepted; the next one gets 421 and the session closes.
    pub max_junk_commands: usize,
    /// Silence longer than this: 421 and close.
    pub idle_timeout: Duration,
    /// How long the banner's last line waits after its first (`smtp.greet_wait`); a client
    /// that sends anything meanwhile is `pregreet`. Zero: a one-line banner at once.
    pub greet_wait: Duration,
    /// Advertise STARTTLS (only when the server can do it).
    pub starttls: bool,
    /// Hand each message's bytes to [`Host::body`] as they arrive; when false (nothing is
    /// stored) they are only counted.
    pub keep_bodies: bool,
}

/// A reply to send: a code and its text (which begins with the enhanced status code when there
/// is one, e.g. `550 5.7.1 ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

/// Something the session needs decided, or wants known.
#[derive(Debug)]
pub enum Event {
    /// The client connected: the banner waits for [`Session::resolve`]. A 2xx reply sends our
    /// banner; a 5xx reply is sent instead of it, and from then on every command but QUIT gets
    /// 503 (RFC 5321 §3.1); a 4xx reply is sent and the session closes.
    Connect,
    /// A HELO or EHLO with a name (escaped as the record keeps it). The session waits for
    /// [`Session::resolve`]: a 2xx reply sends our own HELO/EHLO reply; any other reply is
    /// sent as it is, and the client has not greeted (MAIL gets 503).
    Helo { name: String },
    /// A `MAIL FROM` that passed the protocol's own checks (syntax, size, storage). The
    /// session waits for [`Session::resolve`]: a 2xx reply starts the transaction (our own
    /// `250`); any other reply refuses the MAIL, and whatever depended on it gets 503.
    Mail {
        /// The reverse path without angle brackets; empty for the null sender `<>`.
        mail_from: String,
    },
    /// A syntactically valid `RCPT TO` in a valid transaction. The session waits for
    /// [`Session::resolve`], whose reply is sent as it is.
    Recipient {
        /// Reverse path of the transaction; empty for the null sender `<>`.
        mail_from: String,
        /// The recipient as given (without angle brackets).
        rcpt: String,
    },
    /// A complete message (DATA or the last BDAT) within the size limit: its bytes,
    /// dot-unstuffed, are those handed to [`Host::body`] since the last `Message` or
    /// [`Event::Discard`] (none unless [`SessionConfig::keep_bodies`]). The session waits for
    /// [`Session::resolve_message`], which the server calls once the message is durable (250)
    /// or failed to store (451).
    Message {
        mail_from: String,
        /// The accepted recipients.
        rcpts: Vec<String>,
        /// Its size in bytes (after dot-unstuffing), handed out or not.
        size: u64,
    },
    /// The body bytes handed to [`Host::body`] since the last [`Event::Message`] or `Discard`
    /// are no message: it went past the size limit (552 at its end), or its BDAT transaction
    /// was abandoned. Drop them; the session goes on.
    Discard,
    /// The client asked for STARTTLS and was told 220: the server must start the TLS handshake
    /// before feeding any more bytes; bytes already buffered after the command are discarded
    /// (RFC 3207) and recorded.
    StartTls,
}

/// Everything the session log needs from the protocol side. It holds at most
/// [`MAX_RECORD_BYTES`] of transcript, transactions and recipients, whatever the client sends:
/// the beginning of the session until that is spent (less [`TAIL_BYTES`]), then the
/// transcript's latest lines within [`TAIL_BYTES`]; what is left out is counted.
#[derive(Clone, Debug, Default)]
pub struct SessionRecord {
    pub helo: Option<String>,
    /// The client sent more than one command in one write (or before a reply).
    pub pipelined: bool,
    pub signatures: Vec<crate::signature::Signature>,
    pub transactions: Vec<TransactionRecord>,
    /// The session's first lines, then (from [`SessionRecord::transcript_cut`] on) its latest.
    pub transcript: Vec<TranscriptLine>,
    /// Where lines were left out once the transcript was full: the lines before it are the
    /// session's beginning, the ones from it on its latest. `None` while nothing was cut.
    pub transcript_cut: Option<usize>,
    /// Lines not kept because the transcript was full.
    pub transcript_dropped: usize,
    /// Their bytes (escaped and capped as they would have been kept).
    pub transcript_bytes_dropped: usize,
    /// Transactions not kept because the record holds at most [`MAX_RECORDED`] of them.
    pub transactions_dropped: usize,
    /// Recipients not kept because the record holds at most [`MAX_RECORDED`] of them (all
    /// transactions together).
    pub rcpts_dropped: usize,
    /// Every reply sent, by code (for `sinkhole_smtp_replies_total{code}`).
    pub replies: ReplyCounts,
    /// Why the session closed the connection with 421, if it did.
    pub closed_by: Option<CloseReason>,
    /// The code the connection was greeted with (220, or the policy's refusal); `None` when
    /// the session ended before its greeting.
    pub connect_code: Option<u16>,
    /// The code of the reply to the latest HELO/EHLO, if one was answered.
    pub helo_code: Option<u16>,
    /// What the record holds, against [`MAX_RECORD_BYTES`].
    pub budget: RecordBudget,
}

/// Why a session said 421 and closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle past `smtp.idle_timeout`.
    Timeout,
    /// More than [`MAX_BAD_COMMANDS`] bad commands.
    Errors,
    /// More than `smtp.max_junk_commands` junk commands.
    JunkCommands,
    /// The daemon is stopping.
    Shutdown,
    /// A decision said 421 (policy action `disconnect`, or `tempfail` at connect).
    Policy,
}

impl CloseReason {
    /// The name in the session log's `closed_by`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Timeout => "timeout",
            CloseReason::Errors => "errors",
            CloseReason::JunkCommands => "junk-commands",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Policy => "policy",
        }
    }
}

/// Replies sent in one session, counted by code. One entry per distinct code (a session sees a
/// handful), so an idle session holds one and no reply allocates once its code was seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyCounts(Vec<(u16, u32)>);

impl ReplyCounts {
    pub fn add(&mut self, code: u16) {
        match self.0.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => self.0.push((code, 1)),
        }
    }

    /// (code, replies) in the order the codes were first sent.
    pub fn iter(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.0.iter().copied()
    }
}

/// One `MAIL FROM` .. end of data (or RSET); or a `MAIL FROM` the policy refused, with no
/// recipients.
#[derive(Clone, Debug, Default)]
pub struct TransactionRecord {
    pub mail_from: String,
    /// The reply to the `MAIL FROM`: 250, or the policy's refusal.
    pub mail_code: u16,
    pub rcpts: Vec<RcptRecord>,
    /// The reply to the end of data, if data was sent.
    pub data_code: Option<u16>,
    /// Where the message was stored (the Maildir file name), if it was.
    pub message: Option<String>,
    /// Message size in bytes as received (after dot-unstuffing).
    pub size: u64,
}

#[derive(Clone, Debug)]
pub struct RcptRecord {
    pub addr: String,
    pub code: u16,
}

/// Who sent a transcript line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Client,
    Server,
}

/// One transcript line: milliseconds since the session began, who, and the line, escaped
/// (control bytes, non-UTF-8 and backslash as `\xNN`) and cut to a maximum length.
#[derive(Clone, Debug)]
pub struct TranscriptLine {
    pub ms: u64,
    pub direction: Direction,
    pub line: String,
}
