//! Reading `sessions.jsonl` back: streaming, line by line, tolerant of extra fields, nulls and
//! damage (a torn last line, a malformed line, an absurdly long line), with a warning for each
//! line it skips; over the rotated files too ([`StoredLog`]), compressed or not, oldest first.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Deserializer};

use crate::capture::log_file::{Kind, rotated_name, with_suffix};
use crate::syn::Syn;

/// The log's name in its storage folder.
const LOG: &str = "sessions.jsonl";

/// Where a logged session's transcript begins: every field before it is all the reports read.
const TRANSCRIPT_KEY: &[u8] = b",\"transcript\":[";

/// Lines longer than this are skipped unread (the writer caps transcripts far below it).
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The parts of a logged session the reports use (`campaigns`, `addresses`, `policy replay`).
/// Fields a version of the log did not have read as missing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggedSession {
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    pub start: Option<String>,
    pub end: Option<String>,
    pub client_ip: Option<String>,
    pub rdns: Option<String>,
    pub fcrdns: Option<bool>,
    pub helo: Option<String>,
    /// `accepted`, `rejected`, `blocked`, `refused`, `no-mail`.
    pub verdict: Option<String>,
    pub connect_code: Option<u16>,
    pub helo_code: Option<u16>,
    #[serde(deserialize_with = "nullable")]
    pub pipelined: bool,
    /// The SYN fingerprint, when the XDP program saw it.
    pub syn: Option<Syn>,
    #[serde(deserialize_with = "nullable")]
    pub dnsbl: Vec<LoggedDnsbl>,
    pub score: Option<i32>,
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
    pub mail_from: String,
    /// The reply to the MAIL (missing in logs from before it was logged: it was 250).
    pub mail_code: Option<u16>,
    #[serde(deserialize_with = "nullable")]
    pub rcpts: Vec<LoggedRcpt>,
    /// The reply to the end of data, if data was sent.
    pub data_code: Option<u16>,
    /// The Maildir file name, when the message was stored.
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggedRcpt {
    #[serde(deserialize_with = "nullable")]
    pub addr: String,
    pub code: Option<u16>,
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
            let (take, done) = match memchr::memchr(b'\n', chunk) {
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
            // The transcript is most of a line and no report reads it: a complete line is
            // parsed up to it (the daemon writes every field the reports read before it; in a
            // string the key would be escaped, so this is the top-level key).
            if complete && let Some(at) = memchr::memmem::find(&self.buf, TRANSCRIPT_KEY) {
                self.buf.truncate(at);
                self.buf.push(b'}');
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

/// A file of the log that could not be listed, opened or read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct LogError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// The session log of a storage folder: its rotated files, oldest first, then
/// `sessions.jsonl`, read as one. Skipped lines name their file.
pub struct StoredLog {
    files: std::vec::IntoIter<PathBuf>,
    reading: Option<(PathBuf, LogReader<Box<dyn BufRead>>)>,
}

impl StoredLog {
    /// The log in `storage`, without the rotated files that hold only lines written before
    /// `since`. Rotated files are the daemon's (`sessions.jsonl.<stamp>[.gz]`, ordered by the
    /// stamp) and those of an outside rotation (any other `sessions.jsonl.*` or
    /// `sessions.jsonl-*`, e.g. logrotate's `sessions.jsonl.1` and `sessions.jsonl.2.gz`,
    /// ordered by the time they were last written).
    pub fn open(storage: &Path, since: Option<SystemTime>) -> Result<StoredLog, LogError> {
        let current = storage.join(LOG);
        let error = |path: &Path| {
            let path = path.to_owned();
            move |source| LogError { path, source }
        };
        let mut files = Vec::new();
        for entry in fs::read_dir(storage).map_err(error(storage))? {
            let entry = entry.map_err(error(storage))?;
            let name = entry.file_name();
            if let Some(last_line) = rotated_until(&name.to_string_lossy(), &entry.path())
                .map_err(error(&entry.path()))?
                && since.is_none_or(|since| last_line >= since)
            {
                files.push((last_line, entry.path()));
            }
        }
        files.sort();
        let mut files: Vec<PathBuf> = files.into_iter().map(|(_, path)| path).collect();
        // The current file may be missing between an outside rename and the reopen, but a
        // storage folder without any log is an error.
        if current.exists() || files.is_empty() {
            files.push(current);
        }
        Ok(StoredLog {
            files: files.into_iter(),
            reading: None,
        })
    }
}

/// For a rotated file of `sessions.jsonl` named `name`, the time its last line was written at
/// the latest; `None` for any other file (and for a compressed file's plain twin, left by a
/// crash: the two hold the same lines).
fn rotated_until(name: &str, path: &Path) -> io::Result<Option<SystemTime>> {
    match rotated_name(LOG, name) {
        Some((_, Kind::Partial)) => return Ok(None),
        Some((_, Kind::Plain)) if with_suffix(path, ".gz").exists() => {
            return Ok(None);
        }
        Some((at, _)) => return Ok(Some(at)),
        None => {}
    }
    let outside = name
        .strip_prefix(LOG)
        .is_some_and(|rest| rest.starts_with(['.', '-']) && !rest.ends_with(".tmp"));
    if !outside {
        return Ok(None);
    }
    Ok(Some(fs::metadata(path)?.modified()?))
}

/// Opens a file of the log, decompressing a `.gz` one.
fn open_file(path: &Path) -> io::Result<Box<dyn BufRead>> {
    let file = File::open(path)?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(MultiGzDecoder::new(BufReader::new(file))))
    } else {
        Box::new(BufReader::new(file))
    })
}

