//! What the daemon did and what its limits refused, for `/metrics` and the logs. The loop and
//! the capture thread write; anyone holding the `Arc` may read at any time.

use std::sync::atomic::{AtomicU64, Ordering};

use super::client::BlockSource;

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
    /// Sessions whose recipients were decided without a complete score: the resolver was busy
    /// or the answer missed `dnsbl.timeout`.
    pub unscored: AtomicU64,
    /// Clients put into the drop map, by source (`sinkhole_blocks_total{source}`).
    pub blocks_dnsbl: AtomicU64,
    pub blocks_policy: AtomicU64,
    pub blocks_campaign: AtomicU64,
    /// Blocks not made because `xdp.allow` covers the client.
    pub blocks_allow_listed: AtomicU64,
    /// Blocks that failed (the block table refused the entry).
    pub block_errors: AtomicU64,
}

impl Counters {
    /// The `sinkhole_blocks_total{source}` counter for `source`.
    pub fn blocks(&self, source: BlockSource) -> &AtomicU64 {
        match source {
            BlockSource::Dnsbl => &self.blocks_dnsbl,
            BlockSource::Policy => &self.blocks_policy,
            BlockSource::Campaign => &self.blocks_campaign,
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
