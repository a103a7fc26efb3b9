//! Reading and writing per-address files safely while the daemon runs and from several shells
//! at once.
//!
//! Every writer holds an exclusive `flock` on the file's lock file, `DIR/.NAME.lock` (a file
//! of its own, since a rename replaces the file's inode), re-reads the file under it, and
//! writes it whole:
//! - when the writer owns the file (or is root, or the file is new): into `DIR/.NAME.tmp`,
//!   given the file's mode (and, as root, its owner), `fsync`ed, renamed over the file, and the
//!   directory `fsync`ed: a reader sees the old file or the new one, even across a crash;
//! - when the writer may write the file without owning it (group write, as the daemon for a
//!   person's file): in place (written, truncated, `fsync`ed), so that it keeps its owner and
//!   mode. Readers that take the lock (the daemon, the commands) never see it half written.
//!
//! A file the caller may not write (by its mode, as `access(2)` says for the real user) is
//! refused with a message saying so: a rename would replace it whatever its mode.
//! Readers hold a shared lock while they read, when the lock file exists.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Access, FlockOperation};

use super::address::MAX_FILE_BYTES;

/// How long a writer waits for another writer's lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a reader waits for a writer before it reads anyway (a torn read fails to parse,
/// and the file's previous rules stay).
pub const READ_LOCK_WAIT: Duration = Duration::from_secs(1);

/// Why a file could not be read or written; the message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{}: you may not write this file (owner uid {uid}, mode {mode:04o}); ask its owner or \
         the operator",
        path.display()
    )]
    NotWritable { path: PathBuf, uid: u32, mode: u32 },
    #[error(
        "{}: you may not create files in {} (ask the operator to create the address's file for \
         you)",
        path.display(),
        dir.display()
    )]
    NoCreate { path: PathBuf, dir: PathBuf },
    #[error("{}: still locked by another writer after {}s; try again", path.display(), LOCK_WAIT.as_secs())]
    Locked { path: PathBuf },
    #[error("{}: larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `DIR/.NAME.lock` for `DIR/NAME`.
pub fn lock_path(path: &Path) -> PathBuf {
    sibling(path, ".", ".lock")
}

/// `DIR/{prefix}NAME{suffix}`.
fn sibling(path: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!("{prefix}{name}{suffix}"))
}

/// Takes `operation` on `file`, retrying a non-blocking attempt until `wait` has passed.
fn lock(file: &File, operation: FlockOperation, wait: Duration) -> io::Result<bool> {
    let until = Instant::now() + wait;
    loop {
        match rustix::fs::flock(file, operation) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads a file whole (at most [`MAX_FILE_BYTES`]), under a shared lock when its lock file
/// exists.
pub fn read(path: &Path) -> Result<String, FileError> {
    // Held until the text is read.
    let _lock = match File::open(lock_path(path)) {
        Ok(lock_file) => {
            lock(
                &lock_file,
                FlockOperation::NonBlockingLockShared,
                READ_LOCK_WAIT,
            )
            .map_err(io_error(path))?;
            Some(lock_file)
        }
        Err(_) => None,
    };
    let file = File::open(path).map_err(io_error(path))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Changes the file at `path` under its exclusive lock: `edit` gets its text (`None`: it does
/// not exist) and returns the new text, or an error that leaves the file as it was.
pub fn update<E: From<FileError>>(
    path: &Path,
    edit: impl FnOnce(Option<&str>) -> Result<String, E>,
) -> Result<(), E> {
    let current = fs::metadata(path).ok();
    check_writable(path, current.as_ref())?;
    let lock_path = lock_path(path);
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(&lock_path)
        .or_else(|_| File::open(&lock_path))
        .map_err(io_error(&lock_path))?;
    if !lock(
        &lock_file,
        FlockOperation::NonBlockingLockExclusive,
        LOCK_WAIT,
    )
    .map_err(io_error(&lock_path))?
    {
        return Err(FileError::Locked {
            path: path.to_owned(),
        }
        .into());
    }
    // Read again under the lock: another writer may have changed it meanwhile.
    let text = match fs::metadata(path) {
        Ok(_) => Some(read_locked(path)?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(path)(e).into()),
    };
    let new = edit(text.as_deref())?;
    let meta = fs::metadata(path).ok();
    write(path, meta.as_ref(), new.as_bytes())?;
    drop(lock_file);
    Ok(())
}

/// [`read`] without taking the lock (the caller holds it).
fn read_locked(path: &Path) -> Result<String, FileError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(io_error(path))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Refuses a file the caller may not write, or a new file in a directory it may not write.
fn check_writable(path: &Path, meta: Option<&fs::Metadata>) -> Result<(), FileError> {
    match meta {
        Some(meta) => match rustix::fs::access(path, Access::WRITE_OK) {
            Ok(()) => Ok(()),
            Err(_) => Err(FileError::NotWritable {
                path: path.to_owned(),
                uid: meta.uid(),
                mode: meta.mode() & 0o7777,
            }),
        },
        None => {
            let dir = path.parent().unwrap_or(Path::new("."));
            match rustix::fs::access(dir, Access::WRITE_OK) {
                Ok(()) => Ok(()),
                Err(_) => Err(FileError::NoCreate {
                    path: path.to_owned(),
                    dir: dir.to_owned(),
                }),
            }
        }
    }
}

/// Writes `bytes` as the file at `path` (whose metadata is `meta`, if it exists): renamed into
/// place when the writer owns it, in place otherwise (see the module).
fn write(path: &Path, meta: Option<&fs::Metadata>, bytes: &[u8]) -> Result<(), FileError> {
    let euid = rustix::process::geteuid().as_raw();
    let owned = meta.is_none_or(|m| m.uid() == euid || euid == 0);
    if !owned {
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        return file
            .write_all(bytes)
            .and_then(|()| file.set_len(bytes.len() as u64))
            .and_then(|()| file.sync_all())
            .map_err(io_error(path));
    }
    let tmp = sibling(path, ".", ".tmp");
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if let Some(meta) = meta {
            file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            if euid == 0 && (meta.uid() != euid || meta.gid() != file.metadata()?.gid()) {
                std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
            }
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_replaces_the_file_whole_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chris.toml");
        update::<FileError>(&path, |old| {
            assert_eq!(old, None);
            Ok("one\n".into())
        })
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        update::<FileError>(&path, |old| Ok(format!("{}two\n", old.unwrap()))).unwrap();
        assert_eq!(read(&path).unwrap(), "one\ntwo\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert!(lock_path(&path).ends_with(".chris.toml.lock"));
        assert!(!dir.path().join(".chris.toml.tmp").exists());
        // An edit that fails leaves the file as it was.
        let failed = update::<FileError>(&path, |_| {
            Err(FileError::TooLarge {
                path: PathBuf::from("x"),
            })
        });
        assert!(failed.is_err());
        assert_eq!(read(&path).unwrap(), "one\ntwo\n");
    }

    #[test]
    fn a_writer_waits_for_the_lock_of_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        fs::write(&path, "0").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    update::<FileError>(&path, |old| {
                        let n: u32 = old.unwrap().parse().unwrap();
                        std::thread::sleep(Duration::from_millis(5));
                        Ok((n + 1).to_string())
                    })
                    .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read(&path).unwrap(), "8", "no update was lost");
    }
}
