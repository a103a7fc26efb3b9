//! Scoring in the real daemon: `sinkhole run` against `rbldnsd` (Spamhaus-like zones) and `nsd`
//! (PTR and forward records) behind a zone router, clients connecting from distinct loopback
//! sources so each is scored differently. RCPT replies, the session log and the trace headers
//! show the score; a DNS server that never answers delays only RCPT, only until
//! `dnsbl.timeout`, and once the outage is noticed not at all; a client above
//! `dnsbl.block_threshold` ends up dropped by XDP.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sinkhole::score::DOWN_AFTER;
use sinkhole_tests::daemon::{Daemon, SmtpClient, connect_from, smtp_config};
use sinkhole_tests::dns::{
    DnsWorld, RBLDNSD_SOA, Rbldnsd, stalled_dns, start_dns_world, start_rbldnsd, zone_file,
};
use sinkhole_tests::netns::{NetNs, PinDir, spawn_xdp_daemon};
use sinkhole_tests::{free_port, kernel_tests_allowed, sinkhole_ok, temp_dir};

/// Spamhaus' zen codes: 127.0.0.2 SBL, .3 CSS, .4-.7 XBL, .10-.11 PBL; 127.255.255.254 is
/// "query through a public resolver", an error.
const ZEN: &str = ":127.0.0.2:SBL\n\
    127.0.0.2\n\
    127.0.0.3 :127.0.0.3:CSS\n\
    127.0.0.4 :127.0.0.4:XBL\n\
    127.0.0.5 :127.0.0.10:PBL\n\
    127.0.0.6 :127.255.255.254:public resolver\n\
    127.0.0.9 :127.0.0.4:XBL\n";
const BL: &str = ":127.0.0.2:listed\n127.0.0.2\n127.0.0.9\n";
const ALLOW: &str = ":127.0.0.2:known good\n127.0.0.4\n";

const FORWARD: &str = "ns IN A 127.0.0.1\n\
    good IN A 127.0.0.7\n\
    forged IN A 127.0.0.99\n\
    helo IN A 127.0.0.3\n";
const REVERSE: &str = "3 IN PTR forged.test.\n\
    7 IN PTR Good.TEST.\n";

/// zen.test counts SBL, CSS and XBL (3) and, as a second entry, PBL (1); bl.test 2;
/// allow.test lowers the score by 2.
fn dnsbl_config(nameserver: SocketAddr, timeout: &str) -> String {
    format!(
        r#"[dnsbl]
nameservers = ["{nameserver}"]
timeout = "{timeout}"
reject_threshold = 3
block_threshold = 5
[[dnsbl.zone]]
name = "zen.test"
weight = 3
codes = ["127.0.0.2-127.0.0.7"]
[[dnsbl.zone]]
name = "zen.test"
weight = 1
codes = ["127.0.0.10-127.0.0.11"]
[[dnsbl.zone]]
name = "bl.test"
weight = 2
[[dnsbl.zone]]
name = "allow.test"
weight = -2
"#
    )
}

fn rbldnsd() -> Rbldnsd {
    start_rbldnsd(&[
        ("zen.test", "ip4set", &format!("{RBLDNSD_SOA}{ZEN}")),
        ("bl.test", "ip4set", &format!("{RBLDNSD_SOA}{BL}")),
        ("allow.test", "ip4set", &format!("{RBLDNSD_SOA}{ALLOW}")),
    ])
    .expect("rbldnsd")
}

fn world() -> DnsWorld {
    start_dns_world(
        rbldnsd(),
        &[
            ("test", &zone_file(FORWARD)),
            ("0.0.127.in-addr.arpa", &zone_file(REVERSE)),
        ],
    )
    .expect("DNS servers")
}

fn daemon(rest: &str) -> Daemon {
    let dir = temp_dir("score-e2e");
    let port = free_port();
    let config = smtp_config(port, dir.path(), "", "", rest);
    Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Banner, EHLO, MAIL, RCPT: returns the client and the RCPT reply line.
fn up_to_rcpt(addr: SocketAddr, from: IpAddr, helo: &str) -> (SmtpClient, String) {
    let mut c = SmtpClient::connect_from(addr, from);
    assert!(c.reply()[0].starts_with("220 "));
    c.send(format!("EHLO {helo}\r\n").as_bytes());
    assert!(c.reply().last().unwrap().starts_with("250 "));
    c.send(b"MAIL FROM:<sender@spam.example>\r\n");
    assert_eq!(c.reply(), ["250 2.1.0 Ok"]);
    c.send(b"RCPT TO:<trap@sinkhole.test>\r\n");
    let rcpt = c.line().expect("a RCPT reply");
    (c, rcpt)
}

/// A message after an accepted RCPT, then QUIT.
fn data_and_quit(c: &mut SmtpClient) {
    c.send(b"DATA\r\n");
    assert!(c.reply()[0].starts_with("354 "));
    c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply()[0].starts_with("250 "));
    quit(c);
}

