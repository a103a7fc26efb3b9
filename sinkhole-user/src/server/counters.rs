//! What the daemon did and what its limits refused, for `/metrics` and the logs. The loop and
//! the capture thread write; anyone holding the `Arc` may read at any time.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted and served (the refused ones are counted below, not here).
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    /// Closed at accept: `smtp.max_connections` reached.
    pub refused_max_connections: AtomicU64,
    /// Closed at accept: `smtp.max_connections_per_ip` reached.
    pub refused_per_ip: AtomicU64,
    /// Closed at accept: the client is in the block table.
    pub refused_blocked: AtomicU64,
    /// `accept()` failed (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Messages answered 250 (stored, or counted with `storage.capture = false`).
    pub messages_total: AtomicU64,
    /// Bytes of those messages.
    pub message_bytes_total: AtomicU64,
    /// Messages answered 451 because writing or syncing them failed.
    pub capture_failed: AtomicU64,
    /// Messages answered 451 because the capture queue or its byte budget was full.
    pub capture_busy: AtomicU64,
    /// Session log lines written.
    pub session_log_lines: AtomicU64,
    /// Session log lines lost: the queue was full or the write failed.
    pub session_log_dropped: AtomicU64,
    /// Connections closed at the end of the shutdown grace period with output unsent.
    pub shutdown_forced_closes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
