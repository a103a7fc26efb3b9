//! Just enough HTTP/1.1 for a scraper: one request per connection, `GET`/`HEAD /metrics`
//! answered 200, other methods there 405, other paths 404.
//!
//! One thread runs a non-blocking mio loop of its own that holds every connection at once.
//! Serving connections in turn let each idle one hold the endpoint for its whole request
//! deadline (ten idle connections delayed a scrape by 51 s), and a fixed pool of W blocking
//! workers would still queue a scrape behind N/W deadlines; a thread per connection would make
//! the bound a count of threads. The loop's bounds are fixed instead: at most
//! [`MAX_CONNECTIONS`] held (the ones past it are closed at once and counted in
//! `sinkhole_metrics_connections_refused_total`), each with at most [`MAX_HEAD`] bytes of
//! request and one response, and every stage of a connection under a deadline
//! ([`REQUEST_TIME`] for the head, [`WRITE_TIME`] for the answer, [`LINGER_TIME`] after it).
//! Nothing in the loop blocks but the encoding of a scrape, which takes milliseconds, so a
//! scrape is answered at once however many connections idle beside it.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use prometheus_client::encoding::prometheus_text::{self, CONTENT_TYPE};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use slab::Slab;

/// The most connections held at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 128;
/// The most a request head may take; a scraper sends a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has from accept to send its request head (a scraper sends it at once).
pub const REQUEST_TIME: Duration = Duration::from_secs(2);
/// How long writing the response may take.
const WRITE_TIME: Duration = Duration::from_secs(5);
/// After answering, what the client still sends (a request body we did not want) is read and
/// dropped, up to this much and [`LINGER_TIME`], so closing does not reset the connection
/// before the client has read the answer.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Connections accepted per turn of the loop, so a flood of connects cannot starve the ones
/// held; the rest are taken on the next turn.
const ACCEPTS_PER_TURN: usize = 2 * MAX_CONNECTIONS;
/// After `accept` fails (out of descriptors, say), when to try again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

const LISTENER: Token = Token(usize::MAX);

/// The `/metrics` server, ready to [`Server::run`].
pub(super) struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    registry: Registry,
    /// `metrics_connections_open`: connections held now.
    open: Gauge,
    /// `metrics_connections_refused`: connections closed at accept, past [`MAX_CONNECTIONS`].
    refused: Counter,
    /// Set when accepting stopped with clients possibly still queued (the listener is
    /// edge-triggered and sends no new event for those).
    accept_again: Option<Instant>,
}

impl Server {
    /// Serves `registry` on `listener`, with the server's own two series added to it (named
    /// `sinkhole_metrics_...`).
    pub(super) fn new(
        listener: std::net::TcpListener,
        mut registry: Registry,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let open = Gauge::default();
        let refused = Counter::default();
        let own = registry.sub_registry_with_prefix("sinkhole");
        own.register(
            "metrics_connections_open",
            "Connections to /metrics held now",
            open.clone(),
        );
        own.register(
            "metrics_connections_refused",
            "Connections to /metrics closed at once because as many as it holds were open",
            refused.clone(),
        );
        Ok(Server {
            poll,
            listener,
            conns: Slab::with_capacity(MAX_CONNECTIONS),
            registry,
            open,
            refused,
            accept_again: None,
        })
    }

