//! Durable capture: the Maildir writer with group commit and the session log, on a thread of
//! their own so the event loop never waits for a disk.
//!
//! The loop submits [`Job`]s without blocking ([`Capture::submit`] refuses when the queue is
//! full). The capture thread takes everything queued at once as one batch, writes it, syncs the
//! filesystem and names the files in `new/` ([`maildir::Maildir::write_batch`]), and hands the
//! batch to the commit thread, which syncs once more for every batch that reached it meanwhile
//! ([`maildir::NewDir::sync`]) and only then hands each outcome to the loop's callback. The two
//! stages overlap: while one batch's names are being made durable the next batch is written
//! (classic pipelined group commit). The capture thread also appends session lines to the log,
//! which it writes out at least every second and when it stops.

pub mod headers;
pub mod maildir;
pub mod session_log;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::StorageConfig;
use crate::server::counters::Counters;
use headers::Trace;
use maildir::{Maildir, Message, NewDir};
use session_log::{SessionEnd, SessionLog};

/// Jobs the queue holds at most.
const QUEUE: usize = 8192;
/// Messages a batch holds at most (all made durable by the same two syncs).
const MAX_BATCH: usize = 256;
/// Batches named in `new/` that may wait for the commit thread (then the capture thread
/// waits too, and the loop's queue fills).
const COMMIT_QUEUE: usize = 4;
/// The session log is written out at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Which message a [`Stored`] outcome is for: the loop's connection slot and serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub slot: usize,
    pub serial: u64,
}

/// A message to store.
pub struct StoreRequest {
    pub ticket: Ticket,
    pub trace: Trace,
    pub body: Vec<u8>,
}

/// The outcome of a [`StoreRequest`]: the name in `new/`, or `None` when it failed (the
/// thread has logged why).
pub struct Stored {
    pub ticket: Ticket,
    pub size: usize,
    pub name: Option<String>,
}

pub enum Job {
    Store(StoreRequest),
    Log(Box<SessionEnd>),
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
    jobs: SyncSender<Job>,
    thread: JoinHandle<()>,
    committer: Option<JoinHandle<()>>,
}

impl Capture {
    /// Opens the Maildir (when `storage.capture`) and the session log, and starts the threads.
    /// `on_stored` runs on the commit thread for every stored (or failed) message.
    pub fn start(
        storage: &StorageConfig,
        hostname: &str,
        counters: Arc<Counters>,
        on_stored: impl FnMut(Stored) + Send + 'static,
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
        let log = SessionLog::open(&log_path).map_err(|source| CaptureError::SessionLog {
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
                    on_stored,
                };
                let thread = thread::Builder::new()
                    .name("capture-commit".into())
                    .spawn(move || committer.run(committed))
                    .map_err(CaptureError::Thread)?;
                (Some((maildir, batches)), Some(thread))
            }
            // The loop answers itself when capture is off; no message reaches the threads.
            None => (None, None),
        };
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let worker = Worker {
            maildir,
            log,
            log_path,
            counters,
        };
        let thread = thread::Builder::new()
            .name("capture".into())
            .spawn(move || worker.run(queue))
            .map_err(CaptureError::Thread)?;
        Ok(Capture {
            jobs,
            thread,
            committer,
        })
    }

    /// Queues a job; false when the queue is full and the job was dropped (the loop must not
    /// wait).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    /// Finishes what is queued, writes the log out, and stops the thread.
    pub fn finish(self) {
        drop(self.jobs);
        // The capture thread ends first and so closes the commit thread's queue.
        for thread in std::iter::once(self.thread).chain(self.committer) {
            if thread.join().is_err() {
                log::error!("a capture thread panicked");
            }
        }
    }
}

/// A message written, synced and named in `new/` (or failed on the way there).
struct Written {
    ticket: Ticket,
    size: usize,
    session_id: String,
    outcome: io::Result<String>,
}

struct Worker {
    /// The Maildir and the commit thread's queue (when capture is on).
    maildir: Option<(Maildir, SyncSender<Vec<Written>>)>,
    log: SessionLog,
    log_path: PathBuf,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(mut self, queue: Receiver<Job>) {
        let mut stores = Vec::with_capacity(MAX_BATCH);
        let mut outcomes = Vec::with_capacity(MAX_BATCH);
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
            self.store(&mut stores, &mut outcomes);
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush_log();
                last_flush = Instant::now();
            }
        }
        self.flush_log();
    }

    fn take(&mut self, job: Job, stores: &mut Vec<StoreRequest>) {
        match job {
            Job::Store(request) => stores.push(request),
            Job::Log(session) => {
                if let Err((lines, e)) = self.log.append(&session) {
                    self.log_failed(lines, &e);
                }
                Counters::add(&self.counters.session_log_lines, 1);
            }
        }
    }

    /// Writes a batch into `new/` and passes it on to the commit thread.
    fn store(&mut self, stores: &mut Vec<StoreRequest>, outcomes: &mut Vec<io::Result<String>>) {
        let Some((maildir, committer)) = &mut self.maildir else {
            stores.clear();
            return;
        };
        if stores.is_empty() {
            return;
        }
        outcomes.clear();
        let batch: Vec<Message<'_>> = stores
            .iter()
            .map(|s| Message {
                trace: &s.trace,
                body: &s.body,
            })
            .collect();
        maildir.write_batch(&batch, outcomes);
        let written = stores
            .drain(..)
            .zip(outcomes.drain(..))
            .map(|(request, outcome)| Written {
                ticket: request.ticket,
                size: request.body.len(),
                session_id: request.trace.session_id,
                outcome,
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
        log::error!(
            "cannot write {lines} line(s) to {}: {error}",
            self.log_path.display()
        );
        Counters::add(&self.counters.session_log_dropped, lines);
    }
}

/// The commit thread: syncs `new/` for every batch that has reached it, then answers.
struct Committer<F> {
    new_dir: NewDir,
    /// The Maildir, for the error messages.
    dir: PathBuf,
    counters: Arc<Counters>,
    on_stored: F,
}

impl<F: FnMut(Stored)> Committer<F> {
    fn run(mut self, committed: Receiver<Vec<Written>>) {
        let mut pending: Vec<Written> = Vec::with_capacity(MAX_BATCH);
        while let Ok(batch) = committed.recv() {
            pending.extend(batch);
            // Batches named while the last sync ran share this one.
            while let Ok(batch) = committed.try_recv() {
                pending.extend(batch);
            }
            if pending.iter().any(|w| w.outcome.is_ok())
                && let Err(error) = self.new_dir.sync()
            {
                for written in &mut pending {
                    if let Ok(name) = &written.outcome {
                        self.new_dir.remove(name);
                        written.outcome = Err(io::Error::new(error.kind(), error.to_string()));
                    }
                }
            }
            for written in pending.drain(..) {
                let name = match written.outcome {
                    Ok(name) => Some(name),
                    Err(e) => {
                        log::error!(
                            "cannot store a message of session {} in {}: {e}",
                            written.session_id,
                            self.dir.display()
                        );
                        Counters::add(&self.counters.capture_failed, 1);
                        None
                    }
                };
                (self.on_stored)(Stored {
                    ticket: written.ticket,
                    size: written.size,
                    name,
                });
            }
        }
    }
}
