//! `/metrics` of the real daemon: a real client's session shows up in the counters, the XDP
//! series come from the pinned maps, nothing names a client, and the endpoint is read-only.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, smtp_config};
use sinkhole_tests::netns::PinDir;
use sinkhole_tests::run_client;
use sinkhole_tests::{free_port, kernel_tests_allowed, sinkhole_ok, temp_dir};

/// One HTTP/1.1 request; returns the status code, the head and the body.
fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// The samples of a text exposition: `name{labels}` → value. Fails on any line that is not a
/// comment or a well-formed sample.
fn samples(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            (series.to_string(), value)
        })
        .collect()
}

fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|&(_, v)| v)
}

/// Scrapes until `ready` holds for the samples (the counters move when a session ends, a hair
/// after the client saw its last reply), at most 10 s; returns the last scrape.
fn scrape_until(addr: SocketAddr, ready: impl Fn(&[(String, f64)]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200, "{head}\n{body}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        if ready(&samples(&body)) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every run of address-like characters in `text` that parses as an IP address.
fn addresses_in(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter(|token| token.contains(['.', ':']) && token.parse::<IpAddr>().is_ok())
        .map(str::to_string)
        .collect()
}

fn send_message(daemon: &Daemon) {
    run_client(
        Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port"])
            .arg(daemon.addr.port().to_string())
            .args(["--from", "sender@example.com", "--to", "trap@example.org"])
            .args(["--helo", "client.example", "--timeout", "10"]),
    );
}

/// A daemon with `/metrics` on a free loopback port; `pin_dir` replaces the harness's
/// pin directory (which is on no bpffs, so there are no maps) when given.
fn start(pin_dir: Option<&std::path::Path>) -> (Daemon, SocketAddr) {
    let dir = temp_dir("metrics");
    let port = free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = smtp_config(
        port,
        dir.path(),
        "",
        "",
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    );
    if let Some(pin_dir) = pin_dir {
        let harness_pins = dir.path().join("no-bpffs").display().to_string();
        config = config.replace(&harness_pins, &pin_dir.display().to_string());
    }
    let daemon = Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    (daemon, metrics)
}

#[test]
fn a_session_shows_in_the_counters_without_addresses() {
    let (mut daemon, metrics) = start(None);
    send_message(&daemon);
    let body = scrape_until(metrics, |s| {
        value(s, "sinkhole_smtp_messages_total") == Some(1.0)
            && value(s, "sinkhole_smtp_replies_total{code=\"221\"}") == Some(1.0)
    });
    let s = samples(&body);
    assert!(
        value(&s, "sinkhole_smtp_connections_total").unwrap() >= 1.0,
        "{body}"
    );
    assert_eq!(
        value(&s, "sinkhole_smtp_messages_total"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&s, "sinkhole_smtp_connections_active"),
        Some(0.0),
        "{body}"
    );
    assert!(
        value(&s, "sinkhole_smtp_replies_total{code=\"250\"}").unwrap() >= 3.0,
        "EHLO, MAIL, RCPT and the end of data are 250s:\n{body}"
    );
    assert_eq!(
        value(&s, "sinkhole_smtp_replies_total{code=\"220\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "sinkhole_smtp_replies_total{code=\"354\"}"),
        Some(1.0)
    );
    for source in ["dnsbl", "policy", "campaign"] {
        let series = format!("sinkhole_blocks_total{{source=\"{source}\"}}");
        assert_eq!(value(&s, &series), Some(0.0), "{series}\n{body}");
    }
    // The pin directory is on no bpffs: no maps, so no XDP series (and no failure).
    assert!(!body.contains("sinkhole_xdp_packets_total"), "{body}");
    assert_eq!(addresses_in(&body), Vec::<String>::new(), "{body}");
    assert!(
        daemon
            .stderr()
            .contains(&format!("metrics on http://{metrics}/metrics")),
        "{}",
        daemon.stderr()
    );
    daemon.stop();
}

#[test]
fn only_get_and_head_on_metrics() {
    let (mut daemon, metrics) = start(None);
    let (status, _, body) = get(metrics, "/");
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = get(metrics, "/metrics/x");
    assert_eq!(status, 404);
    let (status, head, _) = http(
        metrics,
        "POST /metrics HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n\r\nsinkhole_smtp_messages 99999",
    );
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    for method in ["PUT", "DELETE"] {
        let (status, _, _) = http(metrics, &format!("{method} /metrics HTTP/1.1\r\n\r\n"));
        assert_eq!(status, 405, "{method}");
    }
    // The POST changed nothing.
    let (_, _, body) = get(metrics, "/metrics");
    assert_eq!(
        value(&samples(&body), "sinkhole_smtp_messages_total"),
        Some(0.0)
    );
    let (status, head, body) = http(metrics, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty(), "HEAD has no body: {body}");
    // A head that never ends is refused, and the endpoint still answers afterwards.
    let (status, _, _) = http(
        metrics,
        &format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(9000)),
    );
    assert_eq!(status, 431);
    assert_eq!(get(metrics, "/metrics").0, 200);
    daemon.stop();
}

#[test]
fn xdp_series_come_from_the_pinned_maps() {
    if !kernel_tests_allowed("xdp_series_come_from_the_pinned_maps") {
        return;
    }
    let pins = PinDir::new("met");
    let (mut daemon, metrics) = start(Some(pins.path()));
    let config = daemon.dir.path().join("sinkhole.toml");
    let config = config.to_str().unwrap();
    sinkhole_ok(&["block", "203.0.113.7", "--config", config]).unwrap();
    sinkhole_ok(&["block", "2001:db8::/48", "--config", config]).unwrap();
    let body = scrape_until(metrics, |s| {
        value(s, "sinkhole_blocklist_entries{family=\"ipv6\"}") == Some(1.0)
    });
    let s = samples(&body);
    for action in ["pass", "drop"] {
        for family in ["ipv4", "ipv6"] {
            let series =
                format!("sinkhole_xdp_packets_total{{action=\"{action}\",family=\"{family}\"}}");
            assert!(value(&s, &series).is_some(), "{series} missing:\n{body}");
        }
    }
    assert_eq!(
        value(&s, "sinkhole_blocklist_entries{family=\"ipv4\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        value(&s, "sinkhole_blocklist_entries{family=\"ipv6\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(addresses_in(&body), Vec::<String>::new(), "{body}");
    daemon.stop();
}

/// The one sample of `name` whatever its labels: (the series, its value).
fn labelled<'a>(samples: &'a [(String, f64)], name: &str) -> Option<&'a (String, f64)> {
    let prefix = format!("{name}{{");
    samples.iter().find(|(s, _)| s.starts_with(&prefix))
}

#[test]
fn histograms_build_info_reload_status_and_process_series() {
    let dir = temp_dir("metrics-more");
    let port = free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    let config = smtp_config(
        port,
        dir.path(),
        "",
        "",
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n[policy]\nfile = \"{}\"\n",
            policy.display()
        ),
    );
    let mut daemon =
        Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    send_message(&daemon);
    let body = scrape_until(metrics, |s| {
        value(s, "sinkhole_smtp_messages_total") == Some(1.0)
            && value(s, "sinkhole_session_seconds_count") == Some(1.0)
    });
    let s = samples(&body);
    // One message of the swaks default size, stored durably: one commit observed.
    assert_eq!(
        value(&s, "sinkhole_message_bytes_count"),
        Some(1.0),
        "{body}"
    );
    assert!(
        value(&s, "sinkhole_message_bytes_sum").unwrap() > 100.0,
        "{body}"
    );
    assert_eq!(
        value(&s, "sinkhole_commit_seconds_count"),
        Some(1.0),
        "{body}"
    );
    assert!(
        value(&s, "sinkhole_commit_seconds_bucket{le=\"+Inf\"}") == Some(1.0),
        "{body}"
    );
    assert!(
        value(&s, "sinkhole_session_seconds_sum").unwrap() > 0.0,
        "{body}"
    );
    let (build, one) = labelled(&s, "sinkhole_build_info").expect("build_info");
    assert_eq!(*one, 1.0);
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("commit=\""),
        "{build}"
    );
    assert_eq!(
        value(&s, "sinkhole_policy_last_reload_success"),
        Some(1.0),
        "{body}"
    );
    let read_at = value(&s, "sinkhole_policy_last_reload_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 1.0).contains(&read_at),
        "{read_at} vs {now}"
    );
    // The standard process series, unprefixed, about this daemon.
    assert!(
        value(&s, "process_resident_memory_bytes").unwrap() > 1e6,
        "{body}"
    );
    assert!(
        value(&s, "process_virtual_memory_bytes").unwrap() > 1e6,
        "{body}"
    );
    assert!(value(&s, "process_open_fds").unwrap() >= 5.0, "{body}");
    assert!(value(&s, "process_max_fds").unwrap() >= 1024.0, "{body}");
    assert!(value(&s, "process_threads").unwrap() >= 4.0, "{body}");
    // In clock ticks (10 ms): an idle daemon may not have used one yet.
    assert!(
        value(&s, "process_cpu_seconds_total").unwrap() >= 0.0,
        "{body}"
    );
    let started = value(&s, "process_start_time_seconds").unwrap();
    assert!(
        (now - 600.0..=now + 1.0).contains(&started),
        "{started} vs {now}"
    );

    // A policy that no longer parses: the old rules stay, and the metric says so.
    std::fs::write(daemon.dir.path().join("policy.toml"), "[[rule]\n").unwrap();
    daemon.reload();
    let body = scrape_until(metrics, |s| {
        value(s, "sinkhole_policy_last_reload_success") == Some(0.0)
    });
    assert!(
        value(
            &samples(&body),
            "sinkhole_policy_last_reload_timestamp_seconds"
        )
        .unwrap()
            >= read_at,
        "{body}"
    );
    daemon.stop();
}