    /// Serves until the process ends (or, should polling itself fail, says so and returns).
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .conns
                .iter()
                .map(|(_, conn)| conn.deadline)
                .chain(self.accept_again)
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("metrics: poll: {e}; /metrics is off");
                return;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(key) => self.advance(key),
                }
            }
            let now = Instant::now();
            if self.accept_again.is_some_and(|at| at <= now) {
                self.accept();
            }
            // Out of time: closed (a reset when unread bytes are left, which is fine).
            self.conns.retain(|_, conn| conn.deadline > now);
            self.open.set(self.conns.len() as i64);
        }
    }

    /// Takes the connections waiting (at most [`ACCEPTS_PER_TURN`]): held while there is
    /// room, closed at once past [`MAX_CONNECTIONS`].
    fn accept(&mut self) {
        self.accept_again = None;
        for _ in 0..ACCEPTS_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("metrics: accept: {e}");
                    self.accept_again = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                self.refused.inc();
                continue;
            }
            let entry = self.conns.vacant_entry();
            let mut conn = Conn {
                stream,
                stage: Stage::Head(Vec::new()),
                deadline: Instant::now() + REQUEST_TIME,
            };
            match self.poll.registry().register(
                &mut conn.stream,
                Token(entry.key()),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                Ok(()) => {
                    entry.insert(conn);
                }
                Err(e) => tracing::debug!("metrics: {e}"),
            }
        }
        self.accept_again = Some(Instant::now());
        self.open.set(self.conns.len() as i64);
    }

    /// Moves connection `key` on as far as its socket allows; closes it once it is done.
    fn advance(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.advance(&self.registry) {
            Ok(true) => {}
            Ok(false) => {
                self.conns.remove(key);
            }
            Err(e) => {
                tracing::debug!("metrics: {e}");
                self.conns.remove(key);
            }
        }
    }
}

/// One client's connection.
struct Conn {
    stream: TcpStream,
    stage: Stage,
    /// When the current stage must be over.
    deadline: Instant,
}

enum Stage {
    /// Reading the request head: what came so far.
    Head(Vec<u8>),
    /// Writing the answer; `sent` bytes of it are out.
    Write { response: Vec<u8>, sent: usize },
    /// Our side is shut: dropping what the client still sends, `drained` bytes so far.
    Linger { drained: usize },
}

