//! The Maildir writer with group commit.
//!
//! A batch of messages is written to `tmp/`, each file's data is synced (in parallel, so the
//! disk flushes overlap), the files are renamed into `new/`, and `new/` is synced once
//! ([`NewDir::sync`], on another thread while the next batch is written): a message is in `new/`
//! only whole, and is announced (250) only after its name in `new/` is durable. Only our own
//! files and directory are synced, never the whole filesystem (`syncfs` would also write out
//! whatever other processes left dirty on the disk).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use super::headers::Trace;

/// Threads that write and sync a batch's files at most: each `fdatasync` waits for its own disk
/// flush, and flushes issued together are merged by the block layer.
const SYNC_THREADS: usize = 16;
/// Stack of a writer thread (it formats a header block and writes a file).
const SYNC_STACK: usize = 64 * 1024;

/// One message to store.
pub struct Message<'a> {
    pub trace: &'a Trace,
    pub body: &'a [u8],
}

pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    /// Our host name as Maildir names want it (no `/` or `:`).
    host: String,
    /// The `Received:` line's `by`.
    by: String,
    pid: u32,
    counter: u64,
}

/// `new/`, open for syncing the renames into it.
pub struct NewDir {
    path: PathBuf,
    dir: File,
}

impl Maildir {
    /// Creates `root/{tmp,new,cur}` as needed and removes what a crash left in `tmp/`.
    pub fn open(root: &Path, hostname: &str) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let tmp = root.join("tmp");
        let mut stale = 0;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
                stale += 1;
            }
        }
        if stale > 0 {
            log::warn!(
                "removed {stale} unfinished message(s) from {}",
                tmp.display()
            );
        }
        Ok(Maildir {
            tmp,
            new: root.join("new"),
            host: hostname.replace('/', "\\057").replace(':', "\\072"),
            by: hostname.to_string(),
            pid: std::process::id(),
            counter: 0,
        })
    }

    /// `new/`, for [`NewDir::sync`] (on whichever thread commits the batches).
    pub fn new_dir(&self) -> io::Result<NewDir> {
        Ok(NewDir {
            path: self.new.clone(),
            dir: File::open(&self.new)?,
        })
    }

    /// A name unique to this host: `SECONDS.MMICROSPPIDQCOUNTER.HOST` (the Maildir convention);
    /// never derived from client input.
    fn unique_name(&mut self, now: SystemTime) -> String {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.counter += 1;
        format!(
            "{}.M{}P{}Q{}.{}",
            since.as_secs(),
            since.subsec_micros(),
            self.pid,
            self.counter,
            self.host
        )
    }

    /// Writes `batch` to `tmp/`, syncs the files' data and renames them into `new/`, pushing
    /// one outcome per message (its name in `new/`, or the error) to `outcomes` in order. The
    /// names are durable only once [`NewDir::sync`] has returned after this.
    pub fn write_batch(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<io::Result<String>>) {
        let now = SystemTime::now();
        let names: Vec<String> = batch.iter().map(|_| self.unique_name(now)).collect();
        // Several files at once: one's disk flush overlaps the others' writes and flushes.
        let written = in_parallel(batch.len(), |i| {
            self.write_synced(&names[i], &batch[i], now)
        });
        // The synced ones into new/; the others (and those that cannot move) leave tmp/.
        for (name, written) in names.into_iter().zip(written) {
            let from = self.tmp.join(&name);
            let moved = written.and_then(|()| fs::rename(&from, self.new.join(&name)));
            outcomes.push(match moved {
                Ok(()) => Ok(name),
                Err(e) => {
                    let _ = fs::remove_file(&from);
                    Err(e)
                }
            });
        }
    }

    /// Writes one message to `tmp/name`, headers first, and syncs its data.
    fn write_synced(&self, name: &str, message: &Message<'_>, now: SystemTime) -> io::Result<()> {
        let header = message.trace.header_block(&self.by, now);
        let mut file = File::create_new(self.tmp.join(name))?;
        file.write_all(&header)?;
        file.write_all(message.body)?;
        file.sync_data()
    }
}

impl NewDir {
    /// Makes every rename into `new/` done before this call durable.
    pub fn sync(&self) -> io::Result<()> {
        self.dir.sync_all()
    }

    /// Takes back a message whose name could not be made durable (it was never announced).
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.path.join(name));
    }
}

/// `job(0..n)` on up to [`SYNC_THREADS`] threads; the results in order.
fn in_parallel<T: Send>(n: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = n.min(SYNC_THREADS);
    if threads <= 1 {
        return (0..n).map(job).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return done;
            }
            done.push((i, job(i)));
        }
    };
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    thread::scope(|scope| {
        // A thread that cannot start leaves its share to the others, and to this one.
        let workers: Vec<_> = (1..threads)
            .filter_map(|_| {
                thread::Builder::new()
                    .stack_size(SYNC_STACK)
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mine = work();
        for (i, result) in workers
            .into_iter()
            .flat_map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .chain(mine)
        {
            results[i] = Some(result);
        }
    });
    // Every index was taken by exactly one thread, which returned its result.
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Trace {
        Trace {
            session_id: "s1".into(),
            client: "192.0.2.1:1234".parse().unwrap(),
            rdns: None,
            helo: Some("client.example".into()),
            dnsbl: Vec::new(),
            mail_from: "a@example.org".into(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sinkhole-maildir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_batch_lands_whole_in_new_with_headers_prepended_and_tmp_is_cleaned_at_open() {
        let root = temp_dir("batch");
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("tmp/stale"), b"half a message").unwrap();
        let mut maildir = Maildir::open(&root, "mx.example").unwrap();
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        let trace = trace();
        let batch = [
            Message {
                trace: &trace,
                body: b"Subject: one\r\n\r\nbody one\r\n",
            },
            Message {
                trace: &trace,
                body: b"Subject: two\r\n\r\nbody two\r\n",
            },
        ];
        let mut outcomes = Vec::new();
        maildir.write_batch(&batch, &mut outcomes);
        maildir.new_dir().unwrap().sync().unwrap();
        let names: Vec<String> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1]);
        for (name, message) in names.iter().zip(&batch) {
            let stored = fs::read(root.join("new").join(name)).unwrap();
            assert!(
                stored
                    .starts_with(b"Return-Path: <a@example.org>\r\nReceived: from client.example")
            );
            assert!(stored.ends_with(message.body));
        }
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_rename_leaves_nothing_behind() {
        let root = temp_dir("fail");
        let mut maildir = Maildir::open(&root, "mx.example").unwrap();
        // new/ is not a directory any more: the rename fails.
        fs::remove_dir(root.join("new")).unwrap();
        fs::write(root.join("new"), b"").unwrap();
        let trace = trace();
        let mut outcomes = Vec::new();
        maildir.write_batch(
            &[Message {
                trace: &trace,
                body: b"x\r\n",
            }],
            &mut outcomes,
        );
        assert!(outcomes[0].is_err());
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }
}
