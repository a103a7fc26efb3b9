//! The session record's bounds: the transcript (escaped, length-capped lines, at most
//! [`MAX_LINES`] of them) and the transactions and recipients, all within [`MAX_RECORD_BYTES`].
//!
//! What is kept, in bytes: the beginning of the session (banner, EHLO, the first transactions,
//! the most telling part) until [`MAX_RECORD_BYTES`] less [`TAIL_BYTES`] is spent; after that no
//! more transactions or recipients, and only the transcript's latest lines, within
//! [`TAIL_BYTES`] (to show how the session ended). Each item costs its text plus the size of its
//! struct, so the figure bounds the memory the record holds (less `Vec` growth slack) and the
//! session log line (less JSON escaping of `"` and `\`).

use std::fmt::Write as _;

use super::{Direction, RcptRecord, SessionRecord, TransactionRecord, TranscriptLine};

/// Longest line kept, in bytes of the original line; the rest is summarised as `…[+N bytes]`.
pub const MAX_LINE_BYTES: usize = 512;
/// Lines kept per session, first and latest together; the ones between are only counted.
pub const MAX_LINES: usize = 1000;
/// Of [`MAX_LINES`], how many the latest lines may use at least (the beginning leaves them).
pub const TAIL_LINES: usize = 64;
/// Bytes of transcript, transactions and recipients one session's record holds at most.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Of [`MAX_RECORD_BYTES`], what the transcript's latest lines may take once the beginning
/// has used the rest.
pub const TAIL_BYTES: usize = 8 * 1024;
/// What a transaction's Maildir file name is counted as, from the start of the transaction:
/// `SECONDS.MMICROSPPIDQCOUNTER.` (at most 63 bytes) and a hostname (at most 254).
pub const MESSAGE_NAME_RESERVE: usize = 320;
/// Transactions, and recipients over all transactions, kept in the record.
pub const MAX_RECORDED: usize = 1000;

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

/// What a session record holds, in bytes as [`SessionRecord`]'s doc counts them.
#[derive(Clone, Debug, Default)]
pub struct RecordBudget {
    /// The beginning: transcript lines before the cut, transactions and recipients.
    head: usize,
    /// The transcript's lines from the cut on.
    tail: usize,
    /// Something did not fit in the beginning: nothing more goes there.
    head_full: bool,
    /// Recipients kept, over all transactions.
    rcpts: usize,
}

impl RecordBudget {
    /// Bytes held; never more than [`MAX_RECORD_BYTES`].
    pub fn bytes(&self) -> usize {
        self.head + self.tail
    }

    /// Takes `cost` bytes for the beginning of the record, if they fit.
    fn admit(&mut self, cost: usize) -> bool {
        self.head_full |= self.head + cost > MAX_RECORD_BYTES - TAIL_BYTES;
        if !self.head_full {
            self.head += cost;
        }
        !self.head_full
    }
}

fn line_cost(line: &TranscriptLine) -> usize {
    size_of::<TranscriptLine>() + line.line.len()
}

impl SessionRecord {
    /// Records one transcript line, escaped; `prefix` is ours and kept as is.
    pub(super) fn log(&mut self, ms: u64, direction: Direction, prefix: &str, bytes: &[u8]) {
        let mut line = String::with_capacity(prefix.len() + bytes.len().min(MAX_LINE_BYTES + 16));
        line.push_str(prefix);
        escape_into(&mut line, bytes);
        self.push_line(TranscriptLine {
            ms,
            direction,
            line,
        });
    }

    /// Records a transcript line we compose ourselves (a summary such as `<42 bytes>`).
    pub(super) fn note(&mut self, ms: u64, direction: Direction, args: std::fmt::Arguments<'_>) {
        let mut line = String::new();
        let _ = line.write_fmt(args);
        self.push_line(TranscriptLine {
            ms,
            direction,
            line,
        });
    }

    /// Adds a transcript line: to the beginning while it has room, else as the latest line,
    /// letting go of the oldest of the latest ones past [`TAIL_BYTES`] or [`MAX_LINES`].
    pub fn push_line(&mut self, line: TranscriptLine) {
        let cost = line_cost(&line);
        let cut = match self.transcript_cut {
            Some(cut) => cut,
            None if self.transcript.len() < MAX_LINES - TAIL_LINES && self.budget.admit(cost) => {
                self.transcript.push(line);
                return;
            }
            None => *self.transcript_cut.insert(self.transcript.len()),
        };
        self.transcript.push(line);
        self.budget.tail += cost;
        while self.budget.tail > TAIL_BYTES || self.transcript.len() > MAX_LINES {
            let old = line_cost(&self.transcript.remove(cut));
            self.budget.tail -= old;
            self.transcript_dropped += 1;
            self.transcript_bytes_dropped += old;
        }
    }

    /// Starts recording a transaction from `mail_from`, whose MAIL was answered `mail_code`;
    /// its index, unless the record is full.
    pub(super) fn start_transaction(&mut self, mail_from: &str, mail_code: u16) -> Option<usize> {
        let cost = size_of::<TransactionRecord>() + mail_from.len() + MESSAGE_NAME_RESERVE;
        if self.transactions.len() >= MAX_RECORDED || !self.budget.admit(cost) {
            self.transactions_dropped += 1;
            return None;
        }
        self.transactions.push(TransactionRecord {
            mail_from: mail_from.to_owned(),
            mail_code,
            ..TransactionRecord::default()
        });
        Some(self.transactions.len() - 1)
    }

    /// Records a recipient of the transaction at `index` (`None`: one not recorded).
    pub(super) fn add_rcpt(&mut self, index: Option<usize>, addr: &str, code: u16) {
        let cost = size_of::<RcptRecord>() + addr.len();
        match index {
            Some(index) if self.budget.rcpts < MAX_RECORDED && self.budget.admit(cost) => {
                self.budget.rcpts += 1;
                self.transactions[index].rcpts.push(RcptRecord {
                    addr: addr.to_owned(),
                    code,
                });
            }
            _ => self.rcpts_dropped += 1,
        }
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
