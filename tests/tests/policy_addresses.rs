//! Per-address files (`policy.addresses_dir`) through the real daemon: two people's files
//! answering the same client differently in one session, files changed while the daemon runs
//! (inotify, no signal) with a broken one keeping its old rules, SIGHUP, the order against the
//! global rules, and `auto_close` closing an address after N messages into its file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sinkhole_tests::daemon::SmtpClient;
use sinkhole_tests::policy::PolicyDaemon;
use sinkhole_tests::{TempDir, run_client, sinkhole_ok, temp_dir};

/// A daemon with `policy` as its rule file and `files` (name, text) in its addresses directory.
fn world(policy: &str, files: &[(&str, &str)]) -> (PolicyDaemon, TempDir) {
    let addresses = temp_dir("addresses");
    for (name, text) in files {
        fs::write(addresses.path().join(name), text).unwrap();
    }
    let extra = format!("addresses_dir = \"{}\"", addresses.path().display());
    (PolicyDaemon::start(policy, &extra), addresses)
}

const ALICE: &str = "addresses = [\"alice@example.org\"]\n[block]\nhosts = [\"127.0.0.0/28\"]\n\
                     [messages]\nhost = \"550 5.7.1 Alice takes no mail from your network\"\n";
const BOB: &str = "addresses = [\"bob@example.org\", \"robert@example.org\"]\n[block]\n\
                   senders = [\"@bulk.example\"]\n";

/// RCPT replies (first lines) for `rcpts` in one transaction from `source`, sender `from`.
fn rcpt_codes(w: &PolicyDaemon, source: &str, from: &str, rcpts: &[&str]) -> Vec<String> {
    let mut c = SmtpClient::connect_from(w.daemon.addr, source.parse().unwrap());
    assert!(c.reply()[0].starts_with("220 "));
    c.send(b"EHLO client.example\r\n");
    c.reply();
    c.send(format!("MAIL FROM:<{from}>\r\n").as_bytes());
    assert_eq!(c.reply(), ["250 2.1.0 Ok"]);
    let replies = rcpts
        .iter()
        .map(|r| {
            c.send(format!("RCPT TO:<{r}>\r\n").as_bytes());
            c.reply().remove(0)
        })
        .collect();
    c.send(b"QUIT\r\n");
    replies
}

/// Waits (bounded) until `check` holds, e.g. until the daemon has read a changed file.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_peoples_files_answer_the_same_client_differently_in_one_session() {
    let (mut w, _dir) = world("", &[("alice.toml", ALICE), ("bob.toml", BOB)]);
    // 127.0.0.5 is in Alice's blocked network; the sender is not one Bob blocks.
    let codes = rcpt_codes(
        &w,
        "127.0.0.5",
        "news@ok.example",
        &["alice@example.org", "bob@example.org", "carol@example.org"],
    );
    assert_eq!(
        codes,
        [
            "550 5.7.1 Alice takes no mail from your network",
            "250 2.1.5 Ok",
            "250 2.1.5 Ok"
        ]
    );
    // The same with Python's smtplib: the bulk sender is Bob's to refuse (for both his
    // addresses), Alice takes it from a host outside her block.
    let script = r#"
import json, smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), source_address=("127.0.0.20", 0), timeout=10) as s:
    refused = s.sendmail("x@bulk.example", ["alice@example.org", "Robert@Example.org"],
                         b"Subject: t\r\n\r\nhi\r\n")
    print(json.dumps({k: [c, m.decode()] for k, (c, m) in refused.items()}))
"#;
    let out = run_client(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(w.daemon.addr.port().to_string()),
    );
    let refused: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        refused,
        serde_json::json!({"Robert@Example.org": [550,
            "5.7.1 <Robert@Example.org>: Recipient address rejected: its owner does not take mail from this sender"]})
    );
    assert_eq!(w.daemon.new_messages().len(), 1);
    w.daemon.stop();
    let sessions = w.daemon.sessions();
    let from_5 = sessions
        .iter()
        .find(|s| s["client_ip"] == "127.0.0.5")
        .unwrap();
    let codes: Vec<u64> = from_5["transactions"][0]["rcpts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [550, 250, 250]);
}

