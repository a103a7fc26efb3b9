//! `sinkhole campaigns` over a realistic session log and Maildir, through the real binary.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sinkhole_tests::sinkhole_bin;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One session line as the capture writer logs it (with the fields we do not read, too).
#[allow(clippy::too_many_arguments)]
fn session(
    id: &str,
    start: SystemTime,
    client: &str,
    signatures: &[&str],
    dnsbl: &[&str],
    mail_from: &str,
    rcpts: &[&str],
    message: Option<&str>,
) -> String {
    let end = start + Duration::from_secs(4);
    json!({
        "id": id,
        "start": rfc3339(start),
        "end": rfc3339(end),
        "client_ip": client,
        "client_port": 40000,
        "rdns": null,
        "fcrdns": null,
        "helo": "[203.0.113.250]",
        "tls": false,
        "pipelined": true,
        "dnsbl": dnsbl.iter().map(|z| json!({"zone": z, "codes": ["127.0.0.2"]})).collect::<Vec<_>>(),
        "score": dnsbl.len(),
        "signatures": signatures,
        "verdict": "accepted",
        "transactions": [{
            "mail_from": mail_from,
            "rcpts": rcpts.iter().map(|r| json!({"addr": r, "code": 250})).collect::<Vec<_>>(),
            "data_code": message.map(|_| 250),
            "message": message,
            "size": 1234,
        }],
        "transcript": [[0, "s", "220 sinkhole.invalid ESMTP"], [12, "c", "EHLO [203.0.113.250]"]],
    })
    .to_string()
}

struct Fixture {
    dir: tempfile::TempDir,
    /// Line numbers (1-based) of the malformed middle line and the torn last line.
    bad_line: usize,
    torn_line: usize,
}

