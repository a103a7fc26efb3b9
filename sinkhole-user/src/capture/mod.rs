//! Durable capture: group commit of the Maildir and the session log, on threads of their own so
//! the event loop never waits for a sync.
//!
//! A message streams into its file as it arrives: the loop opens it at the message's first body
//! bytes and appends the rest as they come ([`Capture::maildir`], [`maildir::Maildir::start`]),
//! so no body is ever held whole in memory. At the end of data it submits the written file
//! without blocking ([`Capture::submit`] refuses when the queue is full). The capture thread
//! takes everything queued at once as one batch and hands it to the commit thread. That thread
//! syncs the filesystem ([`maildir::NewDir::sync`]) again and again while messages are on their
//! way; after each sync it hands the loop's callback the outcomes of the messages it named
//! before that sync (their names are now durable) and names in `new/` the files written before
//! it (their data is now durable; [`maildir::NewDir::name`]). Under load one sync thus serves
//! two batches: pipelined group commit (the design, and why the sync is `syncfs`:
//! `docs/architecture.md`, "Durable before 250"). The capture thread also appends session lines
//! to the log, which it writes out at least every second and when it stops, and which
//! [`log_file`] rotates, compresses and reopens; and it keeps the disk floor ([`floor`]): short
//! log lines below `storage.min_free`, and below the hard floor no log line and no message named.

pub mod floor;
pub mod headers;
pub mod log_file;
pub mod maildir;
pub mod session_log;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::StorageConfig;
use crate::counters::DaemonCounters;
use floor::{Floor, SharedSpace, Space};
use log_file::LogFile;
use maildir::{Maildir, NewDir, Unnamed};
use session_log::{SessionEnd, SessionLog};

/// Jobs the queue holds at most.
const QUEUE: usize = 8192;
/// Messages the capture thread hands on at most in one batch.
const MAX_BATCH: usize = 256;
/// Written batches that may wait for the commit thread (then the capture thread waits too,
/// and the loop's queue fills).
const COMMIT_QUEUE: usize = 4;
/// Messages the loop may have handed to the capture threads at once (`server::capture_budget`),
/// each a file written and not yet named (nameless until then, so it stays open): what the
/// threads hold open at most. It covers the batch the capture thread is handing on, the batches
/// queued for the commit thread, and those it took (it stops taking past a full queue's worth
/// of files, so at most one batch more).
pub const MAX_OPEN_FILES: usize = MAX_BATCH * (2 * COMMIT_QUEUE + 2);
/// The session log is written out at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Which message a [`Stored`] outcome is for: the loop's connection slot and serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub slot: usize,
    pub serial: u64,
}

/// A message to store: written whole, to be made durable and named.
pub struct StoreRequest {
    pub ticket: Ticket,
    pub session_id: String,
    /// Its body's size.
    pub size: u64,
    pub file: Unnamed,
}

/// The outcome of a [`StoreRequest`]: the name in `new/`, or `None` when it failed (the
/// thread has logged why).
pub struct Stored {
    pub ticket: Ticket,
    pub size: u64,
    pub name: Option<String>,
}

pub enum Job {
    Store(StoreRequest),
    /// Finished sessions for the session log, gathered by the loop (see
    /// `server::log_batch`).
    Log(Vec<SessionEnd>),
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot prepare the Maildir {}: {source}", path.display())]
    Maildir { path: PathBuf, source: io::Error },
    #[error("cannot open the session log {}: {source}", path.display())]
    SessionLog { path: PathBuf, source: io::Error },
    #[error("cannot start a capture thread: {0}")]
    Thread(io::Error),
}

/// The handle the loop keeps.
pub struct Capture {
    /// Where messages are written (when `storage.capture`).
    maildir: Option<Maildir>,
    jobs: SyncSender<Job>,
    /// Set to have the capture thread reopen the session log.
    reopen: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    committer: Option<JoinHandle<()>>,
    space: Arc<SharedSpace>,
}

