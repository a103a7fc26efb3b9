//! Message bodies: the DATA reader (dot-unstuffing, `CRLF.CRLF` found across any split of the
//! input) and the body both DATA and BDAT fill, which streams.
//!
//! A body is never held whole. Its bytes (dot-unstuffed) go into a small buffer of at most
//! [`BODY_BUFFER`] bytes that the host drains ([`super::Host::body`], from [`super::settle`]);
//! while it is full the session processes no input and reads nothing more, as when its output is
//! not written (backpressure). So memory per connection in the body phase is a constant whatever
//! the client sends, the way Postfix's smtpd streams a body into its queue file. Past the size
//! limit nothing more is handed out, only counted; the host is told to drop what it has
//! ([`super::Event::Discard`]).

/// Body bytes the session holds at most before the host takes them: one read
/// ([`super::MAX_RECEIVE`]) is handed on in about one piece, so a body costs about one write per
/// read.
pub const BODY_BUFFER: usize = 64 * 1024;

/// Where the DATA reader is within the current line. The only byte ever held back is a dot at
/// the start of a line (and the CR after it), until we know whether it ends the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    /// Just after CRLF (or at the start of the body).
    Start,
    /// `.` at the start of a line, not yet emitted.
    Dot,
    /// `.` CR at the start of a line, neither emitted yet.
    DotCr,
    /// Inside a line; the last byte emitted was not CR.
    Middle,
    /// Inside a line; the last byte emitted was CR.
    Cr,
}

/// A message body being received: its bytes not yet handed out (when they are handed out at
/// all), and its size, counted past the limit.
#[derive(Debug)]
pub struct Body {
    buffer: Vec<u8>,
    /// The buffer was full when the host took it: input was held back.
    taken_full: bool,
    size: u64,
    limit: u64,
    keep: bool,
}

impl Body {
    /// A body handed out up to `limit` bytes, or only counted when `keep` is false.
    pub fn new(limit: u64, keep: bool) -> Body {
        Body {
            buffer: Vec::new(),
            taken_full: false,
            size: 0,
            limit,
            keep,
        }
    }

    /// Input the body can take now: what fills the buffer at most, given that a reader may emit
    /// one byte more than it is fed (a held-back `.` CR and the byte after it). Unbounded while
    /// bytes are only counted.
    pub fn room(&self) -> usize {
        if self.keep && !self.is_oversize() {
            BODY_BUFFER.saturating_sub(self.buffer.len() + 1)
        } else {
            usize::MAX
        }
    }

    /// Appends body bytes. Past the limit they are only counted, and what waited for the host
    /// is let go (the session then tells the host to drop the rest: [`super::Event::Discard`]).
    pub fn extend(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len() as u64);
        if !self.keep {
            return;
        }
        if self.is_oversize() {
            if self.buffer.capacity() > 0 {
                self.buffer = Vec::new();
            }
            return;
        }
        debug_assert!(self.buffer.len() + chunk.len() <= BODY_BUFFER);
        self.buffer.extend_from_slice(chunk);
    }

    /// Bytes received so far (after dot-unstuffing), handed out or not.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_oversize(&self) -> bool {
        self.size > self.limit
    }

    /// Whether the host was handed bytes of this body (or has them waiting) that are still its.
    pub fn handed_out(&self) -> bool {
        self.keep && self.size > 0 && !self.is_oversize()
    }

    /// The bytes waiting for the host, taken out; give the buffer back with
    /// [`Body::drained`].
    pub fn take_buffer(&mut self) -> Vec<u8> {
        self.taken_full = self.room() == 0;
        std::mem::take(&mut self.buffer)
    }

    /// The host took the bytes of `buffer`: it is kept (emptied) for the next ones while a body
    /// is coming in, let go otherwise (an idle session holds no buffer). True when it was full,
    /// so input was held back.
    pub fn drained(&mut self, mut buffer: Vec<u8>) -> bool {
        buffer.clear();
        if self.size > 0 && self.buffer.is_empty() {
            self.buffer = buffer;
        }
        std::mem::take(&mut self.taken_full)
    }

    /// The body is complete and its last bytes wait for the host, which takes them before it
    /// hears of the message: the next body starts at zero.
    pub fn handed_over(&mut self) {
        self.size = 0;
    }

    /// The body is over (refused or abandoned): the next one starts at zero, and what waited
    /// for the host is let go.
    pub fn end(&mut self) {
        self.buffer = Vec::new();
        self.size = 0;
    }
}

/// Reads a DATA body: dot-unstuffs, and finds the end (`CRLF . CRLF`, where the DATA command's
/// own line ending counts as the first CRLF). Bytes are kept exactly as received otherwise.
#[derive(Debug)]
pub struct DataReader {
    state: LineState,
}

impl Default for DataReader {
    fn default() -> Self {
        DataReader {
            state: LineState::Start,
        }
    }
}

