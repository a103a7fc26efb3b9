//! Per-address policy through the real daemon with real clients (swaks, Python smtplib, raw
//! bytes from chosen loopback addresses): closed addresses, per-recipient blocks by host and by
//! sender, local-domain senders, `stall` next to other sessions, and SIGHUP reloads.
//!
//! Every daemon here sends its DNS to a local `nsd` that knows no name, and queries no DNSBL
//! zone, so scoring answers at once and the tests need no network.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sinkhole_tests::daemon::{Daemon, SmtpClient};
use sinkhole_tests::policy::PolicyDaemon;
use sinkhole_tests::run_client;

/// Starts `nsd` and a daemon with `policy` as its policy file and `policy_extra` more
/// `[policy]` lines.
fn world(policy: &str, policy_extra: &str) -> PolicyDaemon {
    PolicyDaemon::start(policy, policy_extra)
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A client from `source` that has read the banner and said EHLO.
fn client_from(daemon: &Daemon, source: IpAddr) -> SmtpClient {
    let mut client = SmtpClient::connect_from(daemon.addr, source);
    assert!(client.reply()[0].starts_with("220 "));
    client.send(b"EHLO client.example\r\n");
    assert!(client.reply().last().unwrap().starts_with("250 "));
    client
}

/// Sends one command and returns the first line of its reply.
fn command(client: &mut SmtpClient, line: &str) -> String {
    client.send(format!("{line}\r\n").as_bytes());
    client.reply().remove(0)
}

/// `(addr, code)` of every recipient of transaction `t` in a logged session.
fn rcpt_codes(session: &Value, t: usize) -> Vec<(String, u64)> {
    session["transactions"][t]["rcpts"]
        .as_array()
        .unwrap_or_else(|| panic!("no transaction {t}: {session}"))
        .iter()
        .map(|r| {
            (
                r["addr"].as_str().unwrap().to_string(),
                r["code"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn signatures(session: &Value) -> Vec<&str> {
    session["signatures"]
        .as_array()
        .unwrap_or_else(|| panic!("no signatures: {session}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn session_from<'a>(sessions: &'a [Value], client: &str) -> Vec<&'a Value> {
    sessions
        .iter()
        .filter(|s| s["client_ip"] == client)
        .collect()
}

#[test]
fn a_closed_address_gets_its_own_reply_and_the_other_recipient_its_message() {
    let mut w = world(
        "[[rule]]\nto = \"old-shop@example.org\"\naction = \"reject\"\n\
         message = \"550 5.1.1 This address is closed\"\n",
        "",
    );
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port"])
        .arg(w.daemon.addr.port().to_string())
        .args(["--helo", "client.example", "--timeout", "10"])
        .args(["--from", "shop-news@sender.example"])
        .args(["--to", "old-shop@example.org,alice@example.org"])
        .args(["--body", "closed-address body"])
        .output()
        .expect("run swaks (installed by cargo xtask setup)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let rcpt_replies: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains(" -> RCPT TO:<old-shop@example.org>"))
        .filter(|l| l.starts_with('<'))
        .take(2)
        .collect();
    assert_eq!(
        rcpt_replies,
        ["<** 550 5.1.1 This address is closed", "<-  250 2.1.5 Ok"],
        "{text}"
    );
    assert!(text.contains("<-  250 2.0.0 Ok: queued as "), "{text}");

    let messages = w.daemon.new_messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let stored = fs::read_to_string(&messages[0]).unwrap();
    assert!(stored.contains("closed-address body"), "{stored}");

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        rcpt_codes(&sessions[0], 0),
        [
            ("old-shop@example.org".to_string(), 550),
            ("alice@example.org".to_string(), 250)
        ]
    );
    assert_eq!(sessions[0]["transactions"][0]["data_code"], 250);
}

/// What Python's smtplib reports for one `sendmail` from `source`: the refused recipients
/// (`{addr: [code, text]}`), or the exception when nothing was accepted.
fn smtplib_send(w: &PolicyDaemon, source: &str, from: &str, to: &[&str]) -> Value {
    let script = r#"
import json, smtplib, sys
port, source, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rcpts = sys.argv[4:]
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example",
                  source_address=(source, 0), timeout=10) as s:
    try:
        refused = s.sendmail(sender, rcpts, b"Subject: policy\r\n\r\nbody\r\n")
        print(json.dumps({"refused": {k: [c, m.decode()] for k, (c, m) in refused.items()}}))
    except smtplib.SMTPRecipientsRefused as e:
        print(json.dumps({"all_refused": {k: [c, m.decode()] for k, (c, m) in e.recipients.items()}}))
"#;
    let out = run_client(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(w.daemon.addr.port().to_string())
            .arg(source)
            .arg(from)
            .args(to),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn recipients_are_refused_by_host_and_by_sender_beside_an_accepted_one() {
    let mut w = world(
        "[[rule]]\nto = \"chris@example.org\"\nhost = [\"127.0.0.5/32\"]\naction = \"reject\"\n\
         [[rule]]\nto = \"dana@example.org\"\nfrom = [\"@bulk.example.com\"]\naction = \"reject\"\n",
        "",
    );
    let rcpts = ["chris@example.org", "dana@example.org", "erin@example.org"];
    let refused = |addr: &str| {
        serde_json::json!([550, format!("5.1.1 <{addr}>: Recipient address rejected")])
    };

    // From the blocked host, with the refused sender: chris by host, dana by sender.
    let bulk_from_5 = smtplib_send(&w, "127.0.0.5", "news@bulk.example.com", &rcpts);
    assert_eq!(
        bulk_from_5,
        serde_json::json!({"refused": {
            "chris@example.org": refused("chris@example.org"),
            "dana@example.org": refused("dana@example.org"),
        }})
    );
    // Another host, the same sender: only dana.
    let bulk_from_6 = smtplib_send(&w, "127.0.0.6", "news@bulk.example.com", &rcpts);
    assert_eq!(
        bulk_from_6,
        serde_json::json!({"refused": {"dana@example.org": refused("dana@example.org")}})
    );
    // The blocked host with another sender: only chris.
    let other_from_5 = smtplib_send(&w, "127.0.0.5", "friend@sender.example", &rcpts);
    assert_eq!(
        other_from_5,
        serde_json::json!({"refused": {"chris@example.org": refused("chris@example.org")}})
    );
    // Each transaction delivered one message for its accepted recipients.
    assert_eq!(w.daemon.new_messages().len(), 3);

    // The same through raw bytes, reply by reply, in one transaction.
    let mut raw = client_from(&w.daemon, loopback(5));
    assert_eq!(
        command(&mut raw, "MAIL FROM:<x@bulk.example.com>"),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        command(&mut raw, "RCPT TO:<erin@example.org>"),
        "250 2.1.5 Ok"
    );
    assert_eq!(
        command(&mut raw, "RCPT TO:<Chris@Example.org>"),
        "550 5.1.1 <Chris@Example.org>: Recipient address rejected"
    );
    assert_eq!(
        command(&mut raw, "RCPT TO:<dana@example.org>"),
        "550 5.1.1 <dana@example.org>: Recipient address rejected"
    );
    assert_eq!(command(&mut raw, "QUIT"), "221 2.0.0 Bye");
    assert!(raw.closed());

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    let from_5 = session_from(&sessions, "127.0.0.5");
    let from_6 = session_from(&sessions, "127.0.0.6");
    assert_eq!((from_5.len(), from_6.len()), (3, 1), "{sessions:?}");
    let codes = |s: &Value| {
        rcpt_codes(s, 0)
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>()
    };
    let mut seen_from_5: Vec<Vec<u64>> = from_5.iter().map(|s| codes(s)).collect();
    seen_from_5.sort();
    assert_eq!(
        seen_from_5,
        [
            vec![250, 550, 550],
            vec![550, 250, 250],
            vec![550, 550, 250]
        ]
    );
    assert_eq!(codes(from_6[0]), [250, 550, 250]);
}

#[test]
fn with_local_domains_phase_rcpt_senders_in_a_local_domain_are_refused_at_each_rcpt() {
    // An `accept` rule for everything does not let a local-domain sender through; with
    // `local_domains_phase = "rcpt"` the MAIL is accepted and each recipient refused, as before
    // refusals at MAIL existed (the null sender is never refused for being null).
    let mut w = world(
        "local_domains = [\"example.org\"]\n[[rule]]\nto = \"*\"\naction = \"accept\"\n",
        "local_domains_phase = \"rcpt\"",
    );
    let local = "550 5.7.1 Sender address in a local domain is not accepted from outside";
    let mut c = client_from(&w.daemon, loopback(7));
    assert_eq!(
        command(&mut c, "MAIL FROM:<Boss@EXAMPLE.org>"),
        "250 2.1.0 Ok"
    );
    assert_eq!(command(&mut c, "RCPT TO:<trap@example.org>"), local);
    assert_eq!(command(&mut c, "RCPT TO:<someone@other.example>"), local);
    assert!(command(&mut c, "DATA").starts_with("554 5.5.1 "));
    assert_eq!(command(&mut c, "RSET"), "250 2.0.0 Ok");
    // A bounce (null sender) to a local address is accepted.
    assert_eq!(command(&mut c, "MAIL FROM:<>"), "250 2.1.0 Ok");
    assert_eq!(
        command(&mut c, "RCPT TO:<trap@example.org>"),
        "250 2.1.5 Ok"
    );
    assert!(command(&mut c, "DATA").starts_with("354 "));
    c.send(b"Subject: bounce\r\n\r\nundeliverable\r\n.\r\n");
    assert!(c.reply()[0].starts_with("250 "));
    // A sender in a subdomain is not local.
    assert_eq!(
        command(&mut c, "MAIL FROM:<a@sub.example.org>"),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        command(&mut c, "RCPT TO:<trap@example.org>"),
        "250 2.1.5 Ok"
    );
    assert_eq!(command(&mut c, "QUIT"), "221 2.0.0 Bye");
    assert!(c.closed());

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(
        rcpt_codes(s, 0),
        [
            ("trap@example.org".to_string(), 550),
            ("someone@other.example".to_string(), 550)
        ]
    );
    // The refused DATA sent no data, so there is no end-of-data reply.
    assert_eq!(s["transactions"][0]["data_code"], Value::Null);
    assert_eq!(s["transactions"][1]["mail_from"], "");
    assert_eq!(rcpt_codes(s, 1), [("trap@example.org".to_string(), 250)]);
    assert_eq!(s["transactions"][1]["data_code"], 250);
    assert!(signatures(s).contains(&"mail-from-local-domain"), "{s}");
    assert_eq!(w.daemon.new_messages().len(), 1);
}

#[test]
fn a_stalled_recipient_holds_only_its_own_session() {
    let _machine = sinkhole_tests::shared();
    let stall = Duration::from_secs(2);
    let mut w = world(
        "[[rule]]\nto = \"slow@example.org\"\naction = \"stall\"\n",
        "stall = \"2s\"",
    );
    let mut slow = client_from(&w.daemon, loopback(8));
    assert_eq!(
        command(&mut slow, "MAIL FROM:<a@sender.example>"),
        "250 2.1.0 Ok"
    );
    let asked = Instant::now();
    slow.send(b"RCPT TO:<slow@example.org>\r\n");
    let held = std::thread::spawn(move || {
        let reply = slow.reply();
        (reply, asked.elapsed(), Instant::now(), slow)
    });

    // Meanwhile a second client gets its banner and a whole transaction done.
    let mut other = client_from(&w.daemon, loopback(9));
    assert_eq!(
        command(&mut other, "MAIL FROM:<b@sender.example>"),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        command(&mut other, "RCPT TO:<fast@example.org>"),
        "250 2.1.5 Ok"
    );
    assert!(command(&mut other, "DATA").starts_with("354 "));
    other.send(b"Subject: fast\r\n\r\nnot held\r\n.\r\n");
    assert!(other.reply()[0].starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(command(&mut other, "QUIT"), "221 2.0.0 Bye");
    let other_done = Instant::now();

    let (reply, waited, answered_at, mut slow) = held.join().unwrap();
    assert_eq!(
        reply,
        ["451 4.7.1 <slow@example.org>: Recipient address rejected: try again later"]
    );
    assert!(waited >= stall, "held only {waited:?}");
    assert!(waited < stall * 4, "held {waited:?}");
    assert!(
        other_done < answered_at && other_done < asked + stall,
        "the other session finished only after the stall ended"
    );
    // The stalled session goes on normally afterwards.
    assert_eq!(
        command(&mut slow, "RCPT TO:<fast@example.org>"),
        "250 2.1.5 Ok"
    );
    assert_eq!(command(&mut slow, "QUIT"), "221 2.0.0 Bye");

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    let held_session = &session_from(&sessions, "127.0.0.8")[0];
    assert_eq!(
        rcpt_codes(held_session, 0),
        [
            ("slow@example.org".to_string(), 451),
            ("fast@example.org".to_string(), 250)
        ]
    );
    assert_eq!(w.daemon.new_messages().len(), 1);
}

/// A's and B's RCPT reply codes for a fresh transaction on `client`.
fn codes_for_a_and_b(client: &mut SmtpClient) -> (String, String) {
    assert_eq!(
        command(client, "MAIL FROM:<x@sender.example>"),
        "250 2.1.0 Ok"
    );
    let a = command(client, "RCPT TO:<a@example.org>");
    let b = command(client, "RCPT TO:<b@example.org>");
    assert_eq!(command(client, "RSET"), "250 2.0.0 Ok");
    (a[..3].to_string(), b[..3].to_string())
}

fn codes_for_new_session(daemon: &Daemon) -> (String, String) {
    let mut c = client_from(daemon, loopback(1));
    let codes = codes_for_a_and_b(&mut c);
    c.send(b"QUIT\r\n");
    codes
}

fn own(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn sighup_loads_a_good_file_and_keeps_the_last_good_rules_on_a_broken_one() {
    let mut w = world(
        "[[rule]]\nto = \"a@example.org\"\naction = \"reject\"\n",
        "",
    );
    assert_eq!(codes_for_new_session(&w.daemon), own("550", "250"));
    // A session that is open before the reload (its banner proves it was accepted).
    let mut before = client_from(&w.daemon, loopback(2));

    fs::write(
        &w.policy,
        "[[rule]]\nto = \"b@example.org\"\naction = \"reject\"\n",
    )
    .unwrap();
    w.daemon.reload();
    let deadline = Instant::now() + Duration::from_secs(5);
    while codes_for_new_session(&w.daemon) != own("250", "550") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not load the new rules: {}",
            w.daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The open session keeps the rules it started with.
    assert_eq!(codes_for_a_and_b(&mut before), own("550", "250"));

    // A TOML syntax error on line 3: logged with file and line, the good rules stay.
    fs::write(
        &w.policy,
        "[[rule]]\nto = \"a@example.org\"\naction = reject\n",
    )
    .unwrap();
    w.daemon.reload();
    let stderr = w.daemon.wait_stderr(
        &format!("{}:3:", w.policy.display()),
        Duration::from_secs(5),
    );
    w.daemon.assert_running();
    assert_eq!(
        codes_for_new_session(&w.daemon),
        own("250", "550"),
        "{stderr}"
    );
    assert_eq!(codes_for_a_and_b(&mut before), own("550", "250"));

    // A file that parses but is invalid is refused the same way.
    fs::write(
        &w.policy,
        "[[rule]]\nto = \"a@example.org\"\naction = \"drop\"\n",
    )
    .unwrap();
    w.daemon.reload();
    w.daemon.wait_stderr(
        &format!(
            "{}:3: rule[0].action: unknown variant `drop`",
            w.policy.display()
        ),
        Duration::from_secs(5),
    );
    w.daemon.assert_running();
    assert_eq!(codes_for_new_session(&w.daemon), own("250", "550"));
    before.send(b"QUIT\r\n");
    w.daemon.stop();
}

#[test]
fn a_block_rule_refuses_and_puts_the_client_into_the_drop_map() {
    let mut w = PolicyDaemon::start_with(
        "[[rule]]\nto = \"trap@example.org\"\naction = \"block\"\n",
        "",
        Daemon::start_blocking_loopback,
    );
    let mut bot = client_from(&w.daemon, loopback(11));
    assert_eq!(
        command(&mut bot, "MAIL FROM:<a@sender.example>"),
        "250 2.1.0 Ok"
    );
    assert_eq!(
        command(&mut bot, "RCPT TO:<fine@example.org>"),
        "250 2.1.5 Ok"
    );
    assert_eq!(
        command(&mut bot, "RCPT TO:<trap@example.org>"),
        "550 5.7.1 <trap@example.org>: Recipient address rejected: access denied"
    );
    // Blocked: the session ends once the refusal is out.
    assert!(bot.closed());
    w.daemon.wait_stderr(
        "blocked 127.0.0.11 for 1h (policy:rule[0])",
        Duration::from_secs(5),
    );
    // It is turned away at accept from now on; another client is not.
    let mut again = SmtpClient::connect_from(w.daemon.addr, loopback(11));
    assert_eq!(again.line(), None, "a blocked client heard something");
    let mut other = client_from(&w.daemon, loopback(12));
    assert_eq!(command(&mut other, "QUIT"), "221 2.0.0 Bye");

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    // Sessions are logged when they are complete (a session may wait for its DNS answers), so
    // the log is not in connection order: tell the two apart by their verdicts.
    let from_11 = session_from(&sessions, "127.0.0.11");
    assert_eq!(from_11.len(), 2, "{sessions:?}");
    let (refused, blocked): (Vec<&Value>, Vec<&Value>) =
        from_11.into_iter().partition(|s| s["verdict"] != "blocked");
    assert_eq!((refused.len(), blocked.len()), (1, 1), "{sessions:?}");
    assert_eq!(
        rcpt_codes(refused[0], 0),
        [
            ("fine@example.org".to_string(), 250),
            ("trap@example.org".to_string(), 550)
        ]
    );
}
