//! Crash durability: clients send messages with random bodies while the daemon is killed with
//! SIGKILL at a random moment, five times over. After each crash every message a client saw
//! 250 for is in `maildir/new` whole (byte for byte what was sent, dot-unstuffed, after the
//! prepended headers), nothing partial is in `new/`, the session log has at most a torn last
//! line (which `sinkhole campaigns` skips with a warning), and the restarted daemon empties
//! `tmp/`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sinkhole_tests::daemon::{Daemon, files_in, lf_endings, stored_body};
use sinkhole_tests::{Rng, sessions_read, sinkhole};

/// A message as sent: its id, its bytes on the wire (dot-stuffed, with the final dot) and what
/// must be stored after the headers (the body, unstuffed).
struct Sent {
    id: String,
    wire: Vec<u8>,
    body: Vec<u8>,
}

/// A random body: up to ~2000 lines of printable and 8-bit bytes, many starting with a dot.
fn random_message(rng: &mut Rng, id: String) -> Sent {
    let mut body = format!("X-Test-Id: {id}\r\nSubject: crash test\r\n\r\n").into_bytes();
    let mut wire = body.clone();
    for _ in 0..rng.below(2000) {
        let mut line: Vec<u8> = (0..rng.below(200))
            .map(|_| match rng.below(20) {
                0 => 0x80 + rng.below(0x80) as u8,
                _ => b' ' + rng.below(95) as u8,
            })
            .collect();
        if rng.below(8) == 0 {
            line.insert(0, b'.');
        }
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        for out in [&mut body, &mut wire] {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
    }
    wire.extend_from_slice(b".\r\n");
    Sent { id, wire, body }
}

/// One reply's code and text (a multi-line reply: its last line); `None` once the daemon is
/// gone.
fn reply(reader: &mut BufReader<TcpStream>) -> Option<String> {
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 && line.ends_with("\r\n") => {
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Some(line.trim_end().to_string());
                }
            }
            _ => return None,
        }
    }
}

/// Sends messages until the daemon dies, a few per session (so sessions end and are logged);
/// returns every message sent, with the Maildir name of those that got 250.
fn client(addr: SocketAddr, round: u32, n: u32, seed: u64) -> Vec<(Sent, Option<String>)> {
    let mut rng = Rng(seed);
    let mut sent = Vec::new();
    while session(addr, &mut rng, &mut sent, &format!("r{round}c{n}m")).is_some() {}
    sent
}

/// One session of one to four messages ending in QUIT; `None` once the daemon is gone.
fn session(
    addr: SocketAddr,
    rng: &mut Rng,
    sent: &mut Vec<(Sent, Option<String>)>,
    prefix: &str,
) -> Option<()> {
    let stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut writer = stream.try_clone().ok()?;
    let mut reader = BufReader::new(stream);
    let mut say = |line: &[u8]| {
        writer.write_all(line).ok()?;
        reply(&mut reader)
    };
    let expect = |reply: Option<String>, code: &str| reply.filter(|r| r.starts_with(code));
    expect(say(b""), "220")?;
    expect(say(b"EHLO crash.example\r\n"), "250")?;
    for _ in 0..=rng.below(4) {
        let message = random_message(rng, format!("{prefix}{}", sent.len()));
        expect(say(b"MAIL FROM:<a@example.com>\r\n"), "250")?;
        expect(say(b"RCPT TO:<trap@example.org>\r\n"), "250")?;
        expect(say(b"DATA\r\n"), "354")?;
        let answer = say(&message.wire);
        let name = answer
            .as_deref()
            .and_then(|r| r.strip_prefix("250 2.0.0 Ok: queued as "))
            .map(str::to_string);
        let gone = answer.is_none();
        sent.push((message, name));
        if gone {
            return None;
        }
    }
    expect(say(b"QUIT\r\n"), "221").map(|_| ())
}

fn test_id(body: &[u8]) -> String {
    let line = body.split(|&b| b == b'\n').next().unwrap();
    String::from_utf8_lossy(line.strip_prefix(b"X-Test-Id: ").expect("X-Test-Id first"))
        .into_owned()
}

/// The session log's lines: all but a torn last one must parse. Returns whether it is torn.
fn check_session_log(storage: &Path) -> bool {
    let text = fs::read(storage.join("sessions.jsonl")).unwrap_or_default();
    let torn = !text.is_empty() && !text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if torn && i == lines.len() - 1 {
            assert!(
                serde_json::from_slice::<serde_json::Value>(line).is_err(),
                "a whole line without its newline"
            );
            continue;
        }
        serde_json::from_slice::<serde_json::Value>(line).unwrap_or_else(|e| {
            panic!(
                "line {} of the session log: {e}: {}",
                i + 1,
                String::from_utf8_lossy(line)
            )
        });
    }
    torn
}

