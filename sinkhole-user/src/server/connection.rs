//! One client connection: its socket, its SMTP session, and the loop's bookkeeping.
//!
//! A connection owns no buffers of its own: reads go through the loop's one scratch buffer
//! straight into the session, and writes come straight out of the session's output, so an
//! idle connection costs its socket, its session and this struct (plus rustls' state, with
//! its own bounded buffers, once the client started TLS).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;
use rustls::ServerConnection;

use crate::capture::session_log::TlsInfo;
use crate::smtp::Session;
use crate::verdict::RecipientJudge;

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
    pub stream: TcpStream,
    pub transport: Transport,
    pub session: Session,
    /// Its score, policy and held recipient reply.
    pub judge: RecipientJudge,
    pub peer: SocketAddr,
    /// Tells this connection apart from earlier ones in the same slot (timers, completions).
    pub serial: u64,
    /// The session id of the log and the trace headers.
    pub id: String,
    pub started: SystemTime,
    /// The deadline the timer wheel holds an entry for, if any.
    pub scheduled: Option<Instant>,
    /// The socket may have bytes to read: set by a readable event, cleared by `WouldBlock`
    /// (mio is edge-triggered, so what is not read now gets no second event).
    pub readable: bool,
    /// WRITABLE interest is registered (only while output is stuck).
    pub wants_writable: bool,
    /// A message of this connection is with the capture thread.
    pub capturing: bool,
    /// The client closed its side, the connection broke, or the client was just blocked: read
    /// no more, and close as soon as the output is out and no message of it is being stored.
    pub peer_closed: bool,
}

/// What one read did.
pub enum ReadOutcome {
    /// Bytes went to the session.
    Data,
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
    /// Reads once and feeds what came (decrypted, under TLS) to the session.
    pub fn read(&mut self, scratch: &mut [u8], now: Instant) -> ReadOutcome {
        let tls = match &mut self.transport {
            Transport::Plain => return self.read_plain(scratch, now),
            Transport::Upgrading(_) => return ReadOutcome::Drained,
            Transport::Tls(tls) => tls,
            Transport::Failed(_) => return ReadOutcome::Closed,
        };
        // Plaintext decrypted by an earlier read goes first: `readable` is cleared only once
        // rustls holds none, so none is stranded when the socket is drained.
        match tls.reader().read(scratch) {
            // The client's close_notify.
            Ok(0) => return ReadOutcome::Closed,
            Ok(n) => {
                self.session.receive(&scratch[..n], now);
                return ReadOutcome::Data;
            }
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
            log::info!("session {}: {}: {what}: {e}; closing", self.id, self.peer);
            // The alert rustls queued, if the socket takes it; there is no second try.
            let _ = tls.write_tls(&mut self.stream);
            self.transport = Transport::Failed(format!("{what}: {e}"));
            return ReadOutcome::Closed;
        }
        ReadOutcome::Data
    }

    fn read_plain(&mut self, scratch: &mut [u8], now: Instant) -> ReadOutcome {
        loop {
            return match self.stream.read(scratch) {
                Ok(0) => ReadOutcome::Closed,
                Ok(n) => {
                    self.session.receive(&scratch[..n], now);
                    ReadOutcome::Data
                }
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
    pub fn tls_info(&self) -> Option<TlsInfo> {
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
    pub fn tls_failure(&self) -> Option<&str> {
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
