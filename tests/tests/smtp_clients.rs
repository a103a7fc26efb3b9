//! Real SMTP clients (swaks, Python smtplib, raw bytes) against the real daemon: replies,
//! captured files byte for byte, and the session log.

use std::fs;
use std::process::Command;

use sinkhole_tests::daemon::{Daemon, SmtpClient, lf_endings};
use sinkhole_tests::run_client;

fn swaks(daemon: &Daemon, extra: &[&str]) -> (bool, String) {
    let output = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &daemon.addr.port().to_string(),
        ])
        .args(["--from", "sender@example.com", "--to", "trap@example.org"])
        .args(["--helo", "client.example", "--timeout", "10"])
        .args(extra)
        .output()
        .expect("run swaks (installed by cargo xtask setup)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn swaks_plain_message_is_stored_and_logged() {
    let mut daemon = Daemon::start("", "");
    let (ok, out) = swaks(&daemon, &["--body", "plain body line"]);
    assert!(ok, "swaks failed:\n{out}");
    assert!(out.contains("<-  220 sinkhole.test"), "{out}");
    assert!(out.contains("<-  250 2.1.0 Ok"), "{out}");
    assert!(out.contains("<-  250 2.1.5 Ok"), "{out}");
    assert!(out.contains("<-  354 "), "{out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    assert!(out.contains("<-  221 "), "{out}");

    let messages = daemon.new_messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let stored = fs::read_to_string(&messages[0]).unwrap();
    assert!(
        stored.starts_with(
            "Return-Path: <sender@example.com>\nX-Original-To: trap@example.org\n\
             Delivered-To: trap@example.org\nReceived: from client.example"
        ),
        "{stored}"
    );
    assert!(stored.contains("\tfor <trap@example.org>; "), "{stored}");
    assert!(
        stored.contains("X-Sinkhole-Helo: client.example\n"),
        "{stored}"
    );
    assert!(!stored.contains('\r'), "{stored}");
    assert!(stored.contains("X-Sinkhole-Client: 127.0.0.1:"), "{stored}");
    // swaks says EHLO: RFC 3848's ESMTP.
    assert!(stored.contains(" (sinkhole) with ESMTP id "), "{stored}");
    assert!(stored.contains("plain body line\n"), "{stored}");
    let name = messages[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(out.contains(&format!("queued as {name}")), "{out}");

    daemon.stop();
    let sessions = daemon.sessions();
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(session["verdict"], "accepted");
    assert_eq!(session["helo"], "client.example");
    assert_eq!(session["client_ip"], "127.0.0.1");
    assert_eq!(
        session["transactions"][0]["mail_from"],
        "sender@example.com"
    );
    assert_eq!(
        session["transactions"][0]["rcpts"][0]["addr"],
        "trap@example.org"
    );
    assert_eq!(session["transactions"][0]["rcpts"][0]["code"], 250);
    assert_eq!(session["transactions"][0]["data_code"], 250);
    assert_eq!(session["transactions"][0]["message"], name.as_str());
    let id = session["id"].as_str().unwrap();
    assert!(stored.contains(&format!("X-Sinkhole-Session: {id}\n")));
}

#[test]
fn swaks_pipelined_session_is_answered_in_order() {
    let mut daemon = Daemon::start("", "");
    let (ok, out) = swaks(&daemon, &["--pipeline", "--body", "pipelined"]);
    assert!(ok, "swaks --pipeline failed:\n{out}");
    assert!(out.contains("<-  250-PIPELINING"), "{out}");
    // swaks sends MAIL, RCPT and DATA in one go and prints the three replies together.
    let mail = out.find("<-  250 2.1.0 Ok").expect("MAIL reply");
    let rcpt = out.find("<-  250 2.1.5 Ok").expect("RCPT reply");
    let data = out.find("<-  354 ").expect("DATA reply");
    assert!(mail < rcpt && rcpt < data, "{out}");
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    assert_eq!(daemon.new_messages().len(), 1);
    daemon.stop();
    let sessions = daemon.sessions();
    assert_eq!(sessions[0]["pipelined"], true, "{}", sessions[0]);
    assert_eq!(sessions[0]["verdict"], "accepted");
}

#[test]
fn python_smtplib_message_is_stored_byte_for_byte_with_lf_endings() {
    let mut daemon = Daemon::start("", "");
    // A dot-leading line (stuffed by smtplib, unstuffed by us) and 8-bit bytes.
    let body: &[u8] = b"From: a@example.com\r\nTo: trap@example.org\r\nSubject: dots\r\n\r\n\
        .leading dot\r\n..two dots\r\n.\r\n\xc3\xa9t\xc3\xa9 8-bit \xff\r\nlast line\r\n";
    let body_path = daemon.dir.path().join("body.eml");
    fs::write(&body_path, body).unwrap();
    let script = format!(
        "import smtplib, sys\n\
         msg = open({path:?}, 'rb').read()\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=10)\n\
         s.ehlo('python.example')\n\
         refused = s.sendmail('a@example.com', ['trap@example.org'], msg, mail_options=['BODY=8BITMIME'])\n\
         assert refused == {{}}, refused\n\
         s.quit()\n",
        path = body_path.display().to_string(),
        port = daemon.addr.port()
    );
    run_client(Command::new("python3").arg("-c").arg(&script));

    let messages = daemon.new_messages();
    assert_eq!(messages.len(), 1);
    let stored = fs::read(&messages[0]).unwrap();
    let as_stored = lf_endings(body);
    assert!(
        stored.ends_with(&as_stored),
        "the body was changed on its way to disk (beyond CRLF to LF)"
    );
    let headers = std::str::from_utf8(&stored[..stored.len() - as_stored.len()]).unwrap();
    let names: Vec<&str> = headers
        .split_terminator('\n')
        .filter(|l| !l.starts_with('\t'))
        .map(|l| l.split_once(": ").expect("a header line").0)
        .collect();
    assert_eq!(
        names,
        [
            "Return-Path",
            "X-Original-To",
            "Delivered-To",
            "Received",
            "X-Sinkhole-Session",
            "X-Sinkhole-Client",
            "X-Sinkhole-Rdns",
            "X-Sinkhole-Helo",
            "X-Sinkhole-Dnsbl"
        ]
    );
    assert!(headers.contains("X-Sinkhole-Helo: python.example\n"));
    daemon.stop();
    assert_eq!(daemon.sessions()[0]["transactions"][0]["size"], body.len());
}

/// Python's `mailbox` reads the Maildir: each message's envelope from its headers
/// (`Delivered-To` per recipient, `X-Original-To`, the `Received:` line's `for`), its body as
/// sent, with LF line endings.
#[test]
fn python_mailbox_reads_each_message_and_its_envelope() {
    let mut daemon = Daemon::start("", "");
    let script = r#"
import json, mailbox, smtplib, sys
port, maildir = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port, local_hostname="python.example", timeout=10) as s:
    s.sendmail("a@example.com", ["one@example.org"], b"Subject: first\r\n\r\nline 1\r\nline 2\r\n")
    s.sendmail("b@example.com", ["two@example.org", "three@example.org"],
               b"Subject: second\r\n\r\nbody\r\n")
box = mailbox.Maildir(maildir, factory=None, create=False)
out = []
for key, msg in box.items():
    out.append({
        "subject": msg["Subject"],
        "return_path": msg["Return-Path"],
        "delivered_to": msg.get_all("Delivered-To"),
        "original_to": msg["X-Original-To"],
        "received": " ".join(msg["Received"].split()),
        "body": msg.get_payload(),
        "raw_has_cr": b"\r" in box.get_bytes(key),
    })
print(json.dumps(sorted(out, key=lambda m: m["subject"])))
"#;
    let maildir = daemon.storage().join("maildir");
    let out = run_client(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(daemon.addr.port().to_string())
            .arg(&maildir),
    );
    let messages: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &messages[0];
    assert_eq!(first["subject"], "first", "{messages}");
    assert_eq!(first["return_path"], "<a@example.com>");
    assert_eq!(
        first["delivered_to"],
        serde_json::json!(["one@example.org"])
    );
    assert_eq!(first["original_to"], "one@example.org");
    assert!(
        first["received"]
            .as_str()
            .unwrap()
            .contains("with ESMTP id ")
            && first["received"]
                .as_str()
                .unwrap()
                .contains(" for <one@example.org>; "),
        "{first}"
    );
    assert_eq!(first["body"], "line 1\nline 2\n");
    assert_eq!(first["raw_has_cr"], false);
    let second = &messages[1];
    assert_eq!(second["subject"], "second", "{messages}");
    assert_eq!(
        second["delivered_to"],
        serde_json::json!(["two@example.org", "three@example.org"])
    );
    assert_eq!(second["original_to"], "two@example.org, three@example.org");
    assert!(
        !second["received"].as_str().unwrap().contains(" for <"),
        "{second}"
    );
    assert_eq!(second["body"], "body\n");
    daemon.stop();
}

#[test]
fn raw_pipelined_spam_run_is_replayed_and_logged() {
    let mut daemon = Daemon::start("", "");
    let mut client = SmtpClient::connect(daemon.addr);
    assert!(client.reply()[0].starts_with("220 sinkhole.test"));
    client.send(
        b"EHLO host11.190-230-18.telecom.net.ar\r\nMAIL From:<trap@example.org>\r\nRCPT To:<trap@example.org>\r\n",
    );
    let ehlo = client.reply();
    assert_eq!(ehlo[0], "250-sinkhole.test");
    assert!(ehlo.iter().any(|l| l.ends_with("PIPELINING")), "{ehlo:?}");
    assert_eq!(client.reply(), ["250 2.1.0 Ok"]);
    assert_eq!(client.reply(), ["250 2.1.5 Ok"]);
    client.send(b"QUIT\r\n");
    assert!(client.reply()[0].starts_with("221 "));
    assert!(client.closed());

    daemon.stop();
    let sessions = daemon.sessions();
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(session["pipelined"], true);
    assert_eq!(session["helo"], "host11.190-230-18.telecom.net.ar");
    assert_eq!(session["verdict"], "no-mail");
    let signatures = session["signatures"].as_array().unwrap();
    assert!(
        signatures.contains(&"mail-from-eq-rcpt-to".into()),
        "{signatures:?}"
    );
    let transcript: Vec<(String, String)> = session["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l[1].as_str().unwrap().to_string(),
                l[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let said = |who: &str, line: &str| transcript.contains(&(who.to_string(), line.to_string()));
    assert!(
        said("c", "EHLO host11.190-230-18.telecom.net.ar"),
        "{transcript:?}"
    );
    assert!(said("c", "MAIL From:<trap@example.org>"), "{transcript:?}");
    assert!(said("c", "RCPT To:<trap@example.org>"), "{transcript:?}");
    assert!(said("s", "250 2.1.5 Ok"), "{transcript:?}");
    assert!(said("c", "QUIT"), "{transcript:?}");
    let rcpts = &session["transactions"][0]["rcpts"];
    assert_eq!(rcpts[0]["addr"], "trap@example.org");
    assert_eq!(rcpts[0]["code"], 250);
}
