//! One client connection: its socket, its SMTP session, and the loop's bookkeeping.
//!
//! A connection owns no buffers of its own: reads go through the loop's one scratch buffer
//! straight into the session, and writes come straight out of the session's output, so an
//! idle connection costs its socket, its session and this struct (plus rustls' state, with
//! its own bounded buffers, once the client started TLS). A message being received streams into
//! its file, a descriptor more while it lasts.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

use super::ended::EndedSession;
use super::timer::TimerEntry;
use crate::capture::headers::Trace;
use crate::capture::maildir::{Maildir, MessageFile};
use crate::capture::session_log::{TlsInfo, session_id};
use crate::policy::book::AddressBook;
use crate::smtp::Session;
use crate::syn::Syn;
use crate::verdict::{Ask, ClientJudge, Context, Decision, Rules};

/// What carries the session's bytes.
pub enum Transport {
    Plain,
    /// STARTTLS was answered: the `220` still goes out in plaintext; the socket is not read
    /// until it is out, since what comes next belongs to the handshake.
    Upgrading(Box<ServerConnection>),
    Tls(Box<ServerConnection>),
    /// The handshake (or a TLS record) failed, with this error: nothing more is read or
    /// written, the connection is closing.
    Failed(String),
}

pub struct Connection {
    stream: TcpStream,
    transport: Transport,
    session: Session,
    /// Its score, policy and held recipient reply.
    judge: ClientJudge,
    peer: SocketAddr,
    /// Tells this connection apart from earlier ones in the same slot (timers, completions).
    serial: u64,
    /// The session id of the log and the trace headers.
    id: String,
    started: SystemTime,
    /// The deadline the timer wheel holds an entry for, if any.
    scheduled: Option<Instant>,
    /// The socket may have bytes to read: set by a readable event, cleared by `WouldBlock`
    /// (mio is edge-triggered, so what is not read now gets no second event).
    readable: bool,
    /// WRITABLE interest is registered (only while output is stuck).
    wants_writable: bool,
    /// The message being received, streaming into its file (when messages are stored): the one
    /// descriptor a connection holds besides its socket.
    message: Option<MessageFile>,
    /// A message of this connection is with the capture thread: since when, and its
    /// recipients.
    capturing: Option<(Instant, Vec<String>)>,
    /// The client closed its side, the connection broke, or the client was just blocked: read
    /// no more, and close as soon as the output is out and no message of it is being stored.
    peer_closed: bool,
    /// The SYN that opened the connection, as the XDP program saw it.
    syn: Option<Syn>,
}

/// What one read did.
pub enum ReadOutcome {
    /// This many bytes of the client's (decrypted, under TLS) are at the start of the buffer;
    /// none when a read of TLS records made no plaintext yet.
    Data(usize),
    /// Nothing more for now.
    Drained,
    /// The client closed its side, or the connection broke.
    Closed,
}

/// What a flush did.
#[derive(PartialEq, Eq)]
pub enum FlushOutcome {
    /// All output is written.
    Done,
    /// The socket buffer is full; wait for WRITABLE.
    Blocked,
    /// The connection broke.
    Broken,
}

impl Connection {
    /// A connection just accepted (registered READABLE), in plaintext; `readable`: its socket
    /// may still hold bytes.
    pub fn new(
        stream: TcpStream,
        session: Session,
        judge: ClientJudge,
        peer: SocketAddr,
        serial: u64,
        started: SystemTime,
        readable: bool,
    ) -> Connection {
        Connection {
            stream,
            transport: Transport::Plain,
            session,
            judge,
            peer,
            serial,
            id: session_id(started, serial),
            started,
            scheduled: None,
            readable,
            wants_writable: false,
            message: None,
            capturing: None,
            peer_closed: false,
            syn: None,
        }
    }

