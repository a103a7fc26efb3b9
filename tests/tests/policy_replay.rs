//! `sinkhole policy replay` on a session log the test writes (the seed session as a daemon
//! refusing local senders at RCPT logged it) and on one the real daemon writes: which decisions
//! a changed rule file, changed per-address files and `auto_close` would change, by rule, with
//! example sessions.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};
use sinkhole_tests::daemon::SmtpClient;
use sinkhole_tests::policy::PolicyDaemon;
use sinkhole_tests::{sinkhole_ok, temp_dir};

/// `sinkhole policy replay --policy POLICY ARGS --json`, parsed.
fn replay(config: &Path, policy: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "policy",
        "replay",
        "--policy",
        policy.to_str().unwrap(),
        "--json",
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&sinkhole_ok(&args).unwrap()).unwrap()
}

const SEED: &str = r#"{"id":"seed","start":"2026-03-01T10:00:00Z","end":"2026-03-01T10:00:00Z","client_ip":"192.0.2.1","helo":"host11.190-230-18.telecom.net.ar","pipelined":true,"signatures":["mail-from-eq-rcpt-to","mail-from-local-domain","no-rdns"],"verdict":"rejected","transactions":[{"mail_from":"trap@example.org","rcpts":[{"addr":"trap@example.org","code":550}],"data_code":null}]}"#;
const SHOP: &str = r#"{"id":"shop1","start":"2026-03-01T11:00:00Z","end":"2026-03-01T11:00:01Z","client_ip":"198.51.100.7","helo":"mx.shop.example","signatures":[],"verdict":"accepted","transactions":[{"mail_from":"news@shop.example","rcpts":[{"addr":"old-shop@example.org","code":250}],"data_code":250}]}"#;
const SHOP2: &str = r#"{"id":"shop2","start":"2026-03-02T11:00:00Z","end":"2026-03-02T11:00:01Z","client_ip":"198.51.100.8","helo":"mx.shop.example","signatures":[],"verdict":"accepted","transactions":[{"mail_from":"news@shop.example","rcpts":[{"addr":"old-shop@example.org","code":250}],"data_code":250}]}"#;

#[test]
fn a_changed_rule_file_and_changed_address_files_on_a_written_log() {
    let dir = temp_dir("replay");
    let storage = dir.path().join("data");
    fs::create_dir_all(&storage).unwrap();
    fs::write(
        storage.join("sessions.jsonl"),
        format!("{SEED}\n{SHOP}\n{SHOP2}\n"),
    )
    .unwrap();
    let config = dir.path().join("sinkhole.toml");
    fs::write(
        &config,
        format!("[storage]\ndir = \"{}\"\n", storage.display()),
    )
    .unwrap();

    // The seed case: refusing local senders at MAIL (the new default) moves the refusal from
    // RCPT to MAIL: the MAIL's verdict changes, the RCPT is not reached.
    let new = dir.path().join("new.toml");
    fs::write(&new, "local_domains = [\"example.org\"]\n").unwrap();
    let report = replay(&config, &new, &[]);
    assert_eq!(report["sessions"], 3, "{report:#}");
    assert_eq!(report["decisions_changed"], 1, "{report:#}");
    assert_eq!(
        report["changes"],
        json!([{"phase": "mail", "rule": "local_domains", "from": "accept", "to": "reject",
                "decisions": 1, "sessions": 1, "examples": ["seed"]}]),
        "{report:#}"
    );

    // The second seed case: the shop address closed in its own file, and auto_close after
    // one message instead (the file says auto_close closed it: the replay plays that out).
    let addresses = dir.path().join("addresses");
    fs::create_dir_all(&addresses).unwrap();
    fs::write(
        addresses.join("old-shop.toml"),
        "addresses = [\"old-shop@example.org\"]\nstate = \"closed\"\nclosed_reason = \"auto_close: 40 messages\"\n\
         [auto_close]\nmessages = 1\n",
    )
    .unwrap();
    let report = replay(&config, &new, &["--addresses", addresses.to_str().unwrap()]);
    let changes = report["changes"].as_array().unwrap();
    assert!(
        changes.contains(
            &json!({"phase": "rcpt", "rule": "address:old-shop.toml:closed",
            "from": "accept", "to": "reject", "decisions": 1, "sessions": 1,
            "examples": ["shop2"]})
        ),
        "{report:#}"
    );
    assert_eq!(
        report["auto_closed"],
        json!([{"address": "old-shop@example.org", "at": "2026-03-01T11:00:01Z",
                "reason": "auto_close: 1 messages"}]),
        "{report:#}"
    );
    // The text for people names the same.
    let text = sinkhole_ok(&[
        "policy",
        "replay",
        "--policy",
        new.to_str().unwrap(),
        "--addresses",
        addresses.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        text.starts_with("3 session(s) replayed (0 closed at accept, not replayed): 2 of 12 decisions would change, in 2 session(s)\n"),
        "{text}"
    );
    assert!(
        text.contains("auto_close would close old-shop@example.org at 2026-03-01T11:00:01Z"),
        "{text}"
    );
}

#[test]
fn a_stricter_policy_over_a_running_daemons_log() {
    let mut w = PolicyDaemon::start("", "");
    for (last, to) in [
        (80u8, "a@example.org"),
        (81, "b@example.org"),
        (82, "a@example.org"),
    ] {
        let mut c =
            SmtpClient::connect_from(w.daemon.addr, format!("127.0.0.{last}").parse().unwrap());
        c.reply();
        c.send(
            format!(
                "EHLO bot{last}.example\r\nMAIL FROM:<x@spam.example>\r\nRCPT TO:<{to}>\r\nDATA\r\n"
            )
            .as_bytes(),
        );
        for _ in 0..4 {
            c.reply();
        }
        c.send(b"Subject: x\r\n\r\nbuy\r\n.\r\nQUIT\r\n");
        assert!(c.reply()[0].starts_with("250 "));
    }
    w.daemon.stop();
    // The changed file: a@ refused at RCPT, one client dropped at connect.
    let stricter = w.dir.path().join("stricter.toml");
    fs::write(
        &stricter,
        "[[rule]]\nphase = \"connect\"\nhost = \"127.0.0.82\"\naction = \"disconnect\"\n\
         [[rule]]\nto = \"a@example.org\"\naction = \"reject\"\n",
    )
    .unwrap();
    let report = replay(&w.daemon.config_path(), &stricter, &[]);
    assert_eq!(
        (
            report["sessions"].as_u64(),
            report["sessions_changed"].as_u64()
        ),
        (Some(3), Some(2)),
        "{report:#}"
    );
    let rules: Vec<(&str, &str, &str, u64)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["phase"].as_str().unwrap(),
                c["rule"].as_str().unwrap(),
                c["to"].as_str().unwrap(),
                c["decisions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("connect", "rule[0]", "disconnect", 1),
            ("rcpt", "rule[1]", "reject", 1)
        ],
        "{report:#}"
    );
}
