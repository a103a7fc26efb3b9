//! The disk floor (Postfix's `queue_minfree`): free space kept in reserve on the filesystem of
//! `storage.dir`, so hostile traffic cannot fill it.
//!
//! The capture thread measures free space (`statvfs`, the space an unprivileged user may take)
//! after each batch of messages it writes and at least once a second, and publishes the
//! [`Space`] it finds. Below `storage.min_free` the loop has sessions answer MAIL with
//! `452 4.3.1` (a message already in DATA is still stored if it fits) and the session log is
//! written in short lines; below the hard floor, a quarter of `min_free`, no log line and no
//! message file is written at all, and what was dropped is counted. A level is left upwards
//! only once free space is an eighth of its floor above it, so a filesystem that hovers at a
//! floor does not flap; every change of level is logged once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::config::MinFree;
use crate::counters::DaemonCounters;

/// Free space is measured at least this often (and after every batch of messages written).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How much room the filesystem of `storage.dir` has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// At or above `storage.min_free`: everything as usual.
    Ample,
    /// Below `storage.min_free`: new transactions are refused, log lines are short.
    Low,
    /// Below the hard floor: nothing more is written.
    Exhausted,
}

impl Space {
    const ALL: [Space; 3] = [Space::Ample, Space::Low, Space::Exhausted];

    /// The level for `free` bytes with floors `min_free` and `hard` (bytes), coming from `was`.
    fn of(free: u64, min_free: u64, hard: u64, was: Space) -> Space {
        // Leaving a level upwards takes an eighth of its floor more than entering it.
        let above = |floor: u64, level: Space| {
            let margin = if was >= level { floor / 8 } else { 0 };
            free >= floor.saturating_add(margin)
        };
        if !above(hard, Space::Exhausted) {
            Space::Exhausted
        } else if !above(min_free, Space::Low) {
            Space::Low
        } else {
            Space::Ample
        }
    }
}

/// The current [`Space`], written by the capture thread and read by the loop at every turn.
#[derive(Debug)]
pub struct SharedSpace(AtomicU8);

impl Default for SharedSpace {
    fn default() -> Self {
        SharedSpace(AtomicU8::new(Space::Ample as u8))
    }
}

impl SharedSpace {
    pub fn get(&self) -> Space {
        Space::ALL[usize::from(self.0.load(Ordering::Relaxed))]
    }

    fn set(&self, space: Space) {
        self.0.store(space as u8, Ordering::Relaxed);
    }
}

/// The capture thread's side: measures, decides the level, says when it changes.
pub struct Floor {
    dir: PathBuf,
    min_free: MinFree,
    space: Arc<SharedSpace>,
    counters: Arc<DaemonCounters>,
    last_check: Option<Instant>,
    /// The last measurement failed (logged once until one succeeds).
    failing: bool,
}

impl Floor {
    /// Watches the filesystem holding `dir`, publishing the level into `space` and the free
    /// bytes into `counters`. Measures once at once.
    pub fn new(
        dir: PathBuf,
        min_free: MinFree,
        space: Arc<SharedSpace>,
        counters: Arc<DaemonCounters>,
    ) -> Floor {
        let mut floor = Floor {
            dir,
            min_free,
            space,
            counters,
            last_check: None,
            failing: false,
        };
        floor.check(Instant::now());
        floor
    }

    /// The level found by the last measurement.
    pub fn space(&self) -> Space {
        self.space.get()
    }

    /// Measures when the last measurement is [`CHECK_INTERVAL`] old.
    pub fn check_if_due(&mut self, now: Instant) {
        if self
            .last_check
            .is_none_or(|at| now.duration_since(at) >= CHECK_INTERVAL)
        {
            self.check(now);
        }
    }

