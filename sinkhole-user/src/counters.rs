//! What the daemon did and what its limits refused, for `/metrics` and the logs. The loop and
//! the capture thread write; anyone holding the `Arc` may read at any time.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

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

/// The daemon's distributions, for `/metrics` histograms.
#[derive(Debug)]
pub struct Histograms {
    /// Seconds from the end of a message's data to its answer (the sync before the 250),
    /// `sinkhole_commit_seconds`: 1 ms to 8 s.
    pub commit_seconds: Histogram,
    /// Seconds from accept to close, `sinkhole_session_seconds`: 0.1 s to about 33 minutes.
    pub session_seconds: Histogram,
    /// Sizes of the messages accepted, `sinkhole_message_bytes`: 1 KiB to 256 MiB.
    pub message_bytes: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            session_seconds: Histogram::new(exponential_buckets(0.1, 3.0, 10)),
            message_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 10)),
        }
    }
}

/// The daemon's own counters: its connections, messages, replies, capture and blocks.
#[derive(Debug, Default)]
pub struct DaemonCounters {
    pub histograms: Histograms,
    /// 1 when the policy was last read (at start or on SIGHUP) without error, else 0.
    pub policy_reload_ok: AtomicU64,
    /// When the policy was last read, successfully or not (seconds since 1970).
    pub policy_reload_at: AtomicU64,
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
    /// Connections accepted with the XDP program attached whose SYN fingerprint was found in
    /// its map, and not found (evicted by a flood, or the SYN came another way).
    pub syn_found: AtomicU64,
    pub syn_missing: AtomicU64,
    /// Sessions counted into a campaign key (a campaign behaviour; `campaign::alert`).
    pub campaign_sessions: AtomicU64,
    /// Campaign keys that crossed `campaign.alert_sessions` and still had a session within
    /// `campaign.alert_window` at the last count (a gauge).
    pub campaigns_active: AtomicU64,
    /// Sessions of new campaign keys not tracked: the tracker's table was full.
    pub campaign_keys_refused: AtomicU64,
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

    /// A message of `size` bytes answered 250.
    pub fn count_message(&self, size: u64) {
        Self::add(&self.messages_total, 1);
        Self::add(&self.message_bytes_total, size);
        self.histograms.message_bytes.observe(size as f64);
    }

    /// The policy was read (at start or on SIGHUP), successfully or not, at `when`.
    pub fn policy_read(&self, ok: bool, when: std::time::SystemTime) {
        let at = when
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.policy_reload_ok
            .store(u64::from(ok), Ordering::Relaxed);
        self.policy_reload_at.store(at.as_secs(), Ordering::Relaxed);
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
