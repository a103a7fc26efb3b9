//! `sinkhole addresses` on a session log the test writes (a rotated, compressed file and the
//! current one) and on one the real daemon writes: per address its sessions, messages,
//! refusals, distinct clients, campaigns, first and last seen, and its file's state.

use std::fs;
use std::io::Write as _;

use serde_json::{Value, json};
use sinkhole_tests::policy::PolicyDaemon;
use sinkhole_tests::{sinkhole, sinkhole_ok, temp_dir};

/// A session line as the daemon writes it (the fields the report reads, and a transcript).
fn line(
    id: &str,
    start: &str,
    client: &str,
    signatures: &[&str],
    rcpts: &[(&str, u16)],
    data: Option<u16>,
) -> String {
    let rcpts: Vec<Value> = rcpts
        .iter()
        .map(|(a, c)| json!({"addr": a, "code": c}))
        .collect();
    json!({
        "id": id, "start": start, "end": start, "client_ip": client, "client_port": 4000,
        "rdns": null, "fcrdns": null, "helo": "bot.example", "tls": false, "pipelined": true,
        "connect_code": 220, "helo_code": 250, "dnsbl": [], "score": null, "scored": true,
        "signatures": signatures, "verdict": "accepted",
        "transactions": [{"mail_from": "x@spam.example", "mail_code": 250, "rcpts": rcpts,
                          "data_code": data, "message": null, "size": 10}],
        "transcript": [[0, "s", "220 sinkhole.test ESMTP"], [1, "c", "EHLO bot.example"]],
    })
    .to_string()
}

#[test]
fn per_address_counts_over_rotated_and_current_logs_with_states() {
    let dir = temp_dir("addresses-report");
    let storage = dir.path().join("data");
    let addresses = dir.path().join("addresses");
    fs::create_dir_all(&storage).unwrap();
    fs::create_dir_all(&addresses).unwrap();
    fs::write(
        addresses.join("trap.toml"),
        "addresses = [\"trap@example.org\", \"unused@example.org\"]\n[closed.\"trap@example.org\"]\nreason = \"spammed\"\n",
    )
    .unwrap();
    // An older day, rotated and compressed as the daemon does.
    let rotated = [
        line(
            "a1",
            "2026-03-01T10:00:00Z",
            "192.0.2.1",
            &["no-rdns"],
            &[("trap@example.org", 250)],
            Some(250),
        ),
        line(
            "a2",
            "2026-03-01T11:00:00Z",
            "192.0.2.2",
            &["no-rdns"],
            &[("Trap@Example.org", 250), ("other@example.org", 550)],
            Some(250),
        ),
    ];
    let file =
        fs::File::create(storage.join("sessions.jsonl.2026-03-02T00-00-00.000Z.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    for l in &rotated {
        writeln!(gz, "{l}").unwrap();
    }
    gz.finish().unwrap();
    let current = [
        line(
            "b1",
            "2026-03-02T09:00:00Z",
            "192.0.2.1",
            &["pregreet"],
            &[("trap@example.org", 550)],
            None,
        ),
        line(
            "b2",
            "2026-03-02T10:00:00Z",
            "192.0.2.3",
            &["no-rdns"],
            &[("trap@example.org", 250)],
            Some(451),
        ),
    ];
    fs::write(
        storage.join("sessions.jsonl"),
        current.join("\n") + "\ntorn {\"id\"",
    )
    .unwrap();
    let config = dir.path().join("sinkhole.toml");
    fs::write(
        &config,
        format!("[policy]\naddresses_dir = \"{}\"\n", addresses.display()),
    )
    .unwrap();
    let args = |extra: &[&str]| {
        let mut args = vec![
            "addresses",
            "--config",
            config.to_str().unwrap(),
            "--storage",
            storage.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let args = args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sinkhole(&refs).unwrap()
    };
    let out = run(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The torn last line is named, the rest read.
    assert!(String::from_utf8_lossy(&out.stderr).contains("torn last line"));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report[0],
        json!({
            "address": "trap@example.org", "sessions": 4, "refused": 1, "messages": 2,
            "clients": 3,
            "campaigns": [{"signatures": ["no-rdns"], "sessions": 3},
                          {"signatures": ["pregreet"], "sessions": 1}],
            "first_seen": "2026-03-01T10:00:00Z", "last_seen": "2026-03-02T10:00:00Z",
            "state": "closed", "file": "trap.toml"
        }),
        "{report:#}"
    );
    let others: Vec<(&str, u64, Value)> = report
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|a| {
            (
                a["address"].as_str().unwrap(),
                a["sessions"].as_u64().unwrap(),
                a["state"].clone(),
            )
        })
        .collect();
    assert_eq!(
        others,
        [
            ("other@example.org", 1, Value::Null),
            ("unused@example.org", 0, json!("open"))
        ]
    );
    // The text for people says the same.
    let text = sinkhole_ok(&args(&[]).iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(text.starts_with("3 address(es), 4 session(s)\n"), "{text}");
    assert!(
        text.contains("trap@example.org  closed\n    sessions 4  messages 2  refused 1  clients 3"),
        "{text}"
    );
}

#[test]
fn the_report_of_a_running_daemons_log() {
    let addresses = temp_dir("addresses");
    fs::write(
        addresses.path().join("shop.toml"),
        "addresses = [\"shop@example.org\"]\n",
    )
    .unwrap();
    let extra = format!("addresses_dir = \"{}\"", addresses.path().display());
    let mut w = PolicyDaemon::start("local_domains = [\"example.org\"]\n", &extra);
    // Two bots: a message to shop, and the seed session refused at MAIL.
    let mut bot = sinkhole_tests::daemon::SmtpClient::connect_from(
        w.daemon.addr,
        "127.0.0.70".parse().unwrap(),
    );
    bot.reply();
    bot.send(
        b"EHLO a.example\r\nMAIL FROM:<x@spam.example>\r\nRCPT TO:<shop@example.org>\r\nDATA\r\n",
    );
    bot.reply();
    bot.reply();
    bot.reply();
    bot.reply();
    bot.send(b"Subject: x\r\n\r\nbuy\r\n.\r\nQUIT\r\n");
    assert!(bot.reply()[0].starts_with("250 "));
    w.daemon.stop();
    let out = sinkhole_ok(&[
        "addresses",
        "--json",
        "--config",
        w.daemon.config_path().to_str().unwrap(),
    ])
    .unwrap();
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["address"], "shop@example.org", "{report}");
    assert_eq!(report[0]["messages"], 1, "{report}");
    assert_eq!(report[0]["clients"], 1, "{report}");
    assert_eq!(report[0]["state"], "open", "{report}");
}
