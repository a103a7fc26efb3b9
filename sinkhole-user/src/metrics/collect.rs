//! The series of one scrape, read from the [`Sources`] as they are at that moment.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::Sources;
use crate::counters::DaemonCounters;
use crate::kernel::{BlockMaps, KernelError, clock};

pub(super) struct Collector {
    sources: Sources,
}

impl Collector {
    pub(super) fn new(sources: Sources) -> Self {
        Collector { sources }
    }
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collector")
            .field("score", &self.sources.score.is_some())
            .field("maps", &self.sources.maps.is_some())
            .finish()
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        if let Some(maps) = &self.sources.maps {
            match Kernel::read(maps) {
                Ok(kernel) => kernel.encode(e)?,
                // The scrape still reports the rest; the log says why these are missing.
                Err(err) => tracing::warn!("metrics: cannot read the BPF maps: {err}"),
            }
        }
        self.encode_server(e)?;
        self.encode_timings(e)?;
        self.encode_attached(e)?;
        if let Some(score) = &self.sources.score {
            let zones = &score.zones;
            let results = zones.iter().flat_map(|z| {
                [
                    ("listed", &z.listed),
                    ("clean", &z.clean),
                    ("error", &z.error),
                    ("timeout", &z.timeout),
                ]
                .map(|(result, n)| ([("zone", z.zone.as_str()), ("result", result)], load(n)))
            });
            counters(
                e,
                "dnsbl_queries",
                "DNSBL queries sent, by zone and result",
                results,
            )?;
            let hits = zones
                .iter()
                .map(|z| ([("zone", z.zone.as_str())], load(&z.cache_hits)));
            counters(
                e,
                "dnsbl_cache_hits",
                "DNSBL answers served from the cache",
                hits,
            )?;
            counter(
                e,
                "rdns_cache_hits",
                "Reverse DNS results served from the cache",
                load(&score.rdns_cache_hits),
            )?;
            let refused = [
                ([("reason", "busy")], load(&score.refused_busy)),
                ([("reason", "in_flight")], load(&score.refused_in_flight)),
                ([("reason", "upstream_down")], load(&score.refused_down)),
            ];
            counters(
                e,
                "score_refused",
                "Score requests or DNS queries refused by the resolver's limits",
                refused,
            )?;
        }
        Ok(())
    }
}

impl Collector {
    /// Per configured interface: 1 and the mode when an XDP program is attached, else 0.
    fn encode_attached(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let Some(interfaces) = &self.sources.interfaces else {
            return Ok(());
        };
        let series: Vec<([(&str, &str); 2], u64)> = interfaces
            .states()
            .filter_map(|(interface, state)| match state {
                Ok(Some(attached)) => Some((
                    [("interface", interface), ("mode", attached.mode.as_str())],
                    1,
                )),
                Ok(None) => Some(([("interface", interface), ("mode", "none")], 0)),
                Err(err) => {
                    tracing::warn!("metrics: cannot ask the kernel about {interface}: {err}");
                    None
                }
            })
            .collect();
        family(
            e,
            "xdp_attached",
            "1 when an XDP program is attached to the interface, by mode (0 with mode none)",
            MetricType::Gauge,
            series,
        )
    }

    /// The histograms, the policy's last reading, and what this build is.
    fn encode_timings(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let h = &self.sources.daemon.histograms;
        for (name, help, histogram) in [
            (
                "commit_seconds",
                "Seconds from the end of a message's data to its answer (the sync before 250)",
                &h.commit_seconds,
            ),
            (
                "session_seconds",
                "Seconds from accept to close, per session",
                &h.session_seconds,
            ),
            (
                "message_bytes",
                "Sizes of the messages accepted, in bytes",
                &h.message_bytes,
            ),
        ] {
            histogram.encode(e.encode_descriptor(name, help, None, histogram.metric_type())?)?;
        }
        if let Some(score) = &self.sources.score {
            let mut family = e.encode_descriptor(
                "dnsbl_answer_seconds",
                "Seconds from a DNSBL query to its answer, by zone (timeouts are not answers)",
                None,
                MetricType::Histogram,
            )?;
            for zone in &score.zones {
                let labels = [("zone", zone.zone.as_str())];
                zone.answer_seconds.encode(family.encode_family(&labels)?)?;
            }
        }
        let c = &*self.sources.daemon;
        gauge(
            e,
            "policy_last_reload_success",
            "1 if the policy was last read (at start or on SIGHUP) without error, else 0",
            load(&c.policy_reload_ok),
        )?;
        gauge(
            e,
            "policy_last_reload_timestamp_seconds",
            "When the policy was last read, successfully or not, in seconds since the epoch",
            load(&c.policy_reload_at),
        )?;
        family(
            e,
            "build_info",
            "1, with the release and the commit this daemon was built from",
            MetricType::Gauge,
            [(
                [
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("commit", env!("SINKHOLE_COMMIT")),
                ],
                1,
            )],
        )
    }

