//! A null SMTP responder for the benchmarks: the least work a server can do for an SMTP client.
//!
//! One thread, one mio loop; every complete command line gets a canned reply at once (`DATA`
//! 354, `QUIT` 221 and close, `EHLO` a two-line 250, anything else 250), and a message body is
//! skipped up to its `.` line. It parses nothing else, stores nothing, logs nothing. Run beside
//! a real server under the same load generator, it shows how fast that generator can go on this
//! machine: the ceiling of any server's figure under that load, as an empty XDP program is for
//! the XDP benchmark.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

const LISTENER: Token = Token(usize::MAX);
const STOP: Token = Token(usize::MAX - 1);

/// The responder's thread, stopped and joined on drop.
pub struct NullSmtp {
    pub addr: SocketAddr,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl NullSmtp {
    /// Listens on a free loopback port and serves on a thread of its own.
    pub fn start() -> io::Result<NullSmtp> {
        let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), STOP)?);
        let thread = std::thread::Builder::new()
            .name("null-smtp".into())
            .spawn(move || serve(poll, listener))?;
        Ok(NullSmtp {
            addr,
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for NullSmtp {
    fn drop(&mut self) {
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Client {
    stream: TcpStream,
    /// The start of a line not yet complete.
    partial: Vec<u8>,
    in_data: bool,
}

fn serve(mut poll: Poll, listener: TcpListener) -> io::Result<()> {
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut input = vec![0; 64 * 1024];
    let mut replies = Vec::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            match event.token() {
                STOP => return Ok(()),
                LISTENER => {
                    while let Ok((mut stream, _)) = listener.accept() {
                        if stream.set_nodelay(true).is_err()
                            || stream.write_all(b"220 null ESMTP\r\n").is_err()
                        {
                            continue;
                        }
                        let slot = clients.iter().position(Option::is_none).unwrap_or_else(|| {
                            clients.push(None);
                            clients.len() - 1
                        });
                        poll.registry()
                            .register(&mut stream, Token(slot), Interest::READABLE)?;
                        clients[slot] = Some(Client {
                            stream,
                            partial: Vec::new(),
                            in_data: false,
                        });
                    }
                }
                Token(slot) => {
                    let Some(client) = clients.get_mut(slot).and_then(Option::as_mut) else {
                        continue;
                    };
                    if !client.serve(&mut input, &mut replies) {
                        clients[slot] = None;
                    }
                }
            }
        }
    }
}

impl Client {
    /// Reads all there is and answers each complete line; false when the connection is done.
    fn serve(&mut self, input: &mut [u8], replies: &mut Vec<u8>) -> bool {
        loop {
            let n = match self.stream.read(input) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            replies.clear();
            let mut rest = &input[..n];
            let mut open = true;
            while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                self.partial.extend_from_slice(&rest[..=end]);
                rest = &rest[end + 1..];
                open = self.answer(replies);
                self.partial.clear();
                if !open {
                    break;
                }
            }
            self.partial.extend_from_slice(rest);
            if !replies.is_empty() && self.stream.write_all(replies).is_err() {
                return false;
            }
            if !open {
                return false;
            }
        }
    }

    /// Appends the reply to the complete line in `partial`; false after QUIT.
    fn answer(&mut self, replies: &mut Vec<u8>) -> bool {
        let line = self.partial.as_slice();
        if self.in_data {
            if line == b".\r\n" || line == b".\n" {
                self.in_data = false;
                replies.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            return true;
        }
        let verb = line.get(..4).unwrap_or(line).to_ascii_uppercase();
        match verb.as_slice() {
            b"EHLO" => replies.extend_from_slice(b"250-null\r\n250 PIPELINING\r\n"),
            b"DATA" => {
                self.in_data = true;
                replies.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
            }
            b"QUIT" => {
                replies.extend_from_slice(b"221 2.0.0 Bye\r\n");
                return false;
            }
            _ => replies.extend_from_slice(b"250 2.0.0 Ok\r\n"),
        }
        true
    }
}
