//! A bounded answer cache: entries live for their DNS TTL clamped to [`MIN_TTL`]..[`MAX_TTL`],
//! and when it is full the least recently used entry goes first. Time is passed in.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

/// Answers are kept at least this long, whatever their TTL (a DNSBL with TTL 0 would otherwise
/// be asked at every connection of a busy client).
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// And at most this long, so a delisting is seen within the hour.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

pub struct TtlCache<K: Hash + Eq, V> {
    entries: LruCache<K, (Instant, V)>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        TtlCache {
            entries: LruCache::new(capacity),
        }
    }

    /// The unexpired value for `key`, which becomes the most recently used.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((expires, value)) if *expires > now => Some(value.clone()),
            Some(_) => {
                self.entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `ttl` (clamped), evicting the least recently used entry when full.
    pub fn put(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        self.entries.put(key, (now + ttl, value));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> TtlCache<u32, &'static str> {
        TtlCache::new(NonZeroUsize::new(capacity).unwrap())
    }

    #[test]
    fn ttl_is_clamped_to_a_minute_and_an_hour() {
        let t0 = Instant::now();
        let mut c = cache(4);
        c.put(1, "short", Duration::from_secs(5), t0);
        c.put(2, "long", Duration::from_secs(86_400), t0);
        c.put(3, "normal", Duration::from_secs(600), t0);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(59)), Some("short"));
        assert_eq!(c.get(&1, t0 + MIN_TTL), None);
        assert_eq!(c.get(&3, t0 + Duration::from_secs(599)), Some("normal"));
        assert_eq!(c.get(&3, t0 + Duration::from_secs(600)), None);
        assert_eq!(c.get(&2, t0 + Duration::from_secs(3599)), Some("long"));
        assert_eq!(c.get(&2, t0 + MAX_TTL), None);
        // Expired entries are dropped when seen.
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn least_recently_used_goes_first() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(600);
        let mut c = cache(2);
        c.put(1, "a", ttl, t0);
        c.put(2, "b", ttl, t0);
        // Using 1 makes 2 the least recently used.
        assert_eq!(c.get(&1, t0), Some("a"));
        c.put(3, "c", ttl, t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&2, t0), None);
        assert_eq!(c.get(&1, t0), Some("a"));
        assert_eq!(c.get(&3, t0), Some("c"));
    }

    #[test]
    fn put_replaces_and_renews() {
        let t0 = Instant::now();
        let mut c = cache(2);
        c.put(1, "old", Duration::from_secs(60), t0);
        c.put(
            1,
            "new",
            Duration::from_secs(120),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(c.get(&1, t0 + Duration::from_secs(149)), Some("new"));
        assert_eq!(c.len(), 1);
    }
}
