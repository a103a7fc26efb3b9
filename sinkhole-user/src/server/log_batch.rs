//! Finished sessions gathered for the capture thread, which writes the session log.
//!
//! One hand-over wakes the thread once: under a flood of short connections, waking it for
//! every session line took more CPU than writing the line. So the loop hands over
//! [`LOG_BATCH`] sessions at a time, or whatever it has once the first of them waited
//! [`LOG_BATCH_WAIT`] (or sooner, when the loop is about to sleep).

use std::time::{Duration, Instant};

use crate::capture::session_log::SessionEnd;

/// Sessions in a full batch.
const LOG_BATCH: usize = 64;
/// How long the first session of a batch may wait.
const LOG_BATCH_WAIT: Duration = Duration::from_millis(20);

/// Finished sessions not yet handed to the capture thread.
pub struct LogBatch {
    sessions: Vec<SessionEnd>,
    /// When the first of `sessions` came.
    since: Instant,
}

impl LogBatch {
    pub fn new(now: Instant) -> LogBatch {
        LogBatch {
            sessions: Vec::with_capacity(LOG_BATCH),
            since: now,
        }
    }

    /// Adds a session that ended; hands out the batch when it is full or due.
    pub fn push(&mut self, session: SessionEnd, now: Instant) -> Option<Vec<SessionEnd>> {
        if self.sessions.is_empty() {
            self.since = now;
        }
        self.sessions.push(session);
        if self.sessions.len() >= LOG_BATCH || self.is_due(now) {
            return self.take();
        }
        None
    }

    /// Whether the first session held has waited long enough.
    pub fn is_due(&self, now: Instant) -> bool {
        !self.sessions.is_empty() && now.duration_since(self.since) >= LOG_BATCH_WAIT
    }

    /// Everything held, due or not; `None` when there is nothing.
    pub fn take(&mut self) -> Option<Vec<SessionEnd>> {
        if self.sessions.is_empty() {
            return None;
        }
        Some(std::mem::replace(
            &mut self.sessions,
            Vec::with_capacity(LOG_BATCH),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::capture::session_log::Verdict;

    fn ended(n: usize) -> SessionEnd {
        let at = SystemTime::UNIX_EPOCH;
        let client = "192.0.2.9:25".parse().unwrap();
        SessionEnd::closed_at_accept(n.to_string(), client, at, Verdict::Blocked, None)
    }

    #[test]
    fn a_full_batch_is_handed_out_at_once() {
        let now = Instant::now();
        let mut batch = LogBatch::new(now);
        for n in 1..LOG_BATCH {
            assert!(batch.push(ended(n), now).is_none());
        }
        let full = batch.push(ended(LOG_BATCH), now).unwrap();
        assert_eq!(full.len(), LOG_BATCH);
        assert_eq!(full[0].id, "1");
        assert!(batch.take().is_none());
    }

    #[test]
    fn the_first_session_waits_at_most_the_batch_wait() {
        let start = Instant::now();
        let mut batch = LogBatch::new(start);
        assert!(!batch.is_due(start + LOG_BATCH_WAIT), "nothing held");
        // The wait counts from the first session held, not from when the batch was made.
        let first = start + Duration::from_secs(1);
        assert!(batch.push(ended(1), first).is_none());
        assert!(!batch.is_due(first + LOG_BATCH_WAIT / 2));
        assert!(batch.is_due(first + LOG_BATCH_WAIT));
        let late = batch.push(ended(2), first + LOG_BATCH_WAIT).unwrap();
        assert_eq!(late.len(), 2);
        assert!(!batch.is_due(first + LOG_BATCH_WAIT * 3));
    }

    #[test]
    fn take_hands_out_what_is_held_before_it_is_due() {
        let now = Instant::now();
        let mut batch = LogBatch::new(now);
        assert!(batch.take().is_none());
        assert!(batch.push(ended(1), now).is_none());
        assert_eq!(batch.take().map(|b| b.len()), Some(1));
        assert!(batch.take().is_none());
    }
}
