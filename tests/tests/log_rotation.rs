//! The session log's rotation (`storage.log_rotate`, `storage.log_keep`) and its reopen on
//! `SIGUSR1`, through the real daemon, real clients on loopback, and `sinkhole campaigns`
//! reading every file back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, SmtpClient};
use sinkhole_tests::sessions_read;

/// One session that says EHLO with a long name (so its log line is about a kilobyte) and quits.
fn session(daemon: &Daemon) {
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    client.send(format!("EHLO {}.example\r\n", "h".repeat(240)).as_bytes());
    assert!(client.reply()[0].starts_with("250"));
    client.send(b"QUIT\r\n");
    assert!(client.reply()[0].starts_with("221 "));
}

/// The sessions `sinkhole campaigns` reads over every file of the log.
fn counted(daemon: &Daemon) -> u64 {
    sessions_read(&daemon.storage()).0
}

/// Waits (bounded) until `sinkhole campaigns` counts `n` sessions.
fn wait_counted(daemon: &Daemon, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = counted(daemon);
        if got == n {
            return;
        }
        assert!(
            got < n && Instant::now() < deadline,
            "campaigns counts {got} sessions, {n} were sent: {:?}",
            files(&daemon.storage())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The names in `dir` that start with `sessions.jsonl.`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("sessions.jsonl."))
        .collect();
    names.sort();
    names
}

/// Waits (bounded) until every rotated file is compressed, and returns them.
fn wait_compressed(dir: &Path) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names = files(dir);
        if names.iter().all(|n| n.ends_with(".gz")) {
            return names.iter().map(|n| dir.join(n)).collect();
        }
        assert!(Instant::now() < deadline, "not all compressed: {names:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines in a gzipped file, through `gzip -dc`.
fn gzip_lines(path: &Path) -> usize {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", path.display());
    out.stdout.iter().filter(|&&b| b == b'\n').count()
}

#[test]
fn the_log_rotates_by_size_compressed_losing_no_line_and_keeps_log_keep_files() {
    let mut daemon = Daemon::start("", "log_rotate = \"64KiB\"\nlog_keep = 100");
    // Waves a second apart: the log is written out about once a wave, and each write that
    // would take the file past 64 KiB goes into a new one.
    let (waves, per_wave) = (6, 70);
    for _ in 0..waves {
        for _ in 0..per_wave {
            session(&daemon);
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    let sent = (waves * per_wave) as u64;
    wait_counted(&daemon, sent);
    let storage = daemon.storage();
    let rotated = wait_compressed(&storage);
    assert!(rotated.len() >= 3, "{rotated:?}");
    let current = fs::read_to_string(storage.join("sessions.jsonl")).unwrap();
    let lines = rotated.iter().map(|f| gzip_lines(f)).sum::<usize>() + current.lines().count();
    assert_eq!(lines as u64, sent, "{rotated:?}");
    // Compressed or not, every line is read once.
    assert_eq!(counted(&daemon), sent);

    // Fewer kept: the oldest are deleted (at the next start, as after each rotation), and the
    // report counts exactly what the kept files hold.
    let config = daemon.config_path();
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace("log_keep = 100", "log_keep = 2")).unwrap();
    daemon.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while files(&storage).len() > 2 {
        assert!(Instant::now() < deadline, "{:?}", files(&storage));
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = wait_compressed(&storage);
    assert_eq!(kept, rotated[rotated.len() - 2..]);
    let lines = kept.iter().map(|f| gzip_lines(f)).sum::<usize>() + current.lines().count();
    assert_eq!(counted(&daemon), lines as u64);
}

#[test]
fn sigusr1_reopens_the_log_after_an_outside_rename_losing_no_line() {
    let mut daemon = Daemon::start("", "log_rotate = \"never\"");
    let storage = daemon.storage();
    for _ in 0..5 {
        session(&daemon);
    }
    wait_counted(&daemon, 5);
    // What logrotate does: rename, then signal.
    fs::rename(
        storage.join("sessions.jsonl"),
        storage.join("sessions.jsonl.1"),
    )
    .unwrap();
    for _ in 0..5 {
        session(&daemon);
    }
    let status = Command::new("kill")
        .args(["-USR1", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..5 {
        session(&daemon);
    }
    wait_counted(&daemon, 15);
    daemon.assert_running();
    let fresh = fs::read_to_string(storage.join("sessions.jsonl")).unwrap();
    let renamed = fs::read_to_string(storage.join("sessions.jsonl.1")).unwrap();
    // The last five at least went into the new file; none is in both.
    assert!(fresh.lines().count() >= 5, "{fresh}");
    assert_eq!(fresh.lines().count() + renamed.lines().count(), 15);
}
