//! The session log's file, `STORAGE/sessions.jsonl`: appending whole lines, rotating it
//! (`storage.log_rotate`: by UTC day and/or size), compressing rotated files on a thread of
//! their own, keeping the newest `storage.log_keep` of them, and reopening it (`SIGUSR1`, after
//! an outside rotation such as logrotate's; a rename is also noticed at the next write).
//!
//! A rotation happens between two writes, which are whole lines, so no line is split or lost:
//! the file is renamed to `sessions.jsonl.<stamp>`, the UTC time of the rotation to the
//! millisecond (`sessions.jsonl.2026-12-04T17-00-00.123Z`: the names sort in time order, and a
//! later rotation always gets a later stamp, even if the clock goes back), and a new
//! `sessions.jsonl` is opened. The compressor writes `<name>.gz.tmp`, syncs it, renames it to
//! `<name>.gz` and only then deletes `<name>`, so a crash at any step leaves the old state or
//! the new one: at the next start a leftover `.gz.tmp` is deleted, a plain file beside its `.gz`
//! is deleted, and any other plain rotated file is compressed. A failure (counted in
//! `session_log_rotate_failed`) never stops the log: it goes on in the file it has.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::config::LogRotate;
use crate::counters::DaemonCounters;

/// The suffix of a compressed rotated log.
const COMPRESSED: &str = ".gz";
/// The suffix of a compressed log being written.
const PARTIAL: &str = ".tmp";
/// How long after a failed rotation the next is tried (the log goes on meanwhile).
const RETRY: Duration = Duration::from_secs(60);

/// The session log's current file, rotated as configured.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    /// The UTC day of the file's first line (for a file found at open: of its last change);
    /// `None` while it is empty.
    day: Option<u64>,
    rotate: LogRotate,
    /// The last rotation's stamp (or the newest found at open).
    last_stamp: SystemTime,
    /// No rotation is tried before this (after a failure).
    retry_at: SystemTime,
    /// Rotated files to compress.
    compressor: Sender<PathBuf>,
    counters: Arc<DaemonCounters>,
}

impl LogFile {
    /// Opens (or creates) the log at `path` and starts its compressor, which first deletes what
    /// a crash left half done, compresses the rotated files left plain, and keeps `keep`.
    pub fn open(
        path: &Path,
        rotate: LogRotate,
        keep: usize,
        counters: Arc<DaemonCounters>,
    ) -> io::Result<LogFile> {
        let (file, size, day) = open_append(path)?;
        let mut last_stamp = UNIX_EPOCH;
        let mut leftovers = Vec::new();
        for found in rotated_files(path)? {
            last_stamp = last_stamp.max(found.at);
            match found.kind {
                Kind::Partial => remove(&found.path, &counters),
                Kind::Plain if found.has_compressed => remove(&found.path, &counters),
                Kind::Plain => leftovers.push(found.path),
                Kind::Compressed => {}
            }
        }
        let (compressor, rotated) = mpsc::channel();
        for leftover in leftovers {
            // The receiver is alive: it is not moved to its thread yet.
            let _ = compressor.send(leftover);
        }
        let log = path.to_owned();
        let thread_counters = Arc::clone(&counters);
        thread::Builder::new()
            .name("log-compress".into())
            .spawn(move || compress_all(&log, keep, &thread_counters, rotated))?;
        Ok(LogFile {
            path: path.to_owned(),
            file,
            size,
            day,
            rotate,
            last_stamp,
            retry_at: UNIX_EPOCH,
            compressor,
            counters,
        })
    }

