//! The disk floor (`storage.min_free`) with the real daemon on a small tmpfs of its own, and
//! swaks as the client: below the floor MAIL gets 452 and the session log is short, below the
//! hard floor nothing more is written, and once space returns mail is taken again by itself.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sinkhole_tests::daemon::{Daemon, SmtpClient, files_in, smtp_config};
use sinkhole_tests::{free_port, run, skip, temp_dir};

const MIB: u64 = 1 << 20;

/// A tmpfs mounted for the test, unmounted when dropped (a test that fails included).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        fs::create_dir_all(dir)?;
        let options = format!("size={size}");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &options, "tmpfs", path(dir)],
        )?;
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Bytes an unprivileged writer may still take.
    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.0).expect("statvfs of the tmpfs");
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the daemon may not have let go of it yet.
        if let Err(e) = run("umount", &["-l", path(&self.0)]) {
            eprintln!("cannot unmount the test's tmpfs {}: {e}", self.0.display());
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// Grows (or shrinks) the ballast file until the tmpfs has about `free` bytes left.
fn leave_free(tmpfs: &Tmpfs, ballast: &Path, free: u64) {
    let now = fs::metadata(ballast).map_or(0, |m| m.len());
    let target = (now + tmpfs.free()).saturating_sub(free);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ballast)
        .unwrap();
    // Written, not truncated up: a sparse file would take no room.
    let chunk = vec![0x55u8; 64 * 1024];
    let mut len = now;
    while len < target {
        let n = chunk.len().min((target - len) as usize);
        file.write_all(&chunk[..n]).expect("write the ballast");
        len += n as u64;
    }
    file.sync_all().unwrap();
    let left = tmpfs.free();
    assert!(
        left.abs_diff(free) < MIB,
        "{left} bytes free, wanted {free}"
    );
}

/// swaks sends one message; its transcript.
fn swaks(addr: SocketAddr, body: &str) -> String {
    let output = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--from", "sender@example.com", "--to", "trap@example.org"])
        .args([
            "--helo",
            "client.example",
            "--timeout",
            "10",
            "--body",
            body,
        ])
        .output()
        .expect("run swaks (installed by cargo xtask setup)");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// The reply to a MAIL after EHLO, from a plain client.
fn mail_reply(addr: SocketAddr) -> String {
    let mut client = SmtpClient::connect(addr);
    client.reply();
    client.send(b"EHLO client.example\r\n");
    client.reply();
    client.send(b"MAIL FROM:<a@example.com>\r\n");
    let reply = client.reply().remove(0);
    client.send(b"QUIT\r\n");
    client.reply();
    reply
}

/// Asks until the MAIL reply starts with `code`, at most `limit`; returns how long it took.
fn wait_mail_reply(addr: SocketAddr, code: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let reply = mail_reply(addr);
        if reply.starts_with(code) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "MAIL still answered {reply:?}, not {code}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One sample of `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in {response}")) as u64
}

