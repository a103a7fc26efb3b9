//! Counters the resolver thread keeps and anyone (metrics) may read: atomics, no locks.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::config::ZoneConfig;

/// Every counter of a [`Resolver`](super::Resolver). Totals since start; read with
/// [`load`](ScoreCounters::load) or the fields' `load(Ordering::Relaxed)`.
#[derive(Debug)]
pub struct ScoreCounters {
    /// One per configured zone, in configuration order.
    pub zones: Vec<ZoneCounters>,
    /// Reverse DNS results (PTR + forward confirmation) served from the cache.
    pub rdns_cache_hits: AtomicU64,
    /// Requests refused because too many were outstanding (`Busy`).
    pub refused_busy: AtomicU64,
    /// DNS queries not sent: no in-flight slot came free in time; they count as no answer.
    pub refused_in_flight: AtomicU64,
    /// DNS queries not sent: their upstream is down (it left a run of queries unanswered and
    /// is only probed until it answers again); they count as no answer.
    pub refused_down: AtomicU64,
}

/// DNS queries sent to one zone, by result (`sinkhole_dnsbl_queries_total{zone,result}`), and
/// the answers served from the cache instead.
#[derive(Debug)]
pub struct ZoneCounters {
    pub zone: String,
    /// Answered with a code the zone's filter counts.
    pub listed: AtomicU64,
    /// NXDOMAIN, no data, or only codes the filter ignores.
    pub clean: AtomicU64,
    /// A 127.255.255.0/24 refusal, or a DNS failure (SERVFAIL, REFUSED, network error).
    pub error: AtomicU64,
    /// No answer before `dnsbl.timeout`.
    pub timeout: AtomicU64,
    pub cache_hits: AtomicU64,
    /// Seconds from a query sent to its answer (listed or not; timeouts and failures are not
    /// answers), `sinkhole_dnsbl_answer_seconds{zone}`: 1 ms to 8 s.
    pub answer_seconds: Histogram,
}

impl ScoreCounters {
    pub(crate) fn new(zones: &[ZoneConfig]) -> Self {
        ScoreCounters {
            zones: zones
                .iter()
                .map(|z| ZoneCounters {
                    zone: z.name.clone(),
                    listed: AtomicU64::new(0),
                    clean: AtomicU64::new(0),
                    error: AtomicU64::new(0),
                    timeout: AtomicU64::new(0),
                    cache_hits: AtomicU64::new(0),
                    answer_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
                })
                .collect(),
            rdns_cache_hits: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            refused_in_flight: AtomicU64::new(0),
            refused_down: AtomicU64::new(0),
        }
    }

    /// Reads one counter.
    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Adds one, returning the new total.
    pub(crate) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}
