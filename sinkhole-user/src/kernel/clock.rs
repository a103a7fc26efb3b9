//! The clocks of the block table: entries carry `CLOCK_BOOTTIME` nanoseconds (what the XDP
//! program estimates, see [`monotonic_to_boot_ns`]); people read wall-clock time.

use std::time::{Duration, SystemTime};

use rustix::time::{ClockId, clock_gettime};

fn clock_ns(clock: ClockId) -> u64 {
    let ts = clock_gettime(clock);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds since boot, suspend included.
pub fn boot_ns() -> u64 {
    clock_ns(ClockId::Boottime)
}

/// `CLOCK_BOOTTIME - CLOCK_MONOTONIC`: the time spent suspended. The XDP program adds it to
/// the cheap `bpf_ktime_get_coarse_ns` (`CLOCK_MONOTONIC_COARSE`) to estimate boot time, since
/// `bpf_ktime_get_boot_ns` reads the clock source on every call.
pub fn monotonic_to_boot_ns() -> u64 {
    let monotonic = clock_ns(ClockId::Monotonic);
    boot_ns().saturating_sub(monotonic)
}

/// The `expires_at` of an entry that lasts `ttl` from now; `None`: forever (0).
pub fn expiry(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(ttl) => boot_ns()
            .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
            .max(1),
    }
}

/// The wall-clock time of a `CLOCK_BOOTTIME` stamp; `None` for 0 (never / not yet).
pub fn wall_time(boot_stamp: u64) -> Option<SystemTime> {
    if boot_stamp == 0 {
        return None;
    }
    let now_boot = boot_ns();
    let now_wall = SystemTime::now();
    Some(if boot_stamp >= now_boot {
        now_wall + Duration::from_nanos(boot_stamp - now_boot)
    } else {
        now_wall - Duration::from_nanos(now_boot - boot_stamp)
    })
}

/// RFC 3339 (UTC, seconds) of a `CLOCK_BOOTTIME` stamp; `None` for 0.
pub fn rfc3339(boot_stamp: u64) -> Option<String> {
    wall_time(boot_stamp).map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_stamps_convert_to_wall_time() {
        assert_eq!(rfc3339(0), None);
        let in_an_hour = expiry(Some(Duration::from_secs(3600)));
        let wall = wall_time(in_an_hour).unwrap();
        let ahead = wall.duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(3590) && ahead <= Duration::from_secs(3600));
        assert_eq!(expiry(None), 0);
        assert!(rfc3339(in_an_hour).unwrap().ends_with('Z'));
    }

    #[test]
    fn boot_time_is_monotonic_time_plus_the_suspend() {
        let offset = monotonic_to_boot_ns();
        let estimate = clock_ns(ClockId::Monotonic) + offset;
        let boot = boot_ns();
        assert!(
            boot.abs_diff(estimate) < 1_000_000_000,
            "{boot} vs {estimate}"
        );
    }
}
