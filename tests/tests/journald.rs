//! Under systemd (`JOURNAL_STREAM` set) the daemon's events go to journald natively, each with
//! its priority and fields. This machine runs no journald: the test binds the journal's socket
//! itself and reads what the daemon sends.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::smtp_config;
use sinkhole_tests::{ChildGuard, free_port, sinkhole_bin, skip, temp_dir};

const SOCKET: &str = "/run/systemd/journal/socket";

/// One journal entry in the native protocol: `KEY=VALUE` lines, or `KEY\n`, a little-endian
/// u64 length and the value, for values with newlines.
fn entry(mut bytes: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !bytes.is_empty() {
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let line = &bytes[..end];
        match line.iter().position(|&b| b == b'=') {
            Some(eq) => {
                fields.insert(
                    String::from_utf8_lossy(&line[..eq]).into_owned(),
                    String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
                );
                bytes = &bytes[(end + 1).min(bytes.len())..];
            }
            None => {
                let len = u64::from_le_bytes(bytes[end + 1..end + 9].try_into().unwrap()) as usize;
                let value = &bytes[end + 9..end + 9 + len];
                fields.insert(
                    String::from_utf8_lossy(line).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                );
                bytes = &bytes[(end + 9 + len + 1).min(bytes.len())..];
            }
        }
    }
    fields
}

/// The journal's socket this test binds, removed however the test ends (a socket left behind
/// would make the next run believe a journald runs here).
struct PlayedJournal {
    made: bool,
}

impl Drop for PlayedJournal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SOCKET);
        if self.made {
            let _ = std::fs::remove_dir("/run/systemd/journal");
            let _ = std::fs::remove_dir("/run/systemd");
        }
    }
}

#[test]
fn under_systemd_events_go_to_journald_with_their_priority() {
    let test = "under_systemd_events_go_to_journald_with_their_priority";
    if !rustix::process::geteuid().is_root() {
        skip(test, "binding /run/systemd/journal/socket needs root");
        return;
    }
    if Path::new(SOCKET).exists() {
        skip(test, "a journald runs here");
        return;
    }
    let _machine = sinkhole_tests::exclusive();
    let _played = PlayedJournal {
        made: !Path::new("/run/systemd/journal").exists(),
    };
    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    let journal = UnixDatagram::bind(SOCKET).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let dir = temp_dir("journald");
    let port = free_port();
    let config = dir.path().join("sinkhole.toml");
    std::fs::write(&config, smtp_config(port, dir.path(), "", "", "")).unwrap();
    let mut daemon = Command::new(sinkhole_bin());
    daemon
        .args(["run", "--config"])
        .arg(&config)
        .env("JOURNAL_STREAM", "8:12345")
        .stdout(Stdio::null());
    let mut daemon = ChildGuard::spawn(daemon).unwrap();
    let mut entries: Vec<HashMap<String, String>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut read_until = |entries: &mut Vec<HashMap<String, String>>, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && !entries
                .iter()
                .any(|e| e.get("MESSAGE").is_some_and(|m| m.contains(needle)))
        {
            if let Ok(n) = journal.recv(&mut buf)
                && n > 0
            {
                entries.push(entry(&buf[..n]));
            }
        }
    };
    read_until(&mut entries, "listening on");
    // A client that asks for STARTTLS and then sends no TLS: an event with its session and
    // address as fields.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    client.write_all(b"EHLO client.example\r\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    client.write_all(b"STARTTLS\r\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "{line}");
    client
        .write_all(b"this is not a TLS record at all\r\n\r\n")
        .unwrap();
    read_until(&mut entries, "TLS handshake failed");
    drop((reader, client));
    daemon.stop();
    drop(journal);

    let find = |needle: &str| {
        entries
            .iter()
            .find(|e| e.get("MESSAGE").is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no `{needle}` in {entries:?}"))
    };
    // A warning is priority 4 (warning), so `journalctl -p warning` shows it.
    let warning = find("running as root (uid 0, no capabilities)");
    assert_eq!(warning["PRIORITY"], "4", "{warning:?}");
    let info = find("listening on 127.0.0.1");
    assert_eq!(info["PRIORITY"], "5", "{info:?}");
    // Which module logged it, as the event's own target (the daemon's events are `tracing`
    // events, not `log` records bridged in).
    for entry in [warning, info] {
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "sinkhole", "{entry:?}");
        assert!(
            entry
                .get("TARGET")
                .is_some_and(|t| t.starts_with("sinkhole::")),
            "{entry:?}"
        );
    }
    // Structured fields under their own names, to filter on (`journalctl CLIENT=...`).
    let tls = find("TLS handshake failed");
    assert_eq!(tls["PRIORITY"], "5", "{tls:?}");
    assert_eq!(tls["CLIENT"], "127.0.0.1", "{tls:?}");
    assert!(
        tls["MESSAGE"].starts_with(&format!("session {}: ", tls["SESSION"])),
        "{tls:?}"
    );
}
