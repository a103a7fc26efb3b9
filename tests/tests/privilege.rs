//! Privilege separation: `sinkhole run` started as root opens what needs root, then serves as
//! `smtp.run_as` with no capability, `NoNewPrivs`, a seccomp filter and Landlock, in every
//! thread; started as another user it does what that user may and says what it cannot.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use sinkhole_tests::daemon::{Daemon, SmtpClient, smtp_config};
use sinkhole_tests::{free_port, kernel_tests_allowed, sinkhole_bin, temp_dir};

/// A field of a `/proc/.../status` file, split on white space.
fn field(status: &str, name: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn nobody() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("a `nobody` user");
    let parts: Vec<&str> = line.split(':').collect();
    (parts[2].parse().unwrap(), parts[3].parse().unwrap())
}

/// The status of every thread of `pid`, checked to hold no capability, to have
/// `NoNewPrivs` and a seccomp filter. Returns how many threads there are.
fn assert_every_thread_unprivileged_and_filtered(pid: u32) -> usize {
    let mut threads = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        threads += 1;
        for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(&status, set), ["0000000000000000"], "{set} {status}");
        }
        assert_eq!(field(&status, "NoNewPrivs:"), ["1"], "{status}");
        // 2: a seccomp filter (1 would be strict mode).
        assert_eq!(field(&status, "Seccomp:"), ["2"], "{status}");
    }
    threads
}

#[test]
fn the_serving_daemon_holds_no_privilege_in_any_thread() {
    if !kernel_tests_allowed("the_serving_daemon_holds_no_privilege_in_any_thread") {
        return;
    }
    let (uid, gid) = nobody();
    let dir = temp_dir("privilege");
    // Like /var/lib: the folder above the storage lets the daemon's user through.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let config = smtp_config(port, dir.path(), "run_as = \"nobody\"", "", "");
    let mut daemon =
        Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    let pid = daemon.pid();
    assert!(
        daemon
            .stderr()
            .contains("confined: seccomp filter, no new privileges, Landlock on"),
        "{}",
        daemon.stderr()
    );

    // A session first, so that every thread the daemon starts exists.
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 "));
    client.send(
        b"EHLO client.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
    );
    for _ in 0..4 {
        client.reply();
    }
    client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n");
    assert!(client.reply()[0].starts_with("250 "), "message stored");

    let threads = assert_every_thread_unprivileged_and_filtered(pid);
    assert!(threads >= 4, "loop, resolver, capture, commit: {threads}");
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(field(&status, "Uid:").iter().all(|u| *u == uid.to_string()));
        assert!(field(&status, "Gid:").iter().all(|g| *g == gid.to_string()));
        assert_eq!(field(&status, "Groups:"), [gid.to_string()], "{status}");
    }

    // And it still works confined: the message is in files nobody owns, the log written.
    let messages = daemon.new_messages();
    assert_eq!(messages.len(), 1);
    let meta = fs::metadata(&messages[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    daemon.stop();
    assert_eq!(daemon.wait_sessions(1).len(), 1);
    assert!(
        !daemon.stderr().contains("Operation not permitted"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn a_root_daemon_without_run_as_drops_its_capabilities_and_says_so() {
    if !kernel_tests_allowed("a_root_daemon_without_run_as_drops_its_capabilities_and_says_so") {
        return;
    }
    let mut daemon = Daemon::start("", "");
    assert_every_thread_unprivileged_and_filtered(daemon.pid());
    daemon.stop();
    assert!(
        daemon
            .stderr()
            .contains("running as root (uid 0, no capabilities): set smtp.run_as"),
        "{}",
        daemon.stderr()
    );
}

#[test]
fn a_daemon_started_without_root_serves_and_says_what_it_cannot_do() {
    if !kernel_tests_allowed("a_daemon_started_without_root_serves_and_says_what_it_cannot_do") {
        return;
    }
    let (uid, gid) = nobody();
    let dir = temp_dir("unprivileged");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
    let port = free_port();
    // Asked to attach XDP, which only root may.
    let config = smtp_config(port, dir.path(), "", "", "")
        .replace("[xdp]\n", "[xdp]\ninterfaces = [\"lo\"]\n");
    let config_file = dir.path().join("sinkhole.toml");
    fs::write(&config_file, config).unwrap();
    fs::set_permissions(&config_file, fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(sinkhole_bin())
        .args(["run", "--config"])
        .arg(&config_file)
        .env("RUST_LOG", "info")
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let logged = || fs::read_to_string(&stderr).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !logged().contains("listening on") {
        assert!(child.try_wait().unwrap().is_none(), "exited: {}", logged());
        assert!(std::time::Instant::now() < deadline, "{}", logged());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = SmtpClient::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(client.reply()[0].starts_with("220 "));
    client.send(b"QUIT\r\n");
    assert!(client.reply()[0].starts_with("221 "));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success(), "{}", logged());
    let logged = logged();
    // It cannot attach or pin, says so, and blocks in memory instead.
    assert!(logged.contains("XDP unavailable ("), "{logged}");
    assert!(
        logged.contains("blocks are kept in memory only"),
        "{logged}"
    );
    assert!(logged.contains("confined: seccomp filter"), "{logged}");
    assert!(!logged.contains("running as root"), "{logged}");
}
