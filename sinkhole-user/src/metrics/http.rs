//! Just enough HTTP/1.1 for a scraper: one connection at a time, one request per connection,
//! `GET`/`HEAD /metrics` answered 200, other methods there 405, other paths 404. The request
//! head is bounded in size and in time, so a client that dawdles or floods holds the endpoint
//! for at most [`REQUEST_TIME`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text::{self, CONTENT_TYPE};
use prometheus_client::registry::Registry;

/// The most a request head may take; a scraper sends a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
const REQUEST_TIME: Duration = Duration::from_secs(5);
/// How long writing the response may take.
const WRITE_TIME: Duration = Duration::from_secs(10);
/// After answering, what the client still sends (a request body we did not want) is read and
/// dropped, up to this much and [`LINGER_TIME`], so closing does not reset the connection
/// before the client has read the answer.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Accepts and answers connections until the process ends.
pub(super) fn serve(listener: &TcpListener, registry: &Registry) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, registry) {
                    log::debug!("metrics: {e}");
                }
            }
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                // Out of descriptors, say: do not spin on it.
                std::thread::sleep(Duration::from_millis(100));
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

/// Where the request head ends (just past the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Reads the request head, bounded in bytes and time; `None` when the client left or ran out
/// of time before finishing it.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Route>> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut chunk = [0u8; 1024];
    loop {
        if head_end(buf).is_some() {
            return Ok(Some(route(buf)));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Some(Route::TooLarge));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        let want = chunk.len().min(MAX_HEAD - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let Some(route) = read_head(&mut stream, &mut buf)? else {
        return Ok(());
    };
    let response = match route {
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
    };
    stream.set_write_timeout(Some(WRITE_TIME))?;
    stream.write_all(&response)?;
    linger(&mut stream)
}

/// Closes our side, then drains what the client still sends for a moment (see
/// [`LINGER_BYTES`]).
fn linger(stream: &mut TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(LINGER_TIME))?;
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    let mut chunk = [0u8; 4096];
    while drained < LINGER_BYTES && Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
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
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
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