#[test]
fn global_refusals_come_first_then_the_address_files_then_global_accepts() {
    // The global rules refuse bob from one host, and accept everything else explicitly.
    let policy = "[[rule]]\nto = \"bob@example.org\"\nhost = \"127.0.0.30\"\naction = \"tempfail\"\n\
                  [[rule]]\nto = \"*\"\naction = \"accept\"\nmessage = \"250 2.1.5 Welcome\"\n";
    let (mut w, _dir) = world(policy, &[("bob.toml", BOB)]);
    let from = |source: &str, sender: &str| rcpt_codes(&w, source, sender, &["bob@example.org"]);
    // The global tempfail wins over Bob's (also matching) sender block.
    assert!(from("127.0.0.30", "x@bulk.example")[0].starts_with("451 4.7.1 "));
    // Bob's block comes before the global accept.
    assert!(from("127.0.0.31", "x@bulk.example")[0].starts_with("550 5.7.1 <bob@example.org>"));
    assert_eq!(from("127.0.0.31", "x@fine.example"), ["250 2.1.5 Welcome"]);
    w.daemon.stop();
}

#[test]
fn files_changed_while_the_daemon_runs_take_effect_and_a_broken_one_keeps_its_old_rules() {
    let (mut w, dir) = world("", &[("alice.toml", ALICE), ("bob.toml", BOB)]);
    let codes = |w: &PolicyDaemon| {
        rcpt_codes(
            w,
            "127.0.0.40",
            "x@bulk.example",
            &["alice@example.org", "bob@example.org", "dave@example.org"],
        )
        .iter()
        .map(|r| r[..3].to_owned())
        .collect::<Vec<_>>()
    };
    assert_eq!(codes(&w), ["250", "550", "250"]);
    // Alice closes her address (a new file written whole), a new file for Dave appears: no
    // signal, the directory is watched.
    fs::write(
        dir.path().join("alice.toml"),
        "addresses = [\"alice@example.org\"]\nstate = \"closed\"\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("dave.toml"),
        "addresses = [\"dave@example.org\"]\nstate = \"closed\"\n",
    )
    .unwrap();
    eventually("the changed files read", || {
        codes(&w) == ["550", "550", "550"]
    });

    // A typo in Bob's file: it keeps its old rules (refusing the bulk sender), the log names
    // the file and line; Alice's file opens again meanwhile and is read.
    let bob = dir.path().join("bob.toml");
    fs::write(
        &bob,
        "addresses = [\"bob@example.org\"]\n[block]\nsenders = [\"@bulk.example\", \"@@bad\"]\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("alice.toml"),
        "addresses = [\"alice@example.org\"]\n",
    )
    .unwrap();
    let stderr = w.daemon.wait_stderr(
        &format!("{}:3: block.senders[1]: ", bob.display()),
        Duration::from_secs(10),
    );
    assert!(
        stderr.contains("its previous rules stay in force"),
        "{stderr}"
    );
    eventually("Alice's file read again", || {
        codes(&w) == ["250", "550", "550"]
    });
    w.daemon.assert_running();

    // Removing Dave's file takes his rules away; SIGHUP reads everything again.
    fs::remove_file(dir.path().join("dave.toml")).unwrap();
    eventually("Dave's file gone", || codes(&w) == ["250", "550", "250"]);
    fs::write(&bob, "addresses = [\"bob@example.org\"]\n").unwrap();
    w.daemon.reload();
    eventually("Bob's fixed file read", || {
        codes(&w) == ["250", "250", "250"]
    });
    w.daemon.stop();
}

