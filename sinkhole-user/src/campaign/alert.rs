//! The daemon's campaign alerts: sessions counted per campaign key ([`Key`], distinctive keys
//! only) over a sliding `campaign.alert_window`; a key that reaches `campaign.alert_sessions`
//! within it is logged once at WARN with its features and counts as active while it sends.
//!
//! The window is kept as [`BUCKETS`] counts per key (a key costs the same however large the
//! threshold), so a session is counted within a sixtieth of the window. At most [`MAX_KEYS`]
//! keys are tracked; a key idle for a whole window is forgotten when room is needed (a later
//! wave of it alerts again), and sessions of new keys past that are refused and counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::features::Key;
use crate::config::CampaignConfig;

/// Counts per window.
pub const BUCKETS: usize = 60;
/// Keys tracked at most.
pub const MAX_KEYS: usize = 4096;

/// A key that just reached the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub id: String,
    /// The key's features (`Key`'s text: no client, no free text).
    pub features: String,
    /// Sessions within the window when it fired.
    pub sessions: u64,
    /// Sessions counted for the key since it was first tracked.
    pub total: u64,
}

/// What [`Tracker::add`] did with a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Counted {
    /// No campaign behaviour: not counted.
    NoCampaign,
    /// Counted.
    Counted,
    /// Counted, and its key just crossed the threshold.
    Alert(Alert),
    /// A new key while [`MAX_KEYS`] are tracked and none is idle: not counted.
    Refused,
}

#[derive(Debug)]
struct Track {
    /// Sessions per bucket; bucket `n` (since the tracker's start) sits at `n % BUCKETS`.
    counts: [u32; BUCKETS],
    /// The newest bucket written.
    newest: u64,
    last: Instant,
    total: u64,
    alerted: bool,
}

impl Track {
    /// Sessions in the window ending at bucket `now`.
    fn in_window(&mut self, now: u64) -> u64 {
        self.advance(now);
        self.counts.iter().map(|&n| u64::from(n)).sum()
    }

    /// Clears the buckets that fell out of the window ending at bucket `now`.
    fn advance(&mut self, now: u64) {
        let stale = now.saturating_sub(self.newest).min(BUCKETS as u64);
        for i in 1..=stale {
            self.counts[((self.newest + i) % BUCKETS as u64) as usize] = 0;
        }
        self.newest = self.newest.max(now);
    }
}

/// The sessions per key of a running daemon.
#[derive(Debug)]
pub struct Tracker {
    threshold: u64,
    window: Duration,
    bucket: Duration,
    start: Instant,
    keys: HashMap<Key, Track>,
}

impl Tracker {
    pub fn new(config: &CampaignConfig, start: Instant) -> Tracker {
        Tracker {
            threshold: config.alert_sessions.get() as u64,
            window: config.alert_window,
            bucket: config.alert_window / BUCKETS as u32,
            start,
            keys: HashMap::new(),
        }
    }

    fn bucket_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start);
        (since.as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    /// Counts a session with `key` that ended `now`.
    pub fn add(&mut self, key: &Key, now: Instant) -> Counted {
        if !key.is_distinctive() {
            return Counted::NoCampaign;
        }
        let bucket = self.bucket_of(now);
        if !self.keys.contains_key(key) {
            if self.keys.len() >= MAX_KEYS {
                let window = self.window;
                self.keys
                    .retain(|_, t| now.saturating_duration_since(t.last) < window);
            }
            if self.keys.len() >= MAX_KEYS {
                return Counted::Refused;
            }
            self.keys.insert(
                key.clone(),
                Track {
                    counts: [0; BUCKETS],
                    newest: bucket,
                    last: now,
                    total: 0,
                    alerted: false,
                },
            );
        }
        let threshold = self.threshold;
        let Some(track) = self.keys.get_mut(key) else {
            return Counted::Refused;
        };
        track.advance(bucket);
        let slot = (bucket % BUCKETS as u64) as usize;
        track.counts[slot] = track.counts[slot].saturating_add(1);
        track.last = now;
        track.total += 1;
        let sessions = track.in_window(bucket);
        if track.alerted || sessions < threshold {
            return Counted::Counted;
        }
        track.alerted = true;
        Counted::Alert(Alert {
            id: key.id(),
            features: key.to_string(),
            sessions,
            total: track.total,
        })
    }

    /// Keys that alerted and had a session within the window before `now`.
    pub fn active(&self, now: Instant) -> u64 {
        self.keys
            .values()
            .filter(|t| t.alerted && now.saturating_duration_since(t.last) < self.window)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::campaign::features::Shape;
    use crate::signature::Signature;

    /// A distinctive key; `stack` tells keys apart.
    fn key(stack: Option<&str>) -> Key {
        let syn = stack.map(|options| crate::syn::Syn {
            options: options.into(),
            ..Default::default()
        });
        Key::of(Shape {
            signatures: [Signature::MailFromEqRcptTo],
            pipelined: true,
            transaction: Some(("a@example.org", ["a@example.org"])),
            syn: syn.as_ref(),
        })
    }

    fn tracker(sessions: usize, start: Instant) -> Tracker {
        Tracker::new(
            &CampaignConfig {
                alert_sessions: NonZeroUsize::new(sessions).unwrap(),
                alert_window: Duration::from_secs(3600),
                ..CampaignConfig::default()
            },
            start,
        )
    }

    #[test]
    fn once_at_the_threshold_within_the_window() {
        let start = Instant::now();
        let mut t = tracker(5, start);
        let k = key(None);
        // Four sessions, then a long pause: they leave the window.
        for i in 0..4 {
            assert_eq!(t.add(&k, start + Duration::from_secs(i)), Counted::Counted);
        }
        let later = start + Duration::from_secs(2 * 3600);
        for i in 0..4 {
            assert_eq!(t.add(&k, later + Duration::from_secs(i)), Counted::Counted);
        }
        let Counted::Alert(alert) = t.add(&k, later + Duration::from_secs(10)) else {
            panic!("no alert at the fifth session within the hour");
        };
        assert_eq!((alert.sessions, alert.total), (5, 9));
        assert_eq!(alert.id, k.id());
        assert_eq!(
            alert.features,
            "behaviours=mail-from-eq-rcpt-to+pipelining sender=eq-rcpt rcpts=1"
        );
        assert_eq!(
            t.add(&k, later + Duration::from_secs(11)),
            Counted::Counted,
            "once"
        );
        assert_eq!(t.active(later + Duration::from_secs(12)), 1);
        assert_eq!(t.active(later + Duration::from_secs(2 * 3600)), 0);
        let plain = Key::of(Shape {
            signatures: [],
            pipelined: true,
            transaction: Some(("x@y", ["t@z"])),
            syn: None,
        });
        assert_eq!(t.add(&plain, later), Counted::NoCampaign);
    }

    #[test]
    fn keys_are_bounded_and_idle_ones_make_room() {
        let start = Instant::now();
        let mut t = tracker(50, start);
        for i in 0..MAX_KEYS {
            assert_eq!(t.add(&key(Some(&format!("?{i}"))), start), Counted::Counted);
        }
        assert_eq!(t.add(&key(Some("new")), start), Counted::Refused);
        assert_eq!(
            t.add(&key(Some("new")), start + Duration::from_secs(3601)),
            Counted::Counted
        );
        assert_eq!(t.keys.len(), 1);
    }
}
