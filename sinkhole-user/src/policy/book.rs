//! The per-address files of `policy.addresses_dir` as one book: which file speaks for each
//! address, each file's latest good parse, and the verdict on a recipient. [`AddressDir`] reads
//! the directory, again after a change, keeping a file's previous rules when it no longer
//! parses.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::Facts;
use super::address::{AddressFile, ClosedEntry, Refusal, State};
use super::address_io;
use super::pattern::Mailbox;
use crate::smtp::Reply;

/// Most files the directory is read for; more are left out (and said so).
pub const MAX_FILES: usize = 100_000;

/// A file's refusal of a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressRefusal {
    /// The file's name in the directory.
    pub file: Arc<str>,
    pub why: Refusal,
    pub reply: Reply,
}

/// A close an address had, as [`AddressBook::reopened`] undoes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastClose {
    pub address: Mailbox,
    /// When, if the file says.
    pub at: Option<SystemTime>,
    pub reason: Option<String>,
}

/// One file of the book.
#[derive(Debug)]
pub struct Entry {
    /// Its name in the directory (`chris.toml`).
    pub name: Arc<str>,
    pub file: AddressFile,
}

/// The files in force. Cheap to clone (shared parts) and swapped whole.
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    entries: Vec<Arc<Entry>>,
    /// Each address's file (an index into `entries`).
    index: Arc<HashMap<Mailbox, usize>>,
    /// Some file blocks hosts by reverse name: a recipient verdict waits for the score.
    uses_rdns: bool,
}

impl AddressBook {
    /// A book of `entries`, in name order; an address two files list belongs to the first, and
    /// each such conflict is passed to `warn`.
    pub fn new(entries: Vec<Arc<Entry>>, warn: &mut dyn FnMut(String)) -> AddressBook {
        let mut index = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            for address in &entry.file.addresses {
                if let Some(&first) = index.get(address) {
                    let first: &Arc<Entry> = &entries[first];
                    warn(format!(
                        "{}: {address} is listed by {} already; that file decides for it",
                        entry.name, first.name
                    ));
                    continue;
                }
                index.insert(address.clone(), i);
            }
        }
        AddressBook {
            uses_rdns: entries.iter().any(|e| e.file.uses_rdns()),
            entries,
            index: Arc::new(index),
        }
    }

    /// Whether some file blocks hosts by reverse name (so recipient verdicts wait for the
    /// score).
    pub fn uses_rdns(&self) -> bool {
        self.uses_rdns
    }

    /// The files, in name order.
    pub fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// The file that speaks for `address` (a recipient as given, or a mailbox).
    pub fn lookup(&self, address: &str) -> Option<&Arc<Entry>> {
        self.index
            .get(&Mailbox::key(address))
            .map(|&i| &self.entries[i])
    }

    /// The verdict of `rcpt`'s own file, if it has one and it refuses.
    pub fn refuse(&self, rcpt: &str, facts: &Facts) -> Option<AddressRefusal> {
        let entry = self.lookup(rcpt)?;
        let (why, reply) = entry.file.refuse(rcpt, facts)?;
        Some(AddressRefusal {
            file: Arc::clone(&entry.name),
            why,
            reply,
        })
    }

    /// The book with every address open, and the closes it had.
    pub fn reopened(&self) -> (AddressBook, Vec<PastClose>) {
        let mut closes = Vec::new();
        let entries = self
            .entries
            .iter()
            .map(|entry| {
                let file = &entry.file;
                for address in &file.addresses {
                    if let Some(closure) = file.closure(address) {
                        closes.push(PastClose {
                            address: address.clone(),
                            at: closure.at,
                            reason: closure.reason.map(str::to_owned),
                        });
                    }
                }
                let mut open = file.clone();
                open.state = State::Open;
                open.closed_at = None;
                open.closed_reason = None;
                open.closed.clear();
                Arc::new(Entry {
                    name: Arc::clone(&entry.name),
                    file: open,
                })
            })
            .collect();
        let book = AddressBook {
            entries,
            index: Arc::clone(&self.index),
            uses_rdns: self.uses_rdns,
        };
        (book, closes)
    }

    /// The book with `address` closed (at `at`, for `reason`), before its file says so.
    pub fn with_closed(&self, address: &str, at: SystemTime, reason: &str) -> AddressBook {
        let key = Mailbox::key(address);
        let Some(&i) = self.index.get(&key) else {
            return self.clone();
        };
        let entry = &self.entries[i];
        let mut file = entry.file.clone();
        file.closed.insert(
            key,
            ClosedEntry {
                at: Some(at),
                reason: Some(reason.to_owned()),
            },
        );
        let mut book = self.clone();
        book.entries[i] = Arc::new(Entry {
            name: Arc::clone(&entry.name),
            file,
        });
        book
    }
}

