//! Floods and hostile clients against the real daemon, loopback only, each bounded in count and
//! time: 10,000 connections past `max_connections`, a thousand slowloris clients, a client that
//! never reads, a 1 GiB message, 10,000 recipients, and bytes no command should contain. Memory
//! is the daemon's resident set (`VmRSS`), read before, during and after.
//!
//! The tests run one at a time and beside no test that times the daemon
//! ([`sinkhole_tests::exclusive`]): each loads the machine, and RSS and timings mean more
//! without the others.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use sinkhole_tests::daemon::{Daemon, SmtpClient};
use sinkhole_tests::{exclusive, rss_kib, start_connect_from};

/// The bound every test asserts on the daemon's resident set.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn rss(daemon: &Daemon) -> u64 {
    rss_kib(daemon.pid()).expect("daemon RSS")
}

/// `127.0.N.H`: client addresses apart from the daemon's 127.0.0.1.
fn loopback(n: u8, h: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, n, h))
}

/// A fresh client that connects, greets and stores one message; retried (bounded) while the
/// daemon still counts connections that are going away.
fn fresh_client_completes_a_transaction(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        let mut client = SmtpClient::connect(daemon.addr);
        let banner = client.reply().remove(0);
        if banner.starts_with("220 ") {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "no slot for a fresh client: {banner}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    client.send(b"EHLO fresh.example\r\n");
    client.reply();
    let reply = client.transaction("fresh");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
}

/// Many non-blocking clients on one poll: what each received, and when it closed.
struct Crowd {
    poll: Poll,
    socks: Vec<mio::net::TcpStream>,
    got: Vec<Vec<u8>>,
    closed: Vec<Option<Instant>>,
}

impl Crowd {
    fn new() -> Crowd {
        Crowd {
            poll: Poll::new().unwrap(),
            socks: Vec::new(),
            got: Vec::new(),
            closed: Vec::new(),
        }
    }

    /// Starts a connect from `from` to `to`.
    fn connect(&mut self, from: IpAddr, to: SocketAddr) {
        let std =
            start_connect_from(from, to).unwrap_or_else(|e| panic!("connect from {from}: {e}"));
        let mut sock = mio::net::TcpStream::from_std(std);
        self.poll
            .registry()
            .register(&mut sock, Token(self.socks.len()), Interest::READABLE)
            .unwrap();
        self.socks.push(sock);
        self.got.push(Vec::new());
        self.closed.push(None);
    }

    fn len(&self) -> usize {
        self.socks.len()
    }

    /// Reads whatever arrives until `done` holds for every client or `limit` passes.
    fn wait(&mut self, limit: Duration, done: impl Fn(&[u8], bool) -> bool) {
        let deadline = Instant::now() + limit;
        let mut events = Events::with_capacity(4096);
        let mut buf = [0u8; 4096];
        let mut pending: usize = (0..self.len())
            .filter(|&i| !done(&self.got[i], self.closed[i].is_some()))
            .count();
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.poll
                .poll(&mut events, Some(left.min(Duration::from_millis(200))))
                .unwrap();
            for event in &events {
                let i = event.token().0;
                let was_done = done(&self.got[i], self.closed[i].is_some());
                while self.closed[i].is_none() {
                    match self.socks[i].read(&mut buf) {
                        Ok(0) => self.closed[i] = Some(Instant::now()),
                        Ok(n) => self.got[i].extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => self.closed[i] = Some(Instant::now()),
                    }
                }
                if !was_done && done(&self.got[i], self.closed[i].is_some()) {
                    pending -= 1;
                }
            }
        }
    }

    /// Writes `bytes` to every client still open; returns how many writes went through.
    fn send_all(&mut self, bytes: &[u8]) -> usize {
        let mut sent = 0;
        for (sock, closed) in self.socks.iter_mut().zip(&self.closed) {
            if closed.is_none() && sock.write(bytes).is_ok_and(|n| n == bytes.len()) {
                sent += 1;
            }
        }
        sent
    }
}

fn has_line(got: &[u8]) -> bool {
    got.windows(2).any(|w| w == b"\r\n")
}

fn first_line(got: &[u8]) -> String {
    let end = got
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(got.len());
    String::from_utf8_lossy(&got[..end]).into_owned()
}