fn quit(c: &mut SmtpClient) {
    c.send(b"QUIT\r\n");
    assert!(c.reply()[0].starts_with("221 "));
    assert!(c.closed());
}

fn session_of<'a>(sessions: &'a [Value], ip: &str) -> &'a Value {
    sessions
        .iter()
        .find(|s| s["client_ip"] == ip)
        .unwrap_or_else(|| panic!("no session from {ip} in {sessions:?}"))
}

fn signatures(session: &Value) -> Vec<&str> {
    session["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn rcpt_replies_session_log_and_headers_follow_the_score() {
    let _machine = sinkhole_tests::shared();
    let world = world();
    let mut d = daemon(&dnsbl_config(world.router.addr, "3s"));
    let addr = d.addr;

    // SBL (and XBL in the same answer set) plus bl.test: 5, refused, naming both zones. The
    // default xdp.allow covers loopback, so it is not blocked and the session goes on.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(2), "client.example");
    assert_eq!(
        rcpt,
        "550 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.test, bl.test"
    );
    c.send(b"RCPT TO:<other@sinkhole.test>\r\n");
    assert!(
        c.line()
            .unwrap()
            .starts_with("550 5.7.1 Service unavailable")
    );
    quit(&mut c);

    // CSS: 3, refused; its PTR name does not resolve back to it.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(3), "client.example");
    assert_eq!(
        rcpt,
        "550 5.7.1 Service unavailable; client [127.0.0.3] blocked using zen.test"
    );
    quit(&mut c);

    // XBL (3) and the allowlist zone (-2): 1, below reject_threshold.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(4), "client.example");
    assert_eq!(rcpt, "250 2.1.5 Ok");
    data_and_quit(&mut c);

    // PBL: only the second zen.test entry's code filter takes 127.0.0.10.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(5), "client.example");
    assert_eq!(rcpt, "250 2.1.5 Ok");
    quit(&mut c);

    // 127.255.255.254 (an error answer) is never a listing.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(6), "client.example");
    assert_eq!(rcpt, "250 2.1.5 Ok");
    quit(&mut c);

    // Clean, forward-confirmed, and its HELO is its PTR name.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(7), "good.test");
    assert_eq!(rcpt, "250 2.1.5 Ok");
    data_and_quit(&mut c);

    // Clean, no PTR, and a HELO name that resolves elsewhere.
    let (mut c, rcpt) = up_to_rcpt(addr, v4(8), "helo.test");
    assert_eq!(rcpt, "250 2.1.5 Ok");
    data_and_quit(&mut c);

    d.stop();
    let sessions = d.sessions();

    let s = session_of(&sessions, "127.0.0.2");
    assert_eq!(s["score"], 5);
    assert_eq!(s["scored"], true);
    assert_eq!(
        s["dnsbl"],
        json!([
            {"zone": "zen.test", "codes": ["127.0.0.2"]},
            {"zone": "bl.test", "codes": ["127.0.0.2"]},
        ])
    );
    assert_eq!(s["rdns"], Value::Null);
    assert_eq!(s["fcrdns"], false);
    assert_eq!(s["verdict"], "rejected");
    assert_eq!(signatures(s), ["no-rdns", "dnsbl-listed"]);
    assert_eq!(s["transactions"][0]["rcpts"][1]["code"], 550);

    let s = session_of(&sessions, "127.0.0.3");
    assert_eq!(s["score"], 3);
    assert_eq!(s["rdns"], "forged.test");
    assert_eq!(s["fcrdns"], false);
    assert_eq!(signatures(s), ["rdns-no-forward", "dnsbl-listed"]);

    let s = session_of(&sessions, "127.0.0.4");
    assert_eq!(s["score"], 1);
    assert_eq!(
        s["dnsbl"],
        json!([
            {"zone": "zen.test", "codes": ["127.0.0.4"]},
            {"zone": "allow.test", "codes": ["127.0.0.2"]},
        ])
    );
    assert_eq!(s["verdict"], "accepted");
    assert_eq!(signatures(s), ["no-rdns", "dnsbl-listed"]);

    let s = session_of(&sessions, "127.0.0.5");
    assert_eq!(s["score"], 1);
    assert_eq!(
        s["dnsbl"],
        json!([{"zone": "zen.test", "codes": ["127.0.0.10"]}])
    );

    let s = session_of(&sessions, "127.0.0.6");
    assert_eq!(s["score"], 0);
    assert_eq!(s["dnsbl"], json!([]));
    assert_eq!(signatures(s), ["no-rdns"]);

    let s = session_of(&sessions, "127.0.0.7");
    assert_eq!(s["score"], 0);
    assert_eq!(s["rdns"], "good.test");
    assert_eq!(s["fcrdns"], true);
    assert_eq!(signatures(s), ["helo-is-rdns"]);

    let s = session_of(&sessions, "127.0.0.8");
    assert_eq!(signatures(s), ["helo-mismatch", "no-rdns"]);

    // The trace headers of the captured messages.
    let headers: Vec<String> = d
        .new_messages()
        .iter()
        .map(|m| std::fs::read_to_string(m).unwrap())
        .collect();
    assert_eq!(headers.len(), 3);
    let of = |ip: &str| {
        headers
            .iter()
            .find(|h| h.contains(&format!("X-Sinkhole-Client: {ip}:")))
            .unwrap_or_else(|| panic!("no message from {ip}"))
    };
    assert!(
        of("127.0.0.4").contains("X-Sinkhole-Dnsbl: zen.test=127.0.0.4; allow.test=127.0.0.2\n")
    );
    assert!(of("127.0.0.4").contains("X-Sinkhole-Rdns: (none)\n"));
    assert!(of("127.0.0.7").contains("X-Sinkhole-Rdns: good.test\n"));
    assert!(of("127.0.0.7").contains("X-Sinkhole-Dnsbl: (none)\n"));
}

#[test]
fn a_dns_server_that_never_answers_delays_only_rcpt_until_dnsbl_timeout() {
    let _machine = sinkhole_tests::shared();
    let stalled = stalled_dns().expect("stalled DNS");
    let timeout = Duration::from_secs(2);
    let mut d = daemon(&dnsbl_config(stalled.addr, "2s"));

    // Session A reaches RCPT: its reply waits for the score.
    let connected = Instant::now();
    let mut a = SmtpClient::connect_from(d.addr, v4(2));
    assert!(a.reply()[0].starts_with("220 "));
    a.send(b"EHLO a.example\r\nMAIL FROM:<x@spam.example>\r\nRCPT TO:<trap@sinkhole.test>\r\n");
    assert!(a.reply().last().unwrap().starts_with("250 "));
    assert_eq!(a.reply(), ["250 2.1.0 Ok"]);

    // Meanwhile other sessions get their banner and replies: the loop is not waiting.
    for last in 3..6 {
        let mut b = SmtpClient::connect_from(d.addr, v4(last));
        assert!(b.reply()[0].starts_with("220 "));
        b.send(b"EHLO b.example\r\n");
        assert!(b.reply().last().unwrap().starts_with("250 "));
        quit(&mut b);
    }
    a.stream().set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        a.stream().peek(&mut byte).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock),
        "A's RCPT reply came before the score or dnsbl.timeout"
    );
    a.stream().set_nonblocking(false).unwrap();

    // Then RCPT proceeds unscored, not before dnsbl.timeout from accept.
    assert_eq!(a.line().unwrap(), "250 2.1.5 Ok");
    assert!(connected.elapsed() >= timeout);
    quit(&mut a);

    d.stop();
    let sessions = d.sessions();
    let s = session_of(&sessions, "127.0.0.2");
    assert_eq!(s["scored"], false);
    assert_eq!(s["verdict"], "no-mail");
    assert_eq!(s["transactions"][0]["rcpts"][0]["code"], 250);
    // Nothing was learnt by the end of the session either.
    assert_eq!(s["dnsbl"], json!([]));
    assert!(!signatures(s).contains(&"dnsbl-listed"));
}