impl Conn {
    /// Reads and writes until the socket would block; false once the connection is done.
    fn advance(&mut self, registry: &Registry) -> io::Result<bool> {
        loop {
            match &mut self.stage {
                Stage::Head(buf) => match read_head(&mut self.stream, buf)? {
                    Head::Incomplete => return Ok(true),
                    Head::Gone => return Ok(false),
                    Head::Complete(route) => {
                        self.stage = Stage::Write {
                            response: respond(route, registry)?,
                            sent: 0,
                        };
                        self.deadline = Instant::now() + WRITE_TIME;
                    }
                },
                Stage::Write { response, sent } => {
                    while *sent < response.len() {
                        match self.stream.write(&response[*sent..]) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => *sent += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    self.stream.shutdown(Shutdown::Write)?;
                    self.stage = Stage::Linger { drained: 0 };
                    self.deadline = Instant::now() + LINGER_TIME;
                }
                Stage::Linger { drained } => {
                    let mut chunk = [0u8; 4096];
                    while *drained < LINGER_BYTES {
                        match self.stream.read(&mut chunk) {
                            Ok(0) => return Ok(false),
                            Ok(n) => *drained += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(false);
                }
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// `GET /metrics` (`head`: a `HEAD`, the same without the body).
    Metrics {
        head: bool,
    },
    /// Another method on `/metrics`.
    MethodNotAllowed,
    NotFound,
    /// Not an HTTP/1.x request line.
    BadRequest,
    /// The head did not end within [`MAX_HEAD`] bytes.
    TooLarge,
}

/// The route for a request head (`head` is everything read, up to the end of the head).
pub(super) fn route(head: &[u8]) -> Route {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return Route::BadRequest;
    };
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with(b"HTTP/1.") || method.is_empty() {
        return Route::BadRequest;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if path != b"/metrics" {
        return Route::NotFound;
    }
    match method {
        b"GET" => Route::Metrics { head: false },
        b"HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

/// Whether the request head in `buf` is complete (has its blank line), looking only at what
/// came after the first `seen` bytes (and the three before, where a line end may have started).
fn head_complete(buf: &[u8], seen: usize) -> bool {
    let tail = &buf[seen.saturating_sub(3)..];
    tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n")
}

/// How far a request head has come.
enum Head {
    /// More is to come; the socket has nothing now.
    Incomplete,
    /// The client left before finishing it.
    Gone,
    Complete(Route),
}

/// Reads what the socket has of the request head, bounded by [`MAX_HEAD`].
fn read_head(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Head> {
    let mut chunk = [0u8; 1024];
    loop {
        let want = chunk.len().min(MAX_HEAD - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(Head::Gone),
            Ok(n) => {
                let seen = buf.len();
                buf.extend_from_slice(&chunk[..n]);
                if head_complete(buf, seen) {
                    return Ok(Head::Complete(route(buf)));
                }
                if buf.len() >= MAX_HEAD {
                    return Ok(Head::Complete(Route::TooLarge));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Head::Incomplete),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The whole response to `route`.
fn respond(route: Route, registry: &Registry) -> io::Result<Vec<u8>> {
    Ok(match route {
        Route::Metrics { head } => {
            let mut body = String::with_capacity(16 * 1024);
            prometheus_text::encode(&mut body, registry).map_err(io::Error::other)?;
            response("200 OK", CONTENT_TYPE, "", &body, head)
        }
        Route::MethodNotAllowed => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "Allow: GET, HEAD\r\n",
            "405 method not allowed: /metrics is read-only (GET or HEAD)\n",
            false,
        ),
        Route::NotFound => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "",
            "404 not found: the metrics are at /metrics\n",
            false,
        ),
        Route::BadRequest => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "",
            "400 bad request\n",
            false,
        ),
        Route::TooLarge => response(
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "",
            "431 request head too large\n",
            false,
        ),
    })
}

/// A complete response; `head`: without the body (its length still announced).
fn response(status: &str, content_type: &str, extra: &str, body: &str, head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases: [(&[u8], Route); 11] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head: true },
            ),
            (b"GET /metrics HTTP/1.1\n\n", Route::Metrics { head: false }),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"DELETE /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET /metrics SPDY/3\r\n\r\n", Route::BadRequest),
            (b"\r\n\r\n", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head), want, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn head_ends_at_the_blank_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody", 0));
        assert!(head_complete(b"GET / HTTP/1.1\n\n", 0));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nA: b\r\n", 0));
        // The blank line split over two reads: the second looks back into the first.
        assert!(head_complete(b"GET / HTTP/1.1\r\n\r\n", 17));
        assert!(head_complete(b"GET / HTTP/1.1\n\n", 15));
    }

    /// Hands out `data` a byte per read, then has nothing more for now.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            out[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn a_head_read_in_pieces_is_routed_once_whole() {
        let mut buf = Vec::new();
        let mut first = Trickle(b"GET /metrics HTTP/1.1\r\nHost: x\r");
        assert!(matches!(
            read_head(&mut first, &mut buf),
            Ok(Head::Incomplete)
        ));
        let mut rest = Trickle(b"\n\r\n");
        assert!(matches!(
            read_head(&mut rest, &mut buf),
            Ok(Head::Complete(Route::Metrics { head: false }))
        ));
        let mut endless = Trickle(&[b'a'; MAX_HEAD + 10]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_head(&mut endless, &mut buf),
            Ok(Head::Complete(Route::TooLarge))
        ));
        assert_eq!(buf.len(), MAX_HEAD);
        assert!(matches!(
            read_head(&mut Trickle(b""), &mut Vec::new()),
            Ok(Head::Incomplete)
        ));
        assert!(matches!(
            read_head(&mut io::empty(), &mut Vec::new()),
            Ok(Head::Gone)
        ));
    }

    #[test]
    fn responses_announce_their_length() {
        let full = response("200 OK", CONTENT_TYPE, "", "a 1\n", false);
        let text = String::from_utf8(full).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\na 1\n"));
        let head = response("200 OK", CONTENT_TYPE, "", "a 1\n", true);
        assert!(String::from_utf8(head).unwrap().ends_with(
            "Content-Length: 4\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
    }
}
