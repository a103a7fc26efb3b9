//! A hashed timer wheel for connection deadlines.
//!
//! Deadlines move on nearly every command (idle timeout), so the loop does not cancel entries:
//! a connection keeps at most one live entry (`Connection::scheduled`), and an entry that fires
//! for a connection whose deadline moved later is simply re-armed. An entry of a closed
//! connection (the serial tells it apart from a new connection in the same slot) or a re-armed
//! one is dropped when the wheel next passes its slot, within one turn: under a flood of short
//! connections with a 5-minute idle timeout they would otherwise pile up by the million.

use std::time::{Duration, Instant};

/// Deadline resolution.
const TICK: Duration = Duration::from_millis(50);
/// [`TICK`] in nanoseconds, for tick arithmetic in `u64` (a `Duration` divides in `u128`).
const TICK_NANOS: u64 = TICK.as_nanos() as u64;
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
    /// The tick being served: every earlier tick is done, this one may be partly over.
    cursor: u64,
    /// The earliest deadline left in the cursor's tick when its slot was last looked at (or
    /// armed since). Until then the slot is not scanned again: a busy loop calls
    /// [`TimerWheel::expire`] many times a tick, and under a flood of short connections a slot
    /// holds thousands of entries for later turns of the wheel.
    cursor_next: Option<Instant>,
    len: usize,
}

impl TimerWheel {
    pub fn new(now: Instant) -> TimerWheel {
        TimerWheel {
            origin: now,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            cursor_next: None,
            len: 0,
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        // Round up: an entry never fires before its deadline. (u64 nanoseconds last 584 years.)
        (since.as_nanos() as u64).div_ceil(TICK_NANOS)
    }

    /// The last instant of `tick`: the deadlines in it are those up to here.
    fn tick_end(&self, tick: u64) -> Instant {
        self.origin + Duration::from_nanos(tick * TICK_NANOS)
    }

    pub fn insert(&mut self, entry: TimerEntry) {
        let tick = self.tick_of(entry.at).max(self.cursor);
        if tick == self.cursor {
            self.cursor_next = earliest(self.cursor_next, entry.at);
        }
        self.slots[slot_of(tick)].push(entry);
        self.len += 1;
    }

    /// Moves the wheel to `now`, appending every entry due by then to `due`. Entries that
    /// `current` rejects (their connection closed, or re-armed for another deadline) are
    /// dropped, due or not, whenever their slot is scanned: they never fire, and they leave the
    /// wheel within one turn instead of lingering until their deadline.
    pub fn expire(
        &mut self,
        now: Instant,
        due: &mut Vec<TimerEntry>,
        current: impl Fn(&TimerEntry) -> bool,
    ) {
        let target = self.tick_of(now);
        if target == self.cursor && self.cursor_next.is_none_or(|next| now < next) {
            return;
        }
        // The cursor's slot was scanned in its tick, and what it holds for that tick is in
        // `cursor_next`: when nothing is, moving on need not scan it again.
        let first = self.cursor + u64::from(self.cursor_next.is_none());
        // Never sweep a slot more than once per call, however long the loop slept.
        let last = target.min(first + SLOTS as u64 - 1);
        // The deadlines of `target`'s own tick end here; later ones in its slot are for later
        // turns. (After a sleep of more than a turn, `target`'s slot is scanned as an earlier
        // tick's.)
        let target_end = self.tick_end(target);
        let mut target_next: Option<Instant> = None;
        let mut tick = first;
        while tick <= last && self.len > 0 {
            let holds_target = slot_of(tick) == slot_of(target);
            let slot = &mut self.slots[slot_of(tick)];
            let before = slot.len();
            slot.retain(|entry| {
                if !current(entry) {
                    false
                } else if entry.at <= now {
                    due.push(*entry);
                    false
                } else {
                    if holds_target && entry.at <= target_end {
                        target_next = earliest(target_next, entry.at);
                    }
                    true
                }
            });
            self.len -= before - slot.len();
            tick += 1;
        }
        // The current tick is only partly over: its slot may still hold entries due later in
        // it, so the wheel stays on it (moving past it would leave them for a whole turn).
        self.cursor = target;
        self.cursor_next = target_next;
    }

    /// When the loop must wake next to serve the wheel, or `None` when it is empty.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let base = self.cursor;
        let next = (0..SLOTS as u64)
            .map(|offset| base + offset)
            .find(|&tick| !self.slots[slot_of(tick)].is_empty())
            .unwrap_or(base);
        Some(self.tick_end(next))
    }
}

