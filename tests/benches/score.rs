//! Scoring throughput and loop-side responsiveness (`cargo bench -p sinkhole-tests --bench
//! score`): clients scored per second against a local `rbldnsd` with three zones and an empty
//! cache, request→answer latency, and what the loop pays per call (answering vs stalled DNS).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use sinkhole::config::{DnsblConfig, ZoneConfig};
use sinkhole::score::{Answer, Resolver};
use sinkhole_tests::dns::{stalled_dns, start_rbldnsd};

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

    let stalled = stalled_dns().unwrap();
    let timeout = Duration::from_millis(500);
    report(
        "stalled: a server that never answers, dnsbl.timeout = 500ms",
        run(&mut start(&config(stalled.addr, timeout)), 2_000),
        2_000,
    );
}