/// `sinkhole campaigns --storage STORAGE --json`, run to the end.
fn campaigns_json(storage: &Path) -> Output {
    sinkhole(&[
        "campaigns",
        "--storage",
        storage.to_str().unwrap(),
        "--json",
    ])
    .unwrap()
}

#[test]
fn messages_answered_250_survive_sigkill_whole() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut daemon = Daemon::start("", "");
    let storage = daemon.storage();
    let new = storage.join("maildir/new");
    let tmp = storage.join("maildir/tmp");
    // Every message sent in every round, by test id, and the names answered 250.
    let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
    let mut acked: Vec<(String, String)> = Vec::new();
    for round in 0..5 {
        let started = Instant::now();
        let kill_after = Duration::from_millis(300 + rng.below(1500));
        let addr = daemon.addr;
        let results = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..4)
                .map(|n| {
                    let seed = rng.next_u64() | 1;
                    scope.spawn(move || client(addr, round, n, seed))
                })
                .collect();
            std::thread::sleep(kill_after);
            daemon.kill();
            clients
                .into_iter()
                .map(|c| c.join().unwrap())
                .collect::<Vec<_>>()
        });
        let (mut round_sent, mut round_acked) = (0, 0);
        for (message, name) in results.into_iter().flatten() {
            round_sent += 1;
            if let Some(name) = name {
                round_acked += 1;
                acked.push((name, message.id.clone()));
            }
            sent.insert(message.id, message.body);
        }
        // Every 250 is in new/, whole.
        for (name, id) in &acked {
            let file = fs::read(new.join(name))
                .unwrap_or_else(|e| panic!("{name} (message {id}) was answered 250: {e}"));
            assert!(
                stored_body(&file) == lf_endings(&sent[id]).as_slice(),
                "{name} differs from {id}"
            );
        }
        // Nothing partial in new/: each file is a whole message that was sent.
        let in_new = files_in(&new);
        for path in &in_new {
            let file = fs::read(path).unwrap();
            let body = stored_body(&file);
            let id = test_id(body);
            assert!(
                sent.get(&id).is_some_and(|b| lf_endings(b) == body),
                "{} is not the whole message {id}",
                path.display()
            );
        }
        let torn = check_session_log(&storage);
        if torn {
            let out = campaigns_json(&storage);
            assert!(out.status.success(), "campaigns on a torn log: {out:?}");
            let warning = String::from_utf8_lossy(&out.stderr);
            assert!(warning.contains("torn last line"), "{warning}");
        }
        let left_in_tmp = files_in(&tmp).len();
        daemon.restart();
        assert!(files_in(&tmp).is_empty(), "tmp/ after the restart");
        if left_in_tmp > 0 {
            assert!(
                daemon
                    .stderr()
                    .contains(&format!("removed {left_in_tmp} unfinished"))
            );
        }
        eprintln!(
            "round {round}: killed after {kill_after:?} ({:?} in all): {round_sent} messages \
             sent, {round_acked} answered 250, {} in new/ so far, {left_in_tmp} left in tmp/, \
             session log torn: {torn}",
            started.elapsed(),
            in_new.len()
        );
    }
    assert!(
        acked.len() >= 5,
        "too few messages got through to test anything"
    );
    // After a clean stop the whole log reads line by line: a torn line left by a crash does
    // not swallow the first line written after the restart.
    daemon.stop();
    assert!(
        !check_session_log(&storage),
        "a clean stop leaves no torn line"
    );
    let out = campaigns_json(&storage);
    assert!(out.status.success());
}

/// The state a crash in the middle of the log's `write` leaves (a line cut short, no newline),
/// then a restart: the torn line is skipped by `sinkhole campaigns` with a warning, and the
/// sessions logged after the restart are whole lines of their own.
#[test]
fn a_torn_session_log_line_does_not_swallow_the_next_one() {
    let mut daemon = Daemon::start("", "");
    let storage = daemon.storage();
    let mut client = sinkhole_tests::daemon::SmtpClient::connect(daemon.addr);
    client.reply();
    client.send(b"QUIT\r\n");
    client.reply();
    assert_eq!(daemon.wait_sessions(1).len(), 1);
    daemon.kill();
    let log = storage.join("sessions.jsonl");
    let mut text = fs::read(&log).unwrap();
    text.truncate(text.len() / 2);
    fs::write(&log, &text).unwrap();
    assert!(check_session_log(&storage), "the log is torn");

    daemon.restart();
    let mut client = sinkhole_tests::daemon::SmtpClient::connect(daemon.addr);
    client.reply();
    client.send(b"HELO after.example\r\nQUIT\r\n");
    client.reply();
    client.reply();
    daemon.stop();
    let text = fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let session: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the session after the restart: {e}: {last}"));
    assert_eq!(session["helo"], "after.example");
    let (sessions, warning) = sessions_read(&storage);
    assert!(
        warning.contains("line 1: not a session record"),
        "{warning}"
    );
    assert_eq!(sessions, 1);
}