    fn encode_server(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let c = &*self.sources.daemon;
        for (name, help, series) in SERVER {
            match series {
                Series::Counter(read) => counter(e, name, help, load(read(c)))?,
                Series::Gauge(read) => gauge(e, name, help, load(read(c)))?,
                Series::ByLabel(label, values) => {
                    let series = values
                        .iter()
                        .map(|(value, read)| ([(*label, *value)], load(read(c))));
                    counters(e, name, help, series)?
                }
                Series::Replies => {
                    let mut codes: Vec<(String, u64)> = c
                        .replies
                        .sent()
                        .map(|(code, n)| (code.to_string(), n))
                        .collect();
                    if c.replies.other() > 0 {
                        codes.push(("other".into(), c.replies.other()));
                    }
                    let series = codes
                        .iter()
                        .map(|(code, n)| ([("code", code.as_str())], *n));
                    counters(e, name, help, series)?
                }
            }
        }
        Ok(())
    }
}

/// Reads one of the server's counters.
type Read = fn(&DaemonCounters) -> &AtomicU64;

/// Where a metric of [`SERVER`] takes its series from.
enum Series {
    /// One counter.
    Counter(Read),
    /// One gauge.
    Gauge(Read),
    /// A counter per value of one label: the label's name, then each value and its counter.
    ByLabel(&'static str, &'static [(&'static str, Read)]),
    /// A counter per reply code sent, then `other` when there were others.
    Replies,
}

/// The server's metrics, in the order `/metrics` lists them: name, help, series.
static SERVER: &[(&str, &str, Series)] = &[
    (
        "smtp_connections",
        "SMTP connections accepted and served",
        Series::Counter(|c| &c.connections_total),
    ),
    (
        "smtp_connections_active",
        "SMTP connections open now",
        Series::Gauge(|c| &c.connections_active),
    ),
    (
        "smtp_refused",
        "Connections closed right after accept, by reason",
        Series::ByLabel(
            "reason",
            &[
                ("max_connections", |c| &c.refused_max_connections),
                ("per_ip", |c| &c.refused_per_ip),
                ("blocked", |c| &c.refused_blocked),
            ],
        ),
    ),
    (
        "smtp_accept_errors",
        "Failed accept() calls",
        Series::Counter(|c| &c.accept_errors),
    ),
    (
        "smtp_messages",
        "Messages accepted (answered 250)",
        Series::Counter(|c| &c.messages_total),
    ),
    (
        "smtp_message_bytes",
        "Bytes of the messages accepted",
        Series::Counter(|c| &c.message_bytes_total),
    ),
    (
        "smtp_replies",
        "SMTP replies sent by sessions, by code",
        Series::Replies,
    ),
    (
        "capture_failures",
        "Messages answered 451 instead of being stored, by reason",
        Series::ByLabel(
            "reason",
            &[
                ("error", |c| &c.capture_failed),
                ("busy", |c| &c.capture_busy),
            ],
        ),
    ),
    (
        "session_log_lines",
        "Session log lines written",
        Series::Counter(|c| &c.session_log_lines),
    ),
    (
        "session_log_dropped",
        "Session log lines lost (queue full or write failed)",
        Series::Counter(|c| &c.session_log_dropped),
    ),
    (
        "log_lines_dropped",
        "Session log lines not written: free space was below the hard floor",
        Series::Counter(|c| &c.log_lines_dropped),
    ),
    (
        "smtp_storage_refusals",
        "MAIL commands answered 452 because free space was below storage.min_free",
        Series::Counter(|c| &c.storage_refusals),
    ),
    (
        "storage_free_bytes",
        "Free bytes on the filesystem of storage.dir at the last measurement",
        Series::Gauge(|c| &c.storage_free_bytes),
    ),
    (
        "session_log_rotate_failures",
        "Session log rotations, compressions, deletions and reopens that failed",
        Series::Counter(|c| &c.session_log_rotate_failed),
    ),
    (
        "shutdown_forced_closes",
        "Connections closed unfinished at the end of the shutdown grace period",
        Series::Counter(|c| &c.shutdown_forced_closes),
    ),
    (
        "smtp_junk_limit",
        "Sessions closed with 421 for too many junk commands (NOOP, RSET, VRFY, HELP)",
        Series::Counter(|c| &c.junk_limit),
    ),
    (
        "smtp_unscored_sessions",
        "Sessions whose recipients were decided without a complete score",
        Series::Counter(|c| &c.unscored),
    ),
    (
        "blocks",
        "Clients put into the drop map by the daemon, by source",
        Series::ByLabel(
            "source",
            &[
                ("dnsbl", |c| &c.blocks_dnsbl),
                ("policy", |c| &c.blocks_policy),
                ("campaign", |c| &c.blocks_campaign),
            ],
        ),
    ),
    (
        "auto_closed_total",
        "Addresses closed by their auto_close rule",
        Series::Counter(|c| &c.auto_closed),
    ),
    (
        "auto_close_refused_total",
        "auto_close counts or closes refused (table of counted addresses or write queue full)",
        Series::Counter(|c| &c.auto_close_refused),
    ),
    (
        "blocks_allow_listed",
        "Blocks not made because xdp.allow covers the client",
        Series::Counter(|c| &c.blocks_allow_listed),
    ),
    (
        "block_errors",
        "Blocks the block table refused",
        Series::Counter(|c| &c.block_errors),
    ),
    (
        "syn_fingerprints",
        "Connections accepted with the XDP program attached, by whether it had recorded their SYN",
        Series::ByLabel(
            "result",
            &[("found", |c| &c.syn_found), ("missing", |c| &c.syn_missing)],
        ),
    ),
    (
        "campaign_sessions",
        "Sessions counted into a campaign (sessions showing a campaign behaviour)",
        Series::Counter(|c| &c.campaign_sessions),
    ),
    (
        "campaigns_active",
        "Campaigns that crossed campaign.alert_sessions within campaign.alert_window and still send",
        Series::Gauge(|c| &c.campaigns_active),
    ),
    (
        "campaign_keys_refused",
        "Sessions of new campaigns not tracked for alerts: the tracker's table was full",
        Series::Counter(|c| &c.campaign_keys_refused),
    ),
];

/// What the pinned maps say at one moment.
struct Kernel {
    counters: crate::kernel::PacketCounters,
    live_v4: u64,
    live_v6: u64,
}

impl Kernel {
    fn read(maps: &BlockMaps) -> Result<Kernel, KernelError> {
        let counters = maps.counters()?;
        let now = clock::boot_ns();
        let (mut live_v4, mut live_v6) = (0, 0);
        for block in maps.list()? {
            if block.entry.is_live(now) {
                match block.prefix.addr().is_ipv4() {
                    true => live_v4 += 1,
                    false => live_v6 += 1,
                }
            }
        }
        Ok(Kernel {
            counters,
            live_v4,
            live_v6,
        })
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let c = &self.counters;
        let packets = [
            ([("action", "pass"), ("family", "ipv4")], c.passed_ipv4),
            ([("action", "pass"), ("family", "ipv6")], c.passed_ipv6),
            ([("action", "pass"), ("family", "other")], c.passed_other),
            ([("action", "drop"), ("family", "ipv4")], c.dropped_ipv4),
            ([("action", "drop"), ("family", "ipv6")], c.dropped_ipv6),
        ];
        counters(
            e,
            "xdp_packets",
            "Packets the XDP program passed or dropped, by family (summed over CPUs)",
            packets,
        )?;
        counter(
            e,
            "xdp_malformed_packets",
            "Packets too short or malformed to judge (passed)",
            c.malformed,
        )?;
        let entries = [
            ([("family", "ipv4")], self.live_v4),
            ([("family", "ipv6")], self.live_v6),
        ];
        family(
            e,
            "blocklist_entries",
            "Unexpired entries in the block maps, by family",
            MetricType::Gauge,
            entries,
        )
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(e, name, help, MetricType::Counter, series)
}

/// One metric with a series per label set; `kind` is Counter or Gauge.
fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(encoder)?,
            _ => ConstGauge::new(value).encode(encoder)?,
        }
    }
    Ok(())
}
