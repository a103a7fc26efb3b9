//! Policy rules at every SMTP phase through the real daemon, with swaks and Python's smtplib
//! from chosen loopback addresses: a refused and a dropped connection, a refused HELO, a
//! tempfailed and a dropped MAIL (and 503 for what was pipelined behind it), a refused message
//! at the end of data; each answered with its code and logged with it.
//!
//! The daemon's DNS goes to a local `nsd` that knows no name, and it queries no DNSBL zone.

use std::process::Command;

use serde_json::Value;
use sinkhole_tests::daemon::SmtpClient;
use sinkhole_tests::policy::PolicyDaemon;
use sinkhole_tests::run_client;

const POLICY: &str = r#"
[[rule]]
phase = "connect"
host = "127.0.0.21"
action = "reject"
message = "554 5.7.1 Go away"

[[rule]]
phase = "connect"
host = "127.0.0.22"
action = "disconnect"

[[rule]]
phase = "helo"
helo = "*.spam.example"
action = "reject"

[[rule]]
phase = "mail"
from = "*@*.biz"
action = "tempfail"

[[rule]]
phase = "mail"
from = "@drop.example"
action = "disconnect"
message = "421 4.7.0 Not you again"

[[rule]]
phase = "data"
to = "trap@example.org"
action = "reject"
message = "554 5.7.1 Not this message"
"#;

fn world() -> PolicyDaemon {
    PolicyDaemon::start(POLICY, "")
}

/// What smtplib's `sendmail` makes of one message from `source` (HELO `helo`): `{"refused":
/// {...}}` when it went through, else the exception's class, code and text.
fn smtplib(w: &PolicyDaemon, source: &str, helo: &str, from: &str, to: &[&str]) -> Value {
    let script = r#"
import json, smtplib, sys
port, source, helo, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rcpts = sys.argv[5:]
def code_text(e):
    code = getattr(e, "smtp_code", None)
    text = getattr(e, "smtp_error", b"")
    return code, text.decode() if isinstance(text, bytes) else str(text)
try:
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo,
                      source_address=(source, 0), timeout=10) as s:
        refused = s.sendmail(sender, rcpts, b"Subject: phases\r\n\r\nbody\r\n")
        print(json.dumps({"refused": {k: [c, m.decode()] for k, (c, m) in refused.items()}}))
except smtplib.SMTPException as e:
    code, text = code_text(e)
    print(json.dumps({"error": type(e).__name__, "code": code, "text": text}))
"#;
    let out = run_client(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(w.daemon.addr.port().to_string())
            .args([source, helo, from])
            .args(to),
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// swaks from `source` with HELO `helo`; its whole transcript (it may fail: no status check).
fn swaks(w: &PolicyDaemon, source: &str, helo: &str, from: &str, to: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(w.daemon.addr.port().to_string())
        .args([
            "--local-interface",
            source,
            "--helo",
            helo,
            "--timeout",
            "10",
        ])
        .args(["--from", from, "--to", to, "--body", "phases"])
        .output()
        .expect("run swaks (installed by cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The logged session of `client`.
fn session_of<'a>(sessions: &'a [Value], client: &str) -> &'a Value {
    let of: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["client_ip"] == client)
        .collect();
    assert_eq!(of.len(), 1, "{client}: {sessions:?}");
    of[0]
}

