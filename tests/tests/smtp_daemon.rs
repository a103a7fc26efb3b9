//! The daemon's limits, timeouts, shutdown and storage failures, through real sockets.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, SmtpClient, files_in, smtp_config};
use sinkhole_tests::{sinkhole_bin, temp_dir};

/// One message over a raw socket; returns the reply to the end of data.
fn send_message(client: &mut SmtpClient, body: &str) -> String {
    client.send(b"EHLO client.example\r\n");
    client.reply();
    client.transaction(body)
}

#[test]
fn connections_past_the_per_ip_limit_get_421_and_are_logged_as_refused() {
    let mut daemon = Daemon::start("max_connections_per_ip = 2", "");
    let mut first = SmtpClient::connect(daemon.addr);
    let mut second = SmtpClient::connect(daemon.addr);
    assert!(first.reply()[0].starts_with("220 "));
    assert!(second.reply()[0].starts_with("220 "));
    let mut third = SmtpClient::connect(daemon.addr);
    assert_eq!(
        third.reply(),
        ["421 4.7.0 Too many connections from your address"]
    );
    assert!(third.closed());
    // A slot frees when a client leaves.
    first.send(b"QUIT\r\n");
    assert!(first.reply()[0].starts_with("221 "));
    assert!(first.closed());
    let mut fourth = SmtpClient::connect(daemon.addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The daemon may see the new connection before the closed one's FIN; retry briefly.
    while fourth.reply()[0].starts_with("421") {
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
        fourth = SmtpClient::connect(daemon.addr);
    }
    drop((second, fourth));
    daemon.stop();
    let sessions = daemon.sessions();
    let refused: Vec<_> = sessions
        .iter()
        .filter(|s| s["verdict"] == "refused")
        .collect();
    assert!(!refused.is_empty(), "{sessions:?}");
    assert_eq!(
        refused[0]["transcript"][0][2],
        "421 4.7.0 Too many connections from your address"
    );
}

#[test]
fn an_idle_client_is_told_421_after_the_idle_timeout() {
    let _machine = sinkhole_tests::shared();
    let mut daemon = Daemon::start("idle_timeout = \"1s\"", "");
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    let started = Instant::now();
    let reply = client.reply();
    assert!(reply[0].starts_with("421 4."), "{reply:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "timed out early: {:?}",
        started.elapsed()
    );
    assert!(client.closed());
    daemon.stop();
    assert_eq!(daemon.sessions().len(), 1);
}

#[test]
fn sigterm_says_421_to_open_sessions_and_writes_the_log_out() {
    let mut daemon = Daemon::start("", "");
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    client.send(b"EHLO client.example\r\n");
    client.reply();
    daemon.terminate();
    let reply = client.reply();
    assert!(reply[0].starts_with("421 4."), "{reply:?}");
    assert!(client.closed());
    let status = daemon.wait(Duration::from_secs(15));
    assert!(status.success(), "{status}: {}", daemon.stderr());
    let sessions = daemon.sessions();
    assert_eq!(sessions.len(), 1, "the log was not written out at shutdown");
    assert_eq!(sessions[0]["helo"], "client.example");
    let last = sessions[0]["transcript"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last[1], "s");
    assert!(last[2].as_str().unwrap().starts_with("421 "), "{last}");
}

#[test]
fn every_session_of_a_burst_reaches_the_log_whatever_batch_it_ends_in() {
    // More sessions than one hand-over to the capture thread holds, and not a multiple of it:
    // the lines go in batches, the last one partly filled when the daemon stops.
    const SESSIONS: usize = 150;
    let mut daemon = Daemon::start("", "");
    for n in 0..SESSIONS {
        let mut client = SmtpClient::connect(daemon.addr);
        assert!(client.reply()[0].starts_with("220 "));
        client.send(format!("HELO burst-{n}.example\r\nQUIT\r\n").as_bytes());
        assert!(client.reply()[0].starts_with("250 "));
        assert!(client.reply()[0].starts_with("221 "));
    }
    daemon.terminate();
    let status = daemon.wait(Duration::from_secs(15));
    assert!(status.success(), "{status}: {}", daemon.stderr());
    let mut helos: Vec<String> = daemon
        .sessions()
        .iter()
        .map(|s| s["helo"].as_str().unwrap_or_default().to_string())
        .collect();
    helos.sort();
    let mut expected: Vec<String> = (0..SESSIONS)
        .map(|n| format!("burst-{n}.example"))
        .collect();
    expected.sort();
    assert_eq!(helos, expected);
}

#[test]
fn unwritable_storage_gives_451_and_leaves_nothing_in_new() {
    let mut daemon = Daemon::start("", "");
    // new/ becomes a plain file: no message can be made or named there.
    let new = daemon.storage().join("maildir/new");
    let tmp = daemon.storage().join("maildir/tmp");
    fs::remove_dir(&new).unwrap();
    fs::write(&new, b"").unwrap();
    let mut client = SmtpClient::connect(daemon.addr);
    client.reply();
    let reply = send_message(&mut client, "lost");
    assert!(reply.starts_with("451 4.3.0 "), "{reply}");
    // The client may try again on the same connection; it is refused the same way.
    client.send(b"RSET\r\n");
    client.reply();
    let reply = send_message(&mut client, "lost too");
    assert!(reply.starts_with("451 4.3.0 "), "{reply}");
    assert_eq!(
        fs::read(&new).unwrap(),
        b"",
        "something was written where new/ was"
    );
    assert!(
        files_in(&tmp).is_empty(),
        "a tmp file was left: {:?}",
        files_in(&tmp)
    );
    client.send(b"QUIT\r\n");
    client.reply();
    daemon.stop();
    // The log line says which step failed: the file could not even be made.
    assert!(
        daemon.stderr().contains("cannot store a message")
            && daemon.stderr().contains(": writing it: "),
        "{}",
        daemon.stderr()
    );
    let session = &daemon.sessions()[0];
    assert_eq!(session["transactions"][0]["data_code"], 451);
    assert_eq!(
        session["transactions"][0]["message"],
        serde_json::Value::Null
    );
}

#[test]
fn capture_off_answers_250_and_stores_nothing() {
    let mut daemon = Daemon::start("", "capture = false");
    let mut client = SmtpClient::connect(daemon.addr);
    client.reply();
    for i in 0..3 {
        let reply = send_message(&mut client, &format!("counted {i}"));
        assert!(reply.starts_with("250 2.0.0 "), "{reply}");
    }
    client.send(b"QUIT\r\n");
    client.reply();
    daemon.stop();
    assert!(daemon.new_messages().is_empty());
    let session = &daemon.sessions()[0];
    assert_eq!(session["verdict"], "accepted");
    assert_eq!(session["transactions"].as_array().unwrap().len(), 3);
    assert_eq!(session["transactions"][2]["data_code"], 250);
    assert_eq!(
        session["transactions"][2]["message"],
        serde_json::Value::Null
    );
}

#[test]
fn a_listen_address_in_use_is_named_and_fails_the_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let dir = temp_dir("in-use");
    let config = dir.path().join("sinkhole.toml");
    fs::write(&config, smtp_config(addr.port(), dir.path(), "", "", "")).unwrap();
    let output = Command::new(sinkhole_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("sinkhole: cannot listen on {addr}: ")),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_is_one_line_and_exit_2() {
    let dir = temp_dir("bad-config");
    let config = dir.path().join("sinkhole.toml");
    fs::write(&config, "[smtp]\nmax_connections = 0\n").unwrap();
    let output = Command::new(sinkhole_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("smtp.max_connections"), "{stderr}");
}
