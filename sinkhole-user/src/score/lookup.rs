//! The DNS work for one request, run as a task on the resolver thread: every zone and the
//! reverse DNS in parallel, each bounded by the request's deadline, through the answer caches.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{join, join_all};
use hickory_resolver::NameServerPool;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, RetryDnsHandle};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{DnsRequestOptions, DnsResponse, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::sync::Semaphore;

use super::cache::TtlCache;
use super::counters::ScoreCounters;
use super::outage::{Change, DOWN_AFTER, Outages, PROBE_EVERY};
use super::query::{ptr_name, reverse_name};
use super::zone::{ZoneResult, classify};
use super::{ClientScore, HeloCheck, ZoneHit, normalize_name};
use crate::config::ZoneConfig;

/// hickory's name server pool (UDP, TCP on truncation, retries), without its resolver layer:
/// that one answers 127.0.0.0/8 and ::1 PTR queries itself with `localhost` (RFC 6761), and
/// caches by name where we cache by (address, zone).
pub type Dns = RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>;

/// What the resolver thread's tasks share. Single-threaded runtime: the locks are never
/// contended and never held across an await.
pub struct Scorer {
    pub dns: Dns,
    pub zones: Vec<Zone>,
    pub timeout: Duration,
    /// One try of a query (hickory retries within `timeout`): a query out for less than this
    /// when its deadline came says nothing about its upstream.
    pub try_timeout: Duration,
    pub in_flight: Semaphore,
    /// Upstreams that stopped answering: zones by index, then [`Scorer::names`].
    pub outages: Mutex<Outages>,
    /// A zone's result for an address, or its server's error (see [`Gap::is_cached`]).
    pub zone_cache: Mutex<TtlCache<(IpAddr, usize), Result<ZoneResult, Gap>>>,
    /// Reverse DNS, with the error that cut it short, if any.
    pub rdns_cache: Mutex<TtlCache<IpAddr, (Rdns, Option<Gap>)>>,
    pub counters: Arc<ScoreCounters>,
}

pub struct Zone {
    pub name: Arc<str>,
    pub config: ZoneConfig,
}

/// A definite reverse DNS result.
#[derive(Clone, Debug)]
pub struct Rdns {
    name: Option<String>,
    fcrdns: bool,
}

/// One DNS query's outcome.
enum Reply {
    Records(DnsResponse),
    /// NXDOMAIN or no data; the negative TTL when the server sent its SOA.
    Empty(Option<u32>),
    /// No answer before the deadline.
    Timeout,
    /// Not sent: no in-flight slot came free before the deadline.
    NotSent,
    Failed(NetError),
}

/// A lookup that produced no fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gap {
    /// No answer in time, or never asked: the request is `timed_out`.
    NoAnswer,
    /// The server answered with an error.
    Failed,
}

impl Gap {
    /// A server's error is cached like an answer, for the cache's minimum TTL (RFC 2308 section
    /// 7 allows up to five minutes): a client that reconnects at once is not looked up again
    /// against a server that just refused. No answer in time is not: it says more about our
    /// load or the network than about the address.
    fn is_cached(self) -> bool {
        self == Gap::Failed
    }
}

impl Scorer {
    pub fn new(
        dns: Dns,
        zones: &[ZoneConfig],
        timeout: Duration,
        try_timeout: Duration,
        in_flight: usize,
        cache_entries: NonZeroUsize,
        counters: Arc<ScoreCounters>,
    ) -> Self {
        Scorer {
            dns,
            zones: zones
                .iter()
                .map(|z| Zone {
                    name: z.name.as_str().into(),
                    config: z.clone(),
                })
                .collect(),
            timeout,
            try_timeout,
            in_flight: Semaphore::new(in_flight),
            outages: Mutex::new(Outages::new(zones.len() + 1)),
            zone_cache: Mutex::new(TtlCache::new(cache_entries)),
            rdns_cache: Mutex::new(TtlCache::new(cache_entries)),
            counters,
        }
    }

