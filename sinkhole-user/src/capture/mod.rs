//! Durable capture: the Maildir writer with group commit and the session log, on a thread of
//! their own so the event loop never waits for a disk.
//!
//! The loop submits [`Job`]s without blocking ([`Capture::submit`] refuses when the queue is
//! full); the thread takes everything queued at once, stores the messages with one sync
//! ([`maildir::Maildir::store_batch`]), hands each outcome to the loop's callback, and appends
//! session lines to the log, which it writes out at least every second and when it stops.

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
use maildir::{Maildir, Message};
use session_log::{SessionEnd, SessionLog};

/// Jobs the queue holds at most.
const QUEUE: usize = 8192;
/// Messages stored with one sync at most.
const MAX_BATCH: usize = 256;
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
    #[error("cannot start the capture thread: {0}")]
    Thread(io::Error),
}

/// The handle the loop keeps.
pub struct Capture {
    jobs: SyncSender<Job>,
    thread: JoinHandle<()>,
}

impl Capture {
    /// Opens the Maildir (when `storage.capture`) and the session log, and starts the thread.
    /// `on_stored` runs on the thread for every stored (or failed) message.
    pub fn start(
        storage: &StorageConfig,
        hostname: &str,
        counters: Arc<Counters>,
        on_stored: impl FnMut(Stored) + Send + 'static,
    ) -> Result<Capture, CaptureError> {
        let maildir = if storage.capture {
            let path = storage.maildir();
            let maildir =
                Maildir::open(&path, hostname).map_err(|source| CaptureError::Maildir {
                    path: path.clone(),
                    source,
                })?;
            Some((maildir, path))
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
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let worker = Worker {
            maildir,
            log,
            log_path,
            counters,
            on_stored,
        };
        let thread = thread::Builder::new()
            .name("capture".into())
            .spawn(move || worker.run(queue))
            .map_err(CaptureError::Thread)?;
        Ok(Capture { jobs, thread })
    }

    /// Queues a job; false when the queue is full and the job was dropped (the loop must not
    /// wait).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    /// Finishes what is queued, writes the log out, and stops the thread.
    pub fn finish(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            log::error!("the capture thread panicked");
        }
    }
}

struct Worker<F> {
    maildir: Option<(Maildir, PathBuf)>,
    log: SessionLog,
    log_path: PathBuf,
    counters: Arc<Counters>,
    on_stored: F,
}

impl<F: FnMut(Stored)> Worker<F> {
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

    fn store(&mut self, stores: &mut Vec<StoreRequest>, outcomes: &mut Vec<io::Result<String>>) {
        if stores.is_empty() {
            return;
        }
        outcomes.clear();
        match &mut self.maildir {
            Some((maildir, _)) => {
                let batch: Vec<Message<'_>> = stores
                    .iter()
                    .map(|s| Message {
                        trace: &s.trace,
                        body: &s.body,
                    })
                    .collect();
                maildir.store_batch(&batch, outcomes);
            }
            // The loop answers itself when capture is off; nothing reaches here.
            None => outcomes.extend(
                stores
                    .iter()
                    .map(|_| Err(io::ErrorKind::Unsupported.into())),
            ),
        }
        for (request, outcome) in stores.drain(..).zip(outcomes.drain(..)) {
            let name = match outcome {
                Ok(name) => Some(name),
                Err(e) => {
                    let dir = self
                        .maildir
                        .as_ref()
                        .map(|(_, path)| path.display().to_string());
                    log::error!(
                        "cannot store a message of session {} in {}: {e}",
                        request.trace.session_id,
                        dir.unwrap_or_default()
                    );
                    Counters::add(&self.counters.capture_failed, 1);
                    None
                }
            };
            (self.on_stored)(Stored {
                ticket: request.ticket,
                size: request.body.len(),
                name,
            });
        }
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
