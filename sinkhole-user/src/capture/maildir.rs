//! The Maildir writer, in two steps for group commit.
//!
//! [`Maildir::start`] opens a file of its own for a message, with no name in `new/` yet, and
//! the message streams into it ([`MessageFile::append`], chunk by chunk as the body arrives; the
//! event loop writes, as Postfix's smtpd writes its queue file: a page-cache write, not a disk
//! wait). [`NewDir::name`] gives it its name there once a sync that began after the write has
//! returned, and the message is announced (250) only once a sync that began after the naming has
//! returned (see `capture/mod.rs` for the loop that interleaves them). So a message is in `new/`
//! only whole, and is announced only after its name is durable.
//!
//! The sync is `syncfs`, not an `fdatasync` per file and an `fsync` of `new/`: why, and what it
//! costs, in `docs/architecture.md`, "Durable before 250".
//!
//! The files are made with `O_TMPFILE` in `new/` and linked there under their names: one
//! directory entry per message instead of the classic three (create in `tmp/`, rename out of
//! it, into `new/`), which matters when `new/` holds a million messages. Filesystems without
//! `O_TMPFILE` get the classic way through `tmp/`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};

use super::headers::{ClientHeaders, LfEndings, Trace};

pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    /// `new/`, open: files are made and named in it, and the filesystem is synced through it.
    new_dir: File,
    /// Whether files are made with `O_TMPFILE` (else in `tmp/`).
    unnamed_files: bool,
    /// Our host name as Maildir names want it (no `/` or `:`).
    host: String,
    /// The `Received:` line's `by`.
    by: String,
    pid: u32,
    counter: u64,
}

/// A message written but not named in `new/` yet, with the name it is to get there. Dropped
/// unnamed, it leaves nothing behind: an `O_TMPFILE` file goes with its descriptor, a file in
/// `tmp/` is removed.
pub struct Unnamed {
    name: String,
    file: File,
    /// `tmp/NAME`, for a filesystem without `O_TMPFILE`, until it is renamed into `new/`.
    in_tmp: Option<PathBuf>,
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        if let Some(path) = self.in_tmp.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// A message being received: its file (our headers first), which its body's chunks are appended
/// to as they arrive, with LF line endings. A failed step is kept and ends the message in
/// [`MessageFile::finish`]; the bytes that come after it are dropped.
pub struct MessageFile {
    file: io::Result<Unnamed>,
    /// Our headers until they go out with the first chunk.
    header: Vec<u8>,
    /// The client's own `X-Sinkhole-*` headers renamed on their way to the file.
    client: ClientHeaders,
    /// Its CRLF line endings written as LF.
    endings: LfEndings,
}

impl MessageFile {
    /// Appends a chunk of the body. The one place body bytes pass on their way to the file:
    /// renamed where they are the client's `X-Sinkhole-*` headers, CRLF as LF, in one write
    /// (through a buffer of the chunk's size, let go after it).
    pub fn append(&mut self, chunk: &[u8]) {
        if chunk.is_empty() && self.header.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.header);
        out.reserve(chunk.len() + 32);
        let renamed = self
            .client
            .write(chunk, &mut LfWriter(&mut self.endings, &mut out));
        self.write(renamed.map(|()| out));
    }

    /// Writes `bytes` to the file, or keeps the first error.
    fn write(&mut self, bytes: io::Result<Vec<u8>>) {
        let Ok(unnamed) = &self.file else {
            return;
        };
        if let Err(e) = bytes.and_then(|bytes| (&unnamed.file).write_all(&bytes)) {
            self.file = Err(doing("writing it", e));
        }
    }

    /// The whole message is written: the file, to be named once a sync has made it durable.
    pub fn finish(mut self) -> io::Result<Unnamed> {
        let mut out = std::mem::take(&mut self.header);
        let held =
            std::mem::take(&mut self.client).finish(&mut LfWriter(&mut self.endings, &mut out));
        std::mem::take(&mut self.endings).finish(&mut out);
        self.write(held.map(|()| out));
        self.file
    }
}

/// What [`ClientHeaders`] writes, with its CRLF line endings as LF, into a buffer.
struct LfWriter<'a>(&'a mut LfEndings, &'a mut Vec<u8>);

