//! Hostile message bodies against the real daemon, loopback only: a body is never held whole in
//! memory, so clients sending endless bodies cannot grow the daemon past a constant per
//! connection; a body over `max_message_bytes` gets 552 and leaves no file; a normal one is
//! stored byte for byte. Memory is the daemon's `VmRSS` (sampled) and `VmHWM` from
//! `/proc/PID/status`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, SmtpClient, files_in, lf_endings, stored_body};
use sinkhole_tests::{exclusive, peak_rss_kib, rss_kib};

/// Endless senders, half from each of two addresses (the per-IP limit is 50 by default).
const SENDERS: usize = 100;
/// How long they send.
const SENDING: Duration = Duration::from_secs(4);
/// What a connection in the body phase may cost the daemon at most: its input (one read,
/// `smtp::MAX_RECEIVE`) and body buffer (`smtp::BODY_BUFFER`), 64 KiB each, its output and
/// session record, its message file's state; rounded up.
const PER_CONNECTION_KIB: u64 = 256;
/// Allocator and thread slack on top of that.
const SLACK_KIB: u64 = 24 * 1024;

fn loopback(h: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, h))
}

/// A client at the start of a body: banner, EHLO, MAIL, RCPT and DATA answered.
fn in_data(daemon: &Daemon, from: IpAddr) -> SmtpClient {
    let mut client = SmtpClient::connect_from(daemon.addr, from);
    assert!(client.reply()[0].starts_with("220 "));
    client.send(b"EHLO endless.example\r\n");
    client.reply();
    client.begin_data();
    client
}

#[test]
fn a_hundred_endless_bodies_cost_a_constant_per_connection_and_others_are_served() {
    let _machine = exclusive();
    let daemon = Daemon::start("max_connections_per_ip = 50", "");
    let pid = daemon.pid();
    let mut clients: Vec<SmtpClient> = (0..SENDERS)
        .map(|i| in_data(&daemon, loopback(2 + (i % 2) as u8)))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss_kib(pid).expect("RSS");
    let peak_before = peak_rss_kib(pid).expect("VmHWM");

    let sending = AtomicBool::new(true);
    let rss_max = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let banner_after = std::thread::scope(|scope| {
        scope.spawn(|| {
            while sending.load(Ordering::Relaxed) {
                rss_max.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        for client in &mut clients {
            let (sending, sent) = (&sending, &sent);
            let mut stream = client.stream().try_clone().expect("clone the socket");
            scope.spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut line = vec![b'x'; 1022];
                line.extend_from_slice(b"\r\n");
                let block = line.repeat(64);
                while sending.load(Ordering::Relaxed) {
                    match stream.write(&block) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(e) => panic!("an endless sender was cut: {e}"),
                    }
                }
            });
        }

        // Meanwhile a well-behaved client from another address is served.
        std::thread::sleep(SENDING / 2);
        let started = Instant::now();
        let mut client = SmtpClient::connect_from(daemon.addr, loopback(4));
        let banner = client.reply().remove(0);
        let banner_after = started.elapsed();
        assert!(banner.starts_with("220 "), "{banner}");
        client.send(b"EHLO good.example\r\n");
        client.reply();
        let reply = client.transaction("well behaved");
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
        let name = reply.rsplit(' ').next().unwrap().to_string();
        let stored = std::fs::read(daemon.storage().join("maildir/new").join(&name))
            .expect("the well-behaved message in maildir/new");
        assert_eq!(stored_body(&stored), b"Subject: t\n\nwell behaved\n");
        eprintln!("well-behaved client: banner after {banner_after:?}, {reply}");

        std::thread::sleep(SENDING.saturating_sub(started.elapsed() + SENDING / 2));
        sending.store(false, Ordering::Relaxed);
        banner_after
    });
    let rss_max = rss_max.into_inner();
    let peak = peak_rss_kib(pid).expect("VmHWM").max(peak_before);
    let sent = sent.into_inner();
    let growth = rss_max.saturating_sub(baseline);
    let bound = SENDERS as u64 * PER_CONNECTION_KIB + SLACK_KIB;
    eprintln!(
        "{SENDERS} endless bodies for {SENDING:?}: {} MiB sent; RSS {baseline} KiB before, at \
         most {rss_max} KiB while sending (+{growth} KiB, {} KiB per connection), VmHWM \
         {peak} KiB; bound +{bound} KiB",
        sent >> 20,
        growth / SENDERS as u64,
    );
    assert!(
        banner_after < Duration::from_secs(1),
        "banner after {banner_after:?}"
    );
    assert!(
        sent > 100 * 1024 * 1024,
        "the senders sent {sent} bytes only"
    );
    assert!(growth < bound, "RSS grew by {growth} KiB");
    assert!(
        peak < baseline + bound,
        "VmHWM {peak} KiB, baseline {baseline}"
    );
    // Nothing of theirs was stored, and their files went with their connections.
    drop(clients);
    assert_eq!(daemon.new_messages().len(), 1);
}

#[test]
fn a_body_over_max_message_bytes_gets_552_and_leaves_no_file() {
    let _machine = exclusive();
    let daemon = Daemon::start("max_message_bytes = 1048576", "");
    let mut client = in_data(&daemon, loopback(5));
    let mut line = vec![b'y'; 1022];
    line.extend_from_slice(b"\r\n");
    // 2 MiB, twice the limit.
    for _ in 0..32 {
        client.send(&line.repeat(64));
    }
    client.send(b".\r\n");
    assert_eq!(
        client.reply(),
        ["552 5.3.4 Message size exceeds fixed limit"]
    );
    let maildir = daemon.storage().join("maildir");
    for sub in ["tmp", "new"] {
        assert_eq!(
            files_in(&maildir.join(sub)),
            Vec::<std::path::PathBuf>::new()
        );
    }
    // The session goes on, and a message within the limit is stored.
    let reply = client.transaction("small");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    assert_eq!(daemon.new_messages().len(), 1);
    assert!(files_in(&maildir.join("tmp")).is_empty());
}

#[test]
fn a_body_streamed_in_odd_pieces_is_stored_byte_for_byte() {
    let _machine = exclusive();
    let daemon = Daemon::start("", "");
    // 300 KiB (several body buffers) of lines with dots to unstuff, bare LF and CR, NUL and
    // 8-bit bytes.
    let mut body = Vec::new();
    let mut sent = Vec::new();
    for i in 0..3000u32 {
        let line: Vec<u8> = match i % 5 {
            0 => format!(".dotted {i}\r\n").into_bytes(),
            1 => b"bare\nlf and bare\rcr \0 \xff\xfe 8-bit\r\n".to_vec(),
            2 => vec![b'z'; 90 + (i as usize % 7)]
                .into_iter()
                .chain(*b"\r\n")
                .collect(),
            3 => b"..\r\n".to_vec(),
            _ => format!("line {i} of the message\r\n").into_bytes(),
        };
        body.extend_from_slice(&line);
        if line.starts_with(b".") {
            sent.push(b'.');
        }
        sent.extend_from_slice(&line);
    }
    sent.extend_from_slice(b".\r\n");
    let mut client = in_data(&daemon, loopback(6));
    for (i, piece) in sent.chunks(7919).enumerate() {
        client.send(piece);
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let reply = client.reply().remove(0);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let name = reply.rsplit(' ').next().unwrap();
    let stored = std::fs::read(daemon.storage().join("maildir/new").join(name)).unwrap();
    assert!(stored.starts_with(b"Return-Path: <a@example.com>\nX-Original-To: "));
    assert!(
        stored_body(&stored) == lf_endings(&body),
        "the stored body differs"
    );
}
