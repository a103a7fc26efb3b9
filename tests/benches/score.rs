//! Scoring throughput and loop-side responsiveness (`cargo bench -p sinkhole-tests --bench
//! score`): clients scored per second against a local `rbldnsd` with three zones and an empty
//! cache, request→answer latency, and what the loop pays per call (answering vs stalled DNS);
//! then the real daemon's banner latency under 1000 connections/s, each from its own loopback
//! address (so each is scored afresh), with DNS answering and with DNS stalled: rounds of 4 s
//! alternating the two (a fresh daemon each), so a noisy machine weighs on both alike.
//! `SCORE_BENCH_ROUNDS` (default 3) sets the rounds; `SCORE_BENCH_BANNER_ONLY=1` skips the
//! resolver runs.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use sinkhole::config::{DnsblConfig, ZoneConfig};
use sinkhole::score::{Answer, Resolver};
use sinkhole_tests::daemon::{Daemon, connect_from, smtp_config};
use sinkhole_tests::dns::{Rbldnsd, StalledDns, stalled_dns, start_rbldnsd};
use sinkhole_tests::{free_port, temp_dir};

const CLIENTS: u32 = 20_000;
/// Requests kept outstanding, like a loop accepting this many connections at once.
const WINDOW: usize = 1_000;

fn client(n: u32) -> IpAddr {
    // 127.1.0.0/16 onwards: distinct, so every client is a cache miss.
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + n))
}

fn config(nameserver: SocketAddr, timeout: Duration) -> DnsblConfig {
    let zone = |name: &str, weight| ZoneConfig {
        name: name.into(),
        weight,
        codes: vec![],
    };
    DnsblConfig {
        nameservers: vec![nameserver],
        timeout,
        zone: vec![
            zone("zen.bench", 3),
            zone("bl.bench", 2),
            zone("allow.bench", -2),
        ],
        ..DnsblConfig::default()
    }
}

struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
    request_calls: Vec<Duration>,
    recv_calls: Vec<Duration>,
    listed: usize,
    timed_out: usize,
}

/// The loop's side: a poll and the resolver that wakes it.
fn start(config: &DnsblConfig) -> (Poll, Resolver) {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
    let resolver = Resolver::spawn(config, waker).unwrap();
    (poll, resolver)
}

/// Scores `clients` keeping `WINDOW` outstanding; times every loop-side call.
fn run((poll, resolver): &mut (Poll, Resolver), clients: u32) -> Run {
    let mut sent_at = vec![Instant::now(); clients as usize];
    let mut events = Events::with_capacity(64);
    let (mut next, mut done, mut outstanding) = (0u32, 0u32, 0usize);
    let mut run = Run {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(clients as usize),
        request_calls: Vec::with_capacity(clients as usize),
        recv_calls: Vec::with_capacity(clients as usize),
        listed: 0,
        timed_out: 0,
    };
    let start = Instant::now();
    while done < clients {
        while outstanding < WINDOW && next < clients {
            let t = Instant::now();
            resolver.request(u64::from(next), client(next)).unwrap();
            run.request_calls.push(t.elapsed());
            sent_at[next as usize] = t;
            next += 1;
            outstanding += 1;
        }
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        loop {
            let t = Instant::now();
            let Some(answer) = resolver.try_recv() else {
                break;
            };
            run.recv_calls.push(t.elapsed());
            let Answer::Client { token, score } = answer else {
                unreachable!()
            };
            run.latencies.push(sent_at[token as usize].elapsed());
            run.listed += usize::from(!score.dnsbl.is_empty());
            run.timed_out += usize::from(score.timed_out);
            done += 1;
            outstanding -= 1;
        }
    }
    run.elapsed = start.elapsed();
    run
}

fn percentiles(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    format!(
        "p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    )
}

fn report(name: &str, mut run: Run, clients: u32) {
    println!("{name}");
    println!(
        "  {clients} clients in {:.2?}: {:.0} clients/s ({} listed, {} timed out)",
        run.elapsed,
        f64::from(clients) / run.elapsed.as_secs_f64(),
        run.listed,
        run.timed_out
    );
    println!("  request→answer   {}", percentiles(&mut run.latencies));
    println!("  request() call   {}", percentiles(&mut run.request_calls));
    println!("  try_recv() call  {}", percentiles(&mut run.recv_calls));
}

/// Connections per second the banner runs open.
const RATE: u32 = 1_000;
/// Client threads sharing the schedule (each connects, reads the banner, closes).
const CLIENT_THREADS: u32 = 8;
/// Seconds per banner run.
const ROUND_SECONDS: u32 = 4;

/// The daemon with the bench zones, asking `nameserver`.
fn daemon(nameserver: SocketAddr, timeout: &str) -> Daemon {
    let dir = temp_dir("score-bench");
    let port = free_port();
    let mut dnsbl = format!("[dnsbl]\nnameservers = [\"{nameserver}\"]\ntimeout = \"{timeout}\"\n");
    for (zone, weight) in [("zen.bench", 3), ("bl.bench", 2), ("allow.bench", -2)] {
        dnsbl.push_str(&format!(
            "[[dnsbl.zone]]\nname = \"{zone}\"\nweight = {weight}\n"
        ));
    }
    let smtp = "max_connections = 50000\nmax_connections_per_ip = 1000";
    let config = smtp_config(port, dir.path(), smtp, "", &dnsbl);
    Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Opens `RATE` connections per second for `seconds` (open loop: connection `n` is due at
/// `n / RATE`), connection `n` from `client(offset + n)`; returns each one's time from its
/// due instant to the banner line.
fn banner_run(addr: SocketAddr, seconds: u32, offset: u32) -> Vec<Duration> {
    let total = RATE * seconds;
    let start = Instant::now() + Duration::from_millis(100);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENT_THREADS)
            .map(|w| {
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    for n in (w..total).step_by(CLIENT_THREADS as usize) {
                        let due = start + Duration::from_secs(1) * n / RATE;
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let stream = connect_from(addr, client(offset + n), Duration::from_secs(5))
                            .expect("connect to sinkhole");
                        stream
                            .set_read_timeout(Some(Duration::from_secs(5)))
                            .unwrap();
                        let mut banner = String::new();
                        BufReader::new(&stream).read_line(&mut banner).unwrap();
                        assert!(banner.starts_with("220 "), "{banner:?}");
                        latencies.push(due.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client thread"))
            .collect()
    })
}

/// CPU time the daemon's threads used, by thread name, summed over runs.
#[derive(Default)]
struct ThreadCpu(Vec<(String, u64)>);

impl ThreadCpu {
    /// Adds the CPU ticks (utime + stime) of every thread of `pid` so far.
    fn add(&mut self, pid: u32) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        for task in tasks.filter_map(Result::ok) {
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("stat")),
            ) else {
                continue;
            };
            // Fields after the parenthesised name: utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = fields.get(11..13).map_or(0, |f| {
                f.iter().filter_map(|v| v.parse::<u64>().ok()).sum::<u64>()
            });
            let name = name.trim().to_string();
            match self.0.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += ticks,
                None => self.0.push((name, ticks)),
            }
        }
    }
}