    /// Measures free space now and publishes the level.
    pub fn check(&mut self, now: Instant) {
        self.last_check = Some(now);
        let stat = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat,
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        "cannot measure the free space of {}: {e}; keeping the last level",
                        self.dir.display()
                    );
                }
                return;
            }
        };
        self.failing = false;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let total = stat.f_blocks.saturating_mul(stat.f_frsize);
        self.counters
            .storage_free_bytes
            .store(free, Ordering::Relaxed);
        self.update(free, total);
    }

    /// Publishes the level for `free` of `total` bytes, logging a change.
    fn update(&mut self, free: u64, total: u64) {
        let min_free = self.min_free.bytes(total);
        let hard = min_free / 4;
        let was = self.space.get();
        let now = Space::of(free, min_free, hard, was);
        if now == was {
            return;
        }
        self.space.set(now);
        let dir = self.dir.display();
        let (free, min_free, hard) = (mib(free), mib(min_free), mib(hard));
        match now {
            Space::Exhausted => tracing::warn!(
                "{dir}: {free} free, below the hard floor ({hard}, a quarter of \
                 storage.min_free): no more session log lines or messages are written"
            ),
            Space::Low if was == Space::Ample => tracing::warn!(
                "{dir}: {free} free, below storage.min_free ({min_free}): MAIL is refused with \
                 452, session log lines are short"
            ),
            Space::Low => tracing::warn!(
                "{dir}: {free} free, back above the hard floor ({hard}): short session log \
                 lines and messages in DATA are written again; MAIL is still refused"
            ),
            Space::Ample => tracing::warn!(
                "{dir}: {free} free, back above storage.min_free ({min_free}): mail is \
                 accepted again"
            ),
        }
    }
}

/// Bytes as MiB with one decimal, for the log.
fn mib(bytes: u64) -> String {
    format!("{:.1}MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn levels_follow_the_floors_with_an_eighth_of_hysteresis() {
        let (min_free, hard) = (8 * MIB, 2 * MIB);
        let of = |free, was| Space::of(free, min_free, hard, was);
        // Going down: the floors themselves.
        assert_eq!(of(9 * MIB, Space::Ample), Space::Ample);
        assert_eq!(of(8 * MIB, Space::Ample), Space::Ample);
        assert_eq!(of(8 * MIB - 1, Space::Ample), Space::Low);
        assert_eq!(of(2 * MIB, Space::Ample), Space::Low);
        assert_eq!(of(2 * MIB - 1, Space::Ample), Space::Exhausted);
        assert_eq!(of(0, Space::Low), Space::Exhausted);
        // Going up: an eighth of the floor more.
        assert_eq!(of(8 * MIB, Space::Low), Space::Low);
        assert_eq!(of(9 * MIB - 1, Space::Low), Space::Low);
        assert_eq!(of(9 * MIB, Space::Low), Space::Ample);
        assert_eq!(
            of(2 * MIB + MIB / 4 - 1, Space::Exhausted),
            Space::Exhausted
        );
        assert_eq!(of(2 * MIB + MIB / 4, Space::Exhausted), Space::Low);
        assert_eq!(of(100 * MIB, Space::Exhausted), Space::Ample);
        // No floor: never short of space.
        assert_eq!(Space::of(0, 0, 0, Space::Ample), Space::Ample);
        assert_eq!(Space::of(0, 0, 0, Space::Exhausted), Space::Ample);
    }

    fn watch(min_free: MinFree) -> (Floor, Arc<DaemonCounters>) {
        let counters = Arc::new(DaemonCounters::default());
        let floor = Floor::new(
            std::env::temp_dir(),
            min_free,
            Arc::default(),
            Arc::clone(&counters),
        );
        (floor, counters)
    }

    #[test]
    fn a_percentage_is_of_the_filesystem() {
        let (mut floor, _) = watch(MinFree::Percent(10));
        floor.update(11 * MIB, 100 * MIB);
        assert_eq!(floor.space(), Space::Ample);
        floor.update(9 * MIB, 100 * MIB);
        assert_eq!(floor.space(), Space::Low);
        floor.update(2 * MIB, 100 * MIB);
        assert_eq!(floor.space(), Space::Exhausted);
        floor.update(50 * MIB, 100 * MIB);
        assert_eq!(floor.space(), Space::Ample);
    }

    #[test]
    fn a_measurement_publishes_the_free_bytes_and_the_level() {
        // The temporary directory's filesystem has some room, and less than 256 TiB (the hard
        // floor of 1 PiB).
        let (floor, counters) = watch(MinFree::Bytes(1 << 50));
        assert_eq!(floor.space(), Space::Exhausted);
        assert!(DaemonCounters::get(&counters.storage_free_bytes) > 0);
        let (mut floor, _) = watch(MinFree::Bytes(0));
        assert_eq!(floor.space(), Space::Ample);
        // Not measured again within the interval: the level stays what was published.
        floor.space.set(Space::Exhausted);
        floor.check_if_due(Instant::now());
        assert_eq!(floor.space(), Space::Exhausted);
        floor.check(Instant::now());
        assert_eq!(floor.space(), Space::Ample);
    }
}