#[test]
fn a_dns_outage_once_noticed_keeps_no_client_waiting() {
    let _machine = sinkhole_tests::shared();
    let stalled = stalled_dns().expect("stalled DNS");
    let timeout = Duration::from_secs(1);
    let mut d = daemon(&dnsbl_config(stalled.addr, "1s"));

    // Clients come and go; each one's queries (four zones and PTR) go unanswered.
    for last in 10..10 + DOWN_AFTER as u8 {
        let mut c = SmtpClient::connect_from(d.addr, v4(last));
        assert!(c.reply()[0].starts_with("220 "));
        quit(&mut c);
    }
    // Each upstream says so once: the four zones, then reverse DNS.
    let down = format!("{DOWN_AFTER} queries in a row unanswered");
    let noticed = Instant::now();
    while d.stderr().matches(&down).count() < 5 {
        assert!(noticed.elapsed() < timeout * 5, "{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = d.stderr();
    for upstream in [
        "dnsbl zen.test",
        "dnsbl bl.test",
        "dnsbl allow.test",
        "reverse DNS and HELO names",
    ] {
        assert!(
            log.contains(&format!("{upstream}: {down}")),
            "{upstream}: {log}"
        );
    }

    // From then on a client's RCPT is answered at once, unscored.
    let asked = Instant::now();
    let (mut c, rcpt) = up_to_rcpt(d.addr, v4(40), "c.example");
    assert_eq!(rcpt, "250 2.1.5 Ok");
    assert!(asked.elapsed() < timeout / 2, "{:?}", asked.elapsed());
    quit(&mut c);

    d.stop();
    let sessions = d.sessions();
    assert_eq!(session_of(&sessions, "127.0.0.40")["scored"], false);
}

#[test]
fn a_client_above_block_threshold_is_dropped_by_xdp() -> anyhow::Result<()> {
    let _machine = sinkhole_tests::shared();
    if !kernel_tests_allowed("a_client_above_block_threshold_is_dropped_by_xdp") {
        return Ok(());
    }
    let ns = NetNs::new("s")?;
    // rbldnsd inside the namespace (a process started from a thread in it lives there).
    let rbldnsd = ns.run_in(rbldnsd)?;
    let pins = PinDir::new("s");
    let storage = temp_dir("score-xdp");
    // It serves as `nobody` with no capability, confined: the block still reaches the kernel.
    std::fs::set_permissions(storage.path(), std::fs::Permissions::from_mode(0o755))?;
    let port = free_port();
    let config = storage.path().join("sinkhole.toml");
    std::fs::write(
        &config,
        format!(
            r#"[smtp]
listen = ["127.0.0.1:{port}"]
hostname = "sinkhole.test"
run_as = "nobody"
[storage]
dir = "{dir}"
[xdp]
interfaces = ["lo"]
ports = [{port}]
pin_dir = "{pins}"
allow = ["::1/128"]
{dnsbl}"#,
            dir = storage.path().join("data").display(),
            pins = pins.path().display(),
            dnsbl = dnsbl_config(rbldnsd.addr, "3s"),
        ),
    )?;
    let cfg = config.to_str().unwrap();
    let mut daemon = spawn_xdp_daemon(&ns, &config)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = v4(9);

    // zen.test XBL (3) + bl.test (2) = 5: refused, blocked, and the session ends.
    let mut c = ns.run_in(|| SmtpClient::connect_from(addr, client))?;
    assert!(c.reply()[0].starts_with("220 "));
    c.send(b"EHLO spam.example\r\nMAIL FROM:<x@spam.example>\r\nRCPT TO:<trap@sinkhole.test>\r\n");
    assert!(c.reply().last().unwrap().starts_with("250 "));
    assert_eq!(c.reply(), ["250 2.1.0 Ok"]);
    assert_eq!(
        c.line().unwrap(),
        "550 5.7.1 Service unavailable; client [127.0.0.9] blocked using zen.test, bl.test"
    );
    assert!(c.closed(), "the session ends after the block");
    daemon.wait_for_stderr("blocked 127.0.0.9", Duration::from_secs(5))?;

    let list: Value = serde_json::from_str(&sinkhole_ok(&["list", "--json", "--config", cfg])?)?;
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == "127.0.0.9/32")
        .unwrap_or_else(|| panic!("127.0.0.9 not in {list}"));
    assert_eq!(entry["reason"], "dnsbl:zen.test,bl.test");

    // A new connection from it never gets through; another source still does.
    let refused = ns.run_in(|| connect_from(addr, client, Duration::from_millis(1500)))?;
    assert!(refused.is_err(), "127.0.0.9 connected while blocked");
    let list: Value = serde_json::from_str(&sinkhole_ok(&["list", "--json", "--config", cfg])?)?;
    let drops = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == "127.0.0.9/32")
        .map(|e| e["drops"].as_u64().unwrap());
    assert!(drops.is_some_and(|n| n > 0), "{list}");
    let mut other = ns.run_in(|| SmtpClient::connect_from(addr, v4(10)))?;
    assert!(other.reply()[0].starts_with("220 "));
    quit(&mut other);

    daemon.check_running()?;
    assert!(daemon.terminate()?.success());
    // Stopped: the program detached (its link unpinned), the blocks still pinned.
    assert!(!pins.path().join("link_lo").exists());
    let list: Value = serde_json::from_str(&sinkhole_ok(&["list", "--json", "--config", cfg])?)?;
    assert!(list.to_string().contains("127.0.0.9/32"), "{list}");
    let log = std::fs::read_to_string(storage.path().join("data/sessions.jsonl"))?;
    let session: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|s| s["client_ip"] == "127.0.0.9")
        .expect("a session line for 127.0.0.9");
    assert_eq!(session["score"], 5);
    assert_eq!(session["verdict"], "rejected");
    Ok(())
}

