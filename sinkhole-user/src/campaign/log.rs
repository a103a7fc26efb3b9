//! Reading `sessions.jsonl` back: streaming, line by line, tolerant of extra fields, nulls and
//! damage (a torn last line, a malformed line, an absurdly long line), with a warning for each
//! line it skips.

use std::io::{self, BufRead};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer};

/// Lines longer than this are skipped unread (the writer caps transcripts far below it).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The parts of a logged session the campaign report uses.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggedSession {
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    pub start: Option<String>,
    pub end: Option<String>,
    pub client_ip: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub dnsbl: Vec<LoggedDnsbl>,
    /// Names as logged; unknown ones (from a newer version) are kept, not refused.
    #[serde(deserialize_with = "nullable")]
    pub signatures: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub transactions: Vec<LoggedTransaction>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggedDnsbl {
    #[serde(deserialize_with = "nullable")]
    pub zone: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggedTransaction {
    #[serde(deserialize_with = "nullable")]
    pub rcpts: Vec<LoggedRcpt>,
    /// The Maildir file name, when the message was stored.
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggedRcpt {
    #[serde(deserialize_with = "nullable")]
    pub addr: String,
}

/// `null` reads as the default, like a missing field.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One step through the log.
#[derive(Debug)]
pub enum Entry {
    Session(Box<LoggedSession>),
    /// A line that was skipped, and why (`line 7: ...`).
    Skipped(String),
}

/// Iterates over a session log. I/O errors end the iteration with the error.
pub struct LogReader<R> {
    reader: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> LogReader<R> {
    pub fn new(reader: R) -> LogReader<R> {
        LogReader {
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// Reads the next line into `buf` (without its newline), keeping at most
    /// [`MAX_LINE_BYTES`]. Returns `None` at the end, else (complete, too long).
    fn next_line(&mut self) -> io::Result<Option<(bool, bool)>> {
        self.buf.clear();
        let (mut read_any, mut too_long) = (false, false);
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(read_any.then_some((false, too_long)));
            }
            read_any = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if self.buf.len() + take > MAX_LINE_BYTES {
                too_long = true;
            } else {
                self.buf.extend_from_slice(&chunk[..take]);
            }
            self.reader.consume(take + usize::from(done));
            if done {
                return Ok(Some((true, too_long)));
            }
        }
    }
}

impl<R: BufRead> Iterator for LogReader<R> {
    type Item = io::Result<Entry>;

    fn next(&mut self) -> Option<io::Result<Entry>> {
        loop {
            let (complete, too_long) = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            self.line += 1;
            let n = self.line;
            if too_long {
                return Some(Ok(Entry::Skipped(format!(
                    "line {n}: longer than {MAX_LINE_BYTES} bytes, skipped"
                ))));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(
                match serde_json::from_slice::<LoggedSession>(&self.buf) {
                    Ok(session) => Entry::Session(Box::new(session)),
                    Err(_) if !complete => Entry::Skipped(format!(
                        "line {n}: torn last line (no newline at the end, not valid JSON), skipped"
                    )),
                    Err(e) => {
                        Entry::Skipped(format!("line {n}: not a session record ({e}), skipped"))
                    }
                },
            ));
        }
    }
}

/// Parses the log's RFC 3339 times: `2026-01-02T03:04:05Z`, with fractions, or with an offset.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    // humantime takes `Z` and `+00:00`; any other numeric offset is applied here.
    let split = text.len().checked_sub(6).filter(|&at| at >= 19);
    if let Some((stamp, offset)) = split.and_then(|at| Some((text.get(..at)?, text.get(at..)?))) {
        let o = offset.as_bytes();
        if matches!(o[0], b'+' | b'-') && o[3] == b':' && offset != "+00:00" {
            let hours: u64 = offset[1..3].parse().ok()?;
            let minutes: u64 = offset[4..6].parse().ok()?;
            let shift = Duration::from_secs(hours * 3600 + minutes * 60);
            let local = humantime::parse_rfc3339_weak(stamp).ok()?;
            return if o[0] == b'+' {
                local.checked_sub(shift)
            } else {
                local.checked_add(shift)
            };
        }
    }
    humantime::parse_rfc3339_weak(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<Result<String, String>> {
        LogReader::new(text.as_bytes())
            .map(|e| match e.unwrap() {
                Entry::Session(s) => Ok(s.id),
                Entry::Skipped(w) => Err(w),
            })
            .collect()
    }

    #[test]
    fn tolerant_of_nulls_extra_fields_and_damage() {
        let log = concat!(
            r#"{"id":"a","client_ip":"203.0.113.1","signatures":null,"dnsbl":null,"transactions":[{"mail_from":"x@y","rcpts":null,"message":null}],"new_field":{"x":1}}"#,
            "\n\n",
            "{not json}\n",
            r#"{"id":"b","score":null,"transcript":[[0,"c","EHLO x"]]}"#,
            "\n",
            r#"{"id":"c","sig"#
        );
        let got = entries(log);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], Ok("a".into()));
        assert!(
            got[1]
                .as_ref()
                .unwrap_err()
                .starts_with("line 3: not a session record")
        );
        assert_eq!(got[2], Ok("b".into()));
        assert!(
            got[3]
                .as_ref()
                .unwrap_err()
                .starts_with("line 5: torn last line")
        );
        // A complete last line without its newline is still a session.
        assert_eq!(entries(r#"{"id":"z"}"#), vec![Ok("z".into())]);
    }

    #[test]
    fn long_lines_are_skipped_not_kept() {
        let long = format!(
            "{{\"id\":\"{}\"}}\n{{\"id\":\"ok\"}}\n",
            "x".repeat(MAX_LINE_BYTES)
        );
        let got = entries(&long);
        assert!(
            got[0]
                .as_ref()
                .unwrap_err()
                .starts_with("line 1: longer than")
        );
        assert_eq!(got[1], Ok("ok".into()));
    }

    #[test]
    fn times_with_and_without_offsets() {
        let z = parse_time("2026-03-01T10:00:00Z").unwrap();
        assert_eq!(parse_time("2026-03-01T10:00:00.000Z"), Some(z));
        assert_eq!(parse_time("2026-03-01T10:00:00+00:00"), Some(z));
        assert_eq!(parse_time("2026-03-01T12:00:00+02:00"), Some(z));
        assert_eq!(
            parse_time("2026-03-01T12:00:00.5+02:00"),
            Some(z + Duration::from_millis(500))
        );
        assert_eq!(parse_time("2026-03-01T05:30:00-04:30"), Some(z));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-03-01T10:00:00+0x:00"), None);
    }
}
