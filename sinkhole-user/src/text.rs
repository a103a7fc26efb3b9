//! Foreign text (from a client, a feed, a block's `--reason`) made safe to print: one rule for
//! every place that shows such text to a person, on a terminal or in a log.
//!
//! What a terminal would act on is escaped: control characters (C0, DEL, C1: ESC, BEL, CR, LF
//! among them), the bidi and zero-width format characters that reorder or hide what is shown,
//! and the backslash that starts an escape. (The session transcript keeps its own byte-level
//! escaping in `smtp/transcript.rs`: it starts from bytes that need not be UTF-8.)

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, Serializer};

/// Whether `c` is escaped by [`escape`].
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character a terminal would act on escaped: `\\` for the backslash, `\xNN`
/// for ASCII control bytes, `\u{N}` for the others. Borrowed when nothing needs escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        // Writing to a String cannot fail.
        let _ = match c {
            '\\' => out.write_str("\\\\"),
            c if c.is_ascii() && is_unsafe(c) => write!(out, "\\x{:02x}", c as u32),
            c if is_unsafe(c) => write!(out, "\\u{{{:x}}}", c as u32),
            c => out.write_char(c),
        };
    }
    Cow::Owned(out)
}

/// `value` as compact JSON on `out`, with every character [`escape`] would escape written as a
/// JSON `\uNNNN` escape: `serde_json` escapes only U+0000 to U+001F itself, and would print
/// DEL, C1 controls and bidi overrides raw. The JSON means the same; only its spelling differs.
pub fn write_json(out: impl io::Write, value: &impl Serialize) -> serde_json::Result<()> {
    value.serialize(&mut Serializer::with_formatter(out, TerminalSafe))
}

/// [`write_json`] into a string, with a final newline.
pub fn json_line(value: &impl Serialize) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, nor serialising a value that is already JSON-shaped.
    let _ = write_json(&mut out, value);
    out.push(b'\n');
    String::from_utf8(out).unwrap_or_default()
}

/// The compact JSON formatter, escaping what [`is_unsafe`] names (a backslash reaches it only
/// as part of an escape `serde_json` writes, never in a fragment of the string itself).
struct TerminalSafe;

impl Formatter for TerminalSafe {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut rest = fragment;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_unsafe(c)) {
            CompactFormatter.write_string_fragment(writer, &rest[..at])?;
            // Every unsafe character is in the Basic Multilingual Plane: one \u escape.
            write!(writer, "\\u{:04x}", c as u32)?;
            rest = &rest[at + c.len_utf8()..];
        }
        CompactFormatter.write_string_fragment(writer, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert!(matches!(escape("plain@example.org"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[31mb\r\n\x07"), "a\\x1b[31mb\\x0d\\x0a\\x07");
        assert_eq!(escape("x\\y\u{202e}z\u{85}"), "x\\\\y\\u{202e}z\\u{85}");
        assert_eq!(escape("del\x7f"), "del\\x7f");
    }

    #[test]
    fn json_means_the_same_and_holds_no_raw_control() {
        let value = serde_json::json!({"reason": "a\x1b[2J\x07\x7f\u{9b}\u{202e}\\\"é"});
        let line = json_line(&value);
        assert!(line.ends_with("}\n"));
        assert!(
            !line.trim_end().chars().any(is_unsafe_raw),
            "{}",
            line.escape_debug()
        );
        assert_eq!(
            line,
            "{\"reason\":\"a\\u001b[2J\\u0007\\u007f\\u009b\\u202e\\\\\\\"é\"}\n"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, value);
    }

    /// A character [`escape`] escapes, other than the backslash (which JSON escapes use).
    fn is_unsafe_raw(c: char) -> bool {
        c != '\\' && is_unsafe(c)
    }
}
