//! The loop's side of the per-address files (`policy.addresses_dir`): the book in force, the
//! inotify watch on the directory (opened at start-up, read in the loop like any socket), the
//! addresses thread ([`Keeper`]) that reads and writes the files, and what `auto_close` counts.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token, Waker};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

use crate::config::PolicyConfig;
use crate::counters::DaemonCounters;
use crate::policy::Policy;
use crate::policy::auto_close::{Delivery, Seen};
use crate::policy::book::AddressBook;
use crate::policy::keeper::{CloseRequest, Keeper};
use crate::policy::pattern::Mailbox;
use crate::signature::Signature;

/// Most addresses whose messages and clients `auto_close` counts at once; a new one past it is
/// not counted (`sinkhole_auto_close_refused_total`).
pub const MAX_COUNTED: usize = 100_000;

/// The per-address files as the loop holds them.
pub struct Addresses {
    book: Arc<AddressBook>,
    /// `None` without `policy.addresses_dir`.
    keeper: Option<Keeper>,
    /// The inotify watch on the directory (non-blocking), registered with the loop.
    watch: Option<OwnedFd>,
    /// What `auto_close` has counted for each address under a rule, since the daemon started
    /// (or since the address's file last said it is open).
    seen: HashMap<Mailbox, Seen>,
}

impl Addresses {
    /// Reads `policy.addresses_dir` (if set), starts the addresses thread and watches the
    /// directory, registered as `token`; `waker` wakes the loop for a new book.
    pub fn open(
        config: &PolicyConfig,
        registry: &Registry,
        token: Token,
        waker: &Arc<Waker>,
    ) -> io::Result<Addresses> {
        let dir = &config.addresses_dir;
        if dir.as_os_str().is_empty() {
            return Ok(Addresses {
                book: Arc::default(),
                keeper: None,
                watch: None,
                seen: HashMap::new(),
            });
        }
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: not a directory", dir.display()),
            ));
        }
        let watch = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        inotify::add_watch(
            &watch,
            dir,
            WatchFlags::CLOSE_WRITE
                | WatchFlags::MOVED_TO
                | WatchFlags::MOVED_FROM
                | WatchFlags::DELETE
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF,
        )?;
        registry.register(&mut SourceFd(&watch.as_raw_fd()), token, Interest::READABLE)?;
        let waker = Arc::clone(waker);
        let (keeper, book) = Keeper::start(dir, move || {
            // The loop outlives the thread; if it is gone there is no one left to tell.
            let _ = waker.wake();
        })?;
        Ok(Addresses {
            book: Arc::new(book),
            keeper: Some(keeper),
            watch: Some(watch),
            seen: HashMap::new(),
        })
    }

    /// The book in force.
    pub fn book(&self) -> &AddressBook {
        &self.book
    }

    /// The watch is readable: reads its events, and tells the addresses thread when one is
    /// about a file of the directory (not the lock and temporary files, which start with a dot).
    pub fn watch_ready(&mut self) {
        let (Some(watch), Some(keeper)) = (&self.watch, &self.keeper) else {
            return;
        };
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(watch, &mut buf);
        let mut changed = false;
        loop {
            match reader.next() {
                Ok(event) => {
                    let hidden = event
                        .file_name()
                        .is_some_and(|name| name.to_bytes().starts_with(b"."));
                    changed |= !hidden;
                }
                Err(rustix::io::Errno::INTR) => {}
                // WOULDBLOCK: all read. Any other error: read again at the next event.
                Err(_) => break,
            }
        }
        if changed {
            keeper.changed();
        }
    }

    /// SIGHUP: every file read again.
    pub fn rescan(&self) {
        if let Some(keeper) = &self.keeper {
            keeper.rescan();
        }
    }

    /// Takes the latest book of the addresses thread, if one came. Counts of addresses no
    /// file speaks for any more, or whose file says closed, are dropped (an address opened
    /// again counts from zero).
    pub fn take_book(&mut self) {
        if let Some(book) = self.keeper.as_ref().and_then(Keeper::take_book) {
            self.book = book;
            let book = &self.book;
            self.seen.retain(|address, _| {
                book.lookup(address.as_str())
                    .is_some_and(|entry| entry.file.closure(address).is_none())
            });
        }
    }

    /// A message was stored for `rcpts`: counted for the addresses under an `auto_close` rule
    /// (their file's, else `policy`'s default), and those it closes are closed.
    pub fn delivered(
        &mut self,
        policy: &Policy,
        rcpts: &[String],
        delivery: Delivery,
        counters: &DaemonCounters,
    ) {
        let book = Arc::clone(&self.book);
        for rcpt in rcpts {
            let Some((key, entry, rule)) = policy.auto_close_for(&book, rcpt) else {
                continue;
            };
            if !self.seen.contains_key(&key) && self.seen.len() >= MAX_COUNTED {
                DaemonCounters::add(&counters.auto_close_refused, 1);
                continue;
            }
            let seen = self.seen.entry(key.clone()).or_default();
            if let Some(reason) = rule.on_message(seen, delivery) {
                self.close(key, Arc::clone(&entry.name), delivery.at, reason, counters);
            }
        }
    }

    /// A session that gave `rcpts` (accepted) ended showing `signatures`: the addresses whose
    /// rule names a set it shows are closed.
    pub fn session_ended<'a>(
        &mut self,
        policy: &Policy,
        rcpts: impl Iterator<Item = &'a str>,
        signatures: &[Signature],
        at: std::time::SystemTime,
        counters: &DaemonCounters,
    ) {
        let book = Arc::clone(&self.book);
        for rcpt in rcpts {
            let Some((key, entry, rule)) = policy.auto_close_for(&book, rcpt) else {
                continue;
            };
            if let Some(reason) = rule.on_session(signatures) {
                self.close(key, Arc::clone(&entry.name), at, reason, counters);
            }
        }
    }

    /// Closes an address now, and has the addresses thread write it into its file.
    fn close(
        &mut self,
        address: Mailbox,
        file: Arc<str>,
        at: std::time::SystemTime,
        reason: String,
        counters: &DaemonCounters,
    ) {
        tracing::info!(
            address = address.as_str(),
            "{address} closes itself: {reason}"
        );
        self.book = Arc::new(self.book.with_closed(address.as_str(), at, &reason));
        self.seen.remove(&address);
        let counter: &AtomicU64 = match self.keeper.as_ref().map(|k| {
            k.close(CloseRequest {
                address,
                file,
                at,
                reason,
            })
        }) {
            Some(true) => &counters.auto_closed,
            _ => {
                tracing::warn!(
                    "the addresses thread is busy: the close is not written to the file"
                );
                &counters.auto_close_refused
            }
        };
        DaemonCounters::add(counter, 1);
    }
}
