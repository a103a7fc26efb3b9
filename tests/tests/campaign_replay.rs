//! A spam campaign replayed against the real daemon with a local-domain policy: a dozen
//! clients from distinct loopback addresses, each pipelining `MAIL FROM` equal to `RCPT TO` in
//! a local domain (refused at MAIL: what they pipelined behind it gets 503), then
//! `sinkhole campaigns` grouping them, and `campaign.block_signatures` putting one group's
//! clients into the drop map. Also the seed session (issue 3, issue 18): 550 at MAIL, 503 at
//! RCPT.
//!
//! DNS is a local `nsd`: no client has a PTR record (`no-rdns` for all), and the rDNS-like HELO
//! names resolve to their clients (no `helo-mismatch`), so the two variants differ by exactly
//! `helo-ip-literal`: one campaign, two variants.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{Value, json};
use sinkhole_tests::daemon::{Daemon, SmtpClient, dns_without_zones};
use sinkhole_tests::dns::{Nsd, start_nsd, zone_file};
use sinkhole_tests::{TempDir, temp_dir};

/// Clients 127.0.0.10..=17 say `EHLO hostN.127-0-0.telecom.net.ar`; 18..=21 say `EHLO [IP]`.
const NAMED: std::ops::RangeInclusive<u8> = 10..=17;
const LITERAL: std::ops::RangeInclusive<u8> = 18..=21;

const LOCAL_SENDER: &str =
    "550 5.7.1 Sender address in a local domain is not accepted from outside";
const OUT_OF_SEQUENCE: &str = "503 5.5.1 Out of sequence command";

struct World {
    daemon: Daemon,
    _policy_dir: TempDir,
    _dns: Nsd,
}

fn rdns_like_name(last: u8) -> String {
    format!("host{last}.127-0-0.telecom.net.ar")
}

fn world() -> World {
    let mut forward = String::new();
    for last in NAMED {
        writeln!(forward, "host{last}.127-0-0 IN A 127.0.0.{last}").unwrap();
    }
    let dns = start_nsd(&[
        ("127.in-addr.arpa", &zone_file("")),
        ("telecom.net.ar", &zone_file(&forward)),
    ])
    .expect("nsd");
    let policy_dir = temp_dir("policy");
    let policy = policy_dir.path().join("policy.toml");
    fs::write(&policy, "local_domains = [\"example.org\"]\n").unwrap();
    // Sessions showing this set end with their client in the drop map: the literal group only.
    let rest = format!(
        "{}[policy]\nfile = \"{}\"\n\
         [campaign]\nblock_signatures = [[\"mail-from-eq-rcpt-to\", \"helo-ip-literal\"]]\n",
        dns_without_zones(dns.addr),
        policy.display()
    );
    World {
        daemon: Daemon::start_blocking_loopback(&rest),
        _policy_dir: policy_dir,
        _dns: dns,
    }
}

