//! Never a relay, never an escape: the daemon opens no outbound connection whatever the
//! recipients, file names never come from client input, control bytes from clients are escaped
//! in the log and the report, the metrics endpoint is read-only and the pinned maps are
//! writable by their owner only.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, SmtpClient, smtp_config};
use sinkhole_tests::netns::{NetNs, PinDir};
use sinkhole_tests::{free_port, kernel_tests_allowed, sinkhole, sinkhole_ok, temp_dir};

/// Recipients of every kind: local, remote, IP literals, source routes, `%` and `!` hacks,
/// quoted local parts, UTF-8, and a bare `postmaster`.
const RECIPIENTS: &[&str] = &[
    "trap@example.org",
    "victim@example.net",
    "postmaster@[192.0.2.25]",
    "user@[IPv6:2001:db8::25]",
    "@relay.example.com:user@example.net",
    "user%example.net@example.org",
    "example.net!user@example.org",
    "\"quoted user\"@example.net",
    "usér@exämple.net",
    "postmaster",
];

/// One session sending a message to every recipient in [`RECIPIENTS`]; returns the replies.
fn mail_everyone(client: &mut SmtpClient, from: &str) -> Vec<String> {
    let mut replies = Vec::new();
    client.send(b"EHLO relay-test.example\r\n");
    client.reply();
    client.send(format!("MAIL FROM:<{from}>\r\n").as_bytes());
    replies.push(client.reply().remove(0));
    for rcpt in RECIPIENTS {
        client.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        replies.push(client.reply().remove(0));
    }
    client.send(b"DATA\r\n");
    replies.push(client.reply().remove(0));
    client.send(b"Subject: relay?\r\n\r\nplease forward\r\n.\r\n");
    replies.push(client.reply().remove(0));
    replies
}