    /// Appends `lines` (whole lines), rotating first when the policy says so at `now`. A file
    /// renamed by someone else meanwhile (logrotate without `SIGUSR1`, or the other daemon of a
    /// takeover rotating it) is followed: the path is opened anew first.
    pub fn write(&mut self, lines: &[u8], now: SystemTime) -> io::Result<()> {
        if self.moved() {
            self.reopen();
        }
        if now >= self.retry_at
            && due(
                self.rotate,
                self.size,
                self.day,
                lines.len() as u64,
                day_of(now),
            )
            && let Err(e) = self.rotate(now)
        {
            tracing::error!(
                "cannot rotate {}: {e}; the log goes on in it",
                self.path.display()
            );
            DaemonCounters::add(&self.counters.session_log_rotate_failed, 1);
            self.retry_at = now + RETRY;
        }
        let written = self.file.write_all(lines);
        self.size = match written {
            Ok(()) => self.size + lines.len() as u64,
            Err(_) => self.file.metadata().map_or(self.size, |m| m.len()),
        };
        if self.size > 0 {
            self.day.get_or_insert(day_of(now));
        }
        written
    }

    /// Opens the log's path anew (after something outside renamed the file); on failure the log
    /// goes on in the file it had.
    pub fn reopen(&mut self) {
        match open_append(&self.path) {
            Ok((file, size, day)) => {
                self.file = file;
                self.size = size;
                self.day = day;
                tracing::info!("reopened {}", self.path.display());
            }
            Err(e) => {
                tracing::error!(
                    "cannot reopen {}: {e}; the log goes on in the file it had",
                    self.path.display()
                );
                DaemonCounters::add(&self.counters.session_log_rotate_failed, 1);
            }
        }
    }

    /// Whether the path no longer names the open file.
    fn moved(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (fs::metadata(&self.path), self.file.metadata()) {
            (Ok(path), Ok(file)) => (path.dev(), path.ino()) != (file.dev(), file.ino()),
            (Err(e), _) => e.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }

    /// Renames the file to its stamped name, opens a new one and hands the old one to the
    /// compressor. On failure nothing changed.
    fn rotate(&mut self, now: SystemTime) -> io::Result<()> {
        let at = now.max(self.last_stamp + Duration::from_millis(1));
        let rotated = with_suffix(&self.path, &stamp(at));
        fs::rename(&self.path, &rotated)?;
        match open_append(&self.path) {
            Ok((file, size, day)) => {
                self.file = file;
                self.size = size;
                self.day = day;
            }
            Err(e) => {
                if let Err(back) = fs::rename(&rotated, &self.path) {
                    tracing::error!(
                        "cannot rename {} back: {back}; the log goes on in it",
                        rotated.display()
                    );
                }
                return Err(e);
            }
        }
        self.last_stamp = at;
        // With the compressor gone (it cannot panic short of a bug) the file stays plain
        // until the next start compresses it.
        let _ = self.compressor.send(rotated);
        Ok(())
    }
}

/// Whether a write of `adding` bytes on UTC day `today` goes into a new file: never into an
/// empty one; daily, when the file's day is another; by size, when the file would grow past it.
fn due(rotate: LogRotate, size: u64, day: Option<u64>, adding: u64, today: u64) -> bool {
    size > 0
        && ((rotate.daily && day.is_some_and(|day| day != today))
            || rotate
                .max_bytes
                .is_some_and(|max| size.saturating_add(adding) > max))
}

fn day_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// Opens `path` for appending, with its size and the day of its last change (`None` when
/// empty). A crash during a write can leave the last line cut short: it is ended with a newline
/// here, so it stays one bad line (skipped by the readers) instead of swallowing the first line
/// written now.
fn open_append(path: &Path) -> io::Result<(File, u64, Option<u64>)> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let meta = file.metadata()?;
    let mut size = meta.len();
    if size == 0 {
        return Ok((file, 0, None));
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, size - 1)?;
    if last[0] != b'\n' {
        tracing::warn!(
            "{}: the last line is torn (a crash?); ending it",
            path.display()
        );
        file.write_all(b"\n")?;
        size += 1;
    }
    Ok((file, size, Some(day_of(meta.modified()?))))
}

/// The suffix of a file rotated at `at`: `.2026-12-04T17-00-00.123Z` (UTC, to the millisecond,
/// without colons).
fn stamp(at: SystemTime) -> String {
    format!(
        ".{}",
        humantime::format_rfc3339_millis(at)
            .to_string()
            .replace(':', "-")
    )
}

/// `path` with `suffix` appended to its name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What a rotated file of the log is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Not compressed (yet).
    Plain,
    Compressed,
    /// A compression under way, or cut short by a crash.
    Partial,
}

