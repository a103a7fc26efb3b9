//! What `smtp.greet_wait` catches and what it costs, through the release binary: for each wait,
//! 35 pregreeting bots (5 each sending EHLO 10, 50, 100, 250, 500, 1000 and 1500 ms after
//! connecting, the banner unread) and then 200 polite clients at 40 connections a second
//! (banner, EHLO, QUIT) from loopback addresses. Prints, per wait, the bots caught (`pregreet`
//! in the log) by delay, the connections open at once during the polite load (sampled from
//! `/metrics` every 50 ms) and the time a polite client waits for the banner's last line.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, connect_from};
use sinkhole_tests::free_port;

const WAITS: [&str; 6] = ["0s", "100ms", "250ms", "500ms", "1s", "2s"];
const DELAYS_MS: [u64; 7] = [10, 50, 100, 250, 500, 1000, 1500];
const BOTS_PER_DELAY: u8 = 5;
const POLITE: u32 = 200;
const RATE: u32 = 40;

fn main() -> anyhow::Result<()> {
    let delays: Vec<String> = DELAYS_MS.iter().map(|d| format!("{d} ms")).collect();
    println!(
        "| greet_wait | bots caught, by delay: {} | caught | connections open at {RATE}/s (mean / max) | polite client's wait for the banner (median) |",
        delays.join(" / ")
    );
    println!("|---|---|---:|---:|---:|");
    for wait in WAITS {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let daemon = Daemon::start_with_tables(
            &format!("greet_wait = \"{wait}\""),
            "",
            &format!("[metrics]\nlisten = \"{metrics}\"\n"),
        );
        pregreeting_bots(daemon.addr);
        let (open, banner) = polite_load(daemon.addr, metrics);
        let bots = DELAYS_MS.len() * usize::from(BOTS_PER_DELAY);
        let sessions = daemon.wait_sessions(bots + POLITE as usize);
        let mut caught = vec![0; DELAYS_MS.len()];
        for s in &sessions {
            let ip: Ipv4Addr = s["client_ip"].as_str().unwrap_or("0.0.0.0").parse()?;
            let pregreet = s["signatures"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "pregreet"));
            if ip.octets()[1] == 8 && pregreet {
                caught[usize::from(ip.octets()[2])] += 1;
            }
        }
        let by_delay: Vec<String> = caught.iter().map(|n| n.to_string()).collect();
        println!(
            "| {wait} | {} | {} of {bots} | {:.1} / {} | {:.0} ms |",
            by_delay.join(" / "),
            caught.iter().sum::<usize>(),
            open.0,
            open.1,
            banner.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Every bot at once: connect from 127.8.DELAY.N, wait, EHLO and QUIT without reading.
fn pregreeting_bots(addr: SocketAddr) {
    std::thread::scope(|scope| {
        for (d, &delay) in DELAYS_MS.iter().enumerate() {
            for n in 0..BOTS_PER_DELAY {
                scope.spawn(move || {
                    let source = IpAddr::V4(Ipv4Addr::new(127, 8, d as u8, 10 + n));
                    let mut stream = connect_from(addr, source, Duration::from_secs(10)).unwrap();
                    std::thread::sleep(Duration::from_millis(delay));
                    stream.write_all(b"EHLO bot.example\r\nQUIT\r\n").unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let _ = stream.read_to_end(&mut Vec::new());
                });
            }
        }
    });
}

/// Polite clients at RATE a second; the connections open at once (mean, max) and the median
/// wait for the banner's last line.
fn polite_load(addr: SocketAddr, metrics: SocketAddr) -> ((f64, u64), Duration) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(n) = active(metrics) {
                    samples.push(n);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let mut clients = Vec::new();
        let start = Instant::now();
        for i in 0..POLITE {
            let at = start + Duration::from_secs(1) * i / RATE;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            clients.push(scope.spawn(move || {
                let source =
                    IpAddr::V4(Ipv4Addr::new(127, 9, (i / 200) as u8, (10 + i % 200) as u8));
                let connected = Instant::now();
                let stream = connect_from(addr, source, Duration::from_secs(10)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.starts_with("220 ")
                {
                    line.clear();
                }
                let waited = connected.elapsed();
                let _ = reader
                    .get_mut()
                    .write_all(b"EHLO polite.example\r\nQUIT\r\n");
                let _ = reader.read_to_end(&mut Vec::new());
                waited
            }));
        }
        let mut waits: Vec<Duration> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap();
        waits.sort();
        let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
        let max = samples.iter().copied().max().unwrap_or(0);
        ((mean, max), waits[waits.len() / 2])
    })
}

/// `sinkhole_smtp_connections_active` now.
fn active(metrics: SocketAddr) -> Option<u64> {
    let mut stream = TcpStream::connect(metrics).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("sinkhole_smtp_connections_active "))
        .and_then(|n| n.trim().parse().ok())
}
