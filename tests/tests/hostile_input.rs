//! Operator and client input that would do harm if taken as it comes, through the real binary:
//! prefixes that block a good part of the Internet (refused unless `--force`), control bytes
//! from a feed or a `--reason` (escaped wherever printed), and a client's own `X-Sinkhole-*`
//! headers (stored renamed, so the daemon's cannot be forged).

use std::fs;
use std::process::{Command, Output};

use sinkhole_tests::daemon::Daemon;
use sinkhole_tests::netns::PinDir;
use sinkhole_tests::run_client;
use sinkhole_tests::{TempDir, kernel_tests_allowed, sinkhole, sinkhole_ok, temp_dir};

/// Maps pinned in a pin dir of the test's own, and a config naming them (the default
/// `xdp.allow`: loopback only); `None` when `test` may not touch the kernel (see
/// [`kernel_tests_allowed`]).
struct Maps {
    /// Removed with the test.
    _pins: PinDir,
    dir: TempDir,
    config: String,
}

impl Maps {
    fn new(test: &str) -> Option<Maps> {
        if !kernel_tests_allowed(test) {
            return None;
        }
        let pins = PinDir::new("hstl");
        let dir = temp_dir("hostile");
        let path = dir.path().join("sinkhole.toml");
        fs::write(
            &path,
            format!("[xdp]\npin_dir = \"{}\"\n", pins.path().display()),
        )
        .unwrap();
        let config = path.to_str().unwrap().to_string();
        Some(Maps {
            _pins: pins,
            dir,
            config,
        })
    }
}

/// The prefixes `list --json` shows, sorted.
fn listed(config: &str) -> Vec<String> {
    let text = sinkhole_ok(&["list", "--json", "--config", config]).unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut prefixes: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["prefix"].as_str().unwrap().to_string())
        .collect();
    prefixes.sort();
    prefixes
}

