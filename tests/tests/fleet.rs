//! Two traps sharing blocks over plain DNS, as docs/fleet.md sets them up: trap A blocks a
//! client by policy, `sinkhole export` publishes A's blocks, a real rbldnsd serves them as A's
//! zone, and trap B, scoring against that zone with a weight at its block threshold, refuses
//! the same client at RCPT TO (550 naming the zone) and puts it into its own drop map
//! (`dnsbl:ZONE`); another client is accepted by B.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use sinkhole_tests::daemon::{Daemon, SmtpClient};
use sinkhole_tests::dns::start_rbldnsd;
use sinkhole_tests::netns::PinDir;
use sinkhole_tests::{free_port, kernel_tests_allowed, sinkhole_ok, temp_dir};

const ZONE: &str = "trap-a.bl.example.net";
const SPAMMER: &str = "127.0.0.2";
const OTHER: &str = "127.0.0.3";

/// A trap on loopback: its own port, storage and pin dir; loopback may be blocked (only ::1
/// is allow-listed); `rest` adds tables.
fn start_trap(pins: &Path, rest: &str) -> Daemon {
    let dir = temp_dir("fleet");
    let port = free_port();
    let config = format!(
        "[smtp]\nlisten = [\"127.0.0.1:{port}\"]\nhostname = \"trap.test\"\n\
         [storage]\ndir = \"{storage}\"\n\
         [xdp]\npin_dir = \"{pins}\"\nallow = [\"::1/128\"]\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{rest}",
        storage = dir.path().join("data").display(),
        pins = pins.display(),
    );
    Daemon::start_with_config(dir, &config, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// EHLO, MAIL, RCPT from `source`; the RCPT reply.
fn rcpt_reply(trap: &Daemon, source: &str) -> String {
    let source: IpAddr = source.parse().unwrap();
    let mut client = SmtpClient::connect_from(trap.addr, source);
    let greeting = client.reply();
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    client.send(b"EHLO client.example\r\n");
    client.reply();
    client.send(b"MAIL FROM:<x@client.example>\r\n");
    client.reply();
    client.send(b"RCPT TO:<trap@example.org>\r\n");
    let reply = client.reply().join("\n");
    client.send(b"QUIT\r\n");
    reply
}

fn blocks(trap: &Daemon) -> serde_json::Value {
    let config = trap.config_path();
    let text = sinkhole_ok(&["list", "--json", "--config", config.to_str().unwrap()]).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn entry<'a>(list: &'a serde_json::Value, prefix: &str) -> Option<&'a serde_json::Value> {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == prefix)
}

#[test]
fn a_client_blocked_by_one_trap_is_refused_and_blocked_by_another() -> anyhow::Result<()> {
    if !kernel_tests_allowed("a_client_blocked_by_one_trap_is_refused_and_blocked_by_another") {
        return Ok(());
    }
    let (pins_a, pins_b) = (PinDir::new("fa"), PinDir::new("fb"));

    // Trap A blocks the spammer by policy, at its first RCPT.
    let policy = temp_dir("fleet-policy");
    let policy_file = policy.path().join("policy.toml");
    fs::write(
        &policy_file,
        format!("[[rule]]\nto = \"*\"\nhost = [\"{SPAMMER}/32\"]\naction = \"block\"\n"),
    )?;
    let a = start_trap(
        pins_a.path(),
        &format!(
            "[policy]\nfile = \"{}\"\n[dnsbl]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"300ms\"\n",
            policy_file.display()
        ),
    );
    assert!(rcpt_reply(&a, SPAMMER).starts_with("550"));
    let spammer_prefix = format!("{SPAMMER}/32");
    let on_a = blocks(&a);
    assert!(entry(&on_a, &spammer_prefix).is_some(), "{on_a}");

    // A's first-hand blocks, exported and served as A's zone.
    let zone_dir = policy.path().join("zone");
    let config_a = a.config_path();
    sinkhole_ok(&[
        "export",
        "--format",
        "rbldnsd",
        "--output",
        zone_dir.to_str().unwrap(),
        "--zone",
        ZONE,
        "--skip-reason",
        "dnsbl:",
        "--config",
        config_a.to_str().unwrap(),
    ])?;
    let blocks4 = fs::read_to_string(zone_dir.join("blocks4"))?;
    assert!(blocks4.contains(SPAMMER), "{blocks4}");
    let rbldnsd = start_rbldnsd(&[(ZONE, "ip4set", &blocks4)])?;

    // Trap B scores against A's zone with a weight at its block threshold.
    let b = start_trap(
        pins_b.path(),
        &format!(
            "[dnsbl]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\nreject_threshold = 3\n\
             block_threshold = 5\n[[dnsbl.zone]]\nname = \"{ZONE}\"\nweight = 5\n",
            rbldnsd.addr
        ),
    );
    assert!(entry(&blocks(&b), &spammer_prefix).is_none());
    let refused = rcpt_reply(&b, SPAMMER);
    assert!(
        refused.starts_with("550") && refused.contains(ZONE),
        "{refused}"
    );
    let on_b = blocks(&b);
    let blocked = entry(&on_b, &spammer_prefix).unwrap_or_else(|| panic!("{on_b}"));
    assert_eq!(blocked["reason"], format!("dnsbl:{ZONE}"), "{on_b}");

    // A client A never blocked is not listed, and B takes its mail.
    let accepted = rcpt_reply(&b, OTHER);
    assert!(accepted.starts_with("250"), "{accepted}");
    assert!(entry(&blocks(&b), &format!("{OTHER}/32")).is_none());
    Ok(())
}