/// Why no file could be named for an address.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{0}")]
    Directory(String),
    #[error(
        "{file} mentions {address} but does not parse, so which file speaks for it is not \
         known; fix it first: {why}"
    )]
    Broken {
        file: String,
        address: Mailbox,
        why: String,
    },
}

/// The file that speaks for `address` in `dir` (the first by name that lists it, as the daemon
/// decides), and whether it exists; else `DIR/ADDRESS.toml`, to be made. Refused while a file
/// that does not parse mentions the address.
pub fn locate(dir: &Path, address: &Mailbox) -> Result<(PathBuf, bool), LocateError> {
    if let Err(e) = std::fs::read_dir(dir) {
        return Err(LocateError::Directory(format!("{}: {e}", dir.display())));
    }
    let mut directory = AddressDir::new(dir);
    let mut broken = Vec::new();
    directory.scan(true, &mut |report| {
        if let Report::Broken(why) = report {
            broken.push(why);
        }
    });
    let book = directory.book(&mut |_| {});
    if let Some(entry) = book.lookup(address.as_str()) {
        return Ok((dir.join(&*entry.name), true));
    }
    for (name, known) in &directory.known {
        if known.entry.is_some() {
            continue;
        }
        let path = dir.join(name);
        let mentions = std::fs::read_to_string(&path)
            .is_ok_and(|text| text.to_ascii_lowercase().contains(address.as_str()));
        if mentions {
            let why = broken
                .iter()
                .find(|why| why.starts_with(&path.display().to_string()))
                .cloned()
                .unwrap_or_default();
            return Err(LocateError::Broken {
                file: path.display().to_string(),
                address: address.clone(),
                why,
            });
        }
    }
    let path = dir.join(format!("{address}.toml"));
    if path.exists() {
        return Err(LocateError::Directory(format!(
            "{}: exists but does not list {address} in its `addresses`",
            path.display()
        )));
    }
    Ok((path, false))
}

/// What the directory looked like at a file's last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// A file as last read.
#[derive(Debug)]
struct Known {
    stamp: Stamp,
    /// Its latest good parse (kept when a later read fails).
    entry: Option<Arc<Entry>>,
}

/// What one scan found to say.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// A file that does not parse (or cannot be read): `FILE:LINE: why`; its previous rules
    /// stay.
    Broken(String),
    /// A file read anew.
    Loaded(String),
    /// A file gone: its addresses have no file now.
    Removed(String),
    /// Something the operator should know (an address two files list, files over the limit).
    Warning(String),
}

/// `policy.addresses_dir`, read into a book.
#[derive(Debug)]
pub struct AddressDir {
    dir: PathBuf,
    known: BTreeMap<String, Known>,
}

