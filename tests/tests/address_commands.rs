//! `sinkhole address close|open|block|unblock|show|list` against a running daemon: each change
//! is answered at the next RCPT without a restart, many writers at once lose nothing, and a
//! file the caller may not write is refused with a message saying so (and one it may write
//! without owning keeps its owner).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sinkhole_tests::daemon::SmtpClient;
use sinkhole_tests::policy::PolicyDaemon;
use sinkhole_tests::{TempDir, sinkhole_bin, temp_dir};

fn world(files: &[(&str, &str)]) -> (PolicyDaemon, TempDir) {
    let addresses = temp_dir("addresses");
    for (name, text) in files {
        fs::write(addresses.path().join(name), text).unwrap();
    }
    let extra = format!("addresses_dir = \"{}\"", addresses.path().display());
    (PolicyDaemon::start("", &extra), addresses)
}

/// `sinkhole address ARGS --config CONFIG`.
fn address(config: &Path, args: &[&str]) -> Output {
    Command::new(sinkhole_bin())
        .arg("address")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run sinkhole address")
}

/// Like [`address`], failing the test unless it exits 0; its stdout.
fn address_ok(config: &Path, args: &[&str]) -> String {
    let out = address(config, args);
    assert!(
        out.status.success(),
        "sinkhole address {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first line of the RCPT reply for `rcpt` from `source` with sender `from`.
fn rcpt(w: &PolicyDaemon, source: &str, from: &str, rcpt: &str) -> String {
    let mut c = SmtpClient::connect_from(w.daemon.addr, source.parse().unwrap());
    c.reply();
    c.send(
        format!("HELO client.example\r\nMAIL FROM:<{from}>\r\nRCPT TO:<{rcpt}>\r\nQUIT\r\n")
            .as_bytes(),
    );
    c.reply();
    c.reply();
    c.reply().remove(0)
}

/// Waits (bounded) until the daemon answers `rcpt` with a reply starting with `expected`.
fn answers(w: &PolicyDaemon, source: &str, from: &str, to: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = rcpt(w, source, from, to);
        if reply.starts_with(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "{to}: {reply}, not {expected}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_command_changes_the_answer_at_the_next_rcpt() {
    let (mut w, dir) = world(&[(
        "chris.toml",
        "# Chris's file\naddresses = [\"chris@example.org\"]\n",
    )]);
    let config = w.daemon.config_path();
    answers(
        &w,
        "127.0.0.60",
        "a@ok.example",
        "chris@example.org",
        "250 ",
    );

    let out = address_ok(
        &config,
        &["close", "chris@example.org", "--message", "Gone, sorry"],
    );
    assert_eq!(
        out,
        format!(
            "chris@example.org: closed ({})\n",
            dir.path().join("chris.toml").display()
        )
    );
    answers(
        &w,
        "127.0.0.60",
        "a@ok.example",
        "chris@example.org",
        "550 5.7.1 Gone, sorry",
    );
    let shown = address_ok(&config, &["show", "chris@example.org"]);
    assert!(shown.contains("state         closed since "), "{shown}");
    assert!(
        shown.contains("closed by `sinkhole address close` (uid 0)"),
        "{shown}"
    );

    address_ok(&config, &["open", "Chris@Example.org"]);
    answers(
        &w,
        "127.0.0.60",
        "a@ok.example",
        "chris@example.org",
        "250 ",
    );

    address_ok(
        &config,
        &["block", "chris@example.org", "--host", "127.0.0.61"],
    );
    address_ok(
        &config,
        &["block", "chris@example.org", "--sender", "*@*.biz"],
    );
    answers(
        &w,
        "127.0.0.61",
        "a@ok.example",
        "chris@example.org",
        "550 5.7.1 ",
    );
    answers(
        &w,
        "127.0.0.60",
        "deals@shop.biz",
        "chris@example.org",
        "550 5.7.1 ",
    );
    answers(
        &w,
        "127.0.0.60",
        "a@ok.example",
        "chris@example.org",
        "250 ",
    );
    let json: Value = serde_json::from_str(&address_ok(
        &config,
        &["show", "chris@example.org", "--json"],
    ))
    .unwrap();
    assert_eq!(
        json["block"]["hosts"],
        serde_json::json!(["127.0.0.61/32"]),
        "{json}"
    );
    assert_eq!(
        json["block"]["senders"],
        serde_json::json!(["*@*.biz"]),
        "{json}"
    );
    assert_eq!(json["state"], "open");

    address_ok(
        &config,
        &["unblock", "chris@example.org", "--host", "127.0.0.61"],
    );
    answers(
        &w,
        "127.0.0.61",
        "a@ok.example",
        "chris@example.org",
        "250 ",
    );
    let out = address(
        &config,
        &["unblock", "chris@example.org", "--host", "127.0.0.61"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`127.0.0.61/32` is not in block.hosts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The comment of the file's owner is still there.
    let text = fs::read_to_string(dir.path().join("chris.toml")).unwrap();
    assert!(text.starts_with("# Chris's file\n"), "{text}");

    // An address without a file: `show` says so, `close` makes one.
    let none: Value =
        serde_json::from_str(&address_ok(&config, &["show", "new@example.org", "--json"])).unwrap();
    assert_eq!(
        none,
        serde_json::json!({"address": "new@example.org", "file": null, "state": "open"})
    );
    address_ok(&config, &["close", "new@example.org"]);
    assert!(dir.path().join("new@example.org.toml").exists());
    answers(
        &w,
        "127.0.0.60",
        "a@ok.example",
        "new@example.org",
        "550 5.1.1 ",
    );
    let list: Value = serde_json::from_str(&address_ok(&config, &["list", "--json"])).unwrap();
    let states: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["file"].as_str().unwrap(), f["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("chris.toml", "open"), ("new@example.org.toml", "closed")]
    );

    // Bad input is one line and exit 1.
    for (args, says) in [
        (&["close", "nobody"][..], "`nobody` is not an address"),
        (
            &["block", "chris@example.org", "--host", "10.0.0.1/8"][..],
            "has host bits",
        ),
    ] {
        let out = address(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
    w.daemon.stop();
}

#[test]
fn many_writers_at_once_on_one_file_lose_nothing() {
    let (mut w, dir) = world(&[(
        "shared.toml",
        "addresses = [\"a@example.org\", \"b@example.org\"]\n",
    )]);
    let config = w.daemon.config_path();
    // Two shells close it at once while ten others block senders in the same file.
    let mut children = Vec::new();
    for (i, address) in ["a@example.org", "b@example.org"].iter().enumerate() {
        let message = format!("Closed by shell {i}");
        children.push(
            Command::new(sinkhole_bin())
                .args([
                    "address",
                    "close",
                    address,
                    "--message",
                    &message,
                    "--config",
                ])
                .arg(&config)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for i in 0..10 {
        children.push(
            Command::new(sinkhole_bin())
                .args(["address", "block", "a@example.org", "--sender"])
                .arg(format!("@bulk{i}.example"))
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let json: Value =
        serde_json::from_str(&address_ok(&config, &["show", "b@example.org", "--json"])).unwrap();
    assert_eq!(json["state"], "closed", "{json}");
    let mut senders: Vec<&str> = json["block"]["senders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    senders.sort_unstable();
    let mut expected: Vec<String> = (0..10).map(|i| format!("@bulk{i}.example")).collect();
    expected.sort_unstable();
    assert_eq!(senders, expected, "every writer's block is there");
    let closed = json["messages"]["closed"].as_str().unwrap();
    assert!(closed.starts_with("550 5.7.1 Closed by shell "), "{json}");
    // No temporary file left, and the daemon read a file that parses.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    answers(
        &w,
        "127.0.0.62",
        "x@ok.example",
        "b@example.org",
        "550 5.7.1 Closed by shell ",
    );
    assert!(
        !w.daemon.stderr().contains("shared.toml:"),
        "{}",
        w.daemon.stderr()
    );
    w.daemon.stop();
}

#[test]
fn a_file_the_caller_may_not_write_is_refused_and_one_it_may_keeps_its_owner() {
    if !rustix::process::geteuid().is_root() {
        sinkhole_tests::skip("address_commands::refused", "needs root to act as nobody");
        return;
    }
    let (mut w, dir) = world(&[
        ("root.toml", "addresses = [\"root@example.org\"]\n"),
        ("shared.toml", "addresses = [\"team@example.org\"]\n"),
    ]);
    // `nobody` may read the config and the directory, write the directory (sticky, like /tmp)
    // and the shared file through its group, and not root's own file.
    for path in [w.dir.path(), dir.path()] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o1777)).unwrap();
    }
    fs::set_permissions(w.daemon.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(w.daemon.config_path(), fs::Permissions::from_mode(0o644)).unwrap();
    let shared = dir.path().join("shared.toml");
    std::os::unix::fs::chown(&shared, Some(0), Some(65534)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o664)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(sinkhole_bin())
            .arg("address")
            .args(args)
            .arg("--config")
            .arg(w.daemon.config_path())
            .output()
            .expect("run setpriv")
    };
    let out = as_nobody(&["close", "root@example.org"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "sinkhole: {}: you may not write this file (owner uid 0, mode 0644); ask its owner or the operator",
            dir.path().join("root.toml").display()
        )
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("root.toml")).unwrap(),
        "addresses = [\"root@example.org\"]\n",
        "untouched"
    );
    // The shared file is written in place: its owner and mode stay.
    let out = as_nobody(&["close", "team@example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = fs::metadata(&shared).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, 65534, 0o664)
    );
    assert!(fs::read_to_string(&shared).unwrap().contains("(uid 65534)"));
    answers(
        &w,
        "127.0.0.63",
        "x@ok.example",
        "team@example.org",
        "550 5.1.1 ",
    );
    w.daemon.stop();
}

#[test]
fn without_an_addresses_dir_the_commands_say_so() {
    let dir = temp_dir("noaddr");
    let config = dir.path().join("sinkhole.toml");
    fs::write(&config, "").unwrap();
    let out = address(&config, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "sinkhole: policy.addresses_dir is not set in the configuration"
    );
}
