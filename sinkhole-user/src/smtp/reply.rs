//! Replies: the texts we send, and the output buffer they are written straight into.
//!
//! Every reply carries an RFC 3463 enhanced status code except the greeting and the HELO/EHLO
//! replies, which RFC 2034 section 3 leaves without one.

use std::io::Write as _;
use std::ops::Range;

pub const OK: &str = "2.0.0 Ok";
pub const MAIL_OK: &str = "2.1.0 Ok";
pub const BYE: &str = "2.0.0 Bye";
pub const VRFY: &str = "2.5.0 Cannot VRFY user, but will accept message and attempt delivery";
pub const HELP: &str = "2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT";
pub const START_DATA: &str = "2.0.0 End data with <CR><LF>.<CR><LF>";
pub const START_TLS: &str = "2.0.0 Ready to start TLS";
pub const TOO_MANY_RECIPIENTS: &str = "4.5.3 Error: too many recipients";
pub const INSUFFICIENT_STORAGE: &str = "4.3.1 Insufficient system storage";
pub const UNRECOGNIZED: &str = "5.5.2 Error: command not recognized";
pub const LINE_TOO_LONG: &str = "5.5.2 Error: line too long";
pub const NOT_IMPLEMENTED: &str = "5.5.1 Error: command not implemented";
pub const OUT_OF_SEQUENCE: &str = "5.5.1 Out of sequence command";
pub const NO_VALID_RECIPIENTS: &str = "5.5.1 No valid recipients";
pub const BAD_SENDER: &str = "5.1.7 Bad sender address syntax";
pub const BAD_RECIPIENT: &str = "5.1.3 Bad recipient address syntax";
pub const BAD_PARAMETER: &str = "5.5.4 Syntax error in parameters";
pub const UNKNOWN_PARAMETER: &str = "5.5.4 Parameters not recognized";
pub const SIZE_EXCEEDED: &str = "5.3.4 Message size exceeds fixed limit";

/// Bytes of replies not yet written to the client.
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    written: usize,
}

impl Output {
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    pub fn consume(&mut self, n: usize) {
        self.written = (self.written + n).min(self.buf.len());
        if self.written == self.buf.len() {
            // Everything is out: reuse the buffer from the start.
            self.buf.clear();
            self.written = 0;
        }
    }

    /// One reply line, `CODE SP text` or `CODE - text` when more lines follow. Returns where the
    /// line (without CRLF) lies in the buffer, for the transcript.
    pub fn line(&mut self, code: u16, more: bool, text: std::fmt::Arguments<'_>) -> Range<usize> {
        if self.written > 0 && self.written >= self.buf.len() / 2 {
            // Most of the buffer was written: move the rest to the front before growing it.
            self.buf.drain(..self.written);
            self.written = 0;
        }
        let start = self.buf.len();
        let separator = if more { '-' } else { ' ' };
        // Writing into a Vec cannot fail.
        let _ = write!(self.buf, "{code}{separator}{text}");
        let end = self.buf.len();
        self.buf.extend_from_slice(b"\r\n");
        start..end
    }

    /// A reply decided outside (policy, storage): CR and LF in its text become blanks, so it stays
    /// one line, and an enhanced status code of the reply's class is added when it has none.
    pub fn decided(&mut self, code: u16, text: &str) -> Range<usize> {
        let class = code / 100;
        let range = if has_enhanced_code(text, class) {
            self.line(code, false, format_args!("{text}"))
        } else {
            self.line(code, false, format_args!("{class}.0.0 {text}"))
        };
        for b in &mut self.buf[range.clone()] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        range
    }

    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }
}

/// `text` starts with `class.N.N` (RFC 3463: subject and detail of one to three digits).
fn has_enhanced_code(text: &str, class: u16) -> bool {
    let mut parts = text.split(' ').next().unwrap_or("").split('.');
    let is_number = |p: Option<&str>| {
        p.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    parts
        .next()
        .is_some_and(|p| p.len() == 1 && p.parse() == Ok(class))
        && is_number(parts.next())
        && is_number(parts.next())
        && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decided_replies_are_one_line_with_an_enhanced_code() {
        let cases = [
            (
                550,
                "5.1.1 This address is closed",
                "550 5.1.1 This address is closed\r\n",
            ),
            (250, "2.1.5 Ok", "250 2.1.5 Ok\r\n"),
            (451, "try later", "451 4.0.0 try later\r\n"),
            (550, "4.1.1 wrong class", "550 5.0.0 4.1.1 wrong class\r\n"),
            (
                550,
                "evil\r\n250 injected",
                "550 5.0.0 evil  250 injected\r\n",
            ),
        ];
        for (code, text, expected) in cases {
            let mut out = Output::default();
            out.decided(code, text);
            assert_eq!(String::from_utf8_lossy(out.pending()), expected);
        }
    }

    #[test]
    fn consumed_output_is_reused() {
        let mut out = Output::default();
        let range = out.line(250, true, format_args!("a"));
        assert_eq!(out.bytes(range), b"250-a");
        out.consume(3);
        assert_eq!(out.pending(), b"-a\r\n");
        out.consume(100);
        assert!(out.pending().is_empty());
    }
}