impl Capture {
    /// Opens the Maildir (when `storage.capture`) and the session log, and starts the threads.
    /// `on_stored` runs on the commit thread with the outcomes of the messages each sync made
    /// durable (or failed): once per sync, so the loop is woken once for all of them.
    pub fn start(
        storage: &StorageConfig,
        hostname: &str,
        counters: Arc<DaemonCounters>,
        on_stored: impl FnMut(Vec<Stored>) + Send + 'static,
    ) -> Result<Capture, CaptureError> {
        let maildir = if storage.capture {
            let path = storage.maildir();
            let error = |source| CaptureError::Maildir {
                path: path.clone(),
                source,
            };
            let maildir = Maildir::open(&path, hostname).map_err(error)?;
            let new_dir = maildir.new_dir().map_err(error)?;
            Some((maildir, new_dir))
        } else {
            std::fs::create_dir_all(&storage.dir).map_err(|source| CaptureError::SessionLog {
                path: storage.session_log(),
                source,
            })?;
            None
        };
        let log_path = storage.session_log();
        let log = LogFile::open(
            &log_path,
            storage.log_rotate,
            storage.log_keep.get(),
            Arc::clone(&counters),
        )
        .map_err(|source| CaptureError::SessionLog {
            path: log_path.clone(),
            source,
        })?;
        let (maildir, committer) = match maildir {
            Some((maildir, new_dir)) => {
                let (batches, committed) = mpsc::sync_channel(COMMIT_QUEUE);
                let committer = Committer {
                    new_dir,
                    dir: storage.maildir(),
                    counters: Arc::clone(&counters),
                    outcomes: Vec::new(),
                    on_stored,
                };
                let thread = thread::Builder::new()
                    .name("capture-commit".into())
                    .spawn(move || committer.run(committed))
                    .map_err(CaptureError::Thread)?;
                (Some(maildir), Some((batches, thread)))
            }
            // The loop answers itself when capture is off; no message reaches the threads.
            None => (None, None),
        };
        let (batches, committer) = committer.unzip();
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let space = Arc::<SharedSpace>::default();
        let reopen = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            batches,
            log: SessionLog::new(log),
            log_path,
            floor: Floor::new(
                storage.dir.clone(),
                storage.min_free,
                Arc::clone(&space),
                Arc::clone(&counters),
            ),
            counters,
            reopen: Arc::clone(&reopen),
        };
        let thread = thread::Builder::new()
            .name("capture".into())
            .spawn(move || worker.run(queue))
            .map_err(CaptureError::Thread)?;
        Ok(Capture {
            maildir,
            jobs,
            reopen,
            thread,
            committer,
            space,
        })
    }

    /// How much room the storage had at the capture thread's last look ([`floor`]).
    pub fn space(&self) -> Space {
        self.space.get()
    }

    /// The Maildir messages are written to as they arrive; `None` when nothing is stored.
    pub fn maildir(&mut self) -> Option<&mut Maildir> {
        self.maildir.as_mut()
    }

    /// Queues a job; false when the queue is full and the job was dropped (the loop must not
    /// wait).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    /// Has the capture thread write out the session log and open its path anew, within a
    /// second (after an outside rotation: `SIGUSR1`).
    pub fn reopen_log(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Finishes what is queued, writes the log out, and stops the thread.
    pub fn finish(self) {
        drop(self.jobs);
        // The capture thread ends first and so closes the commit thread's queue.
        for thread in std::iter::once(self.thread).chain(self.committer) {
            if thread.join().is_err() {
                tracing::error!("a capture thread panicked");
            }
        }
    }
}

/// A message on its way into `new/`: `T` is the written file ([`Unnamed`]) until it is named,
/// then its name.
struct Written<T> {
    ticket: Ticket,
    size: u64,
    session_id: String,
    outcome: io::Result<T>,
}

struct Worker {
    /// The commit thread's queue (when capture is on).
    batches: Option<SyncSender<Vec<Written<Unnamed>>>>,
    log: SessionLog,
    log_path: PathBuf,
    floor: Floor,
    counters: Arc<DaemonCounters>,
    reopen: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self, queue: Receiver<Job>) {
        let mut stores = Vec::with_capacity(MAX_BATCH);
        let mut last_flush = Instant::now();
        loop {
            let wait = FLUSH_INTERVAL.saturating_sub(last_flush.elapsed());
            match queue.recv_timeout(wait) {
                Ok(job) => self.take(job, &mut stores),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Everything that queued up meanwhile goes into the same batch.
            while stores.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => self.take(job, &mut stores),
                    Err(_) => break,
                }
            }
            if !stores.is_empty() {
                self.store(&mut stores);
                self.floor.check(Instant::now());
            }
            self.floor.check_if_due(Instant::now());
            if self.reopen.swap(false, Ordering::Relaxed) {
                if let Err((lines, e)) = self.log.reopen() {
                    self.log_failed(lines, &e);
                }
                last_flush = Instant::now();
            } else if last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush_log();
                last_flush = Instant::now();
            }
        }
        self.flush_log();
    }

    fn take(&mut self, job: Job, stores: &mut Vec<StoreRequest>) {
        match job {
            Job::Store(request) => stores.push(request),
            Job::Log(sessions) => {
                let lines = sessions.len() as u64;
                // The disk floor: short lines below storage.min_free, none below the hard floor.
                let short = match self.floor.space() {
                    Space::Ample => false,
                    Space::Low => true,
                    Space::Exhausted => {
                        return DaemonCounters::add(&self.counters.log_lines_dropped, lines);
                    }
                };
                for session in &sessions {
                    if let Err((lines, e)) = self.log.append(session, short) {
                        self.log_failed(lines, &e);
                    }
                }
                DaemonCounters::add(&self.counters.session_log_lines, lines);
            }
        }
    }

    /// Passes a batch of written files on to the commit thread.
    fn store(&mut self, stores: &mut Vec<StoreRequest>) {
        let Some(committer) = &self.batches else {
            stores.clear();
            return;
        };
        if stores.is_empty() {
            return;
        }
        // The disk floor: below the hard floor no message is named in `new/` (451), and its
        // file goes with its descriptor.
        let exhausted = self.floor.space() == Space::Exhausted;
        let written = stores
            .drain(..)
            .map(|request| Written {
                outcome: if exhausted {
                    Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "free space is below the hard floor",
                    ))
                } else {
                    Ok(request.file)
                },
                ticket: request.ticket,
                size: request.size,
                session_id: request.session_id,
            })
            .collect();
        // The commit thread lives as long as this one (it ends when this queue closes).
        let _ = committer.send(written);
    }

    fn flush_log(&mut self) {
        if let Err((lines, e)) = self.log.flush() {
            self.log_failed(lines, &e);
        }
    }

    fn log_failed(&self, lines: u64, error: &io::Error) {
        tracing::error!(
            "cannot write {lines} line(s) to {}: {error}",
            self.log_path.display()
        );
        DaemonCounters::add(&self.counters.session_log_dropped, lines);
    }
}