    /// Scores `ip`; done by `deadline` whatever the servers do.
    pub async fn score(&self, ip: IpAddr, deadline: Instant) -> ClientScore {
        let zones = join_all((0..self.zones.len()).map(|i| self.zone(ip, i, deadline)));
        let (zones, rdns) = join(zones, self.rdns(ip, deadline)).await;

        let (rdns, rdns_gap) = rdns;
        let mut timed_out = rdns_gap == Some(Gap::NoAnswer);
        let mut dnsbl = Vec::new();
        for (zone, result) in self.zones.iter().zip(zones) {
            match result {
                Ok(ZoneResult::Listed(codes)) => dnsbl.push(ZoneHit {
                    zone: zone.name.clone(),
                    codes,
                    weight: zone.config.weight,
                }),
                Ok(ZoneResult::Clean | ZoneResult::Refused(_)) | Err(Gap::Failed) => {}
                Err(Gap::NoAnswer) => timed_out = true,
            }
        }
        let score = dnsbl
            .iter()
            .fold(0i32, |sum, hit| sum.saturating_add(hit.weight));
        ClientScore {
            ip,
            dnsbl,
            score,
            rdns: rdns.name,
            fcrdns: rdns.fcrdns,
            rdns_checked: rdns_gap.is_none(),
            timed_out,
        }
    }

    /// Looks up `helo`'s A (or AAAA, for an IPv6 client) records.
    pub async fn check_helo(&self, ip: IpAddr, helo: &str, deadline: Instant) -> HeloCheck {
        let helo = normalize_name(helo);
        let resolves_to_client = if is_domain_name(&helo) {
            self.resolves_to(&format!("{helo}."), ip, deadline)
                .await
                .ok()
                .map(|(found, _ttl)| found)
        } else {
            None
        };
        HeloCheck {
            ip,
            helo,
            resolves_to_client,
        }
    }

    async fn zone(&self, ip: IpAddr, index: usize, deadline: Instant) -> Result<ZoneResult, Gap> {
        let zone = &self.zones[index];
        let counters = &self.counters.zones[index];
        let cached = self
            .zone_cache
            .lock()
            .unwrap()
            .get(&(ip, index), Instant::now());
        if let Some(result) = cached {
            ScoreCounters::bump(&counters.cache_hits);
            return result;
        }

        let name = reverse_name(ip, &zone.name);
        let asked = Instant::now();
        let reply = self.query(index, &name, RecordType::A, deadline).await;
        if matches!(reply, Reply::Records(_) | Reply::Empty(_)) {
            counters
                .answer_seconds
                .observe(asked.elapsed().as_secs_f64());
        }
        let (result, ttl) = match reply {
            Reply::Records(response) => {
                let answers: Vec<Ipv4Addr> = response
                    .answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                (
                    Ok(classify(&zone.config.codes, &answers)),
                    ttl_of(&response),
                )
            }
            Reply::Empty(ttl) => (Ok(ZoneResult::Clean), negative_ttl(ttl)),
            Reply::Timeout => {
                ScoreCounters::bump(&counters.timeout);
                return Err(Gap::NoAnswer);
            }
            Reply::NotSent => return Err(Gap::NoAnswer),
            Reply::Failed(error) => {
                let n = ScoreCounters::bump(&counters.error);
                log_rarely(n, || format!("dnsbl {}: {name} failed: {error}", zone.name));
                (Err(Gap::Failed), Duration::ZERO)
            }
        };
        match &result {
            Ok(ZoneResult::Listed(_)) => ScoreCounters::bump(&counters.listed),
            Ok(ZoneResult::Clean) => ScoreCounters::bump(&counters.clean),
            Ok(ZoneResult::Refused(code)) => {
                let n = ScoreCounters::bump(&counters.error);
                log_rarely(n, || {
                    format!(
                        "dnsbl {}: query refused with {code} (not a listing)",
                        zone.name
                    )
                });
                n
            }
            Err(_) => 0,
        };
        self.zone_cache
            .lock()
            .unwrap()
            .put((ip, index), result.clone(), ttl, Instant::now());
        result
    }