#[test]
fn ten_thousand_connections_past_max_connections_get_421_while_the_admitted_are_served() {
    let _machine = exclusive();
    // Ten thousand sockets of our own, plus the harness's.
    let files = sinkhole::daemon::raise_fd_limit(12_000);
    assert!(files >= 12_000, "open files limit {files} < 12000");
    let daemon = Daemon::start("max_connections = 1000\nmax_connections_per_ip = 10000", "");
    let rss_before = rss(&daemon);

    // One client is in before the flood and must be served during it.
    let mut early = SmtpClient::connect(daemon.addr);
    assert!(early.reply()[0].starts_with("220 "));
    early.send(b"EHLO early.example\r\n");
    early.reply();

    let started = Instant::now();
    let mut crowd = Crowd::new();
    for i in 0..10_000u32 {
        // Ten source addresses, a thousand clients each.
        crowd.connect(loopback(1, 10 + (i % 10) as u8), daemon.addr);
    }
    let opened = started.elapsed();
    // Admitted clients are done at their banner, refused ones once the daemon closed them.
    crowd.wait(Duration::from_secs(40), |got, closed| {
        closed || (has_line(got) && got.starts_with(b"220 "))
    });
    let answered = started.elapsed();
    let rss_during = rss(&daemon);

    // With every slot taken, the early client still completes a transaction.
    let reply = early.transaction("during the flood");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");

    let lines: Vec<String> = crowd.got.iter().map(|g| first_line(g)).collect();
    let welcomed = lines.iter().filter(|l| l.starts_with("220 ")).count();
    let refused = lines
        .iter()
        .filter(|l| *l == "421 4.7.0 Too many connections, try again later")
        .count();
    let silent = lines.iter().filter(|l| l.is_empty()).count();
    eprintln!(
        "flood: opened 10000 in {opened:?}, all answered in {answered:?}: 220 x{welcomed}, \
         421 x{refused}, silent x{silent}; RSS {rss_before} KiB before, {rss_during} KiB during"
    );
    assert_eq!(silent, 0, "clients that heard nothing");
    // The early client holds one of the 1000 slots.
    assert_eq!(welcomed, 999, "admitted past max_connections");
    assert_eq!(refused, 9001);
    // The refused are closed by the daemon, the admitted are not.
    for (line, closed) in lines.iter().zip(&crowd.closed) {
        assert_eq!(closed.is_some(), line.starts_with("421 "), "{line}");
    }
    assert!(rss_during < RSS_BOUND_KIB, "RSS {rss_during} KiB");

    drop(crowd);
    fresh_client_completes_a_transaction(&daemon);
    let rss_after = rss(&daemon);
    eprintln!("flood: RSS {rss_after} KiB after");
    assert!(rss_after < RSS_BOUND_KIB, "RSS {rss_after} KiB");
}

