//! The addresses thread: it owns `policy.addresses_dir`. It reads the per-address files again
//! when the loop says the directory changed (inotify) or SIGHUP came, hands the loop each new
//! [`AddressBook`], and writes the closes `auto_close` asks for into the files (under their
//! locks, see `address_io`), off the loop, since a write waits for the disk.
//!
//! The loop talks to it through a bounded queue ([`QUEUE`]); a change or rescan that does not
//! fit is not lost (the thread reads the directory again after every batch it takes), a close
//! that does not fit is refused and counted by the caller.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use super::address_edit::{self, Edit};
use super::address_io;
use super::book::{AddressBook, AddressDir, Report};
use super::pattern::Mailbox;

/// Requests the queue holds.
pub const QUEUE: usize = 64;

/// An address to close, with when and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub address: Mailbox,
    /// The file that speaks for it (its name in the directory).
    pub file: Arc<str>,
    pub at: SystemTime,
    pub reason: String,
}

enum Request {
    /// The directory changed (inotify).
    Changed,
    /// SIGHUP: every file read again.
    Rescan,
    Close(CloseRequest),
}

/// The loop's handle on the addresses thread.
pub struct Keeper {
    requests: Option<SyncSender<Request>>,
    books: Receiver<Arc<AddressBook>>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Reads `dir` (now, on the caller's thread, so the daemon starts with its book) and
    /// starts the thread; `wake` tells the loop a new book is waiting.
    pub fn start(
        dir: &Path,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<(Keeper, AddressBook)> {
        let mut directory = AddressDir::new(dir);
        directory.scan(true, &mut log_report);
        let book = directory.book(&mut |w| tracing::warn!("{w}"));
        tracing::info!(
            "policy.addresses_dir {}: {} file(s)",
            dir.display(),
            book.entries().len()
        );
        let (requests, inbox) = mpsc::sync_channel(QUEUE);
        let (outbox, books) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("addresses".into())
            .spawn(move || run(directory, &inbox, &outbox, &wake))?;
        Ok((
            Keeper {
                requests: Some(requests),
                books,
                thread: Some(thread),
            },
            book,
        ))
    }

    /// The directory changed.
    pub fn changed(&self) {
        self.send(Request::Changed);
    }

    /// SIGHUP: read every file again.
    pub fn rescan(&self) {
        self.send(Request::Rescan);
    }

    /// Asks for `close` to be written; false when the queue is full (refused).
    pub fn close(&self, close: CloseRequest) -> bool {
        self.send(Request::Close(close))
    }

    fn send(&self, request: Request) -> bool {
        match self.requests.as_ref().map(|r| r.try_send(request)) {
            Some(Ok(())) => true,
            // The thread reads the directory after every batch: a change is not lost.
            Some(Err(TrySendError::Full(_))) => false,
            Some(Err(TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// The latest book the thread made, if one is waiting.
    pub fn take_book(&self) -> Option<Arc<AddressBook>> {
        self.books.try_iter().last()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what it was asked to.
        self.requests = None;
        // Its last book is not wanted: let it go so the thread is not stuck sending it.
        while self.books.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() {
                while self.books.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = thread.join();
        }
    }
}

fn run(
    mut directory: AddressDir,
    inbox: &Receiver<Request>,
    outbox: &SyncSender<Arc<AddressBook>>,
    wake: &dyn Fn(),
) {
    while let Ok(first) = inbox.recv() {
        let mut force = false;
        let mut closes = Vec::new();
        for request in std::iter::once(first).chain(inbox.try_iter()) {
            match request {
                Request::Changed => {}
                Request::Rescan => force = true,
                Request::Close(close) => closes.push(close),
            }
        }
        for close in &closes {
            write_close(&directory, close);
        }
        if directory.scan(force, &mut log_report) || force {
            let book = directory.book(&mut |w| tracing::warn!("{w}"));
            if outbox.send(Arc::new(book)).is_err() {
                return;
            }
            wake();
        }
    }
}

/// Writes a close into the address's file (its state, when and why).
fn write_close(directory: &AddressDir, close: &CloseRequest) {
    let path = directory.file_path(&close.file);
    let origin = path.display().to_string();
    let edit = Edit::Close {
        message: None,
        at: close.at,
        reason: close.reason.clone(),
    };
    let written = address_io::update(&path, |text| {
        address_edit::apply(text, &close.address, &edit, &origin)
            .map_err(|e| WriteError::Edit(e.to_string()))
    });
    match written {
        Ok(()) => tracing::info!(
            "{} closed ({}), written to {origin}",
            close.address,
            close.reason
        ),
        Err(e) => tracing::error!(
            "{} closed ({}) but not written to its file: {e}; it stays closed until the daemon \
             stops",
            close.address,
            close.reason
        ),
    }
}

/// Why a close was not written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    File(#[from] address_io::FileError),
    #[error("{0}")]
    Edit(String),
}

fn log_report(report: Report) {
    match report {
        Report::Broken(why) => tracing::error!("{why}"),
        Report::Loaded(name) => tracing::debug!("address file {name} read"),
        Report::Removed(name) => tracing::info!("address file {name} removed"),
        Report::Warning(why) => tracing::warn!("{why}"),
    }
}
