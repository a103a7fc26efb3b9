//! `smtp.greet_wait` through the real daemon: a bot that sends EHLO 50 ms after connecting
//! without reading the banner is `pregreet` with a greet wait (20 of 20) and never without one
//! (0 of 20); a client that waits for the banner's last line is not, and gets it no sooner
//! than the wait.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, connect_from};

const BOTS: u8 = 20;

/// How many of 20 bots (EHLO 50 ms after connecting, banner unread) the daemon logged as
/// `pregreet`.
fn pregreeting_bots_caught(greet_wait: &str) -> usize {
    let daemon = Daemon::start(&format!("greet_wait = \"{greet_wait}\""), "");
    std::thread::scope(|scope| {
        for n in 0..BOTS {
            let addr = daemon.addr;
            scope.spawn(move || {
                let source = IpAddr::V4(Ipv4Addr::new(127, 4, 0, 10 + n));
                let mut stream = connect_from(addr, source, Duration::from_secs(10)).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                stream.write_all(b"EHLO bot.example\r\nQUIT\r\n").unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut replies = String::new();
                let _ = std::io::Read::read_to_string(&mut stream, &mut replies);
                assert!(replies.contains("221 "), "{replies}");
            });
        }
    });
    let sessions = daemon.wait_sessions(usize::from(BOTS));
    assert_eq!(sessions.len(), usize::from(BOTS));
    sessions
        .iter()
        .filter(|s| {
            s["signatures"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == "pregreet")
        })
        .count()
}

#[test]
fn a_bot_talking_50ms_after_connect_is_caught_only_with_a_greet_wait() {
    assert_eq!(pregreeting_bots_caught("0s"), 0);
    assert_eq!(pregreeting_bots_caught("200ms"), usize::from(BOTS));
}

#[test]
fn a_client_that_waits_for_the_last_line_is_no_pregreet() {
    let daemon = Daemon::start("greet_wait = \"300ms\"", "");
    let started = Instant::now();
    let stream = connect_from(
        daemon.addr,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Duration::from_secs(10),
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "220-sinkhole.test ESMTP\r\n");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "220 sinkhole.test ESMTP\r\n");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    reader
        .get_mut()
        .write_all(b"EHLO polite.example\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    assert!(rest.ends_with("221 2.0.0 Bye\r\n"), "{rest}");
    let sessions = daemon.wait_sessions(1);
    assert_eq!(
        sessions[0]["signatures"],
        serde_json::json!([]),
        "{}",
        sessions[0]
    );
    let transcript = sessions[0]["transcript"].as_array().unwrap();
    assert_eq!(transcript[0][2], "220-sinkhole.test ESMTP");
    assert_eq!(transcript[1][2], "220 sinkhole.test ESMTP");
    assert!(transcript[1][0].as_u64().unwrap() >= 300, "{transcript:?}");
}