    /// The first PTR name and whether it resolves back to `ip`. With a gap, what was learnt
    /// before it (a name whose forward lookup failed) is still returned.
    async fn rdns(&self, ip: IpAddr, deadline: Instant) -> (Rdns, Option<Gap>) {
        let cached = self.rdns_cache.lock().unwrap().get(&ip, Instant::now());
        if let Some(rdns) = cached {
            ScoreCounters::bump(&self.counters.rdns_cache_hits);
            return rdns;
        }

        let mut rdns = Rdns {
            name: None,
            fcrdns: false,
        };
        let ptr = ptr_name(ip);
        let (gap, ttl) = match self
            .query(self.names(), &ptr, RecordType::PTR, deadline)
            .await
        {
            Reply::Records(response) => {
                rdns.name = response.answers.iter().find_map(|r| match &r.data {
                    RData::PTR(ptr) => Some(normalize_name(&ptr.0.to_ascii())),
                    _ => None,
                });
                let ptr_ttl = ttl_of(&response);
                match &rdns.name {
                    Some(name) => match self.resolves_to(&format!("{name}."), ip, deadline).await {
                        Ok((fcrdns, forward_ttl)) => {
                            rdns.fcrdns = fcrdns;
                            (None, ptr_ttl.min(forward_ttl))
                        }
                        Err(gap) => (Some(gap), Duration::ZERO),
                    },
                    None => (None, ptr_ttl),
                }
            }
            Reply::Empty(ttl) => (None, negative_ttl(ttl)),
            Reply::Timeout | Reply::NotSent => (Some(Gap::NoAnswer), Duration::ZERO),
            Reply::Failed(_) => (Some(Gap::Failed), Duration::ZERO),
        };
        if gap.is_none_or(Gap::is_cached) {
            self.rdns_cache
                .lock()
                .unwrap()
                .put(ip, (rdns.clone(), gap), ttl, Instant::now());
        }
        (rdns, gap)
    }

    /// Whether `name` (fully qualified) has an A (AAAA) record equal to `ip`; with the TTL.
    /// A name that does not exist resolves to nothing, so `false`.
    async fn resolves_to(
        &self,
        name: &str,
        ip: IpAddr,
        deadline: Instant,
    ) -> Result<(bool, Duration), Gap> {
        let record_type = match ip {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::AAAA,
        };
        match self.query(self.names(), name, record_type, deadline).await {
            Reply::Records(response) => {
                let found = response.answers.iter().any(|r| match &r.data {
                    RData::A(a) => IpAddr::V4(a.0) == ip,
                    RData::AAAA(aaaa) => IpAddr::V6(aaaa.0) == ip,
                    _ => false,
                });
                Ok((found, ttl_of(&response)))
            }
            Reply::Empty(ttl) => Ok((false, negative_ttl(ttl))),
            Reply::Timeout | Reply::NotSent => Err(Gap::NoAnswer),
            Reply::Failed(_) => Err(Gap::Failed),
        }
    }

    /// The upstream of reverse DNS and HELO names, after the zones.
    fn names(&self) -> usize {
        self.zones.len()
    }

