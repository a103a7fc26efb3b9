//! Hardening of the edges around the SMTP loop, through the real binary: `/metrics` cannot be
//! held by idle or slow connections, and start-up and `check-config` tell the truth.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sinkhole::metrics::{MAX_CONNECTIONS, REQUEST_TIME};
use sinkhole_tests::daemon::{Daemon, SmtpClient, smtp_config};
use sinkhole_tests::{ChildGuard, free_port, sinkhole_bin, temp_dir};

/// A daemon with `/metrics` on a free loopback port.
fn start_with_metrics() -> (Daemon, SocketAddr) {
    let dir = temp_dir("hardening");
    let port = free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = smtp_config(
        port,
        dir.path(),
        "",
        "",
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    );
    let daemon = Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    (daemon, metrics)
}

/// `GET /metrics`: the status, the body and how long the answer took from connect.
fn scrape(addr: SocketAddr) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let took = started.elapsed();
    // `HTTP/1.1 200 OK\r\n...\r\n\r\nBODY`
    match (response.get(9..12), response.split_once("\r\n\r\n")) {
        (Some(status), Some((_, body))) => (status.parse().unwrap(), body.to_string(), took),
        _ => panic!("not an HTTP response: {response:?}"),
    }
}

/// The value of the sample `series` (name and labels as written) in a text exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, value)| value.parse().ok())
}