impl Iterator for StoredLog {
    type Item = Result<Entry, LogError>;

    fn next(&mut self) -> Option<Result<Entry, LogError>> {
        loop {
            if let Some((path, reader)) = &mut self.reading {
                match reader.next() {
                    Some(Ok(Entry::Skipped(why))) => {
                        return Some(Ok(Entry::Skipped(format!("{}: {why}", path.display()))));
                    }
                    Some(Ok(session)) => return Some(Ok(session)),
                    Some(Err(source)) => {
                        let path = path.clone();
                        self.reading = None;
                        return Some(Err(LogError { path, source }));
                    }
                    None => self.reading = None,
                }
            }
            let path = self.files.next()?;
            let rotated = self.files.len() > 0 || !path.ends_with(LOG);
            match open_file(&path) {
                Ok(file) => self.reading = Some((path, LogReader::new(file))),
                // Compressed by the daemon since it was listed (or deleted as too old).
                Err(e) if e.kind() == io::ErrorKind::NotFound && rotated => {
                    let compressed = with_suffix(&path, ".gz");
                    match open_file(&compressed) {
                        Ok(file) => self.reading = Some((compressed, LogReader::new(file))),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Some(Err(LogError {
                                path: compressed,
                                source,
                            }));
                        }
                    }
                }
                Err(source) => return Some(Err(LogError { path, source })),
            }
        }
    }
}