#[test]
fn connect_rules_refuse_or_drop_before_the_banner() {
    let mut w = world();
    // swaks sees the refusal instead of a banner.
    let text = swaks(
        &w,
        "127.0.0.21",
        "ok.example",
        "a@ok.example",
        "x@example.org",
    );
    assert!(text.contains("<** 554 5.7.1 Go away"), "{text}");
    assert!(!text.contains("ESMTP"), "{text}");
    // smtplib is told 421 and the connection closes.
    let dropped = smtplib(
        &w,
        "127.0.0.22",
        "ok.example",
        "a@ok.example",
        &["x@example.org"],
    );
    assert_eq!(dropped["error"], "SMTPConnectError", "{dropped}");
    assert_eq!(dropped["code"], 421, "{dropped}");
    // Any other client is greeted.
    let fine = smtplib(
        &w,
        "127.0.0.23",
        "ok.example",
        "a@ok.example",
        &["x@example.org"],
    );
    assert_eq!(fine, serde_json::json!({"refused": {}}));
    // Only QUIT is served after a refused connection (RFC 5321 §3.1).
    let mut raw = SmtpClient::connect_from(w.daemon.addr, "127.0.0.21".parse().unwrap());
    assert_eq!(raw.reply(), ["554 5.7.1 Go away"]);
    raw.send(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n");
    assert_eq!(raw.reply(), ["503 5.5.1 Out of sequence command"]);
    assert_eq!(raw.reply(), ["503 5.5.1 Out of sequence command"]);
    assert_eq!(raw.reply(), ["221 2.0.0 Bye"]);
    assert!(raw.closed());

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    let dropped = session_of(&sessions, "127.0.0.22");
    assert_eq!(dropped["connect_code"], 421, "{dropped}");
    assert_eq!(dropped["closed_by"], "policy", "{dropped}");
    assert_eq!(session_of(&sessions, "127.0.0.23")["connect_code"], 220);
    assert_eq!(w.daemon.new_messages().len(), 1);
}

#[test]
fn a_helo_rule_refuses_the_greeting_and_mail_then_needs_one() {
    let mut w = world();
    let text = swaks(
        &w,
        "127.0.0.31",
        "bot.spam.example",
        "a@ok.example",
        "x@example.org",
    );
    assert!(
        text.contains("<** 550 5.7.1 <bot.spam.example>: Helo command rejected: access denied"),
        "{text}"
    );
    let refused = smtplib(
        &w,
        "127.0.0.32",
        "bot.spam.example",
        "a@ok.example",
        &["x@example.org"],
    );
    assert_eq!(refused["error"], "SMTPHeloError", "{refused}");
    assert_eq!(refused["code"], 550, "{refused}");
    // Raw: the refused EHLO leaves the client ungreeted.
    let mut raw = SmtpClient::connect_from(w.daemon.addr, "127.0.0.33".parse().unwrap());
    assert!(raw.reply()[0].starts_with("220 "));
    raw.send(b"EHLO bot.spam.example\r\nMAIL FROM:<a@ok.example>\r\nQUIT\r\n");
    assert_eq!(
        raw.reply(),
        ["550 5.7.1 <bot.spam.example>: Helo command rejected: access denied"]
    );
    assert_eq!(raw.reply(), ["503 5.5.1 Out of sequence command"]);
    assert_eq!(raw.reply(), ["221 2.0.0 Bye"]);

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    let raw = session_of(&sessions, "127.0.0.33");
    assert_eq!(raw["helo_code"], 550, "{raw}");
    assert_eq!(raw["helo"], "bot.spam.example", "{raw}");
    assert!(w.daemon.new_messages().is_empty());
}

#[test]
fn mail_rules_tempfail_or_drop_and_what_ran_ahead_gets_503() {
    let mut w = world();
    let later = smtplib(
        &w,
        "127.0.0.41",
        "ok.example",
        "deals@shop.biz",
        &["x@example.org"],
    );
    assert_eq!(later["error"], "SMTPSenderRefused", "{later}");
    assert_eq!(later["code"], 451, "{later}");
    assert_eq!(
        later["text"],
        "4.7.1 <deals@shop.biz>: Sender address rejected: try again later"
    );
    let text = swaks(
        &w,
        "127.0.0.42",
        "ok.example",
        "x@drop.example",
        "x@example.org",
    );
    assert!(text.contains("<** 421 4.7.0 Not you again"), "{text}");
    // Pipelined in one write: the refusal, then 503 for RCPT and DATA.
    let mut raw = SmtpClient::connect_from(w.daemon.addr, "127.0.0.43".parse().unwrap());
    assert!(raw.reply()[0].starts_with("220 "));
    raw.send(
        b"EHLO ok.example\r\nMAIL FROM:<deals@shop.biz>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nQUIT\r\n",
    );
    assert!(raw.reply().last().unwrap().starts_with("250 "));
    assert!(raw.reply()[0].starts_with("451 4.7.1 "));
    assert_eq!(raw.reply(), ["503 5.5.1 Out of sequence command"]);
    assert_eq!(raw.reply(), ["503 5.5.1 Out of sequence command"]);
    assert_eq!(raw.reply(), ["221 2.0.0 Bye"]);

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    let dropped = session_of(&sessions, "127.0.0.42");
    assert_eq!(dropped["transactions"][0]["mail_code"], 421, "{dropped}");
    assert_eq!(dropped["closed_by"], "policy", "{dropped}");
    let raw = session_of(&sessions, "127.0.0.43");
    assert_eq!(raw["transactions"][0]["mail_code"], 451, "{raw}");
    let signatures = raw["signatures"].as_array().unwrap();
    for s in ["pipelined-run-ahead", "out-of-sequence"] {
        assert!(signatures.iter().any(|x| x == s), "{raw}");
    }
    assert!(w.daemon.new_messages().is_empty());
}

#[test]
fn a_data_rule_refuses_the_message_after_its_body_and_stores_nothing() {
    let mut w = world();
    let refused = smtplib(
        &w,
        "127.0.0.51",
        "ok.example",
        "a@ok.example",
        &["trap@example.org"],
    );
    assert_eq!(refused["error"], "SMTPDataError", "{refused}");
    assert_eq!(refused["code"], 554, "{refused}");
    assert_eq!(refused["text"], "5.7.1 Not this message");
    let text = swaks(
        &w,
        "127.0.0.52",
        "ok.example",
        "a@ok.example",
        "trap@example.org",
    );
    assert!(text.contains(" -> .\n"), "{text}");
    assert!(text.contains("<** 554 5.7.1 Not this message"), "{text}");
    assert!(w.daemon.new_messages().is_empty());
    // Another recipient's message is stored.
    let fine = smtplib(
        &w,
        "127.0.0.53",
        "ok.example",
        "a@ok.example",
        &["x@example.org"],
    );
    assert_eq!(fine, serde_json::json!({"refused": {}}));
    assert_eq!(w.daemon.new_messages().len(), 1);

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    let refused = session_of(&sessions, "127.0.0.51");
    assert_eq!(refused["transactions"][0]["data_code"], 554, "{refused}");
    assert_eq!(
        refused["transactions"][0]["message"],
        Value::Null,
        "{refused}"
    );
    assert_eq!(refused["verdict"], "rejected", "{refused}");
}