    /// The SYN fingerprint of this connection, for the session log.
    pub fn set_syn(&mut self, syn: Option<Syn>) {
        self.syn = syn;
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn judge(&self) -> &ClientJudge {
        &self.judge
    }

    pub fn judge_mut(&mut self) -> &mut ClientJudge {
        &mut self.judge
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The client's address as it is scored, blocked and limited (IPv4-mapped as IPv4).
    pub fn client_ip(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The session id of the log and the trace headers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A readable event came (or the socket closed or failed, which a read finds out).
    pub fn mark_readable(&mut self) {
        self.readable = true;
    }

    /// The client closed its side, the connection broke, or the client was just blocked.
    pub fn mark_peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Whether to read now: the socket may have bytes, and the session takes input.
    pub fn wants_read(&self) -> bool {
        self.readable && self.session.wants_read() && !self.peer_closed
    }

    /// With its output out: the session is over, or the client left and nothing it sent is
    /// still being stored.
    pub fn is_over(&self) -> bool {
        self.session.is_finished() || (self.peer_closed && self.capturing.is_none())
    }

    /// Registers WRITABLE interest while output is `stuck`, and drops it once it is out.
    pub fn watch_writable(&mut self, registry: &Registry, token: Token, stuck: bool) {
        if self.wants_writable == stuck {
            return;
        }
        self.wants_writable = stuck;
        let interest = if stuck {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = registry.reregister(&mut self.stream, token, interest);
    }

    /// A message of this connection went to the capture thread at `now`.
    pub fn mark_capturing(&mut self, now: Instant, rcpts: Vec<String>) {
        self.capturing = Some((now, rcpts));
    }

    /// The capture thread is done with the message: how long it had it, and its recipients.
    pub fn capture_answered(&mut self, now: Instant) -> Option<(std::time::Duration, Vec<String>)> {
        self.capturing
            .take()
            .map(|(since, rcpts)| (now - since, rcpts))
    }

    /// How long ago the session was accepted (by the wall clock).
    pub fn age(&self) -> std::time::Duration {
        SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default()
    }

    /// The connection's next deadline (the session's, or that of a held recipient reply),
    /// when the timer wheel needs an entry for it: none is held at or before it.
    pub fn reschedule(&mut self) -> Option<Instant> {
        let deadline = match self.judge.deadline() {
            Some(held) => held.min(self.session.deadline()),
            None => self.session.deadline(),
        };
        if self.scheduled.is_some_and(|at| at <= deadline) {
            return None;
        }
        self.scheduled = Some(deadline);
        Some(deadline)
    }

    /// Whether `entry` is the timer this connection holds (not a stale or superseded one).
    pub fn holds_timer(&self, entry: &TimerEntry) -> bool {
        self.serial == entry.serial && self.scheduled == Some(entry.at)
    }

    /// Its timer fired: it holds none now.
    pub fn timer_fired(&mut self) {
        self.scheduled = None;
    }

    /// The verdict for a decision of this session with what is known now.
    pub fn decide(
        &mut self,
        rules: &Rules,
        book: &AddressBook,
        ask: &Ask,
        now: Instant,
    ) -> Decision {
        let record = self.session.record();
        let context = Context {
            client_ip: self.peer.ip().to_canonical(),
            helo: record.helo.as_deref(),
            protocol: &record.signatures,
        };
        self.judge.decide(rules, book, &context, ask, now)
    }

    /// Body bytes of the message being received go to its file, which its first bytes open in
    /// `maildir`.
    pub fn append_body(&mut self, maildir: &mut Maildir, chunk: &[u8]) {
        let message = match &mut self.message {
            Some(message) => message,
            None => {
                let (mail_from, rcpts) = self.session.envelope().unwrap_or_default();
                let trace = self.trace(mail_from.to_owned(), rcpts.to_vec());
                let file = maildir.start(&trace, SystemTime::now());
                self.message.insert(file)
            }
        };
        message.append(chunk);
    }

    /// The message from `mail_from` to `rcpts` is complete: its file, opened now if it had no
    /// body bytes.
    pub fn finish_message(
        &mut self,
        maildir: &mut Maildir,
        mail_from: String,
        rcpts: &[String],
    ) -> MessageFile {
        match self.message.take() {
            Some(message) => message,
            None => maildir.start(&self.trace(mail_from, rcpts.to_vec()), SystemTime::now()),
        }
    }

    /// What was received of a message is no message (see [`crate::smtp::Event::Discard`]).
    pub fn discard_message(&mut self) {
        self.message = None;
    }

    /// What the trace headers of a message from `mail_from` to `rcpts` say about this session.
    pub fn trace(&self, mail_from: String, rcpts: Vec<String>) -> Trace {
        Trace {
            session_id: self.id.clone(),
            client: self.peer,
            rdns: self.judge.rdns().0,
            helo: self.session.record().helo.clone(),
            protocol: self.session.protocol(),
            dnsbl: self.judge.listings(),
            mail_from,
            rcpts,
        }
    }

    /// The connection is closed: what is left for the session log.
    pub fn end(self) -> EndedSession {
        let tls = self.tls_info();
        let tls_failure = self.tls_failure().map(|e| format!("<{e}>"));
        let record = self.session.into_record();
        let mut ended =
            EndedSession::new(self.id, self.peer, self.started, self.judge, tls, record);
        ended.set_syn(self.syn);
        if let Some(note) = tls_failure {
            ended.note(note);
        }
        ended
    }

    /// Reads once into `scratch` (decrypted, under TLS), for the loop to feed the session.
    pub fn read(&mut self, scratch: &mut [u8]) -> ReadOutcome {
        let tls = match &mut self.transport {
            Transport::Plain => return self.read_plain(scratch),
            Transport::Upgrading(_) => return ReadOutcome::Drained,
            Transport::Tls(tls) => tls,
            Transport::Failed(_) => return ReadOutcome::Closed,
        };
        // Plaintext decrypted by an earlier read goes first: `readable` is cleared only once
        // rustls holds none, so none is stranded when the socket is drained.
        match tls.reader().read(scratch) {
            // The client's close_notify.
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => return ReadOutcome::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return ReadOutcome::Closed,
        }
        loop {
            match tls.read_tls(&mut self.stream) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return ReadOutcome::Drained;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
        if let Err(e) = tls.process_new_packets() {
            let what = if tls.is_handshaking() {
                "TLS handshake failed"
            } else {
                "TLS error"
            };
            tracing::info!(
                session = %self.id,
                client = %self.peer.ip(),
                "session {}: {}: {what}: {e}; closing",
                self.id,
                self.peer
            );
            // The alert rustls queued, if the socket takes it; there is no second try.
            let _ = tls.write_tls(&mut self.stream);
            self.transport = Transport::Failed(format!("{what}: {e}"));
            return ReadOutcome::Closed;
        }
        ReadOutcome::Data(0)
    }

    fn read_plain(&mut self, scratch: &mut [u8]) -> ReadOutcome {
        loop {
            return match self.stream.read(scratch) {
                Ok(0) => ReadOutcome::Closed,
                Ok(n) => ReadOutcome::Data(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    ReadOutcome::Drained
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => ReadOutcome::Closed,
            };
        }
    }

    /// Answers STARTTLS: once the `220` is out, the connection speaks TLS.
    pub fn start_tls(&mut self, tls: ServerConnection) {
        self.transport = Transport::Upgrading(Box::new(tls));
    }

    /// TLS could not start (`error`): going on in clear text after the `220` would break the
    /// protocol, so the session ends.
    pub fn fail_tls(&mut self, error: String, now: Instant) {
        self.transport = Transport::Failed(error);
        self.session.shutdown(now);
    }

    /// Writes the session's output (all replies queued so far go out in one `write`, or one
    /// TLS flight).
    pub fn flush(&mut self) -> FlushOutcome {
        match &mut self.transport {
            Transport::Plain => self.flush_plain(),
            Transport::Upgrading(_) => {
                let outcome = self.flush_plain();
                if outcome == FlushOutcome::Done {
                    let upgraded = std::mem::replace(&mut self.transport, Transport::Plain);
                    if let Transport::Upgrading(tls) = upgraded {
                        self.transport = Transport::Tls(tls);
                    }
                }
                outcome
            }
            Transport::Tls(_) => self.flush_tls(),
            // Whatever the session still says cannot be sent.
            Transport::Failed(_) => FlushOutcome::Done,
        }
    }

    /// Session output → rustls → socket, until the socket is full or nothing moves.
    fn flush_tls(&mut self) -> FlushOutcome {
        let Transport::Tls(tls) = &mut self.transport else {
            return FlushOutcome::Done;
        };
        loop {
            let mut moved = false;
            let output = self.session.output();
            // rustls takes what its bounded buffer holds (nothing while handshaking past it);
            // the rest stays in the session, which holds back input meanwhile.
            if !output.is_empty()
                && let Ok(n @ 1..) = tls.writer().write(output)
            {
                self.session.consume_output(n);
                moved = true;
            }
            if tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(0) => return FlushOutcome::Broken,
                    Ok(_) => moved = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return FlushOutcome::Blocked;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(_) => return FlushOutcome::Broken,
                }
            }
            if !moved {
                return FlushOutcome::Done;
            }
        }
    }

    /// The negotiated TLS, for the session log.
    fn tls_info(&self) -> Option<TlsInfo> {
        let Transport::Tls(tls) = &self.transport else {
            return None;
        };
        if tls.is_handshaking() {
            return None;
        }
        let version = tls.protocol_version()?;
        let cipher = tls.negotiated_cipher_suite()?.suite();
        Some(TlsInfo {
            version: version.as_str().unwrap_or("unknown"),
            cipher: cipher.as_str().unwrap_or("unknown"),
            sni: tls.server_name().map(str::to_owned),
        })
    }

    /// Why TLS failed, if it did.
    fn tls_failure(&self) -> Option<&str> {
        match &self.transport {
            Transport::Failed(error) => Some(error),
            _ => None,
        }
    }

    fn flush_plain(&mut self) -> FlushOutcome {
        loop {
            let output = self.session.output();
            if output.is_empty() {
                return FlushOutcome::Done;
            }
            match self.stream.write(output) {
                Ok(0) => return FlushOutcome::Broken,
                Ok(n) => self.session.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return FlushOutcome::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return FlushOutcome::Broken,
            }
        }
    }
}