/// The sessions of `log` that started at or after `since` (all of them without it), each with
/// its start time; each skipped line goes to `warn`.
pub fn sessions_since<'a, E: 'a>(
    log: impl IntoIterator<Item = Result<Entry, E>> + 'a,
    since: Option<SystemTime>,
    warn: &'a mut dyn FnMut(&str),
) -> impl Iterator<Item = Result<(Box<LoggedSession>, Option<SystemTime>), E>> + 'a {
    log.into_iter().filter_map(move |entry| match entry {
        Err(e) => Some(Err(e)),
        Ok(Entry::Skipped(why)) => {
            warn(&why);
            None
        }
        Ok(Entry::Session(session)) => {
            let started = session.start.as_deref().and_then(parse_time);
            let before = since.is_some_and(|since| started.is_none_or(|t| t < since));
            (!before).then_some(Ok((session, started)))
        }
    })
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
    fn the_transcript_is_not_parsed_and_a_torn_line_stays_torn() {
        let log = concat!(
            r#"{"id":"a","transactions":[],"transcript":[[0,"c","MAIL FROM:<,\"transcript\":[x>"]],"closed_by":null}"#,
            "\n",
            r#"{"id":"b","transcript":[[0,"c","x"]],"closed_by":oops}"#,
            "\n",
            r#"{"id":"c","signatures":["no-rdns"],"transcript":[[0,"c","EHLO"#,
        );
        let got = entries(log);
        assert_eq!(got[0], Ok("a".into()));
        // What follows the transcript is not read: a damaged tail does not lose the session.
        assert_eq!(got[1], Ok("b".into()));
        assert!(
            got[2]
                .as_ref()
                .unwrap_err()
                .starts_with("line 3: torn last line"),
            "{got:?}"
        );
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
    fn rotated_files_are_read_oldest_first_compressed_or_not() {
        use std::io::Write;
        use std::time::UNIX_EPOCH;
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str, modified: u64| {
            let path = dir.path().join(name);
            let file = File::create(&path).unwrap();
            let file = if name.ends_with(".gz") {
                let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
                gz.write_all(text.as_bytes()).unwrap();
                gz.finish().unwrap()
            } else {
                let mut file = file;
                file.write_all(text.as_bytes()).unwrap();
                file
            };
            file.set_modified(UNIX_EPOCH + Duration::from_secs(modified))
                .unwrap();
        };
        // The daemon's names (ordered by their stamp, whatever their mtime), an outside
        // rotation's (by mtime), a crash's leftovers (skipped), the current file last.
        put("sessions.jsonl", "{\"id\":\"now\"}\n", 10);
        put(
            "sessions.jsonl.2026-03-01T10-00-00.000Z.gz",
            "{\"id\":\"b1\"}\n{\"id\":\"b2\"}\n",
            9,
        );
        put(
            "sessions.jsonl.2026-02-01T10-00-00.000Z",
            "{\"id\":\"a\"}\nbad\n",
            9,
        );
        put(
            "sessions.jsonl.2026-03-02T10-00-00.000Z.gz",
            "{\"id\":\"c\"}\n",
            1,
        );
        put(
            "sessions.jsonl.2026-03-02T10-00-00.000Z",
            "{\"id\":\"c\"}\n",
            1,
        );
        put("sessions.jsonl.2026-03-03T10-00-00.000Z.gz.tmp", "half", 1);
        let march_4 = parse_time("2026-03-04T00:00:00Z").unwrap();
        let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        put(
            "sessions.jsonl.1",
            "{\"id\":\"e\"}\n",
            since_epoch(march_4) + 60,
        );
        put(
            "sessions.jsonl.2.gz",
            "{\"id\":\"d\"}\n",
            since_epoch(march_4),
        );
        put("other.jsonl", "{\"id\":\"x\"}\n", 1);
        let read = |since| {
            StoredLog::open(dir.path(), since)
                .unwrap()
                .map(|e| match e.unwrap() {
                    Entry::Session(s) => s.id,
                    Entry::Skipped(why) => why,
                })
                .collect::<Vec<_>>()
        };
        let all = read(None);
        let skipped = format!(
            "{}: line 2: not a session record",
            dir.path()
                .join("sessions.jsonl.2026-02-01T10-00-00.000Z")
                .display()
        );
        assert_eq!(all.len(), 8, "{all:?}");
        assert_eq!(all[0], "a");
        assert!(all[1].starts_with(&skipped), "{all:?}");
        assert_eq!(all[2..], ["b1", "b2", "c", "d", "e", "now"]);
        // Files wholly before `since` are not opened; the others are read whole (the report
        // filters their lines).
        let since = read(parse_time("2026-03-02T00:00:00Z"));
        assert_eq!(since, ["c", "d", "e", "now"]);
        // Only rotated files: the current one may be gone between a rename and the reopen.
        fs::remove_file(dir.path().join("sessions.jsonl")).unwrap();
        assert_eq!(read(march_4.checked_add(Duration::from_secs(1))), ["e"]);
        let empty = tempfile::tempdir().unwrap();
        let missing = StoredLog::open(empty.path(), None).unwrap().next().unwrap();
        assert!(missing.unwrap_err().to_string().contains("sessions.jsonl"));
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