/// Panics if `bytes` hold a control byte (C0 but the newline that ends lines, or DEL) or a C1
/// control character, raw.
fn assert_no_raw_control(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let raw = text
        .chars()
        .find(|&c| c.is_control() && c != '\n')
        .map(|c| c as u32);
    assert_eq!(
        raw,
        None,
        "{what} holds a raw control character: {}",
        text.escape_debug()
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn block_refuses_prefixes_wider_than_8_or_16_unless_forced() {
    let Some(maps) = Maps::new("block_refuses_prefixes_wider_than_8_or_16_unless_forced") else {
        return;
    };
    let config = maps.config.as_str();
    let wide = [
        ("0.0.0.0/0", 8),
        ("::/0", 16),
        ("10.0.0.0/7", 8),
        ("2000::/15", 16),
    ];
    for (prefix, widest) in wide {
        let out = sinkhole(&["block", prefix, "--config", config]).unwrap();
        assert_eq!(out.status.code(), Some(1), "{prefix}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!("sinkhole: {prefix} is wider than /{widest}; --force blocks it anyway\n")
        );
        assert!(out.stdout.is_empty(), "{prefix}");
    }
    // Nothing was blocked: not even the maps were made.
    let out = sinkhole(&["list", "--config", config]).unwrap();
    assert!(
        stderr(&out).contains("no sinkhole maps in"),
        "{}",
        stderr(&out)
    );

    // The narrowest refused ones' neighbours are taken without --force.
    sinkhole_ok(&["block", "10.0.0.0/8", "--config", config]).unwrap();
    sinkhole_ok(&["block", "2001::/16", "--config", config]).unwrap();
    for (prefix, _) in wide {
        let out = sinkhole_ok(&["block", prefix, "--force", "--config", config]).unwrap();
        assert_eq!(out, format!("blocked {prefix} until unblocked (manual)\n"));
    }
    assert_eq!(
        listed(config),
        [
            "0.0.0.0/0",
            "10.0.0.0/7",
            "10.0.0.0/8",
            "2000::/15",
            "2001::/16",
            "::/0"
        ]
    );
    // xdp.allow still wins over --force.
    let out = sinkhole(&["block", "127.0.0.1", "--force", "--config", config]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("allow-listed"), "{}", stderr(&out));
}

#[test]
fn import_names_wide_and_hostile_lines_escaped_and_loads_the_rest() {
    let Some(maps) = Maps::new("import_names_wide_and_hostile_lines_escaped_and_loads_the_rest")
    else {
        return;
    };
    let config = maps.config.as_str();
    let feed = maps.dir.path().join("feed.txt");
    fs::write(
        &feed,
        b"198.51.100.0/24\n0.0.0.0/0\n203.0.113.9\x1b]0;owned\x07\rx\n2001:db8::/32\n::/0 # all\n",
    )
    .unwrap();
    let feed_arg = feed.to_str().unwrap();
    let import = |force: &[&str]| {
        let mut args = vec!["import", feed_arg, "--format", "plain", "--config", config];
        args.extend(force);
        sinkhole(&args).unwrap()
    };

    let out = import(&[]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_no_raw_control("import's stderr", &out.stderr);
    assert!(
        text.contains(&format!(
            "sinkhole: {feed_arg}:2: 0.0.0.0/0 is wider than /8; --force blocks it anyway\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "sinkhole: {feed_arg}:3: `203.0.113.9\\x1b]0;owned\\x07\\x0dx` is not an IP address"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "sinkhole: {feed_arg}:5: ::/0 is wider than /16; --force blocks it anyway\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("the good ones were loaded: 2 added, 0 skipped (allow-listed), 3 bad"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "a line per bad line, one summary");
    assert_eq!(listed(config), ["198.51.100.0/24", "2001:db8::/32"]);

    // With --force only the line that is not a prefix is bad.
    let out = import(&["--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_no_raw_control("import --force's stderr", &out.stderr);
    assert!(
        stderr(&out).contains("4 added, 0 skipped (allow-listed), 1 bad"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        listed(config),
        ["0.0.0.0/0", "198.51.100.0/24", "2001:db8::/32", "::/0"]
    );
}

#[test]
fn a_reason_with_control_bytes_is_printed_escaped() {
    let Some(maps) = Maps::new("a_reason_with_control_bytes_is_printed_escaped") else {
        return;
    };
    let config = maps.config.as_str();
    let reason = "evil\x1b[2J\x07\u{9b}\u{202e}";
    let out = sinkhole_ok(&["block", "192.0.2.1", "--reason", reason, "--config", config]).unwrap();
    assert_no_raw_control("block's stdout", out.as_bytes());
    assert_eq!(
        out,
        "blocked 192.0.2.1/32 until unblocked (evil\\x1b[2J\\x07\\u{9b}\\u{202e})\n"
    );

    let table = sinkhole_ok(&["list", "--config", config]).unwrap();
    assert_no_raw_control("list", table.as_bytes());
    assert!(
        table.contains("evil\\x1b[2J\\x07\\u{9b}\\u{202e}\n"),
        "{table}"
    );

    // JSON: every unsafe character as a \u escape, and the reason read back whole.
    let json = sinkhole_ok(&["list", "--json", "--config", config]).unwrap();
    assert_no_raw_control("list --json", json.as_bytes());
    assert!(json.contains(r"evil\u001b[2J\u0007\u009b\u202e"), "{json}");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list[0]["reason"], reason);

    let dataset = sinkhole_ok(&["export", "--family", "ipv4", "--config", config]).unwrap();
    assert_no_raw_control("export", dataset.as_bytes());
    assert!(
        dataset.contains("192.0.2.1 :127.0.0.2:evil?[2J??"),
        "{dataset}"
    );
}

/// The message the client sends: our header names in three spellings, one folded, a
/// continuation line and a body line that look like ours, which stay.
const FORGED: &[u8] = b"From: a@example.com\r\n\
    X-Sinkhole-Client: 6.6.6.6\r\n\
    x-sinkhole-session: forged\r\n\
    X-SINKHOLE-Dnsbl: folded\r\n\
    \tX-Sinkhole-Helo: continued\r\n\
    Subject: X-Sinkhole-Client in a value\r\n\
    \r\n\
    X-Sinkhole-Client: a body line\r\n";

/// [`FORGED`] as it must be stored after our headers (with LF line endings).
const STORED: &[u8] = b"From: a@example.com\n\
    X-Sinkhole-Client-Supplied-Client: 6.6.6.6\n\
    X-Sinkhole-Client-Supplied-session: forged\n\
    X-Sinkhole-Client-Supplied-Dnsbl: folded\n\
    \tX-Sinkhole-Helo: continued\n\
    Subject: X-Sinkhole-Client in a value\n\
    \n\
    X-Sinkhole-Client: a body line\n";

#[test]
fn a_clients_own_trace_headers_are_stored_as_client_supplied() {
    let daemon = Daemon::start("", "");
    let message = daemon.dir.path().join("forged.eml");
    // swaks ends the data with a CRLF of its own.
    fs::write(&message, FORGED.strip_suffix(b"\r\n").unwrap()).unwrap();
    run_client(
        Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port"])
            .arg(daemon.addr.port().to_string())
            .args(["--from", "a@example.com", "--to", "trap@example.org"])
            .args(["--helo", "forger.example", "--timeout", "10", "--data"])
            .arg(&message),
    );

    let messages = daemon.new_messages();
    assert_eq!(messages.len(), 1);
    let stored = fs::read(&messages[0]).unwrap();
    assert!(
        stored.ends_with(STORED),
        "stored: {}",
        String::from_utf8_lossy(&stored)
    );
    // Ours come first, each once: the real client address, not the forged one.
    let ours = std::str::from_utf8(&stored[..stored.len() - STORED.len()]).unwrap();
    let text = String::from_utf8_lossy(&stored);
    let clients: Vec<&str> = text
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-sinkhole-client:"))
        .collect();
    assert_eq!(clients.len(), 2, "ours and the body line: {clients:?}");
    assert!(
        clients[0].starts_with("X-Sinkhole-Client: 127.0.0.1:"),
        "{clients:?}"
    );
    assert_eq!(ours.matches("X-Sinkhole-Session: ").count(), 1, "{ours}");
    assert!(ours.ends_with("X-Sinkhole-Dnsbl: (none)\n"), "{ours}");
}