/// The first line of `STORAGE/sessions.jsonl` for which `wanted` holds, waiting for it at most
/// 10 s (a session is logged once its DNS answers are in, here after `dnsbl.timeout`, and the
/// log is written out at least every second); the lines before it come first.
fn wait_line(
    storage: &Path,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(storage.join("sessions.jsonl")).unwrap_or_default();
        let mut lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        if let Some(i) = lines.iter().position(&wanted) {
            let line = lines.remove(i);
            lines.truncate(i);
            return (lines, line);
        }
        assert!(Instant::now() < deadline, "no such line in {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The queue ids of every `250 ... queued as ID` in a transcript.
fn queued(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| {
            l.split_once("250 2.0.0 Ok: queued as ")
                .map(|(_, id)| id.trim().into())
        })
        .collect()
}

#[test]
fn below_min_free_mail_is_refused_and_the_log_shrinks_then_stops_until_space_returns() {
    const TEST: &str = "disk_floor";
    if !rustix::process::geteuid().is_root() {
        return skip(TEST, "needs root to mount a tmpfs");
    }
    // Declared in this order, a failing test still stops the daemon, then unmounts, then
    // removes the directories.
    let mount_dir = temp_dir("floor-mnt");
    let tmpfs = Tmpfs::mount(&mount_dir.path().join("data"), "16m").expect("mount a tmpfs");
    let storage = tmpfs.0.clone();
    let ballast = storage.join("ballast");
    let new = storage.join("maildir/new");
    let (port, metrics_port) = (free_port(), free_port());
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let config = smtp_config(
        port,
        mount_dir.path(),
        "",
        "min_free = \"8MiB\"",
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    );
    let mut daemon = Daemon::start_with_config(
        temp_dir("floor"),
        &config,
        SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let log = storage.join("sessions.jsonl");
    let mut acknowledged = Vec::new();

    // Room: a message is taken.
    let out = swaks(daemon.addr, "before the floor");
    acknowledged.extend(queued(&out));
    assert_eq!(acknowledged.len(), 1, "{out}");
    assert!(metric(metrics, "sinkhole_storage_free_bytes") > 8 * MIB);
    let id = acknowledged[0].clone();
    let (_, line) = wait_line(&storage, |l| l["transactions"][0]["message"] == id.as_str());
    assert!(
        line.get("short").is_none() && line.get("transcript").is_some(),
        "{line}"
    );

    // Below min_free (8 MiB), above the hard floor (2 MiB): MAIL is refused.
    leave_free(&tmpfs, &ballast, 5 * MIB);
    wait_mail_reply(daemon.addr, "452", Duration::from_secs(5));
    daemon.wait_stderr("below storage.min_free", Duration::from_secs(5));
    let out = swaks(daemon.addr, "below the floor");
    assert!(
        out.contains("<** 452 4.3.1 Insufficient system storage"),
        "{out}"
    );
    assert!(queued(&out).is_empty(), "{out}");
    let free = metric(metrics, "sinkhole_storage_free_bytes");
    assert!((4 * MIB..6 * MIB).contains(&free), "{free}");
    // The lines of the refused sessions are short: no transcript, counts instead.
    let (_, line) = wait_line(&storage, |l| l["short"] == true && l["transactions"] == 0);
    assert!(line.get("transcript").is_none(), "{line}");
    assert!(line.get("helo").is_none(), "{line}");
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    assert_eq!(line["verdict"], "no-mail", "{line}");
    assert_eq!(
        (&line["transactions"], &line["rcpts"], &line["messages"]),
        (&0.into(), &0.into(), &0.into()),
        "{line}"
    );
    assert!(line["id"].is_string() && line["start"].is_string() && line["end"].is_string());

    // Below the hard floor: nothing more is written; what is dropped is counted.
    leave_free(&tmpfs, &ballast, MIB);
    daemon.wait_stderr("below the hard floor", Duration::from_secs(5));
    // Lines handed over before are written out within a second (those of sessions still
    // waiting for DNS are dropped).
    std::thread::sleep(Duration::from_millis(1500));
    let log_size = fs::metadata(&log).unwrap().len();
    let messages = files_in(&new);
    let dropped = metric(metrics, "sinkhole_log_lines_dropped_total");
    let refusals = metric(metrics, "sinkhole_smtp_storage_refusals_total");
    for _ in 0..3 {
        let out = swaks(daemon.addr, "below the hard floor");
        assert!(out.contains("<** 452 4.3.1 "), "{out}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(metrics, "sinkhole_log_lines_dropped_total") < dropped + 3 {
        assert!(
            Instant::now() < deadline,
            "the dropped lines were not counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(metrics, "sinkhole_smtp_storage_refusals_total") >= refusals + 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::metadata(&log).unwrap().len(), log_size);
    assert_eq!(files_in(&new), messages);

    // Space returns: mail is taken again, without a restart.
    fs::remove_file(&ballast).unwrap();
    let took = wait_mail_reply(daemon.addr, "250", Duration::from_secs(5));
    eprintln!("{TEST}: MAIL answered 250 again {took:?} after the ballast went");
    daemon.wait_stderr("back above storage.min_free", Duration::from_secs(5));
    let out = swaks(daemon.addr, "after the floor");
    let ids = queued(&out);
    assert_eq!(ids.len(), 1, "{out}");
    // Lines are whole again.
    let id = ids[0].clone();
    let (_, line) = wait_line(&storage, |l| l["transactions"][0]["message"] == id.as_str());
    assert!(
        line.get("short").is_none() && line.get("transcript").is_some(),
        "{line}"
    );
    acknowledged.extend(ids);

    // Nothing answered 250 was lost.
    for id in &acknowledged {
        assert!(
            new.join(id).is_file(),
            "{id} was acknowledged but is not in new/"
        );
    }
    daemon.stop();
}