/// One bot: banner, EHLO, then the whole transaction and QUIT in one write. Returns the first
/// line of every reply after the EHLO.
fn replay(daemon: &Daemon, last: u8, helo: &str) -> Vec<String> {
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    let mut bot = SmtpClient::connect_from(daemon.addr, source);
    assert!(bot.reply()[0].starts_with("220 "));
    bot.send(format!("EHLO {helo}\r\n").as_bytes());
    let ehlo = bot.reply();
    assert!(
        ehlo.len() > 1 && ehlo.last().unwrap().starts_with("250 "),
        "{ehlo:?}"
    );
    bot.send(
        b"MAIL FROM:<trap@example.org>\r\nRCPT TO:<trap@example.org>\r\nDATA\r\n\
          Subject: You won\r\n\r\nClaim now\r\n.\r\nQUIT\r\n",
    );
    // MAIL, RCPT, DATA, four body lines read as commands, QUIT.
    let replies: Vec<String> = bot.replies(8).into_iter().map(|r| r[0].clone()).collect();
    assert!(bot.closed());
    replies
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn a_dozen_bots_pipelining_from_eq_rcpt_in_a_local_domain_are_one_campaign_with_a_variant_per_helo_kind()
 {
    let mut w = world();
    let bots: Vec<(u8, String)> = NAMED
        .map(|last| (last, rdns_like_name(last)))
        .chain(LITERAL.map(|last| (last, format!("[127.0.0.{last}]"))))
        .collect();
    assert_eq!(bots.len(), 12);
    let all_replies: Vec<(u8, Vec<String>)> = std::thread::scope(|scope| {
        let daemon = &w.daemon;
        let handles: Vec<_> = bots
            .iter()
            .map(|(last, helo)| scope.spawn(move || (*last, replay(daemon, *last, helo))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (last, replies) in &all_replies {
        assert_eq!(replies[0], LOCAL_SENDER, "127.0.0.{last}: {replies:?}");
        assert_eq!(replies[1], OUT_OF_SEQUENCE, "127.0.0.{last}: {replies:?}");
        assert_eq!(replies[2], OUT_OF_SEQUENCE, "127.0.0.{last}: {replies:?}");
        assert!(
            replies[3..7].iter().all(|r| r.starts_with("500 ")),
            "127.0.0.{last}: {replies:?}"
        );
        assert_eq!(replies[7], "221 2.0.0 Bye", "127.0.0.{last}: {replies:?}");
    }
    assert!(w.daemon.new_messages().is_empty());

    // The RCPT behind the refused MAIL still shows that the bot sent MAIL FROM = RCPT TO.
    let named_set = [
        "mail-from-eq-rcpt-to",
        "mail-from-local-domain",
        "no-rdns",
        "pipelined-run-ahead",
        "out-of-sequence",
    ];
    let literal_set = [
        "mail-from-eq-rcpt-to",
        "mail-from-local-domain",
        "helo-ip-literal",
        "no-rdns",
        "pipelined-run-ahead",
        "out-of-sequence",
    ];
    let sessions = w.daemon.wait_sessions(12);
    assert_eq!(sessions.len(), 12, "{sessions:?}");
    let mut ids = HashSet::new();
    for s in &sessions {
        let last: u8 = s["client_ip"].as_str().unwrap()["127.0.0.".len()..]
            .parse()
            .unwrap();
        let expected: &[&str] = if NAMED.contains(&last) {
            &named_set
        } else {
            &literal_set
        };
        assert_eq!(strings(&s["signatures"]), expected, "{s}");
        assert_eq!(s["pipelined"], true, "{s}");
        assert_eq!(s["rdns"], Value::Null, "{s}");
        // The refused MAIL is a transaction of its own, with no recipients.
        assert_eq!(
            s["transactions"],
            json!([{"mail_from": "trap@example.org", "mail_code": 550, "rcpts": [],
                    "data_code": null, "message": null, "size": 0}]),
            "{s}"
        );
        assert_eq!(s["verdict"], "rejected", "{s}");
        ids.insert(s["id"].as_str().unwrap().to_string());
    }

    let report = w.daemon.campaigns();
    let groups = report.as_array().expect("an array of campaigns");
    assert_eq!(groups.len(), 1, "{report:#}");
    let campaign = &groups[0];
    assert_eq!(campaign["sessions"], 12, "{report:#}");
    assert_eq!(campaign["clients"], 12, "{report:#}");
    assert_eq!(
        strings(&campaign["signatures"]),
        named_set,
        "what every session showed: {report:#}"
    );
    assert_eq!(
        campaign["variants"],
        json!([
            {"signatures": named_set, "sessions": NAMED.count()},
            {"signatures": literal_set, "sessions": LITERAL.count()},
        ]),
        "{report:#}"
    );
    assert_eq!(campaign["dnsbl"], json!({}), "{report:#}");
    assert!(campaign["first_seen"].is_string(), "{report:#}");
    assert!(campaign["last_seen"].is_string(), "{report:#}");
    let examples = strings(&campaign["examples"]);
    assert!(!examples.is_empty(), "{report:#}");
    assert!(examples.iter().all(|e| ids.contains(*e)), "{report:#}");

    // `campaign.block_signatures` blocked the literal group's clients, and only them.
    for last in LITERAL {
        w.daemon.wait_stderr(
            &format!(
                "blocked 127.0.0.{last} for 1h (campaign:mail-from-eq-rcpt-to+helo-ip-literal)"
            ),
            Duration::from_secs(5),
        );
    }
    let stderr = w.daemon.stderr();
    for last in NAMED {
        assert!(
            !stderr.contains(&format!("blocked 127.0.0.{last} ")),
            "{stderr}"
        );
    }
    let source = |last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    let mut blocked = SmtpClient::connect_from(w.daemon.addr, source(*LITERAL.start()));
    assert_eq!(blocked.line(), None, "a blocked bot heard something");
    let mut named = SmtpClient::connect_from(w.daemon.addr, source(*NAMED.start()));
    assert!(named.reply()[0].starts_with("220 "));
    named.send(b"QUIT\r\n");
    assert_eq!(named.reply(), ["221 2.0.0 Bye"]);
    w.daemon.stop();
}

#[test]
fn the_seed_session_pipelined_in_one_write_gets_550_at_mail_then_503() {
    let mut w = world();
    let mut bot = SmtpClient::connect(w.daemon.addr);
    assert!(bot.reply()[0].starts_with("220 "));
    bot.send(
        b"EHLO host11.190-230-18.telecom.net.ar\r\nMAIL From:<trap@example.org>\r\n\
          RCPT To:<trap@example.org>\r\n",
    );
    let ehlo = bot.reply();
    assert!(ehlo.len() > 1, "EHLO answers multi-line: {ehlo:?}");
    assert!(ehlo[0].starts_with("250-sinkhole.test"), "{ehlo:?}");
    assert!(ehlo.last().unwrap().starts_with("250 "), "{ehlo:?}");
    assert!(ehlo.iter().any(|l| l[4..] == *"PIPELINING"), "{ehlo:?}");
    // Exactly 550, then 503: nothing else came back.
    assert_eq!(bot.reply(), [LOCAL_SENDER]);
    assert_eq!(bot.reply(), [OUT_OF_SEQUENCE]);
    bot.send(b"QUIT\r\n");
    assert_eq!(bot.reply(), ["221 2.0.0 Bye"]);
    assert!(bot.closed());

    w.daemon.stop();
    let sessions = w.daemon.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s["helo"], "host11.190-230-18.telecom.net.ar", "{s}");
    assert_eq!(s["pipelined"], true, "{s}");
    let signatures = strings(&s["signatures"]);
    for expected in [
        "mail-from-local-domain",
        "pipelined-run-ahead",
        "out-of-sequence",
    ] {
        assert!(signatures.contains(&expected), "{s}");
    }
    let t = &s["transactions"][0];
    assert_eq!(t["mail_from"], "trap@example.org", "{s}");
    assert_eq!(t["mail_code"], 550, "{s}");
    assert_eq!(t["rcpts"], json!([]), "{s}");
    assert_eq!(s["verdict"], "rejected", "{s}");
    // The transcript has the refusal and the 503 as sent, in order.
    let said: Vec<&str> = s["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l[1] == "s")
        .map(|l| l[2].as_str().unwrap())
        .collect();
    let at = said
        .iter()
        .position(|l| *l == LOCAL_SENDER)
        .unwrap_or_else(|| panic!("no refusal in {s}"));
    assert_eq!(said[at + 1], OUT_OF_SEQUENCE, "{s}");
}

/// The HELO name of the issue 3 replay does not exist in telecom.net.ar (our nsd serves that
/// zone) and the client has no PTR, so the session shows `helo-mismatch` and `no-rdns`, however
/// fast the bot quits. Ignored until the daemon waits (bounded by `dnsbl.timeout`) for the
/// score and the HELO check before logging a session: today a session that ends a millisecond
/// after its EHLO is logged with neither (`scored: false`), so the same bot lands in different
/// campaigns depending on DNS timing, and an end-of-session block by score never happens.
#[test]
fn a_bot_that_quits_at_once_still_shows_helo_mismatch() {
    let mut w = world();
    let mut bot = SmtpClient::connect(w.daemon.addr);
    assert!(bot.reply()[0].starts_with("220 "));
    bot.send(b"EHLO host11.190-230-18.telecom.net.ar\r\nQUIT\r\n");
    bot.reply();
    assert_eq!(bot.reply(), ["221 2.0.0 Bye"]);
    assert!(bot.closed());
    w.daemon.stop();
    let sessions = w.daemon.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        strings(&sessions[0]["signatures"]),
        ["helo-mismatch", "no-rdns"],
        "{}",
        sessions[0]
    );
}
