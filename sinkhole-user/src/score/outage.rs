//! Which DNS upstreams have stopped answering. Sans-IO: outcomes and the time go in, "ask or
//! not" comes out.
//!
//! An upstream (one DNSBL zone, or the names behind reverse DNS and HELO checks) whose queries
//! time out [`DOWN_AFTER`] times in a row, with not one answer among them, is *down*: its
//! queries are no longer sent, so clients go unscored at once instead of each holding an
//! in-flight slot, a socket and its retries until `dnsbl.timeout`, and the resolver thread
//! stays idle during an outage instead of working through thousands of doomed queries. One
//! query per [`PROBE_EVERY`] still goes out as a probe; any answer, to a probe or to a query
//! sent before the outage was noticed, brings the upstream back.

use std::time::{Duration, Instant};

/// Queries in a row without an answer before an upstream counts as down. A busy but working
/// server answers most of any sixteen queries, and a lost datagram is retried within the
/// query's deadline, so only an upstream that answers (almost) nothing trips it.
pub const DOWN_AFTER: u32 = 16;

/// How often a query still goes to a down upstream, to notice it is back.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The state of every upstream, indexed as the caller numbers them.
#[derive(Debug)]
pub struct Outages {
    upstreams: Vec<Upstream>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Upstream {
    /// Queries that timed out since the last answer.
    unanswered: u32,
    down: Option<Down>,
}

#[derive(Clone, Copy, Debug)]
struct Down {
    since: Instant,
    next_probe: Instant,
}

/// A change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Down,
    /// Answering again, after being down this long.
    Back(Duration),
}

impl Outages {
    pub fn new(upstreams: usize) -> Self {
        Outages {
            upstreams: vec![Upstream::default(); upstreams],
        }
    }

    /// Whether a query to `upstream` should be sent now: always while it is up; while it is
    /// down, once per [`PROBE_EVERY`].
    pub fn may_ask(&mut self, upstream: usize, now: Instant) -> bool {
        match &mut self.upstreams[upstream].down {
            None => true,
            Some(down) if now >= down.next_probe => {
                down.next_probe = now + PROBE_EVERY;
                true
            }
            Some(_) => false,
        }
    }

    /// A query to `upstream` got an answer (any DNS response, an error code included).
    pub fn answered(&mut self, upstream: usize, now: Instant) -> Option<Change> {
        let state = &mut self.upstreams[upstream];
        state.unanswered = 0;
        let down = state.down.take()?;
        Some(Change::Back(now.saturating_duration_since(down.since)))
    }

    /// A query to `upstream` got no answer before its deadline.
    pub fn unanswered(&mut self, upstream: usize, now: Instant) -> Option<Change> {
        let state = &mut self.upstreams[upstream];
        state.unanswered = state.unanswered.saturating_add(1);
        if state.down.is_some() || state.unanswered < DOWN_AFTER {
            return None;
        }
        state.down = Some(Down {
            since: now,
            next_probe: now + PROBE_EVERY,
        });
        Some(Change::Down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(outages: &mut Outages, now: Instant) {
        for n in 1..DOWN_AFTER {
            assert_eq!(outages.unanswered(0, now), None, "{n}");
            assert!(outages.may_ask(0, now));
        }
        assert_eq!(outages.unanswered(0, now), Some(Change::Down));
    }

    #[test]
    fn an_upstream_is_down_after_enough_unanswered_queries_in_a_row() {
        let now = Instant::now();
        let mut outages = Outages::new(2);
        // One answer among them resets the count.
        for _ in 1..DOWN_AFTER {
            outages.unanswered(0, now);
        }
        assert_eq!(outages.answered(0, now), None);
        down(&mut outages, now);
        assert!(!outages.may_ask(0, now));
        assert_eq!(outages.unanswered(0, now), None, "already down");
        // The other upstream is not affected.
        assert!(outages.may_ask(1, now));
    }

    #[test]
    fn a_down_upstream_is_probed_once_per_interval_and_comes_back_on_an_answer() {
        let start = Instant::now();
        let mut outages = Outages::new(1);
        down(&mut outages, start);
        let half = start + PROBE_EVERY / 2;
        assert!(!outages.may_ask(0, half));
        let probe = start + PROBE_EVERY;
        assert!(outages.may_ask(0, probe), "the probe");
        assert!(!outages.may_ask(0, probe), "only one");
        assert!(outages.may_ask(0, probe + PROBE_EVERY), "the next probe");
        let back = probe + PROBE_EVERY + Duration::from_millis(5);
        assert_eq!(outages.answered(0, back), Some(Change::Back(back - start)));
        assert!(outages.may_ask(0, back));
        assert_eq!(outages.answered(0, back), None);
        // Down again only after as many unanswered queries in a row as the first time.
        down(&mut outages, back);
    }
}