/// The slot that holds the entries of `tick` (and of the same tick in later turns).
fn slot_of(tick: u64) -> usize {
    (tick % SLOTS as u64) as usize
}

/// The earlier of `next` and `at`.
fn earliest(next: Option<Instant>, at: Instant) -> Option<Instant> {
    Some(next.map_or(at, |next| next.min(at)))
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
        wheel.expire(start + Duration::from_millis(100), &mut due, |_| true);
        assert!(due.is_empty());
        wheel.expire(start + Duration::from_millis(150), &mut due, |_| true);
        assert_eq!(due, vec![entry(1, start + Duration::from_millis(120))]);
        assert_eq!(wheel.len, 1);
        // More than one revolution later (the entry waited through several turns).
        due.clear();
        wheel.expire(start + Duration::from_secs(119), &mut due, |_| true);
        assert!(due.is_empty());
        wheel.expire(start + Duration::from_secs(121), &mut due, |_| true);
        assert_eq!(due.len(), 1);
        assert_eq!(wheel.len, 0);
        assert_eq!(wheel.next_wake(), None);
    }

    #[test]
    fn an_entry_later_in_the_current_tick_fires_in_that_tick() {
        // All instants are in tick 3 (100-150 ms); the entry is armed before the tick's first
        // scan, or after it (the scan then found nothing due in the tick).
        for armed_after_scan in [false, true] {
            let start = Instant::now();
            let mut wheel = TimerWheel::new(start);
            let mut due = Vec::new();
            let deadline = entry(1, start + Duration::from_millis(120));
            if armed_after_scan {
                wheel.expire(start + Duration::from_millis(105), &mut due, |_| true);
            }
            wheel.insert(deadline);
            wheel.expire(start + Duration::from_millis(115), &mut due, |_| true);
            assert!(due.is_empty());
            wheel.expire(start + Duration::from_millis(125), &mut due, |_| true);
            assert_eq!(
                due,
                vec![deadline],
                "armed after the scan: {armed_after_scan}"
            );
        }
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
        wheel.expire(start + Duration::from_secs(10), &mut due, |_| true);
        wheel.insert(entry(3, start + Duration::from_secs(1)));
        wheel.expire(start + Duration::from_secs(10), &mut due, |_| true);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn the_current_tick_is_not_rescanned_until_something_in_it_is_due() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        // A turn later, in the slot of tick 1 (0-50 ms).
        for slot in 0..100 {
            wheel.insert(entry(
                slot,
                start + TICK * SLOTS as u32 + Duration::from_millis(10),
            ));
        }
        let looked = std::cell::Cell::new(0);
        let current = |_: &TimerEntry| {
            looked.set(looked.get() + 1);
            true
        };
        let mut due = Vec::new();
        wheel.expire(start + Duration::from_millis(10), &mut due, current);
        assert_eq!(looked.get(), 100);
        for ms in 11..50 {
            wheel.expire(start + Duration::from_millis(ms), &mut due, current);
        }
        assert_eq!(
            looked.get(),
            100,
            "the slot was scanned again within its tick"
        );
        assert!(due.is_empty());
        wheel.expire(start + Duration::from_millis(60), &mut due, current);
        assert_eq!(looked.get(), 100, "the next tick's slot is empty");
    }

    #[test]
    fn entries_no_longer_current_leave_when_their_slot_is_passed_not_at_their_deadline() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        wheel.insert(entry(1, start + Duration::from_secs(300)));
        wheel.insert(entry(2, start + Duration::from_secs(300)));
        let mut due = Vec::new();
        // Slot of 300 s is passed at 300 s mod 51.2 s = 44 s.
        wheel.expire(start + Duration::from_secs(45), &mut due, |e| e.slot == 2);
        assert!(due.is_empty());
        assert_eq!(wheel.len, 1);
        wheel.expire(start + Duration::from_secs(301), &mut due, |e| e.slot == 2);
        assert_eq!(due, vec![entry(2, start + Duration::from_secs(300))]);
        assert_eq!(wheel.len, 0);
    }
}