#[test]
fn sessions_keep_the_policy_of_their_accept_and_sighup_reloads_it() {
    let _machine = sinkhole_tests::shared();
    let dir = temp_dir("policy-e2e");
    let policy = dir.path().join("policy.toml");
    let closed = r#"local_domains = ["sinkhole.test"]
[[rule]]
to = "slow@sinkhole.test"
action = "stall"
[[rule]]
to = "old@sinkhole.test"
action = "reject"
message = "550 5.1.1 This address is closed"
"#;
    std::fs::write(&policy, closed).unwrap();
    let port = free_port();
    let rest = format!(
        "[policy]\nfile = \"{}\"\nstall = \"1s\"\n",
        policy.display()
    );
    let config = smtp_config(port, dir.path(), "", "", &rest);
    let mut d = Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)));
    let rcpt = |c: &mut SmtpClient, to: &str| {
        c.send(format!("RCPT TO:<{to}>\r\n").as_bytes());
        c.line().unwrap()
    };
    let session = |from: &str| {
        let mut c = SmtpClient::connect(d.addr);
        assert!(c.reply()[0].starts_with("220 "));
        c.send(format!("HELO x.example\r\nMAIL FROM:<{from}>\r\n").as_bytes());
        assert!(c.reply()[0].starts_with("250 "));
        assert_eq!(c.reply(), ["250 2.1.0 Ok"]);
        c
    };

    let mut before = session("a@spam.example");
    assert_eq!(
        rcpt(&mut before, "old@sinkhole.test"),
        "550 5.1.1 This address is closed"
    );
    // Stall: the 451 comes only after policy.stall.
    let asked = Instant::now();
    assert!(rcpt(&mut before, "slow@sinkhole.test").starts_with("451 4.7.1 "));
    assert!(asked.elapsed() >= Duration::from_secs(1));
    // A sender in a local domain is refused at MAIL.
    let mut local = SmtpClient::connect(d.addr);
    assert!(local.reply()[0].starts_with("220 "));
    local.send(b"HELO x.example\r\nMAIL FROM:<me@sinkhole.test>\r\n");
    assert!(local.reply()[0].starts_with("250 "));
    assert!(local.reply()[0].starts_with("550 5.7.1 Sender address"));
    quit(&mut local);

    // A broken file is refused whole: the old rules stay, the error names file:line:key.
    std::fs::write(&policy, "[[rule]]\nto = \"*\"\naction = \"explode\"\n").unwrap();
    sinkhole_tests::run("kill", &["-HUP", &d.pid().to_string()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.stderr().contains("policy reload failed") {
        assert!(Instant::now() < deadline, "no reload error: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = d.stderr();
    assert!(
        err.contains(&format!("{}:3: rule[0].action", policy.display())),
        "{err}"
    );
    let mut c = session("a@spam.example");
    assert!(rcpt(&mut c, "old@sinkhole.test").starts_with("550 5.1.1"));
    quit(&mut c);

    // A good file applies to sessions from now on; one already open keeps its rules.
    std::fs::write(&policy, "").unwrap();
    sinkhole_tests::run("kill", &["-HUP", &d.pid().to_string()]).unwrap();
    while !d.stderr().contains("policy reloaded: 0 rule(s)") {
        assert!(Instant::now() < deadline, "no reload: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut after = session("a@spam.example");
    assert_eq!(rcpt(&mut after, "old@sinkhole.test"), "250 2.1.5 Ok");
    quit(&mut after);
    assert!(rcpt(&mut before, "old@sinkhole.test").starts_with("550 5.1.1"));
    quit(&mut before);
    d.stop();
    let sessions = d.sessions();
    let local = sessions
        .iter()
        .find(|s| s["transactions"][0]["mail_from"] == "me@sinkhole.test")
        .expect("the local sender's session");
    assert_eq!(signatures(local), ["mail-from-local-domain"]);
}
