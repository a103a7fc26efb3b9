//! What the daemon did and what its limits refused, for `/metrics` and the logs. The loop and
//! the capture thread write; anyone holding the `Arc` may read at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Who asked for a block, for `sinkhole_blocks_total{source}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSource {
    Dnsbl,
    Policy,
    Campaign,
}

impl BlockSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockSource::Dnsbl => "dnsbl",
            BlockSource::Policy => "policy",
            BlockSource::Campaign => "campaign",
        }
    }
}

/// The daemon's own counters: its connections, messages, replies, capture and blocks.
#[derive(Debug, Default)]
pub struct DaemonCounters {
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
    /// Replies sent, by code (`sinkhole_smtp_replies_total{code}`).
    pub replies: ReplyCounters,
    /// Messages answered 451 because writing or syncing them failed.
    pub capture_failed: AtomicU64,
    /// Messages answered 451 because the capture queue or its byte budget was full.
    pub capture_busy: AtomicU64,
    /// Session log lines written.
    pub session_log_lines: AtomicU64,
    /// Session log lines lost: the queue was full or the write failed.
    pub session_log_dropped: AtomicU64,
    /// Session log lines not written: free space was below the hard floor (`capture::floor`).
    pub log_lines_dropped: AtomicU64,
    /// MAIL commands answered 452 because free space was below `storage.min_free`.
    pub storage_refusals: AtomicU64,
    /// Free bytes on the filesystem of `storage.dir` at the last measurement (a gauge).
    pub storage_free_bytes: AtomicU64,
    /// Sessions closed with 421 for more than `smtp.max_junk_commands` junk commands.
    pub junk_limit: AtomicU64,
    /// Session log rotations, compressions, deletions of old logs and reopens that failed (the
    /// log goes on in the file it had).
    pub session_log_rotate_failed: AtomicU64,
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
    /// Addresses closed by their `auto_close` rule.
    pub auto_closed: AtomicU64,
    /// `auto_close` counts or closes refused: the table of addresses counted was full, or the
    /// addresses thread's queue was (the address is then closed until the daemon stops, not in
    /// its file).
    pub auto_close_refused: AtomicU64,
}

impl DaemonCounters {
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

/// Replies sent by the daemon, by code: one slot per code 100..=599, the rest in `other`. Fixed
/// and shared (about 4 KiB for the daemon), so counting never allocates.
#[derive(Debug)]
pub struct ReplyCounters {
    by_code: [AtomicU64; 500],
    other: AtomicU64,
}

impl Default for ReplyCounters {
    fn default() -> Self {
        ReplyCounters {
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            other: AtomicU64::new(0),
        }
    }
}

impl ReplyCounters {
    const FIRST: u16 = 100;

    /// Counts `n` replies with `code`.
    pub fn add(&self, code: u16, n: u64) {
        let slot = code
            .checked_sub(Self::FIRST)
            .and_then(|i| self.by_code.get(usize::from(i)))
            .unwrap_or(&self.other);
        slot.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one session's replies.
    pub fn add_session(&self, replies: &crate::smtp::ReplyCounts) {
        for (code, n) in replies.iter() {
            self.add(code, u64::from(n));
        }
    }

    /// (code, replies) for every code sent at least once, ascending.
    pub fn sent(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        (Self::FIRST..)
            .zip(&self.by_code)
            .map(|(code, n)| (code, n.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
    }

    /// Replies whose code was outside 100..=599.
    pub fn other(&self) -> u64 {
        self.other.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::ReplyCounts;

    #[test]
    fn replies_are_counted_by_code() {
        let counters = ReplyCounters::default();
        let mut session = ReplyCounts::default();
        for code in [220, 250, 250, 354, 250, 221] {
            session.add(code);
        }
        counters.add_session(&session);
        counters.add(421, 1);
        counters.add(99, 2);
        counters.add(600, 1);
        let sent: Vec<(u16, u64)> = counters.sent().collect();
        assert_eq!(sent, [(220, 1), (221, 1), (250, 3), (354, 1), (421, 1)]);
        assert_eq!(counters.other(), 3);
    }
}