/// A file the daemon rotated the log into.
#[derive(Debug)]
pub struct Rotated {
    pub path: PathBuf,
    /// When it was rotated (the stamp in its name).
    pub at: SystemTime,
    pub kind: Kind,
    /// For a plain file: its compressed twin exists, complete (a crash came between the two).
    pub has_compressed: bool,
}

/// The time of rotation and the kind of `name`, when it names a rotated file of the log named
/// `log_name`.
pub fn rotated_name(log_name: &str, name: &str) -> Option<(SystemTime, Kind)> {
    let rest = name.strip_prefix(log_name)?.strip_prefix('.')?;
    let (stamp, kind) = if let Some(stamp) = rest.strip_suffix(PARTIAL) {
        (stamp.strip_suffix(COMPRESSED)?, Kind::Partial)
    } else if let Some(stamp) = rest.strip_suffix(COMPRESSED) {
        (stamp, Kind::Compressed)
    } else {
        (rest, Kind::Plain)
    };
    // 2026-12-04T17-00-00.123Z: the colons of the time are dashes.
    let b = stamp.as_bytes();
    if b.len() != 24 || b[13] != b'-' || b[16] != b'-' {
        return None;
    }
    let text = format!("{}:{}:{}", &stamp[..13], &stamp[14..16], &stamp[17..]);
    Some((humantime::parse_rfc3339(&text).ok()?, kind))
}

/// The rotated files of the log at `log`, oldest first.
pub fn rotated_files(log: &Path) -> io::Result<Vec<Rotated>> {
    let dir = match log.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let log_name = log.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((at, kind)) = name.to_str().and_then(|n| rotated_name(log_name, n)) {
            found.push(Rotated {
                path: entry.path(),
                at,
                kind,
                has_compressed: false,
            });
        }
    }
    found.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.path.cmp(&b.path)));
    for i in 0..found.len() {
        if found[i].kind == Kind::Plain {
            let twin = with_suffix(&found[i].path, COMPRESSED);
            found[i].has_compressed = found.iter().any(|f| f.path == twin);
        }
    }
    Ok(found)
}

/// The compressor thread: compresses each rotated file it is handed and keeps the newest
/// `keep`, until the log is closed.
fn compress_all(log: &Path, keep: usize, counters: &DaemonCounters, rotated: Receiver<PathBuf>) {
    prune(log, keep, counters);
    for plain in rotated {
        match compress(&plain) {
            Ok(()) => {}
            // Deleted meanwhile as one too many (a backlog longer than `keep`).
            Err(e) if e.kind() == io::ErrorKind::NotFound && !plain.exists() => {}
            Err(e) => {
                tracing::error!(
                    "cannot compress {}: {e}; it stays as it is",
                    plain.display()
                );
                DaemonCounters::add(&counters.session_log_rotate_failed, 1);
            }
        }
        prune(log, keep, counters);
    }
}

/// Writes `plain` compressed (gzip) to `plain.gz` through a temporary name, then deletes it.
fn compress(plain: &Path) -> io::Result<()> {
    let compressed = with_suffix(plain, COMPRESSED);
    let partial = with_suffix(&compressed, PARTIAL);
    let written = (|| {
        let mut input = File::open(plain)?;
        let modified = input.metadata()?.modified()?;
        let mut encoder = GzEncoder::new(File::create(&partial)?, Compression::default());
        io::copy(&mut input, &mut encoder)?;
        let output = encoder.finish()?;
        // The compressed file keeps the time of the last line, for tools that sort by it.
        output.set_modified(modified)?;
        output.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    fs::rename(&partial, &compressed)?;
    fs::remove_file(plain)
}

/// Deletes the rotated files past the newest `keep` (a plain file and its compressed twin
/// count once).
fn prune(log: &Path, keep: usize, counters: &DaemonCounters) {
    let found = match rotated_files(log) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!("cannot list the rotated logs beside {}: {e}", log.display());
            DaemonCounters::add(&counters.session_log_rotate_failed, 1);
            return;
        }
    };
    let mut stamps: Vec<SystemTime> = found.iter().map(|f| f.at).collect();
    stamps.dedup();
    let Some(&oldest_kept) = stamps.len().checked_sub(keep).and_then(|i| stamps.get(i)) else {
        return;
    };
    for old in found.iter().filter(|f| f.at < oldest_kept) {
        remove(&old.path, counters);
    }
}