    /// Sends one query to `upstream` when the in-flight cap allows and the upstream is not
    /// down, and waits for its answer; all by `deadline`.
    async fn query(
        &self,
        upstream: usize,
        name: &str,
        record_type: RecordType,
        deadline: Instant,
    ) -> Reply {
        let name = match Name::from_ascii(name) {
            Ok(name) => name,
            Err(error) => return Reply::Failed(error.into()),
        };
        // A query waits for a slot, but only until the request's deadline.
        let slot = self.in_flight.acquire();
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline.into(), slot).await else {
            ScoreCounters::bump(&self.counters.refused_in_flight);
            return Reply::NotSent;
        };
        let sent = Instant::now();
        if !self.outages.lock().unwrap().may_ask(upstream, sent) {
            ScoreCounters::bump(&self.counters.refused_down);
            return Reply::NotSent;
        }
        let mut responses = self.dns.lookup(
            Query::query(name, record_type),
            DnsRequestOptions::default(),
        );
        let reply = match tokio::time::timeout_at(deadline.into(), responses.next()).await {
            Err(_elapsed) => Reply::Timeout,
            Ok(None) => Reply::Failed(NetError::Message("no response")),
            Ok(Some(Ok(response))) => Reply::Records(response),
            Ok(Some(Err(NetError::Dns(DnsError::NoRecordsFound(none))))) => {
                Reply::Empty(none.negative_ttl)
            }
            Ok(Some(Err(NetError::Timeout))) => Reply::Timeout,
            Ok(Some(Err(error))) => Reply::Failed(error),
        };
        self.note_outcome(upstream, &reply, sent);
        reply
    }

    /// Tells [`Outages`] what became of a query sent at `sent`, and logs when its upstream
    /// goes down or comes back.
    fn note_outcome(&self, upstream: usize, reply: &Reply, sent: Instant) {
        let now = Instant::now();
        let mut outages = self.outages.lock().unwrap();
        let change = match reply {
            Reply::Timeout if now.duration_since(sent) >= self.try_timeout => {
                outages.unanswered(upstream, now)
            }
            Reply::Timeout | Reply::NotSent => None,
            Reply::Records(_) | Reply::Empty(_) | Reply::Failed(_) => {
                outages.answered(upstream, now)
            }
        };
        drop(outages);
        let Some(change) = change else {
            return;
        };
        // The zone's name as a field (`journalctl ZONE=zen.spamhaus.org`); "rdns" for the
        // reverse DNS and HELO lookups.
        let (zone, what) = match self.zones.get(upstream) {
            Some(zone) => (&*zone.name, format!("dnsbl {}", zone.name)),
            None => ("rdns", "reverse DNS and HELO names".to_owned()),
        };
        match change {
            Change::Down => tracing::warn!(
                zone,
                "{what}: {DOWN_AFTER} queries in a row unanswered; until it answers, its \
                 clients go unscored at once and one query every {PROBE_EVERY:?} probes it"
            ),
            Change::Back(down) => {
                tracing::warn!(
                    zone,
                    "{what}: answering again after {down:.1?} without answers"
                )
            }
        }
    }
}

/// How long a positive answer may be kept: its shortest TTL (the cache clamps it).
fn ttl_of(response: &DnsResponse) -> Duration {
    let ttl = response.answers.iter().map(|r| r.ttl).min().unwrap_or(0);
    Duration::from_secs(ttl.into())
}

/// Without an SOA there is no negative TTL: the cache's minimum applies.
fn negative_ttl(ttl: Option<u32>) -> Duration {
    Duration::from_secs(ttl.unwrap_or(0).into())
}

/// A HELO argument worth a lookup: a syntactically valid name of two labels or more whose
/// top-level label is not all digits (so not an address, bare or bracketed).
fn is_domain_name(name: &str) -> bool {
    let labels_ok = name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    labels_ok
        && name
            .rsplit_once('.')
            .is_some_and(|(_, tld)| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// Logs a DNS trouble at the 1st, 2nd, 4th, 8th... occurrence: visible, never a flood.
fn log_rarely(count: u64, message: impl FnOnce() -> String) {
    if count.is_power_of_two() {
        tracing::warn!("{} ({count} so far)", message());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helo_names_worth_a_lookup() {
        for name in ["mail.example.com", "a.b", "x-1.example", "_srv.example.org"] {
            assert!(is_domain_name(name), "{name}");
        }
        for name in [
            "localhost",
            "ylmf-pc",
            "[192.0.2.1]",
            "192.0.2.1",
            "example.123",
            "a..b",
            "-bad.example",
            "bad-.example",
            "",
            "sp ace.example",
        ] {
            assert!(!is_domain_name(name), "{name}");
        }
        assert!(!is_domain_name(&format!("{}.example", "a".repeat(64))));
    }
}
