//! A hashed timer wheel for connection deadlines.
//!
//! Deadlines move on nearly every command (idle timeout), so the loop does not cancel entries:
//! a connection keeps at most one live entry (`Connection::scheduled`), and an entry that fires
//! for a connection whose deadline moved later is simply re-armed. Entries outlive a closed
//! connection only until they fire; the serial tells them apart from a new connection in the
//! same slot.

use std::time::{Duration, Instant};

/// Deadline resolution.
const TICK: Duration = Duration::from_millis(50);
/// One revolution is `SLOTS * TICK` (51.2 s); later deadlines wait in their slot for more turns.
const SLOTS: usize = 1024;

/// What fires: a connection slot, its serial, and the deadline it was armed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    pub slot: usize,
    pub serial: u64,
    pub at: Instant,
}

pub struct TimerWheel {
    origin: Instant,
    slots: Vec<Vec<TimerEntry>>,
    /// The next tick not yet processed.
    cursor: u64,
    len: usize,
}

impl TimerWheel {
    pub fn new(now: Instant) -> TimerWheel {
        TimerWheel {
            origin: now,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            len: 0,
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        // Round up: an entry never fires before its deadline.
        since.as_nanos().div_ceil(TICK.as_nanos()) as u64
    }

    pub fn insert(&mut self, entry: TimerEntry) {
        let tick = self.tick_of(entry.at).max(self.cursor);
        self.slots[(tick % SLOTS as u64) as usize].push(entry);
        self.len += 1;
    }

    /// Moves the wheel to `now`, appending every entry due by then to `due`.
    pub fn expire(&mut self, now: Instant, due: &mut Vec<TimerEntry>) {
        let target = self.tick_of(now);
        // Never sweep a slot more than once per call, however long the loop slept.
        let last = target.min(self.cursor + SLOTS as u64 - 1);
        while self.cursor <= last && self.len > 0 {
            let slot = &mut self.slots[(self.cursor % SLOTS as u64) as usize];
            let before = slot.len();
            slot.retain(|entry| {
                if entry.at <= now {
                    due.push(*entry);
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
            self.cursor += 1;
        }
        // The current tick is only partly over: its slot may still hold entries due later in
        // it, so the next call looks at it again (moving past it would leave them for a whole
        // revolution of the wheel).
        self.cursor = target;
    }

    /// When the loop must wake next to serve the wheel, or `None` when it is empty.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let base = self.cursor;
        let next = (0..SLOTS as u64)
            .map(|offset| base + offset)
            .find(|tick| !self.slots[(tick % SLOTS as u64) as usize].is_empty())
            .unwrap_or(base);
        Some(self.origin + TICK * next as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: usize, at: Instant) -> TimerEntry {
        TimerEntry {
            slot,
            serial: 1,
            at,
        }
    }

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        wheel.insert(entry(1, start + Duration::from_millis(120)));
        wheel.insert(entry(2, start + Duration::from_secs(120)));
        let mut due = Vec::new();
        wheel.expire(start + Duration::from_millis(100), &mut due);
        assert!(due.is_empty());
        wheel.expire(start + Duration::from_millis(150), &mut due);
        assert_eq!(due, vec![entry(1, start + Duration::from_millis(120))]);
        assert_eq!(wheel.len, 1);
        // More than one revolution later (the entry waited through several turns).
        due.clear();
        wheel.expire(start + Duration::from_secs(119), &mut due);
        assert!(due.is_empty());
        wheel.expire(start + Duration::from_secs(121), &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(wheel.len, 0);
        assert_eq!(wheel.next_wake(), None);
    }

    #[test]
    fn an_entry_later_in_the_current_tick_fires_in_that_tick() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        // Both instants are in tick 3 (100-150 ms).
        wheel.insert(entry(1, start + Duration::from_millis(120)));
        let mut due = Vec::new();
        wheel.expire(start + Duration::from_millis(110), &mut due);
        assert!(due.is_empty());
        wheel.expire(start + Duration::from_millis(130), &mut due);
        assert_eq!(due, vec![entry(1, start + Duration::from_millis(120))]);
    }

    #[test]
    fn next_wake_points_at_the_first_busy_tick() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        wheel.insert(entry(1, start + Duration::from_millis(500)));
        let wake = wheel.next_wake().unwrap();
        assert!(wake >= start + Duration::from_millis(500));
        assert!(wake < start + Duration::from_millis(500) + TICK);
    }

    #[test]
    fn a_deadline_in_the_past_fires_on_the_next_expire() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        let mut due = Vec::new();
        wheel.expire(start + Duration::from_secs(10), &mut due);
        wheel.insert(entry(3, start + Duration::from_secs(1)));
        wheel.expire(start + Duration::from_secs(10), &mut due);
        assert_eq!(due.len(), 1);
    }
}