#[test]
fn a_thousand_slowloris_clients_are_cut_at_the_idle_timeout_and_the_per_ip_limit_holds() {
    let _machine = exclusive();
    let files = sinkhole::daemon::raise_fd_limit(4_000);
    assert!(files >= 4_000, "open files limit {files} < 4000");
    let mut daemon = Daemon::start("idle_timeout = \"2s\"\nmax_connections_per_ip = 50", "");
    let rss_before = rss(&daemon);

    let mut crowd = Crowd::new();
    // Twenty addresses at their limit of fifty.
    for i in 0..1000u32 {
        crowd.connect(loopback(2, 1 + (i % 20) as u8), daemon.addr);
    }
    crowd.wait(Duration::from_secs(20), |got, closed| {
        has_line(got) || closed
    });
    for (i, got) in crowd.got.iter().enumerate() {
        assert!(
            first_line(got).starts_with("220 "),
            "client {i}: {:?}",
            first_line(got)
        );
    }
    // One more from an address at its limit is refused, from a new address it is not.
    for (from, expected) in [
        (
            loopback(2, 1),
            "421 4.7.0 Too many connections from your address",
        ),
        (loopback(2, 21), "220 sinkhole.test ESMTP"),
    ] {
        let mut extra = BufReader::new(start_connect_from(from, daemon.addr).unwrap());
        extra.get_mut().set_nonblocking(false).unwrap();
        extra
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        extra.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), expected, "from {from}");
    }

    // Slowloris: one byte of a command line, the next one 3 s later, past the 2 s timeout.
    let rss_held = rss(&daemon);
    let sent = Instant::now();
    assert_eq!(crowd.send_all(b"E"), 1000);
    let banner_len: Vec<usize> = crowd.got.iter().map(Vec::len).collect();
    crowd.wait(Duration::from_secs(3), |_, closed| closed);
    let second_bytes = crowd.send_all(b"H");
    crowd.wait(Duration::from_secs(7), |_, closed| closed);
    let rss_after_cut = rss(&daemon);

    let mut cut_after: Vec<Duration> = Vec::new();
    for (i, got) in crowd.got.iter().enumerate() {
        let after_banner = String::from_utf8_lossy(&got[banner_len[i]..]).into_owned();
        assert_eq!(
            after_banner,
            "421 4.4.2 sinkhole.test Error: timeout exceeded\r\n",
            "client {i}, closed {:?} after its byte",
            crowd.closed[i].map(|c| c - sent)
        );
        let closed = crowd.closed[i].unwrap_or_else(|| panic!("client {i} still open"));
        cut_after.push(closed - sent);
    }
    cut_after.sort();
    let (first, last) = (cut_after[0], cut_after[cut_after.len() - 1]);
    eprintln!(
        "slowloris: 1000 clients cut {first:?}..{last:?} after their last byte; second bytes \
         written to {second_bytes} still-open sockets; RSS {rss_before} KiB before, \
         {rss_held} KiB holding 1000, {rss_after_cut} KiB after the cut"
    );
    // Cut at the idle timeout, not before it, and not only after the next byte came.
    assert!(first >= Duration::from_millis(1900), "cut after {first:?}");
    assert!(last < Duration::from_secs(3), "cut after {last:?}");
    assert_eq!(
        second_bytes, 0,
        "sockets still open when the next byte came"
    );
    assert!(rss_held < RSS_BOUND_KIB, "RSS {rss_held} KiB");
    assert!(rss_after_cut < RSS_BOUND_KIB, "RSS {rss_after_cut} KiB");
    fresh_client_completes_a_transaction(&daemon);

    daemon.stop();
    let timeouts = daemon
        .sessions()
        .iter()
        .filter(|s| {
            s["transcript"]
                .as_array()
                .and_then(|t| t.last())
                .is_some_and(|l| l[2] == "421 4.4.2 sinkhole.test Error: timeout exceeded")
        })
        .count();
    assert_eq!(timeouts, 1000, "sessions logged as cut at the timeout");
}

#[test]
fn a_client_that_never_reads_its_replies_cannot_grow_the_daemon() {
    let _machine = exclusive();
    let daemon = Daemon::start("", "");
    let rss_before = rss(&daemon);
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    stream.set_nonblocking(true).unwrap();
    // HELO, not NOOP: NOOPs are junk commands, and the session would end at their limit long
    // before the output backpressure this test is about.
    let chunk = b"HELO c.example\r\n".repeat(64 * 1024 / 16);
    let mut written: u64 = 0;
    let mut stuck_since = Instant::now();
    let started = Instant::now();
    let mut rss_max = 0;
    // Write until the daemon has stopped taking bytes for two seconds (or 1 GiB went in,
    // which would mean it reads without bound).
    while stuck_since.elapsed() < Duration::from_secs(2) && written < 1 << 30 {
        match stream.write(&chunk) {
            Ok(n) => {
                written += n as u64;
                stuck_since = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("write: {e}"),
        }
        rss_max = rss_max.max(rss(&daemon));
    }
    eprintln!(
        "never-reading client: the daemon took {written} bytes ({} HELOs) in {:?} and stopped; \
         RSS {rss_before} KiB before, at most {rss_max} KiB",
        written / 16,
        started.elapsed()
    );
    assert!(
        written < 64 << 20,
        "the daemon kept reading: {written} bytes"
    );
    assert!(rss_max < RSS_BOUND_KIB, "RSS {rss_max} KiB");
    // The daemon still serves others while this one is stuck.
    fresh_client_completes_a_transaction(&daemon);
    // And every reply it queued is a 250 to a HELO, in order: reading now drains them.
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    for _ in 0..1000 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "250 sinkhole.test\r\n");
    }
    assert!(rss(&daemon) < RSS_BOUND_KIB);
}