fn banner_report(name: &str, latencies: &mut [Duration], cpu: &ThreadCpu) -> Duration {
    println!("{name}");
    println!("  banner latency   {}", percentiles(latencies));
    // USER_HZ is 100 on Linux.
    let threads: Vec<String> = cpu
        .0
        .iter()
        .map(|(name, ticks)| format!("{name} {:.2}s", *ticks as f64 / 100.0))
        .collect();
    println!("  daemon CPU       {}", threads.join(", "));
    latencies[((latencies.len() - 1) as f64 * 0.99) as usize]
}

fn main() {
    // Every 4th client is listed in zen, every 8th in bl, every 16th in allow.
    let listing = |step: u32| -> String {
        (0..CLIENTS)
            .step_by(step as usize)
            .map(|n| format!("{}\n", client(n)))
            .collect()
    };
    let soa = "$SOA 300 ns.bench. hostmaster.bench. 1 600 300 86400 300\n";
    let rbldnsd = start_rbldnsd(&[
        (
            "zen.bench",
            "ip4set",
            &format!("{soa}:127.0.0.2:SBL\n{}", listing(4)),
        ),
        (
            "bl.bench",
            "ip4set",
            &format!("{soa}:127.0.0.2:BL\n{}", listing(8)),
        ),
        (
            "allow.bench",
            "ip4set",
            &format!("{soa}:127.0.0.2:OK\n{}", listing(16)),
        ),
    ])
    .expect("rbldnsd");

    let stalled = stalled_dns().unwrap();
    let banner_only = std::env::var("SCORE_BENCH_BANNER_ONLY").is_ok_and(|v| v == "1");
    if !banner_only {
        resolver_runs(&rbldnsd, &stalled);
    }
    let rounds: u32 = std::env::var("SCORE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!(
        "# the daemon's banner under {RATE} connections/s, {rounds} rounds of {ROUND_SECONDS}s per case, each client its own address"
    );
    let (mut answering, mut stalled_latencies) = (Vec::new(), Vec::new());
    let (mut answering_cpu, mut stalled_cpu) = (ThreadCpu::default(), ThreadCpu::default());
    for round in 0..rounds {
        // Fresh addresses every run, so no run profits from a cache.
        let offset = |case: u32| (round * 2 + case) * RATE * ROUND_SECONDS;
        let mut cases = [
            (rbldnsd.addr, &mut answering, &mut answering_cpu, offset(0)),
            (
                stalled.addr,
                &mut stalled_latencies,
                &mut stalled_cpu,
                offset(1),
            ),
        ];
        if round % 2 == 1 {
            cases.reverse();
        }
        for (nameserver, latencies, cpu, offset) in cases {
            let daemon = daemon(nameserver, "2s");
            latencies.extend(banner_run(daemon.addr, ROUND_SECONDS, offset));
            cpu.add(daemon.pid());
        }
    }
    let answering_p99 = banner_report(
        "answering: rbldnsd, 3 zones + PTR",
        &mut answering,
        &answering_cpu,
    );
    let stalled_p99 = banner_report(
        "stalled: a server that never answers, dnsbl.timeout = 2s",
        &mut stalled_latencies,
        &stalled_cpu,
    );
    println!(
        "  p99 stalled / answering: {:.2}",
        stalled_p99.as_secs_f64() / answering_p99.as_secs_f64()
    );
}

/// The resolver alone, driven as the loop drives it.
fn resolver_runs(rbldnsd: &Rbldnsd, stalled: &StalledDns) {
    println!("# sinkhole scoring benchmark ({} outstanding)", WINDOW);
    let mut answering = start(&config(rbldnsd.addr, Duration::from_secs(2)));
    report(
        "answering: local rbldnsd, 3 zones + PTR (REFUSED by rbldnsd), empty cache",
        run(&mut answering, CLIENTS),
        CLIENTS,
    );
    report(
        "cached: the same clients again, all from the cache",
        run(&mut answering, CLIENTS),
        CLIENTS,
    );
    let timeout = Duration::from_millis(500);
    report(
        "stalled: a server that never answers, dnsbl.timeout = 500ms",
        run(&mut start(&config(stalled.addr, timeout)), 2_000),
        2_000,
    );
}