fn remove(path: &Path, counters: &DaemonCounters) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::error!("cannot delete {}: {e}", path.display());
        DaemonCounters::add(&counters.session_log_rotate_failed, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::atomic::Ordering;

    const DAY: u64 = 86_400;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn gunzip(path: &Path) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn size_and_day_boundaries_trigger_rotation() {
        let daily = LogRotate {
            daily: true,
            max_bytes: None,
        };
        let sized = LogRotate {
            daily: false,
            max_bytes: Some(100),
        };
        let both = LogRotate {
            daily: true,
            max_bytes: Some(100),
        };
        let never = LogRotate {
            daily: false,
            max_bytes: None,
        };
        // An empty file is never rotated, however big the write or late the day.
        assert!(!due(both, 0, None, 1000, 9));
        assert!(!due(daily, 10, Some(3), 10, 3));
        assert!(due(daily, 10, Some(3), 10, 4));
        assert!(!due(sized, 90, Some(3), 10, 4));
        assert!(due(sized, 90, Some(3), 11, 3));
        assert!(due(both, 90, Some(3), 11, 3));
        assert!(due(both, 1, Some(3), 1, 4));
        assert!(!due(never, u64::MAX, Some(0), 1, 4));
        assert_eq!(day_of(at(DAY - 1)), 0);
        assert_eq!(day_of(at(DAY)), 1);
    }

    #[test]
    fn stamped_names_sort_in_time_order_and_parse_back() {
        let times = [
            at(0),
            at(9) + Duration::from_millis(999),
            at(10),
            at(DAY * 20_000 + 3_600),
        ];
        let names: Vec<String> = times
            .iter()
            .map(|&t| format!("sessions.jsonl{}", stamp(t)))
            .collect();
        assert_eq!(names[3], "sessions.jsonl.2024-10-04T01-00-00.000Z");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        for (name, &t) in names.iter().zip(&times) {
            assert_eq!(rotated_name("sessions.jsonl", name), Some((t, Kind::Plain)));
            let gz = format!("{name}.gz");
            assert_eq!(
                rotated_name("sessions.jsonl", &gz),
                Some((t, Kind::Compressed))
            );
            let tmp = format!("{name}.gz.tmp");
            assert_eq!(
                rotated_name("sessions.jsonl", &tmp),
                Some((t, Kind::Partial))
            );
        }
        for other in [
            "sessions.jsonl",
            "sessions.jsonl.1",
            "sessions.jsonl.2.gz",
            "other.jsonl.2024-10-04T01-00-00.000Z",
            "sessions.jsonl.2024-10-04T01:00:00.000Z",
            "sessions.jsonl.tmp",
        ] {
            assert_eq!(rotated_name("sessions.jsonl", other), None, "{other}");
        }
    }

    #[test]
    fn rotation_compresses_keeps_every_line_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.jsonl");
        let counters = Arc::new(DaemonCounters::default());
        let rotate = LogRotate {
            daily: true,
            max_bytes: Some(20),
        };
        let mut log = LogFile::open(&path, rotate, 2, Arc::clone(&counters)).unwrap();
        let t = at(DAY * 100);
        log.write(b"{\"n\":1}\n{\"n\":2}\n", t).unwrap();
        // 16 + 8 > 20: a new file, the old one rotated whole.
        log.write(b"{\"n\":3}\n", t).unwrap();
        // The same millisecond: a later stamp all the same.
        log.write(b"{\"n\":4}\n{\"n\":5}\n{\"n\":6}\n", t).unwrap();
        // A new day.
        log.write(b"{\"n\":7}\n", t + Duration::from_secs(DAY))
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":7}\n");
        // Three rotations; the compressor keeps the newest two, compressed.
        let kept = compressed(&path, 2);
        assert_eq!(kept[0].at, t + Duration::from_millis(1));
        assert_eq!(gunzip(&kept[0].path), "{\"n\":3}\n");
        assert_eq!(gunzip(&kept[1].path), "{\"n\":4}\n{\"n\":5}\n{\"n\":6}\n");
        assert_eq!(names(dir.path()).len(), 3, "{:?}", names(dir.path()));
        assert_eq!(
            counters.session_log_rotate_failed.load(Ordering::Relaxed),
            0
        );
    }

    /// Waits (bounded) until the compressor leaves `n` rotated files beside `log`, all
    /// compressed, and returns them.
    fn compressed(log: &Path, n: usize) -> Vec<Rotated> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rotated = rotated_files(log).unwrap();
            if rotated.len() == n && rotated.iter().all(|f| f.kind == Kind::Compressed) {
                return rotated;
            }
            assert!(std::time::Instant::now() < deadline, "{rotated:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_crash_mid_compression_is_finished_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.jsonl");
        let plain = with_suffix(&path, &stamp(at(1)));
        fs::write(&plain, "{\"n\":1}\n").unwrap();
        fs::write(with_suffix(&plain, ".gz.tmp"), "half").unwrap();
        let done = with_suffix(&path, &stamp(at(2)));
        fs::write(&done, "{\"n\":2}\n").unwrap();
        let mut done_gz = GzEncoder::new(
            File::create(with_suffix(&done, ".gz")).unwrap(),
            Compression::fast(),
        );
        done_gz.write_all(b"{\"n\":2}\n").unwrap();
        done_gz.finish().unwrap();
        fs::write(&path, "{\"n\":3}\n{\"n\":4,\"to").unwrap();
        let counters = Arc::new(DaemonCounters::default());
        let mut log = LogFile::open(
            &path,
            LogRotate {
                daily: false,
                max_bytes: Some(1),
            },
            10,
            counters,
        )
        .unwrap();
        // The torn line is ended; the partial and the plain twin are gone at once.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"n\":3}\n{\"n\":4,\"to\n"
        );
        log.write(b"{\"n\":5}\n", at(3)).unwrap();
        let rotated = compressed(&path, 3);
        assert_eq!(gunzip(&rotated[0].path), "{\"n\":1}\n");
        assert_eq!(gunzip(&rotated[1].path), "{\"n\":2}\n");
        assert_eq!(gunzip(&rotated[2].path), "{\"n\":3}\n{\"n\":4,\"to\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":5}\n");
    }

    #[test]
    fn a_torn_last_line_is_ended_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.jsonl");
        fs::write(&path, b"{\"id\":\"a\"}\n{\"id\":\"b\",\"sta").unwrap();
        let never = LogRotate {
            daily: false,
            max_bytes: None,
        };
        let counters = Arc::new(DaemonCounters::default());
        let mut log = LogFile::open(&path, never, 1, Arc::clone(&counters)).unwrap();
        log.write(b"{\"id\":\"c\"}\n", at(0)).unwrap();
        drop(log);
        // A whole log is left as it is.
        drop(LogFile::open(&path, never, 1, counters).unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"id\":\"a\"}\n{\"id\":\"b\",\"sta\n{\"id\":\"c\"}\n"
        );
    }

    #[test]
    fn an_outside_rename_is_followed_and_reopen_makes_the_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.jsonl");
        let never = LogRotate {
            daily: false,
            max_bytes: None,
        };
        let counters = Arc::new(DaemonCounters::default());
        let mut log = LogFile::open(&path, never, 1, counters).unwrap();
        log.write(b"a\n", at(0)).unwrap();
        let renamed = dir.path().join("sessions.jsonl.1");
        fs::rename(&path, &renamed).unwrap();
        log.write(b"b\n", at(0)).unwrap();
        assert_eq!(fs::read_to_string(&renamed).unwrap(), "a\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
        fs::rename(&path, &renamed).unwrap();
        log.reopen();
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        log.write(b"c\n", at(0)).unwrap();
        assert_eq!(fs::read_to_string(&renamed).unwrap(), "b\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "c\n");
    }
}