#[test]
fn a_one_gib_message_is_refused_with_552_while_memory_stays_flat() {
    let _machine = exclusive();
    let daemon = Daemon::start("max_message_bytes = 10485760", "");
    let rss_before = rss(&daemon);
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    client.send(b"EHLO big.example\r\nMAIL FROM:<a@example.com>\r\n");
    client.reply();
    assert_eq!(client.reply(), ["250 2.1.0 Ok"]);
    client.send(b"RCPT TO:<trap@example.org>\r\nDATA\r\n");
    assert_eq!(client.reply(), ["250 2.1.5 Ok"]);
    assert!(client.reply()[0].starts_with("354 "));

    // Watch the daemon's memory while 1 GiB goes in.
    let done = AtomicBool::new(false);
    let rss_max = AtomicU64::new(0);
    let pid = daemon.pid();
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                rss_max.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // 1 KiB lines, generated on the fly: 1,048,576 of them.
        let mut line = vec![b'x'; 1022];
        line.extend_from_slice(b"\r\n");
        let block = line.repeat(256);
        for _ in 0..4096 {
            client.send(&block);
        }
        client.send(b".\r\n");
        let reply = client.reply();
        done.store(true, Ordering::Relaxed);
        assert_eq!(reply, ["552 5.3.4 Message size exceeds fixed limit"]);
    });
    let elapsed = started.elapsed();
    let rss_max = rss_max.into_inner();
    let rss_after = rss(&daemon);
    eprintln!(
        "1 GiB DATA: 552 after {elapsed:?}; RSS {rss_before} KiB before, at most {rss_max} KiB \
         during, {rss_after} KiB after"
    );
    assert!(rss_max < RSS_BOUND_KIB, "RSS {rss_max} KiB");
    assert!(
        daemon.new_messages().is_empty(),
        "an oversize message was stored"
    );
    // The session goes on: a message within the limit is taken.
    let reply = client.transaction("small");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    assert_eq!(daemon.new_messages().len(), 1);
}

#[test]
fn ten_thousand_recipients_get_452_past_max_recipients() {
    let _machine = exclusive();
    let mut daemon = Daemon::start("max_recipients = 100", "");
    let stream = TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // Replies are read while the recipients go out (the daemon stops reading a client whose
    // replies pile up).
    let codes = std::thread::scope(|scope| {
        let replies = scope.spawn(move || {
            let mut codes = Vec::new();
            let mut line = String::new();
            // One code per reply (its last line): banner, EHLO, MAIL, 10,000 RCPTs, DATA.
            while codes.len() < 1 + 1 + 1 + 10_000 + 1 {
                line.clear();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    codes.push(line[..3].to_string());
                }
            }
            (codes, reader)
        });
        let mut commands = b"EHLO many.example\r\nMAIL FROM:<a@example.com>\r\n".to_vec();
        for i in 0..10_000 {
            commands.extend_from_slice(format!("RCPT TO:<r{i}@example.org>\r\n").as_bytes());
        }
        commands.extend_from_slice(b"DATA\r\n");
        writer.write_all(&commands).unwrap();
        replies.join().unwrap()
    });
    let (codes, mut reader) = codes;
    let rcpt = &codes[3..3 + 10_000];
    assert_eq!(rcpt.iter().filter(|c| *c == "250").count(), 100);
    assert_eq!(rcpt.iter().filter(|c| *c == "452").count(), 9_900);
    assert!(
        rcpt[..100].iter().all(|c| c == "250"),
        "the first 100 are taken"
    );
    assert_eq!(codes.last().map(String::as_str), Some("354"));
    writer
        .write_all(b"Subject: many\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("250 2.0.0 Ok: queued as "), "{line}");
    daemon.stop();
    let sessions = daemon.sessions();
    let rcpts = sessions[0]["transactions"][0]["rcpts"].as_array().unwrap();
    // The log keeps the first ones (within the record's bytes), with their codes, and counts
    // the rest.
    assert!(rcpts.len() > 100, "{} kept", rcpts.len());
    assert_eq!(
        rcpts.len() as u64 + sessions[0]["rcpts_dropped"].as_u64().unwrap(),
        10_000
    );
    assert!(rcpts[..100].iter().all(|r| r["code"] == 250));
    assert!(rcpts[100..].iter().all(|r| r["code"] == 452));
}