impl Write for LfWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes, self.1);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
            tracing::warn!(
                "removed {stale} unfinished message(s) from {}",
                tmp.display()
            );
        }
        let new = root.join("new");
        let unnamed_files = match unnamed_files_work(&tmp) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(
                    "{}: cannot make and link O_TMPFILE files ({e}); messages are written to \
                     tmp/ and renamed",
                    root.display()
                );
                false
            }
        };
        Ok(Maildir {
            new_dir: File::open(&new)?,
            tmp,
            new,
            unnamed_files,
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

    /// Starts a message: a file not yet named in `new/`, which gets our headers (`trace`) and
    /// then the body as it comes. Dropped before it is named, it leaves nothing behind.
    pub fn start(&mut self, trace: &Trace, now: SystemTime) -> MessageFile {
        let name = self.unique_name(now);
        let file = if self.unnamed_files {
            unnamed_file(&self.new_dir).map(|file| Unnamed {
                name,
                file,
                in_tmp: None,
            })
        } else {
            let path = self.tmp.join(&name);
            File::create_new(&path).map(|file| Unnamed {
                name,
                file,
                in_tmp: Some(path),
            })
        };
        MessageFile {
            file: file.map_err(|e| doing("writing it", e)),
            header: trace.header_block(&self.by, now),
            client: ClientHeaders::default(),
            endings: LfEndings::default(),
        }
    }

    /// `new/`, for whichever thread syncs and names the files (see [`NewDir`]).
    pub fn new_dir(&self) -> io::Result<NewDir> {
        Ok(NewDir {
            new: self.new.clone(),
            dir: File::open(&self.new)?,
        })
    }
}

/// `new/`, open for syncing the filesystem and naming written files.
pub struct NewDir {
    new: PathBuf,
    dir: File,
}

impl NewDir {
    /// Makes everything written and named in this Maildir before this call durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.dir).map_err(|e| doing("syncing the filesystem", e.into()))
    }

    /// Gives a written file its name in `new/`, which it returns; when that fails, the file is
    /// gone. Only once a [`NewDir::sync`] begun after [`Maildir::write`] has returned, so that
    /// no crash leaves a name on a file whose data is not on disk.
    pub fn name(&self, mut file: Unnamed) -> io::Result<String> {
        match &file.in_tmp {
            None => link_unnamed(&file.file, &self.dir, &file.name),
            Some(from) => fs::rename(from, self.new.join(&file.name)).map(|()| {
                file.in_tmp = None;
            }),
        }
        .map_err(|e| doing("naming it in new/", e))?;
        Ok(std::mem::take(&mut file.name))
    }

    /// Takes back a message whose name could not be made durable (it was never announced).
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.new.join(name));
    }
}

/// `error`, saying what was being done when it happened (the log line names the message and
/// the Maildir; this says which step failed).
fn doing(what: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// Gives an `O_TMPFILE` file the name `name` in `dir`. Through `/proc/self/fd`, since linking the
/// descriptor itself (`AT_EMPTY_PATH`) needs `CAP_DAC_READ_SEARCH`, which the daemon gives up.
fn link_unnamed(file: &File, dir: &File, name: &str) -> io::Result<()> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(CWD, path.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)?;
    Ok(())
}

/// A new file in `dir` with no name yet (`O_TMPFILE`): it vanishes with its descriptor unless
/// [`link_unnamed`] names it.
fn unnamed_file(dir: &File) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    Ok(File::from(fd))
}