/// The commit thread: syncs the filesystem over and over while messages are on their way, and
/// after each sync names the files written before it and announces the names made before it.
struct Committer<F> {
    new_dir: NewDir,
    /// The Maildir, for the error messages.
    dir: PathBuf,
    counters: Arc<DaemonCounters>,
    /// Outcomes not yet handed over.
    outcomes: Vec<Stored>,
    on_stored: F,
}

impl<F: FnMut(Vec<Stored>)> Committer<F> {
    fn run(mut self, written: Receiver<Vec<Written<Unnamed>>>) {
        // Files whose data the next sync makes durable, and names it makes durable: under load
        // one sync serves a batch of each, so a batch costs one disk flush, not two.
        let mut unnamed: Vec<Written<Unnamed>> = Vec::with_capacity(MAX_BATCH);
        let mut named: Vec<Written<String>> = Vec::with_capacity(MAX_BATCH);
        loop {
            // (`unnamed` is empty here: every pass names or drops all it took.) Nothing to
            // make durable: wait for a batch.
            if named.is_empty() {
                match written.recv() {
                    Ok(batch) => unnamed.extend(batch),
                    Err(_) => return,
                }
            }
            // Batches written while the last sync ran share this one, up to a full queue's
            // worth of files, which bounds the files held open (see `MAX_OPEN_FILES`).
            while unnamed.len() < MAX_BATCH * COMMIT_QUEUE
                && let Ok(batch) = written.try_recv()
            {
                unnamed.extend(batch);
            }
            // (`named` holds only names; a failed write needs no sync.)
            let synced = if !named.is_empty() || unnamed.iter().any(|w| w.outcome.is_ok()) {
                self.new_dir.sync()
            } else {
                Ok(())
            };
            for mut message in named.drain(..) {
                if let (Ok(name), Err(error)) = (&message.outcome, &synced) {
                    self.new_dir.remove(name);
                    message.outcome = Err(copy(error));
                }
                self.answer(message);
            }
            // Before the naming below, which takes a while in a big directory.
            self.hand_over();
            for Written {
                ticket,
                size,
                session_id,
                outcome,
            } in unnamed.drain(..)
            {
                let outcome = match (outcome, &synced) {
                    (Ok(file), Ok(())) => self.new_dir.name(file),
                    // The file goes with it (see `Unnamed`).
                    (Ok(_), Err(error)) => Err(copy(error)),
                    (Err(error), _) => Err(error),
                };
                let message = Written {
                    ticket,
                    size,
                    session_id,
                    outcome,
                };
                if message.outcome.is_ok() {
                    named.push(message);
                } else {
                    self.answer(message);
                }
            }
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        if !self.outcomes.is_empty() {
            (self.on_stored)(std::mem::take(&mut self.outcomes));
        }
    }

    /// Keeps the outcome for the loop, logging a failure.
    fn answer(&mut self, message: Written<String>) {
        let name = match message.outcome {
            Ok(name) => Some(name),
            Err(e) => {
                tracing::error!(
                    "cannot store a message of session {} in {}: {e}",
                    message.session_id,
                    self.dir.display()
                );
                DaemonCounters::add(&self.counters.capture_failed, 1);
                None
            }
        };
        self.outcomes.push(Stored {
            ticket: message.ticket,
            size: message.size,
            name,
        });
    }
}

/// One sync error for each message it failed.
fn copy(error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), error.to_string())
}