impl AddressDir {
    pub fn new(dir: &Path) -> AddressDir {
        AddressDir {
            dir: dir.to_owned(),
            known: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file for `name` in the directory.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads the files that changed since the last scan (`force`: all of them); whether the
    /// book changed. Each finding goes to `report`.
    pub fn scan(&mut self, force: bool, report: &mut dyn FnMut(Report)) -> bool {
        let names = match self.list() {
            Ok(names) => names,
            Err(e) => {
                report(Report::Broken(format!("{}: {e}", self.dir.display())));
                return false;
            }
        };
        let mut changed = false;
        let (names, over): (Vec<_>, Vec<_>) = names
            .into_iter()
            .enumerate()
            .partition(|(i, _)| *i < MAX_FILES);
        if !over.is_empty() {
            report(Report::Warning(format!(
                "{}: more than {MAX_FILES} files; {} left out",
                self.dir.display(),
                over.len()
            )));
        }
        let present: std::collections::BTreeSet<&String> =
            names.iter().map(|(_, (name, _))| name).collect();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|name| !present.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if self.known.remove(&name).is_some_and(|k| k.entry.is_some()) {
                changed = true;
            }
            report(Report::Removed(name));
        }
        for (_, (name, stamp)) in names {
            let known = self.known.get(&name);
            if !force && known.is_some_and(|k| k.stamp == stamp) {
                continue;
            }
            let path = self.dir.join(&name);
            let parsed = address_io::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    AddressFile::parse(&text, &path.display().to_string())
                        .map_err(|e| e.to_string())
                });
            let previous = known.and_then(|k| k.entry.clone());
            let entry = match parsed {
                Ok(file) => {
                    report(Report::Loaded(name.clone()));
                    changed = true;
                    Some(Arc::new(Entry {
                        name: Arc::from(name.as_str()),
                        file,
                    }))
                }
                Err(why) => {
                    let kept = match previous {
                        Some(_) => "; its previous rules stay in force",
                        None => "; its addresses have no rules of their own",
                    };
                    report(Report::Broken(format!("{why}{kept}")));
                    previous
                }
            };
            self.known.insert(name, Known { stamp, entry });
        }
        changed
    }

    /// The book of the files as last read.
    pub fn book(&self, warn: &mut dyn FnMut(String)) -> AddressBook {
        let entries = self
            .known
            .values()
            .filter_map(|k| k.entry.clone())
            .collect();
        AddressBook::new(entries, warn)
    }

    /// The directory's address files (`*.toml`, not hidden), by name, with their stamps.
    fn list(&self) -> std::io::Result<Vec<(String, Stamp)>> {
        use std::os::unix::fs::MetadataExt;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            let Ok(meta) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let stamp = Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                inode: meta.ino(),
            };
            names.push((name, stamp));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::policy::To;

    fn facts() -> Facts<'static> {
        Facts {
            client_ip: "192.0.2.1".parse().unwrap(),
            rdns: None,
            fcrdns: false,
            helo: Some("h.example"),
            mail_from: Some("a@bulk.example"),
            to: To::None,
            dnsbl_zones: &[],
            score: None,
            signatures: &[],
        }
    }

    fn scan(dir: &mut AddressDir) -> (bool, Vec<Report>) {
        let mut reports = Vec::new();
        let changed = dir.scan(false, &mut |r| reports.push(r));
        (changed, reports)
    }

    #[test]
    fn a_broken_file_keeps_its_previous_rules_and_the_others_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| fs::write(tmp.path().join(name), text).unwrap();
        write(
            "a.toml",
            "addresses = [\"a@example.org\"]\nstate = \"closed\"\n",
        );
        write(
            "b.toml",
            "addresses = [\"b@example.org\"]\n[block]\nsenders = [\"@bulk.example\"]\n",
        );
        write(".a.toml.lock", "");
        write("notes.txt", "not a rule file");
        let mut dir = AddressDir::new(tmp.path());
        let (changed, reports) = scan(&mut dir);
        assert!(changed);
        assert_eq!(
            reports,
            [
                Report::Loaded("a.toml".into()),
                Report::Loaded("b.toml".into())
            ]
        );
        let book = dir.book(&mut |w| panic!("{w}"));
        let refused = |book: &AddressBook, rcpt: &str| book.refuse(rcpt, &facts()).map(|r| r.why);
        assert_eq!(refused(&book, "A@Example.org"), Some(Refusal::Closed));
        assert_eq!(refused(&book, "b@example.org"), Some(Refusal::Sender));
        assert_eq!(refused(&book, "c@example.org"), None);

        // Nothing changed: nothing read.
        assert_eq!(scan(&mut dir), (false, vec![]));

        // A typo in a: its old rules stay; b changes and reloads.
        std::thread::sleep(std::time::Duration::from_millis(10));
        write(
            "a.toml",
            "addresses = [\"a@example.org\"]\nstate = \"clsoed\"\n",
        );
        write("b.toml", "addresses = [\"b@example.org\"]\n");
        let (changed, reports) = scan(&mut dir);
        assert!(changed);
        let a = tmp.path().join("a.toml");
        assert_eq!(
            reports[0],
            Report::Broken(format!(
                "{}:2: state: unknown variant `clsoed`, expected `open` or `closed`; its previous rules stay in force",
                a.display()
            ))
        );
        let book = dir.book(&mut |w| panic!("{w}"));
        assert_eq!(refused(&book, "a@example.org"), Some(Refusal::Closed));
        assert_eq!(refused(&book, "b@example.org"), None);

        // A file removed takes its addresses with it; a conflict goes to the first by name.
        fs::remove_file(&a).unwrap();
        write(
            "c.toml",
            "addresses = [\"b@example.org\"]\nstate = \"closed\"\n",
        );
        let (_, reports) = scan(&mut dir);
        assert!(reports.contains(&Report::Removed("a.toml".into())));
        let mut warnings = Vec::new();
        let book = dir.book(&mut |w| warnings.push(w));
        assert_eq!(refused(&book, "a@example.org"), None);
        assert_eq!(refused(&book, "b@example.org"), None, "b.toml decides");
        assert_eq!(
            warnings,
            ["c.toml: b@example.org is listed by b.toml already; that file decides for it"]
        );
        // The loop closes an address before its file says so.
        let closed = book.with_closed(
            "B@example.org",
            SystemTime::UNIX_EPOCH,
            "auto_close: 1 messages",
        );
        assert_eq!(refused(&closed, "b@example.org"), Some(Refusal::Closed));
        assert_eq!(refused(&book, "b@example.org"), None);
    }
}