impl DataReader {
    /// Feeds `input` into `body` (at most [`Body::room`] of it, for the buffer to hold what comes
    /// out). Returns `Some(n)` when the end-of-data line ends at `input[n-1]` (the bytes after it
    /// are not the body's), `None` when all of `input` was consumed.
    pub fn feed(&mut self, input: &[u8], body: &mut Body) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                LineState::Middle | LineState::Cr => {
                    // The common case: the rest of the line, through its LF, in one go.
                    let Some(lf) = memchr::memchr(b'\n', &input[i..]) else {
                        body.extend(&input[i..]);
                        self.state = if input.last() == Some(&b'\r') {
                            LineState::Cr
                        } else {
                            LineState::Middle
                        };
                        return None;
                    };
                    let after_cr = match lf {
                        0 => self.state == LineState::Cr,
                        _ => input[i + lf - 1] == b'\r',
                    };
                    body.extend(&input[i..=i + lf]);
                    i += lf + 1;
                    // Only CRLF starts a line: a bare LF is line content (RFC 5321 4.1.1.4).
                    self.state = if after_cr {
                        LineState::Start
                    } else {
                        LineState::Middle
                    };
                }
                LineState::Start if input[i] == b'.' => {
                    i += 1;
                    self.state = LineState::Dot;
                }
                LineState::Start => self.state = LineState::Middle,
                LineState::Dot => {
                    let byte = input[i];
                    i += 1;
                    self.state = if byte == b'\r' {
                        LineState::DotCr
                    } else {
                        // `.` followed by more on the line: the dot is dropped (RFC 5321 4.5.2).
                        body.extend(&[byte]);
                        LineState::Middle
                    };
                }
                LineState::DotCr => {
                    let byte = input[i];
                    i += 1;
                    if byte == b'\n' {
                        *self = DataReader::default();
                        return Some(i);
                    }
                    // `.` CR and more: the dot is dropped, the CR is content.
                    body.extend(&[b'\r', byte]);
                    self.state = if byte == b'\r' {
                        LineState::Cr
                    } else {
                        LineState::Middle
                    };
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let mut reader = DataReader::default();
        let mut body = Body::new(1 << 20, true);
        let mut consumed = 0;
        for piece in pieces {
            if let Some(n) = reader.feed(piece, &mut body) {
                return (body.take_buffer(), Some(consumed + n));
            }
            consumed += piece.len();
        }
        (body.take_buffer(), None)
    }

    #[test]
    fn unstuffing_and_end_table() {
        let cases: &[(&[u8], &[u8], Option<usize>)] = &[
            (b".\r\n", b"", Some(3)),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", Some(6)),
            (b"..x\r\n.\r\n", b".x\r\n", Some(8)),
            (b"...\r\n.\r\n", b"..\r\n", Some(8)),
            (b".x\r\n.\r\n", b"x\r\n", Some(7)),
            (b".\rx\r\n.\r\n", b"\rx\r\n", Some(8)),
            (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n", Some(10)),
            (b"a\r\r\n.\r\n", b"a\r\r\n", Some(7)),
            (b"a\r\n.\rz", b"a\r\n\rz", None),
            (b"\0\xff\r\n.\r\n", b"\0\xff\r\n", Some(7)),
        ];
        for &(input, body, end) in cases {
            // Every split point gives the same result.
            for split in 0..=input.len() {
                let (a, b) = input.split_at(split);
                assert_eq!(
                    read_all(&[a, b]),
                    (body.to_vec(), end),
                    "{input:?} split at {split}"
                );
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                read_all(&bytes),
                (body.to_vec(), end),
                "{input:?} byte by byte"
            );
        }
    }

    #[test]
    fn body_stops_keeping_past_the_limit() {
        let mut body = Body::new(4, true);
        body.extend(b"abcd");
        assert!(!body.is_oversize());
        assert!(body.handed_out());
        body.extend(b"e");
        assert!(body.is_oversize());
        assert!(!body.handed_out());
        assert_eq!(body.size(), 5);
        assert_eq!(
            body.room(),
            usize::MAX,
            "past the limit bytes are only counted"
        );
        assert!(body.take_buffer().is_empty());
    }

    #[test]
    fn the_buffer_holds_what_its_room_lets_in() {
        let mut body = Body::new(1 << 20, true);
        let mut reader = DataReader::default();
        // A held-back `.` CR comes out with the next byte: one byte more than was fed.
        assert_eq!(reader.feed(b"x\r\n.\r", &mut body), None);
        let room = body.room();
        let line = vec![b'y'; room];
        assert_eq!(reader.feed(&line, &mut body), None);
        assert_eq!(body.room(), 0);
        let buffer = body.take_buffer();
        assert!(buffer.len() <= BODY_BUFFER);
        assert!(buffer.starts_with(b"x\r\n\ry"));
        assert!(body.drained(buffer), "it was full");
        assert_eq!(body.room(), BODY_BUFFER - 1);
        body.end();
        assert_eq!(body.size(), 0);
    }

    #[test]
    fn an_unkept_body_is_counted_not_stored() {
        let mut reader = DataReader::default();
        let mut body = Body::new(1 << 20, false);
        assert_eq!(reader.feed(b"ab\r\n..c\r\n.\r\nQUIT", &mut body), Some(12));
        assert_eq!(body.size(), 8);
        assert!(body.take_buffer().is_empty());
    }
}