/// A dozen sessions of one campaign from distinct clients, a smaller old campaign, one clean
/// session, a malformed line in the middle and a torn last line.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("maildir/new");
    std::fs::create_dir_all(&new).unwrap();
    let now = SystemTime::now();
    let mut log = String::new();
    let mut lines = 0;
    let mut push = |log: &mut String, line: &str| {
        writeln!(log, "{line}").unwrap();
        lines += 1;
        lines
    };

    let campaign = ["mail-from-eq-rcpt-to", "mail-from-local-domain", "no-rdns"];
    let traps = [
        "trap1@example.org",
        "trap2@example.org",
        "trap3@example.org",
    ];
    let mut bad_line = 0;
    for i in 0..12 {
        let rcpt = traps[i % 3];
        let name = format!("17000000{i:02}.M1P1.sinkhole");
        // Two of the dozen were never captured (capture off, or the file was removed).
        if i < 10 {
            let body = format!(
                "Received: from [203.0.113.{c}]\r\nX-Sinkhole-Session: s{i}\r\nSubject: win\r\n\r\n\
                 Claim at https://Prize.Example.COM/claim?id={i} now!\r\n\
                 <a href=3D\"http://track.exa=\r\nmple.net/o.gif\">\r\n{extra}",
                c = 10 + i,
                extra = if i % 2 == 0 {
                    "also http://mirror.example.net:8080/x\r\n"
                } else {
                    ""
                }
            );
            std::fs::write(new.join(&name), body).unwrap();
        }
        // The log writer sorts signatures; an older writer might not have.
        let mut sigs = campaign.to_vec();
        if i % 4 == 0 {
            sigs.reverse();
        }
        let dnsbl: &[&str] = if i < 8 { &["zen.example"] } else { &[] };
        let start = now - Duration::from_secs(3600 - 60 * i as u64);
        push(
            &mut log,
            &session(
                &format!("s{i}"),
                start,
                &format!("203.0.113.{}", 10 + i),
                &sigs,
                dnsbl,
                rcpt,
                &[rcpt],
                Some(&name),
            ),
        );
        if i == 5 {
            bad_line = push(&mut log, r#"{"id": "broken", "signatures": ["#);
        }
    }
    // An old campaign: three sessions from two clients, two weeks ago.
    let old = now - Duration::from_secs(14 * 86400);
    for (i, client) in ["198.51.100.7", "198.51.100.7", "2001:db8::25"]
        .iter()
        .enumerate()
    {
        push(
            &mut log,
            &session(
                &format!("old{i}"),
                old + Duration::from_secs(i as u64),
                client,
                &["helo-bare-ip", "pregreet"],
                &["zen.example", "b.example"],
                "someone@bulk.example.com",
                // A recipient with a terminal escape in it.
                &["x\u{1b}[2Jy@example.org"],
                None,
            ),
        );
    }
    push(
        &mut log,
        &session(
            "clean",
            now,
            "192.0.2.1",
            &[],
            &[],
            "a@b.example",
            &["c@example.org"],
            Some("missing-file"),
        ),
    );
    // The daemon was killed mid-write.
    log.push_str(r#"{"id":"torn","start":"#);
    let torn_line = lines + 1;
    std::fs::write(dir.path().join("sessions.jsonl"), log).unwrap();
    Fixture {
        dir,
        bad_line,
        torn_line,
    }
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(sinkhole_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sinkhole {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_report(args: &[&str]) -> (Vec<Value>, String) {
    let out = run(args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        report.as_array().unwrap().clone(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn storage(f: &Fixture) -> &str {
    f.dir.path().to_str().unwrap()
}

#[test]
fn json_groups_into_campaigns_with_variants_and_reasons() {
    let f = fixture();
    let (report, stderr) = json_report(&["campaigns", "--storage", storage(&f), "--json"]);
    // The clean session shares nothing with another: it is in no campaign.
    assert_eq!(report.len(), 2, "{report:#?}");

    let big = &report[0];
    assert_eq!(
        big["signatures"],
        json!(["mail-from-eq-rcpt-to", "mail-from-local-domain", "no-rdns"])
    );
    assert_eq!(big["sessions"], 12);
    assert_eq!(big["clients"], 12);
    assert_eq!(
        big["variants"],
        json!([{"signatures": ["mail-from-eq-rcpt-to", "mail-from-local-domain", "no-rdns"], "sessions": 12}])
    );
    let grouped_by = big["grouped_by"].as_array().unwrap();
    assert_eq!(grouped_by[0]["feature"], "key", "{big:#}");
    assert_eq!(
        grouped_by[0]["value"],
        "behaviours=mail-from-eq-rcpt-to+mail-from-local-domain+pipelining sender=eq-rcpt rcpts=1"
    );
    assert_eq!(grouped_by[0]["sessions"], 12);
    assert_eq!(big["id"], grouped_by[0]["id"]);
    // Both sets of URL hosts the messages name joined the campaign too.
    let mut url_sets: Vec<(&str, u64)> = grouped_by
        .iter()
        .filter(|g| g["feature"] == "url-hosts")
        .map(|g| {
            (
                g["value"].as_str().unwrap(),
                g["sessions"].as_u64().unwrap(),
            )
        })
        .collect();
    url_sets.sort_unstable();
    assert_eq!(
        url_sets,
        [
            ("mirror.example.net prize.example.com track.example.net", 5),
            ("prize.example.com track.example.net", 5)
        ]
    );
    assert_eq!(big["top_clients"].as_array().unwrap().len(), 10);
    assert_eq!(big["syn"], json!([]), "no XDP, no SYN fingerprints");
    // Twelve sessions a minute apart: all in one hour or two.
    let hours: u64 = big["per_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(hours, 12);
    assert_eq!(big["dnsbl"], json!({"zen.example": 8}));
    assert_eq!(big["examples"], json!(["s0", "s1", "s2", "s3", "s4"]));
    assert_eq!(
        big["recipients"],
        json!([
            {"name": "trap1@example.org", "count": 4},
            {"name": "trap2@example.org", "count": 4},
            {"name": "trap3@example.org", "count": 4},
        ])
    );
    assert_eq!(big["messages"], 10);
    assert_eq!(
        big["url_hosts"],
        json!([
            {"name": "prize.example.com", "count": 10},
            {"name": "track.example.net", "count": 10},
            {"name": "mirror.example.net", "count": 5},
        ])
    );
    let first = big["first_seen"].as_str().unwrap();
    let last = big["last_seen"].as_str().unwrap();
    let span = humantime::parse_rfc3339(last)
        .unwrap()
        .duration_since(humantime::parse_rfc3339(first).unwrap());
    assert_eq!(
        span.unwrap(),
        Duration::from_secs(11 * 60 + 4),
        "{first} .. {last}"
    );

    let old = &report[1];
    assert_eq!(old["signatures"], json!(["helo-bare-ip", "pregreet"]));
    assert_eq!(
        (old["sessions"].as_u64(), old["clients"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(old["dnsbl"], json!({"b.example": 3, "zen.example": 3}));
    assert_eq!(
        old["recipients"],
        json!([{"name": "x\u{1b}[2jy@example.org", "count": 3}])
    );

    assert!(
        stderr.contains(&format!("line {}: not a session record", f.bad_line)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("line {}: torn last line", f.torn_line)),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[test]
fn since_and_config_storage() {
    let f = fixture();
    let config = f.dir.path().join("sinkhole.toml");
    std::fs::write(&config, format!("[storage]\ndir = {:?}\n", storage(&f))).unwrap();
    let (report, _) = json_report(&[
        "campaigns",
        "--config",
        config.to_str().unwrap(),
        "--json",
        "--since",
        "24h",
    ]);
    let sets: Vec<&Value> = report.iter().map(|c| &c["signatures"]).collect();
    assert_eq!(
        sets,
        [&json!([
            "mail-from-eq-rcpt-to",
            "mail-from-local-domain",
            "no-rdns"
        ])]
    );
    let (report, _) = json_report(&[
        "campaigns",
        "--storage",
        storage(&f),
        "--json",
        "--since",
        "30d",
    ]);
    assert_eq!(report.len(), 2);
}

#[test]
fn table_is_readable_and_escaped() {
    let f = fixture();
    let out = run(&["campaigns", "--storage", storage(&f)]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.starts_with("2 campaigns, 16 sessions (1 in no campaign)\n"),
        "{table}"
    );
    assert!(
        table.contains("  mail-from-eq-rcpt-to mail-from-local-domain no-rdns\n"),
        "{table}"
    );
    assert!(
        table
            .contains("    variant     mail-from-eq-rcpt-to mail-from-local-domain no-rdns (12)\n"),
        "{table}"
    );
    assert!(
        table.contains("    sessions    12\n    clients     12\n"),
        "{table}"
    );
    assert!(
        table.contains("    dnsbl       zen.example (8)\n"),
        "{table}"
    );
    assert!(table.contains(
        "prize.example.com (10), track.example.net (10), mirror.example.net (5) (from 10 messages)"
    ));
    assert!(table.contains("  helo-bare-ip pregreet\n"), "{table}");
    assert!(table.contains("x\\x1b[2jy@example.org (3)"), "{table}");
    assert!(
        !table.contains('\u{1b}'),
        "control characters reach the terminal"
    );
}

#[test]
fn bad_input_is_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["campaigns", "--storage", dir.path().to_str().unwrap()],
        vec!["campaigns", "--since", "soon"],
    ] {
        let out = Command::new(sinkhole_bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains("sessions.jsonl") || stderr.contains("soon"),
            "{stderr}"
        );
    }
    assert!(!Path::new(&dir.path().join("sessions.jsonl")).exists());
}
