//! The session transcript: escaped, length-capped lines, with a cap on their number.

use std::fmt::Write as _;

use super::{Direction, SessionRecord, TranscriptLine};

/// Longest line kept, in bytes of the original line; the rest is summarised as `…[+N bytes]`.
pub const MAX_LINE_BYTES: usize = 512;
/// Lines kept per session; later ones are only counted.
pub const MAX_LINES: usize = 1000;

/// Appends `bytes` to `out`, escaped: printable UTF-8 is kept; control bytes, DEL, backslash and
/// bytes that are not UTF-8 become `\xNN`. Lines longer than [`MAX_LINE_BYTES`] are cut (at a
/// character boundary) and end with `…[+N bytes]`.
pub fn escape_into(out: &mut String, bytes: &[u8]) {
    let (kept, cut) = match bytes.len() > MAX_LINE_BYTES {
        true => bytes.split_at(MAX_LINE_BYTES),
        false => (bytes, &[][..]),
    };
    let mut left_over = cut.len();
    for chunk in kept.utf8_chunks() {
        let valid = chunk.valid();
        let mut invalid = chunk.invalid();
        // A multi-byte character split by the cut is not "invalid": give it back to the cut part.
        if left_over > 0
            && !invalid.is_empty()
            && std::ptr::eq(invalid.as_ptr_range().end, kept.as_ptr_range().end)
        {
            left_over += invalid.len();
            invalid = &[];
        }
        for c in valid.chars() {
            if c.is_control() || c == '\\' {
                escape_scalar(out, c);
            } else {
                out.push(c);
            }
        }
        for &b in invalid {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    if left_over > 0 {
        let _ = write!(out, "…[+{left_over} bytes]");
    }
}

/// `\xNN` for each UTF-8 byte of a control character (C0, DEL, C1) or backslash.
fn escape_scalar(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        let _ = write!(out, "\\x{b:02x}");
    }
}

/// Escapes a whole value (e.g. a HELO name) into a new string.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    escape_into(&mut s, bytes);
    s
}

impl SessionRecord {
    /// Records one transcript line, escaped; `prefix` is ours and kept as is.
    pub(super) fn log(&mut self, ms: u64, direction: Direction, prefix: &str, bytes: &[u8]) {
        if self.transcript.len() >= MAX_LINES {
            self.transcript_dropped += 1;
            return;
        }
        let mut line = String::with_capacity(prefix.len() + bytes.len().min(MAX_LINE_BYTES + 16));
        line.push_str(prefix);
        escape_into(&mut line, bytes);
        self.transcript.push(TranscriptLine {
            ms,
            direction,
            line,
        });
    }

    /// Records a transcript line we compose ourselves (a summary such as `<42 bytes>`).
    pub(super) fn note(&mut self, ms: u64, direction: Direction, args: std::fmt::Arguments<'_>) {
        if self.transcript.len() >= MAX_LINES {
            self.transcript_dropped += 1;
            return;
        }
        let mut line = String::new();
        let _ = line.write_fmt(args);
        self.transcript.push(TranscriptLine {
            ms,
            direction,
            line,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_table() {
        let long = vec![b'a'; MAX_LINE_BYTES + 10];
        let mut long_expected = "a".repeat(MAX_LINE_BYTES);
        long_expected.push_str("…[+10 bytes]");
        // A two-byte character straddling the cut counts as cut, not as invalid bytes.
        let mut straddle = vec![b'a'; MAX_LINE_BYTES - 1];
        straddle.extend_from_slice("é!".as_bytes());
        let mut straddle_expected = "a".repeat(MAX_LINE_BYTES - 1);
        straddle_expected.push_str("…[+3 bytes]");
        let cases: Vec<(&[u8], String)> = vec![
            (b"EHLO x", "EHLO x".into()),
            (b"a\0b", "a\\x00b".into()),
            (b"back\\slash", "back\\x5cslash".into()),
            (
                b"cr\rlf\ntab\tdel\x7f",
                "cr\\x0dlf\\x0atab\\x09del\\x7f".into(),
            ),
            (b"\xff\xfe ok", "\\xff\\xfe ok".into()),
            ("grüße ✉".as_bytes(), "grüße ✉".into()),
            ("c1\u{85}".as_bytes(), "c1\\xc2\\x85".into()),
            (&long, long_expected),
            (&straddle, straddle_expected),
        ];
        for (input, expected) in cases {
            assert_eq!(escape(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn line_count_is_capped() {
        let mut record = SessionRecord::default();
        for i in 0..MAX_LINES + 5 {
            record.log(i as u64, Direction::Client, "", b"NOOP");
        }
        assert_eq!(record.transcript.len(), MAX_LINES);
        assert_eq!(record.transcript_dropped, 5);
    }
}