/// A session with `lines` sent one at a time; returns the first reply line to each.
fn replies_to(daemon: &Daemon, lines: &[&[u8]]) -> Vec<String> {
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    lines
        .iter()
        .map(|line| {
            client.send(line);
            client.reply().remove(0)
        })
        .collect()
}

#[test]
fn long_lines_nul_bare_cr_lf_and_invalid_utf8_get_the_right_replies() {
    let _machine = exclusive();
    let daemon = Daemon::start("", "");

    // A 100 KiB command line: 500, and an endless line counts as a bad command every 2 KiB,
    // so the session ends at the bad-command limit with 421.
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    let mut long = b"HELO ".to_vec();
    long.resize(100 * 1024, b'a');
    long.extend_from_slice(b"\r\nNOOP\r\n");
    client.send(&long);
    assert_eq!(client.reply(), ["500 5.5.2 Error: line too long"]);
    assert_eq!(
        client.reply(),
        ["421 4.7.0 sinkhole.test Error: too many errors"]
    );
    assert!(client.closed());

    let replies = replies_to(
        &daemon,
        &[
            b"EHLO a\x00b\r\n",
            b"NO\x00OP\r\n",
            b"NOOP\x00\r\n",
            b"MAIL FROM:<a\x00b@example.com>\r\n",
            b"NOOP\rNOOP\r\n",
            b"NOOP\n",
            b"\n",
            b"MAIL FROM:<\xff@example.com>\r\n",
            b"HELO \xff\xfe\r\n",
            b"MAIL FROM:<a@example.com>\r\n",
            b"RCPT TO:<\xe2\x82@example.org>\r\n",
            b"RCPT TO:<\xc3\xa9t\xc3\xa9@example.org>\r\n",
        ],
    );
    assert_eq!(
        replies,
        [
            // A HELO name is taken as it comes (and escaped in the log).
            "250-sinkhole.test",
            "500 5.5.2 Error: command not recognized",
            "500 5.5.2 Error: command not recognized",
            "501 5.1.7 Bad sender address syntax",
            // A bare CR does not end a line: the line is `NOOP\rNOOP`.
            "500 5.5.2 Error: command not recognized",
            // A bare LF ends a command line (and is noted in the transcript); an empty line is
            // no command.
            "250 2.0.0 Ok",
            "500 5.5.2 Error: command not recognized",
            // Addresses must be UTF-8 (SMTPUTF8).
            "501 5.1.7 Bad sender address syntax",
            "250 sinkhole.test",
            "250 2.1.0 Ok",
            "501 5.1.3 Bad recipient address syntax",
            "250 2.1.5 Ok",
        ]
    );

    // In a body every byte is data: NUL, bare CR, bare LF and invalid UTF-8 are stored as sent.
    // Only CRLF.CRLF ends it (`\n.\r\n` and `\r\n.\n` do not: no smuggling).
    let mut client = SmtpClient::connect(daemon.addr);
    client.reply();
    client.send(b"EHLO body.example\r\n");
    client.reply();
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<t@example.org>\r\nDATA\r\n");
    assert_eq!(client.reply(), ["250 2.1.0 Ok"]);
    assert_eq!(client.reply(), ["250 2.1.5 Ok"]);
    assert!(client.reply()[0].starts_with("354 "));
    let body: &[u8] = b"a\x00b\rc\nd\xff\xfe\r\nx\n.\r\ny\r\n.\nz\r\n..dot\r\n";
    let mut sent = body.to_vec();
    sent.extend_from_slice(b".\r\n");
    client.send(&sent);
    let reply = client.reply().remove(0);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let stored = std::fs::read(&daemon.new_messages()[0]).unwrap();
    // What follows the prepended headers, dot-unstuffed (`..dot` and `.\nz` lose a dot), each
    // CRLF stored as LF (a bare CR or LF as it came).
    let expected: &[u8] = b"a\x00b\rc\nd\xff\xfe\nx\n.\ny\n\nz\n.dot\n";
    assert!(
        stored.ends_with(expected),
        "stored {:?}",
        String::from_utf8_lossy(&stored)
    );
    let header_end = stored.len() - expected.len();
    assert!(stored[..header_end].ends_with(b"X-Sinkhole-Dnsbl: (none)\n"));
}