/// Whether the server has closed `stream` (an end of stream or a reset), without waiting.
fn closed_by_server(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the metrics server sent something unasked"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("reading a held connection: {e}"),
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

fn connect_all(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect to /metrics"))
        .collect()
}

#[test]
fn a_scrape_is_answered_within_a_second_beside_100_idle_and_10_slow_connections() {
    let (_daemon, metrics) = start_with_metrics();
    let opened = Instant::now();
    let idle = connect_all(metrics, 100);
    let mut slow = connect_all(metrics, 10);
    let stop = AtomicBool::new(false);
    let latencies = std::thread::scope(|scope| {
        // The slow ones send a request one byte per 0.5 s, never finishing it in time.
        let writer = scope.spawn(|| {
            let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
            for &byte in request.iter().cycle() {
                for stream in &mut slow {
                    // Once the server has cut it, writing fails: that is the point.
                    let _ = stream.write_all(&[byte]);
                }
                for _ in 0..10 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        // Scrapes while the 110 are held (they get REQUEST_TIME from their accept).
        let mut latencies = Vec::new();
        std::thread::sleep(Duration::from_millis(300));
        while opened.elapsed() + Duration::from_millis(500) < REQUEST_TIME {
            let (status, body, took) = scrape(metrics);
            assert_eq!(status, 200, "{body}");
            assert!(
                sample(&body, "sinkhole_smtp_connections_total").is_some(),
                "no SMTP series in {body}"
            );
            let held = sample(&body, "sinkhole_metrics_connections_open").unwrap();
            assert!(
                held >= 111.0,
                "{held} connections held, not 110 and the scrape"
            );
            assert_eq!(
                sample(&body, "sinkhole_metrics_connections_refused_total"),
                Some(0.0)
            );
            latencies.push(took);
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        latencies
    });
    eprintln!("scrape latencies beside 110 held connections: {latencies:?}");
    assert!(latencies.len() >= 3, "{latencies:?}");
    assert!(
        latencies.iter().all(|&took| took < Duration::from_secs(1)),
        "{latencies:?}"
    );
    // None holds on past its request deadline.
    std::thread::sleep(
        (REQUEST_TIME + Duration::from_millis(700)).saturating_sub(opened.elapsed()),
    );
    let still_open = idle
        .iter()
        .chain(&slow)
        .filter(|stream| !closed_by_server(stream))
        .count();
    assert_eq!(still_open, 0, "connections held past {REQUEST_TIME:?}");
}

#[test]
fn connections_past_the_cap_are_closed_at_once_and_counted() {
    let (_daemon, metrics) = start_with_metrics();
    let streams = connect_all(metrics, MAX_CONNECTIONS + 20);
    std::thread::sleep(Duration::from_millis(500));
    let closed: Vec<bool> = streams.iter().map(closed_by_server).collect();
    assert!(
        closed[..MAX_CONNECTIONS].iter().all(|&c| !c),
        "one of the first {MAX_CONNECTIONS} was closed: {closed:?}"
    );
    assert!(
        closed[MAX_CONNECTIONS..].iter().all(|&c| c),
        "one past the cap was held: {closed:?}"
    );
    drop(streams);
    // Once the server has seen those go, a scrape gets in and shows the refusals.
    std::thread::sleep(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body, _) = scrape(metrics);
        assert_eq!(status, 200, "{body}");
        if sample(&body, "sinkhole_metrics_connections_open") == Some(1.0) {
            assert_eq!(
                sample(&body, "sinkhole_metrics_connections_refused_total"),
                Some(20.0),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state letter of process `pid` (`/proc/PID/stat`, after the name).
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_string)
}

#[test]
fn a_killed_daemon_left_a_zombie_does_not_block_a_restart() {
    let mut daemon = Daemon::start("", "");
    let pid = daemon.pid();
    let pid_file = daemon.storage().join("sinkhole.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // SIGKILL and no wait(): the daemon stays a zombie of this process, its pid file in place.
    // SAFETY: signalling our own child by its pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    while process_state(pid).as_deref() != Some("Z") {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "{pid} is no zombie"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pid_file.exists());
    let mut run = std::process::Command::new(sinkhole_bin());
    run.arg("run")
        .arg("--config")
        .arg(daemon.config_path())
        .env("RUST_LOG", "info");
    let mut restarted = ChildGuard::spawn(run).unwrap();
    restarted
        .wait_for_stderr(
            &format!("listening on {}", daemon.addr),
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(process_state(pid).as_deref(), Some("Z"), "reaped meanwhile");
    eprintln!(
        "restarted beside the zombie {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "restarted only after {:?}",
        killed.elapsed()
    );
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        restarted.pid().to_string()
    );
    restarted.stop();
    daemon.kill();
}

/// `sinkhole ARGS --config DIR/NAME.toml` with `text` as the config: the exit code and stderr.
fn with_config(dir: &Path, name: &str, text: &str, args: &[&str]) -> (Option<i32>, String) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(sinkhole_bin())
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run sinkhole");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `check-config` refuses `text` with exit 2 and exactly `message` (after the
/// config's path) as its one line.
fn refused(dir: &Path, name: &str, text: &str, message: &str) {
    let (code, stderr) = with_config(dir, name, text, &["check-config"]);
    let path = dir.join(format!("{name}.toml"));
    assert_eq!(code, Some(2), "{text}: {stderr}");
    assert_eq!(
        stderr,
        format!("sinkhole: {}:{message}\n", path.display()),
        "{text}"
    );
}

#[test]
fn check_config_and_run_refuse_values_outside_their_range() {
    let dir = temp_dir("ranges");
    let dir = dir.path();
    let cases = [
        (
            "[smtp]\nidle_timeout = \"18446744073709551615s\"\n",
            "2: smtp.idle_timeout: 18446744073709551615s is outside 1s..=1h",
        ),
        (
            "[smtp]\nhostname = \"a\"\nbusy_poll = \"1000000h\"\n",
            "3: smtp.busy_poll: 1000000h is outside 0s..=10ms",
        ),
        (
            "[smtp]\nmax_message_bytes = 2147483648\n",
            "2: smtp.max_message_bytes: 2147483648 is outside 1024..=1073741824",
        ),
        (
            "[smtp]\nmax_connections = 2000000\n",
            "2: smtp.max_connections: 2000000 is outside 1..=1000000",
        ),
        (
            "[smtp]\nmax_recipients = 0\n",
            "2: smtp.max_recipients: 0 is outside 1..=10000",
        ),
        (
            "[dnsbl]\ntimeout = \"10ms\"\n",
            "2: dnsbl.timeout: 10ms is outside 100ms..=1m",
        ),
        (
            "[dnsbl]\nblock_ttl = \"400d\"\n",
            "2: dnsbl.block_ttl: 400d is outside 1s..=365d",
        ),
        (
            "[policy]\nstall = \"1h\"\n",
            "2: policy.stall: 1h is outside 100ms..=10m",
        ),
        (
            "[xdp]\nports = [25, 70000]\n",
            "2: xdp.ports: 70000 is outside 1..=65535",
        ),
    ];
    for (i, (text, message)) in cases.into_iter().enumerate() {
        refused(dir, &format!("c{i}"), text, message);
    }
    // `run` reads the same config the same way, and does not start.
    let (code, stderr) = with_config(dir, "run", cases[0].0, &["run"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.ends_with(": smtp.idle_timeout: 18446744073709551615s is outside 1s..=1h\n"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_what_run_would_refuse_at_start() {
    let dir = temp_dir("start-checks");
    let dir = dir.path();
    refused(
        dir,
        "user",
        "[smtp]\nrun_as = \"sinkhole-no-such-user\"\n",
        "2: smtp.run_as: no user `sinkhole-no-such-user` (create it, e.g. with `cargo xtask \
         deploy`)",
    );
    // Two real certificates with their keys: the self-signed pairs two daemons made at start.
    let (mut a, mut b) = (Daemon::start("", ""), Daemon::start("", ""));
    let (cert, key) = (
        a.storage().join("tls/cert.pem"),
        a.storage().join("tls/key.pem"),
    );
    let other_key = b.storage().join("tls/key.pem");
    a.stop();
    b.stop();
    let tls = |cert: &Path, key: &Path| {
        format!(
            "[smtp]\nrun_as = \"nobody\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let (code, stderr) = with_config(dir, "good", &tls(&cert, &key), &["check-config"]);
    assert_eq!(
        (code, stderr.as_str()),
        (Some(0), ""),
        "a good pair and user"
    );

    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    refused(
        dir,
        "junk",
        &tls(&junk, &key),
        &format!(
            "3: smtp.tls_cert: {}: no PEM section of the expected kind",
            junk.display()
        ),
    );
    refused(
        dir,
        "cert-as-key",
        &tls(&cert, &cert),
        &format!(
            "4: smtp.tls_key: {}: no PEM section of the expected kind",
            cert.display()
        ),
    );
    let missing = dir.join("missing.pem");
    let (code, stderr) = with_config(dir, "missing", &tls(&cert, &missing), &["check-config"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(":4: smtp.tls_key: {}: ", missing.display())),
        "{stderr}"
    );
    let (code, stderr) = with_config(dir, "mismatch", &tls(&cert, &other_key), &["check-config"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            ":4: smtp.tls_key: {} with {}: ",
            cert.display(),
            other_key.display()
        )) && stderr.lines().count() == 1,
        "{stderr}"
    );
}