/// Whether [`unnamed_file`] and [`link_unnamed`] work in `dir` (the filesystem may lack
/// `O_TMPFILE`, the process `/proc`), and if not why. Tried in `tmp/`, so a Maildir reader never
/// sees the probe.
fn unnamed_files_work(dir: &Path) -> io::Result<()> {
    let dir = File::open(dir)?;
    let file = unnamed_file(&dir)?;
    let name = format!(".probe.{}", std::process::id());
    link_unnamed(&file, &dir, &name)?;
    rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty())?;
    Ok(())
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
            protocol: "ESMTP",
            dnsbl: Vec::new(),
            mail_from: "a@example.org".into(),
            rcpts: vec!["t@example.org".into()],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sinkhole-maildir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Writes `body` in chunks of `chunk` bytes.
    fn write(maildir: &mut Maildir, body: &[u8], chunk: usize) -> io::Result<Unnamed> {
        let mut message = maildir.start(&trace(), SystemTime::now());
        for piece in body.chunks(chunk) {
            message.append(piece);
        }
        message.finish()
    }

    /// Stores three messages as one batch (streamed in chunks, one empty), makes them durable
    /// and checks what landed in `new/`.
    fn store_two(maildir: &mut Maildir, root: &Path) {
        let batch: [&[u8]; 3] = [
            b"Subject: one\r\n\r\nbody one\r\n",
            b"Subject: two\r\n\r\nbody two\r\n",
            b"",
        ];
        // As stored: LF line endings.
        let stored_as: [&[u8]; 3] = [
            b"Subject: one\n\nbody one\n",
            b"Subject: two\n\nbody two\n",
            b"",
        ];
        let new_dir = maildir.new_dir().unwrap();
        let written: Vec<Unnamed> = batch
            .iter()
            .enumerate()
            .map(|(i, body)| write(maildir, body, 1 + 5 * i).unwrap())
            .collect();
        // Written, not named: nothing in new/ yet.
        assert_eq!(fs::read_dir(root.join("new")).unwrap().count(), 0);
        new_dir.sync().unwrap();
        let names: Vec<String> = written
            .into_iter()
            .map(|file| new_dir.name(file).unwrap())
            .collect();
        new_dir.sync().unwrap();
        assert_eq!(names.len(), 3);
        assert_ne!(names[0], names[1]);
        for (name, body) in names.iter().zip(stored_as) {
            let stored = fs::read(root.join("new").join(name)).unwrap();
            assert!(stored.starts_with(
                b"Return-Path: <a@example.org>\nX-Original-To: t@example.org\n\
                  Delivered-To: t@example.org\nReceived: from client.example"
            ));
            assert!(stored.ends_with(body));
            let dnsbl = b"X-Sinkhole-Dnsbl: (none)\n";
            let at = stored
                .windows(dnsbl.len())
                .position(|w| w == dnsbl)
                .unwrap();
            assert_eq!(
                &stored[at + dnsbl.len()..],
                body,
                "the body follows the headers whole"
            );
        }
        assert_eq!(fs::read_dir(root.join("new")).unwrap().count(), 3);
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn messages_land_whole_in_new_with_headers_prepended_and_tmp_is_cleaned_at_open() {
        let root = temp_dir("deliver");
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("tmp/stale"), b"half a message").unwrap();
        let mut maildir = Maildir::open(&root, "mx.example").unwrap();
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        // ext4 and tmpfs, where the tests run, have O_TMPFILE.
        assert!(maildir.unnamed_files);
        store_two(&mut maildir, &root);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn without_o_tmpfile_messages_go_through_tmp() {
        let root = temp_dir("classic");
        let mut maildir = Maildir::open(&root, "mx.example").unwrap();
        maildir.unnamed_files = false;
        store_two(&mut maildir, &root);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_delivery_leaves_nothing_behind() {
        for unnamed_files in [true, false] {
            let root = temp_dir("fail");
            let mut maildir = Maildir::open(&root, "mx.example").unwrap();
            maildir.unnamed_files = unnamed_files;
            let new_dir = maildir.new_dir().unwrap();
            // new/ is not a directory any more: the file cannot be named there.
            fs::remove_dir(root.join("new")).unwrap();
            fs::write(root.join("new"), b"").unwrap();
            let written = write(&mut maildir, b"x\r\n", 2);
            let named = written.and_then(|file| new_dir.name(file));
            // An O_TMPFILE file cannot even be made in the new/ that is gone; a file in tmp/
            // is made, then cannot be moved. The error says which.
            let step = if unnamed_files {
                "writing it: "
            } else {
                "naming it in new/: "
            };
            let error = named.unwrap_err().to_string();
            assert!(error.starts_with(step), "{error}");
            assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0);
            assert_eq!(fs::read(root.join("new")).unwrap(), b"");
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn a_message_dropped_before_it_is_named_leaves_nothing_behind() {
        for unnamed_files in [true, false] {
            let root = temp_dir("dropped");
            let mut maildir = Maildir::open(&root, "mx.example").unwrap();
            maildir.unnamed_files = unnamed_files;
            let mut message = maildir.start(&trace(), SystemTime::now());
            message.append(b"half a message\r\n");
            let written = message.finish().unwrap();
            let mut message = maildir.start(&trace(), SystemTime::now());
            message.append(b"an abandoned body\r\n");
            drop((written, message));
            for sub in ["tmp", "new"] {
                assert_eq!(fs::read_dir(root.join(sub)).unwrap().count(), 0, "{sub}/");
            }
            fs::remove_dir_all(&root).unwrap();
        }
    }
}
