//! The userspace fallback when the BPF maps cannot be used at all (no privilege, no bpffs): a
//! bounded in-memory table the server consults after `accept()`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sinkhole_common::EXACT_CAPACITY;

use super::{BlockError, Blocker, allowed};

/// Blocked addresses and when each block ends, at most [`EXACT_CAPACITY`] of them.
pub struct MemoryBlocker {
    allow: Vec<IpNet>,
    until: HashMap<IpAddr, Instant>,
    capacity: usize,
}

impl MemoryBlocker {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self::with_capacity(allow, EXACT_CAPACITY as usize)
    }

    fn with_capacity(allow: Vec<IpNet>, capacity: usize) -> Self {
        MemoryBlocker {
            allow,
            until: HashMap::new(),
            capacity,
        }
    }

    fn block_at(&mut self, ip: IpAddr, ttl: Duration, now: Instant) -> Result<bool, BlockError> {
        if allowed(&self.allow, ip) {
            return Ok(false);
        }
        if self.until.len() >= self.capacity && !self.until.contains_key(&ip) {
            self.sweep_at(now);
            if self.until.len() >= self.capacity {
                return Err(BlockError::MemoryFull {
                    capacity: self.capacity,
                });
            }
        }
        self.until.insert(ip, now + ttl);
        Ok(true)
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        !allowed(&self.allow, ip) && self.until.get(&ip).is_some_and(|&until| now < until)
    }

    fn sweep_at(&mut self, now: Instant) -> usize {
        let before = self.until.len();
        self.until.retain(|_, until| now < *until);
        before - self.until.len()
    }
}

impl Blocker for MemoryBlocker {
    fn block(&mut self, ip: IpAddr, ttl: Duration, _reason: &str) -> Result<bool, BlockError> {
        self.block_at(ip, ttl, Instant::now())
    }

    fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    fn sweep(&mut self) -> Result<usize, BlockError> {
        Ok(self.sweep_at(Instant::now()))
    }

    fn is_attached(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_expire_and_allowlist_wins() {
        let mut table = MemoryBlocker::with_capacity(vec!["127.0.0.0/8".parse().unwrap()], 2);
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(!table.block_at(ip("127.0.0.1"), minute, t0).unwrap());
        assert!(!table.is_blocked_at(ip("127.0.0.1"), t0));
        assert!(table.block_at(ip("192.0.2.1"), minute, t0).unwrap());
        assert!(table.block_at(ip("2001:db8::1"), minute * 2, t0).unwrap());
        assert!(table.is_blocked_at(ip("192.0.2.1"), t0 + minute / 2));
        assert!(!table.is_blocked_at(ip("192.0.2.1"), t0 + minute));
        assert!(!table.is_blocked_at(ip("192.0.2.2"), t0));
        // Full: a new address is refused until expired entries make room.
        assert!(table.block_at(ip("192.0.2.3"), minute, t0).is_err());
        assert!(
            table
                .block_at(ip("192.0.2.3"), minute, t0 + minute)
                .unwrap()
        );
        assert_eq!(table.sweep_at(t0 + minute * 3), 2);
        assert!(!table.is_blocked_at(ip("2001:db8::1"), t0 + minute));
    }
}
