//! One client connection: its socket, its SMTP session, and the loop's bookkeeping.
//!
//! A connection owns no buffers of its own: reads go through the loop's one scratch buffer
//! straight into the session, and writes come straight out of the session's output, so an
//! idle connection costs its socket, its session and this struct.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use mio::net::TcpStream;

use super::client::Client;
use crate::smtp::Session;

pub struct Connection {
    pub stream: TcpStream,
    pub session: Session,
    /// Its score, policy and held recipient reply.
    pub client: Client,
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
    /// Reads once into `scratch` and feeds what came to the session.
    pub fn read(&mut self, scratch: &mut [u8], now: Instant) -> ReadOutcome {
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

    /// Writes the session's output (all replies queued so far go out in one `write`).
    pub fn flush(&mut self) -> FlushOutcome {
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
