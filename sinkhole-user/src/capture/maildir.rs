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

/// Threads that sync a batch's files at most: each `fdatasync` waits for its own disk flush, and
/// flushes issued together are merged by the block layer.
const SYNC_THREADS: usize = 16;
/// Stack of a sync thread (it only calls `fdatasync`).
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
        // Write every message to tmp/.
        let mut written: Vec<(usize, String, File)> = Vec::with_capacity(batch.len());
        for message in batch {
            let name = self.unique_name(now);
            let path = self.tmp.join(&name);
            let header = message.trace.header_block(&self.by, now);
            let result = File::create_new(&path).and_then(|mut file| {
                file.write_all(&header)?;
                file.write_all(message.body)?;
                Ok(file)
            });
            match result {
                Ok(file) => {
                    written.push((outcomes.len(), name, file));
                    outcomes.push(Ok(String::new()));
                }
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    outcomes.push(Err(e));
                }
            }
        }
        let files: Vec<&File> = written.iter().map(|(_, _, file)| file).collect();
        let synced = sync_data_all(&files);
        // The synced ones into new/; the others (and those that cannot move) leave tmp/.
        for ((index, name, _), synced) in written.into_iter().zip(synced) {
            let from = self.tmp.join(&name);
            let moved = synced.and_then(|()| fs::rename(&from, self.new.join(&name)));
            outcomes[index] = match moved {
                Ok(()) => Ok(name),
                Err(e) => {
                    let _ = fs::remove_file(&from);
                    Err(e)
                }
            };
        }
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

/// `fdatasync`s every file, several at once; one result per file, in order.
fn sync_data_all(files: &[&File]) -> Vec<io::Result<()>> {
    let threads = files.len().min(SYNC_THREADS);
    if threads <= 1 {
        return files.iter().map(|file| file.sync_data()).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<(usize, io::Result<()>)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                thread::Builder::new()
                    .stack_size(SYNC_STACK)
                    .spawn_scoped(scope, || {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(file) = files.get(i) else {
                                return done;
                            };
                            done.push((i, file.sync_data()));
                        }
                    })
            })
            .collect();
        // A thread that could not start leaves its share to the others (or to this one).
        let mut results: Vec<(usize, io::Result<()>)> = workers
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(file) = files.get(i) else {
                break results;
            };
            results.push((i, file.sync_data()));
        }
    });
    let mut ordered: Vec<io::Result<()>> = (0..files.len())
        .map(|_| Err(io::Error::other("the sync thread failed")))
        .collect();
    for (i, result) in results {
        ordered[i] = result;
    }
    ordered
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