/// The daemon's sockets in its namespace, from `ss -tuanp` (one line per socket).
fn daemon_sockets(ns: &NetNs, pid: u32) -> Vec<String> {
    let out = ns.command("ss").arg("-tuanp").output().expect("run ss");
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_daemon_opens_no_outbound_connection_whatever_the_recipients() -> anyhow::Result<()> {
    if !kernel_tests_allowed("the_daemon_opens_no_outbound_connection_whatever_the_recipients") {
        return Ok(());
    }
    // Only `lo`, no route anywhere else; DNS scoring pointed at an unreachable address.
    let ns = NetNs::new("e")?;
    let dir = temp_dir("escape");
    let (port, metrics) = (free_port(), free_port());
    let rest = format!(
        "[dnsbl]\nnameservers = [\"192.0.2.53:53\"]\ntimeout = \"1s\"\n\
         [[dnsbl.zone]]\nname = \"zen.example.org\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
    );
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(&config, smtp_config(port, dir.path(), "", "", &rest))?;
    let mut command = ns.command(sinkhole_tests::sinkhole_bin());
    command.arg("run").arg("--config").arg(&config);
    command.env("RUST_LOG", "info");
    let mut daemon = sinkhole_tests::ChildGuard::spawn(command)?;
    daemon.wait_for_stderr("listening on", Duration::from_secs(20))?;
    let pid = daemon.pid();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let (replies, seen) = ns.run_in(|| {
        let mut seen = BTreeSet::new();
        let mut replies = Vec::new();
        // Sessions, with the daemon's sockets sampled throughout.
        let started = Instant::now();
        for from in ["a@example.com", "", "trap@example.org"] {
            let mut client = SmtpClient::connect(addr);
            client.reply();
            replies.extend(mail_everyone(&mut client, from));
            seen.extend(daemon_sockets(&ns, pid));
            client.send(b"QUIT\r\n");
            client.reply();
        }
        // Past the DNS timeout, in case a lookup runs late.
        while started.elapsed() < Duration::from_secs(3) {
            seen.extend(daemon_sockets(&ns, pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        (replies, seen)
    })?;
    eprintln!("replies: {replies:?}\nthe daemon's sockets seen:\n{}", {
        let lines: Vec<&str> = seen.iter().map(String::as_str).collect();
        lines.join("\n")
    });
    // A sinkhole takes everything (and relays nothing).
    assert!(
        replies
            .iter()
            .all(|r| r.starts_with("250") || r.starts_with("354")),
        "{replies:?}"
    );
    // Every TCP socket of the daemon is a listener or a connection to one of its own ports.
    let ours = [format!("127.0.0.1:{port}"), format!("127.0.0.1:{metrics}")];
    let mut tcp = 0;
    for line in &seen {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (proto, local, peer) = (fields[0], fields[4], fields[5]);
        if proto == "tcp" {
            tcp += 1;
            assert!(ours.iter().any(|o| o == local), "outbound TCP: {line}");
        } else {
            // UDP: DNS to the configured server only (or not connected at all).
            assert!(
                peer == "192.0.2.53:53" || peer.ends_with(":*"),
                "UDP elsewhere: {line}"
            );
        }
    }
    assert!(tcp >= 2, "the listeners were not even seen: {seen:?}");
    // The namespace's own table agrees: nothing but local ports of ours.
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote) = (fields[1], fields[2]);
        let port_of = |hex: &str| u16::from_str_radix(hex.rsplit(':').next().unwrap(), 16).unwrap();
        assert!(
            [port, metrics].contains(&port_of(local)) || [port, metrics].contains(&port_of(remote)),
            "a connection not to our ports: {line}"
        );
    }
    daemon.stop();
    Ok(())
}

/// Every path under `root`, relative to it.
fn walk(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            found.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

/// A Maildir name as the daemon makes it: `SECONDS.MMICROSPPIDQCOUNTER.HOST`.
fn is_unique_name(name: &str) -> bool {
    let Some(rest) = name.strip_suffix(".sinkhole.test") else {
        return false;
    };
    let Some((secs, tail)) = rest.split_once(".M") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = tail.split(['P', 'Q']);
    digits(secs) && parts.by_ref().take(3).all(digits) && parts.next().is_none()
}

#[test]
fn file_names_never_come_from_client_input() {
    let mut daemon = Daemon::start("", "");
    let mut client = SmtpClient::connect(daemon.addr);
    client.reply();
    client.send(b"EHLO ../../../../tmp/helo\r\n");
    client.reply();
    for (from, rcpt) in [
        ("../../etc/passwd", "../../../tmp/x@example.org"),
        ("/etc/shadow@example.com", "a/b/../../c@example.org"),
        ("x@example.com", "\"../../new/evil\"@example.org"),
    ] {
        client.send(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes());
        let codes: Vec<String> = (0..3).map(|_| client.reply().remove(0)).collect();
        assert!(codes[2].starts_with("354 "), "{from} {rcpt}: {codes:?}");
        client.send(
            b"Subject: ../../../../etc/cron.d/evil\r\nMessage-ID: <../../x/y>\r\n\
              X-File: /tmp/sinkhole-evil\r\nContent-Disposition: attachment; \
              filename=\"../../../evil.sh\"\r\n\r\nbody\r\n.\r\n",
        );
        let reply = client.reply().remove(0);
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    }
    client.send(b"QUIT\r\n");
    client.reply();
    daemon.stop();
    let new = daemon.new_messages();
    assert_eq!(new.len(), 3);
    for path in &new {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(is_unique_name(name), "{name}");
    }
    // Nothing anywhere but the config, the daemon's stderr and the storage layout.
    let expected: BTreeSet<PathBuf> = [
        "sinkhole.toml",
        "stderr.log",
        "data",
        "data/sessions.jsonl",
        "data/maildir",
        "data/maildir/tmp",
        "data/maildir/new",
        "data/maildir/cur",
        // The self-signed STARTTLS pair made at first start.
        "data/tls",
        "data/tls/cert.pem",
        "data/tls/key.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .chain(
        new.iter()
            .map(|p| Path::new("data/maildir/new").join(p.file_name().unwrap())),
    )
    .collect();
    assert_eq!(walk(daemon.dir.path()), expected);
    assert!(!Path::new("/tmp/sinkhole-evil").exists());
}

#[test]
fn control_characters_from_clients_are_escaped_in_the_log_and_the_report() {
    let mut daemon = Daemon::start("", "");
    let mut client = SmtpClient::connect(daemon.addr);
    client.reply();
    client.send(b"EHLO \x1b[31mred\x1b[0m\rhost\x07\r\n");
    client.reply();
    client.send(b"MAIL FROM:<\x1b]0;title\x07@example.com>\r\n");
    client.reply();
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<\x1b[2J@example.org>\r\n");
    client.reply();
    client.reply();
    client.send(b"RCPT TO:<trap@example.org>\r\nDATA\r\n");
    client.reply();
    client.reply();
    client.send(b"Subject: \x1b[31mred\r\n\r\n\x1b[2J\x1b]0;x\x07\r\n.\r\n");
    client.reply();
    client.send(b"\x1b[31mNOOP\r\nQUIT\r\n");
    client.reply();
    client.reply();
    daemon.stop();

    let log = std::fs::read(daemon.storage().join("sessions.jsonl")).unwrap();
    assert!(!log.contains(&0x1b), "raw ESC in sessions.jsonl");
    assert!(!log.contains(&0x07), "raw BEL in sessions.jsonl");
    assert!(!log.contains(&b'\r'), "raw CR in sessions.jsonl");
    let sessions = daemon.sessions();
    let helo = sessions[0]["helo"].as_str().unwrap();
    assert!(helo.contains("\\x1b[31mred"), "{helo}");
    assert!(helo.contains("\\x0dhost"), "{helo}");

    let storage = daemon.storage();
    for json in [false, true] {
        let mut args = vec!["campaigns", "--storage", storage.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = sinkhole(&args).unwrap();
        assert!(out.status.success(), "{out:?}");
        for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            for bad in [0x1b, 0x07, b'\r'] {
                assert!(
                    !bytes.contains(&bad),
                    "campaigns (json: {json}) {what} has byte {bad:#x}: {}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
}

fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn metrics_are_read_only_and_pinned_maps_are_owner_writable_only() -> anyhow::Result<()> {
    let metrics = free_port();
    let dir = temp_dir("escape-metrics");
    let port = free_port();
    let pins = PinDir::new("p");
    let root =
        kernel_tests_allowed("metrics_are_read_only_and_pinned_maps_are_owner_writable_only");
    let pin_line = if root {
        format!("[xdp]\npin_dir = \"{}\"\n", pins.path().display())
    } else {
        String::new()
    };
    let config = format!(
        "[smtp]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"sinkhole.test\"\n\
         [storage]\ndir = \"{}\"\n{pin_line}[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
        dir.path().join("data").display()
    );
    let daemon = Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    let addr = SocketAddr::from(([127, 0, 0, 1], metrics));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "no metrics endpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(http(addr, "GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let response = http(
            addr,
            &format!("{method} /metrics HTTP/1.0\r\nContent-Length: 4\r\n\r\nx=1\n"),
        );
        assert!(response.starts_with("HTTP/1.1 405"), "{method}: {response}");
    }
    if !root {
        return Ok(());
    }
    let cfg = daemon.dir.path().join("sinkhole.toml");
    sinkhole_ok(&["block", "192.0.2.7", "--config", cfg.to_str().unwrap()])?;
    let mut checked = 0;
    for entry in std::fs::read_dir(pins.path())? {
        let entry = entry?;
        let mode = entry.metadata()?.permissions().mode();
        assert_eq!(
            mode & 0o022,
            0,
            "{} is writable by group or others ({mode:o})",
            entry.path().display()
        );
        checked += 1;
    }
    let dir_mode = std::fs::metadata(pins.path())?.permissions().mode();
    assert_eq!(dir_mode & 0o022, 0, "the pin dir ({dir_mode:o})");
    assert!(checked >= 3, "only {checked} pins");
    eprintln!("{checked} pinned maps, none writable by group or others; pin dir {dir_mode:o}");
    Ok(())
}
