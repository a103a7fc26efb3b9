//! Message bodies: the DATA reader (dot-unstuffing, `CRLF.CRLF` found across any split of the
//! input) and the size-capped body both DATA and BDAT fill.

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

/// A message body being received: kept up to the size limit (when kept at all), counted past it.
#[derive(Debug)]
pub struct Body {
    bytes: Vec<u8>,
    size: u64,
    limit: u64,
    keep: bool,
}

/// What a body reserves at its first bytes: most spam fits, so a body is not grown byte by
/// byte through a dozen reallocations.
const FIRST_RESERVE: usize = 8 * 1024;

impl Body {
    /// A body kept up to `limit` bytes, or only counted when `keep` is false.
    pub fn new(limit: u64, keep: bool) -> Body {
        Body {
            bytes: Vec::new(),
            size: 0,
            limit,
            keep,
        }
    }

    /// Starts a new body (same limit).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.size = 0;
    }

    pub fn extend(&mut self, chunk: &[u8]) {
        self.size = self.size.saturating_add(chunk.len() as u64);
        if !self.keep {
            return;
        }
        if self.size <= self.limit {
            if self.bytes.capacity() == 0 {
                let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
                self.bytes
                    .reserve(FIRST_RESERVE.min(limit).max(chunk.len()));
            }
            self.bytes.extend_from_slice(chunk);
        } else if !self.bytes.is_empty() {
            // Over the limit: nothing more is kept, and what was kept is let go.
            self.bytes = Vec::new();
        }
    }

    /// Bytes received so far (after dot-unstuffing), kept or not.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_oversize(&self) -> bool {
        self.size > self.limit
    }

    /// Hands the body over and starts a new one.
    pub fn take(&mut self) -> Vec<u8> {
        self.size = 0;
        std::mem::take(&mut self.bytes)
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
    /// Feeds `input` into `body`. Returns `Some(n)` when the end-of-data line ends at `input[n-1]`
    /// (the bytes after it are not the body's), `None` when all of `input` was consumed.
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
                return (body.take(), Some(consumed + n));
            }
            consumed += piece.len();
        }
        (body.take(), None)
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
        body.extend(b"e");
        assert!(body.is_oversize());
        assert_eq!(body.size(), 5);
        assert!(body.take().is_empty());
    }

    #[test]
    fn an_unkept_body_is_counted_not_stored() {
        let mut reader = DataReader::default();
        let mut body = Body::new(1 << 20, false);
        assert_eq!(reader.feed(b"ab\r\n..c\r\n.\r\nQUIT", &mut body), Some(12));
        assert_eq!(body.size(), 8);
        assert!(body.take().is_empty());
    }
}
