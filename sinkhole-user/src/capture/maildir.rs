//! The Maildir writer with group commit.
//!
//! A batch of messages is written to `tmp/`, made durable with one sync, renamed into `new/`,
//! and `new/` is synced once: a message is in `new/` only whole, and is announced (250) only
//! after its name in `new/` is durable.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::headers::Trace;

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

    /// Stores `batch`, pushing one outcome per message (its name in `new/`, or the error) to
    /// `outcomes` in order.
    pub fn store_batch(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<io::Result<String>>) {
        let now = SystemTime::now();
        let first = outcomes.len();
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
        // One sync for the whole batch: a lone file syncs its own data; several share a syncfs.
        let synced = match written.as_slice() {
            [] => return,
            [(_, _, file)] => file.sync_data(),
            [(_, _, file), ..] => rustix::fs::syncfs(file).map_err(io::Error::from),
        };
        if let Err(e) = synced {
            self.fail(&written, &self.tmp, &e, outcomes);
            return;
        }
        // Into new/, then make the renames durable with one sync of the directory.
        let mut renamed = Vec::with_capacity(written.len());
        for (index, name, file) in written {
            match fs::rename(self.tmp.join(&name), self.new.join(&name)) {
                Ok(()) => renamed.push((index, name, file)),
                Err(e) => {
                    let _ = fs::remove_file(self.tmp.join(&name));
                    outcomes[index] = Err(e);
                }
            }
        }
        if renamed.is_empty() {
            return;
        }
        match File::open(&self.new).and_then(|dir| dir.sync_all()) {
            Ok(()) => {
                for (index, name, _) in renamed {
                    outcomes[index] = Ok(name);
                }
            }
            Err(e) => self.fail(&renamed, &self.new, &e, outcomes),
        }
        debug_assert_eq!(outcomes.len() - first, batch.len());
    }

    /// Removes the files of a batch that could not be made durable from `dir`, and fails them.
    fn fail(
        &self,
        files: &[(usize, String, File)],
        dir: &Path,
        error: &io::Error,
        outcomes: &mut [io::Result<String>],
    ) {
        for (index, name, _) in files {
            let _ = fs::remove_file(dir.join(name));
            outcomes[*index] = Err(io::Error::new(error.kind(), error.to_string()));
        }
    }
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
        maildir.store_batch(&batch, &mut outcomes);
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
        maildir.store_batch(
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
