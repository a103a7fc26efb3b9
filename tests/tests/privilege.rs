//! Least privilege: `sinkhole run` started as root opens what needs root, then becomes
//! `smtp.run_as` keeping only CAP_BPF and CAP_NET_ADMIN; its helper threads keep nothing.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use sinkhole_tests::daemon::{Daemon, SmtpClient, smtp_config};
use sinkhole_tests::{free_port, kernel_tests_allowed, temp_dir};

/// CAP_NET_ADMIN (12) and CAP_BPF (39).
const DAEMON_CAPS: u64 = (1 << 12) | (1 << 39);

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

#[test]
fn the_daemon_runs_as_run_as_with_only_the_capabilities_it_needs() {
    if !kernel_tests_allowed("the_daemon_runs_as_run_as_with_only_the_capabilities_it_needs") {
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

    // Every thread: nobody's uid and gid, no supplementary groups; the loop thread (the main
    // one) keeps exactly CAP_BPF and CAP_NET_ADMIN, the others nothing; the bounding set holds
    // only those two.
    let pid = daemon.pid();
    let mut threads = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = fs::read_to_string(task.join("status")).unwrap();
        threads += 1;
        assert!(
            field(&status, "Uid:").iter().all(|u| *u == uid.to_string()),
            "{status}"
        );
        assert!(
            field(&status, "Gid:").iter().all(|g| *g == gid.to_string()),
            "{status}"
        );
        assert_eq!(field(&status, "Groups:"), vec![gid.to_string()], "{status}");
        let eff = u64::from_str_radix(&field(&status, "CapEff:")[0], 16).unwrap();
        let bnd = u64::from_str_radix(&field(&status, "CapBnd:")[0], 16).unwrap();
        assert_eq!(bnd, DAEMON_CAPS, "{status}");
        let main_thread = task.file_name().unwrap().to_str() == Some(&pid.to_string());
        assert_eq!(eff, if main_thread { DAEMON_CAPS } else { 0 }, "{status}");
        assert_eq!(field(&status, "CapAmb:"), vec!["0000000000000000"]);
    }
    assert!(
        threads >= 3,
        "loop, capture and resolver threads: {threads}"
    );

    // And it still works as that user: the message is captured into files nobody owns.
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
    let messages = daemon.new_messages();
    assert_eq!(messages.len(), 1);
    let meta = fs::metadata(&messages[0]).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    daemon.stop();
    assert_eq!(
        daemon.wait_sessions(1).len(),
        1,
        "the session log is written too"
    );
}

#[test]
fn a_root_daemon_without_run_as_says_so() {
    if !kernel_tests_allowed("a_root_daemon_without_run_as_says_so") {
        return;
    }
    let mut daemon = Daemon::start("", "");
    daemon.stop();
    assert!(
        daemon
            .stderr()
            .contains("running as root with every capability: set smtp.run_as"),
        "{}",
        daemon.stderr()
    );
}