/// `sinkhole address show ADDR --json` for the daemon's config.
fn show(config: &Path, address: &str) -> Value {
    let out = sinkhole_ok(&[
        "address",
        "show",
        address,
        "--json",
        "--config",
        config.to_str().unwrap(),
    ])
    .unwrap();
    serde_json::from_str(&out).unwrap()
}

/// One message from `source` to `rcpt`; the end-of-data reply, or the RCPT refusal.
fn send(w: &PolicyDaemon, source: &str, rcpt: &str) -> String {
    let mut c = SmtpClient::connect_from(w.daemon.addr, source.parse().unwrap());
    c.reply();
    c.send(b"EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n");
    c.reply();
    c.reply();
    c.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
    let rcpt_reply = c.reply().remove(0);
    if !rcpt_reply.starts_with("250 ") {
        return rcpt_reply;
    }
    c.send(b"DATA\r\n");
    c.reply();
    c.send(b"Subject: t\r\n\r\nspam\r\n.\r\nQUIT\r\n");
    c.reply().remove(0)
}

#[test]
fn auto_close_after_n_messages_writes_the_state_into_the_file_and_survives_a_restart() {
    // The default rule of the policy file: three messages. Erin's own rule: one message from a
    // DNSBL-listed client only (none is listed here), so she stays open.
    let (mut w, dir) = world(
        "[auto_close]\nmessages = 3\n",
        &[
            (
                "trap.toml",
                "addresses = [\"trap@example.org\"] # a single-purpose address\n",
            ),
            (
                "erin.toml",
                "addresses = [\"erin@example.org\"]\n[auto_close]\ndnsbl = true\n",
            ),
        ],
    );
    for i in 0..3 {
        let reply = send(&w, "127.0.0.50", "trap@example.org");
        assert!(
            reply.starts_with("250 2.0.0 Ok: queued as "),
            "message {i}: {reply}"
        );
        let reply = send(&w, "127.0.0.50", "erin@example.org");
        assert!(
            reply.starts_with("250 2.0.0 Ok: queued as "),
            "message {i}: {reply}"
        );
    }
    // The third message closed it: the next recipient is refused at once.
    assert_eq!(
        send(&w, "127.0.0.51", "trap@example.org"),
        "550 5.1.1 <trap@example.org>: Recipient address rejected: this address is closed"
    );
    assert!(send(&w, "127.0.0.51", "erin@example.org").starts_with("250 "));
    // The file says so, with when and why, its comment kept.
    let file = dir.path().join("trap.toml");
    eventually("the close written", || {
        fs::read_to_string(&file).is_ok_and(|t| t.contains("state = \"closed\""))
    });
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("# a single-purpose address"), "{text}");
    assert!(
        text.contains("closed_reason = \"auto_close: 3 messages\""),
        "{text}"
    );
    let shown = show(&w.daemon.config_path(), "trap@example.org");
    assert_eq!(shown["state"], "closed", "{shown}");
    assert_eq!(shown["closed_reason"], "auto_close: 3 messages", "{shown}");
    assert!(
        shown["closed_at"].as_str().unwrap().ends_with('Z'),
        "{shown}"
    );
    assert_eq!(shown["auto_close_from"], "policy", "{shown}");
    let erin = show(&w.daemon.config_path(), "erin@example.org");
    assert_eq!(
        (erin["state"].as_str(), erin["auto_close_from"].as_str()),
        (Some("open"), Some("file"))
    );
    let metrics = w.daemon.stderr();
    assert!(
        metrics.contains("trap@example.org closes itself: auto_close: 3 messages"),
        "{metrics}"
    );

    // Closed across a restart: the state is the file's.
    w.daemon.restart();
    assert!(send(&w, "127.0.0.52", "trap@example.org").starts_with("550 5.1.1 "));
    w.daemon.stop();
    let logged: Vec<PathBuf> = w.daemon.new_messages();
    assert_eq!(logged.len(), 7, "3 to trap, 4 to erin");
}
