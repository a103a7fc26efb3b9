//! The kernel side: loading, attaching and pinning the XDP program, the block table with
//! expiry, the counters, and the [`Blocker`] the daemon escalates clients into.

use std::net::IpAddr;
use std::time::Duration;

/// Where the daemon puts the clients it wants gone. The XDP implementation writes the pinned
/// maps (the kernel then drops the client's packets); the userspace fallback keeps a table and
/// the server closes such clients right after `accept()`.
///
/// Owned by the event loop thread; every call is quick (a map syscall at most).
pub trait Blocker {
    /// Puts `ip` into the drop set for `ttl`, with a reason shown by `sinkhole list` (e.g.
    /// `dnsbl:zen.spamhaus.org`). Returns `Ok(false)` when `ip` is allow-listed (`xdp.allow`)
    /// and so was not blocked.
    fn block(&mut self, ip: IpAddr, ttl: Duration, reason: &str) -> Result<bool, BlockError>;

    /// Whether `ip` is blocked now (an unexpired exact or covering CIDR entry, not allow-listed).
    /// The server asks this right after `accept()` and closes blocked clients at once.
    fn is_blocked(&self, ip: IpAddr) -> bool;

    /// Removes expired entries; the loop calls it every few seconds. Returns how many went.
    fn sweep(&mut self) -> Result<usize, BlockError>;
}

/// A block table operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BlockError(pub String);
