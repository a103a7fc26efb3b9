//! SYN fingerprints: the XDP program records each passed SYN to an SMTP port in its LRU map
//! (`BPF_PROG_TEST_RUN` on crafted frames; a flood of spoofed sources cannot grow it), and the
//! daemon, with the program attached to the loopback of a namespace of the test's, logs each
//! connection's as `syn` and keeps two campaigns apart that differ only in their TCP stack.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use ipnet::IpNet;
use serde_json::Value;
use sinkhole::kernel::Scope;
use sinkhole_common::{MAP_SYN, SYN_CAPACITY, SynFingerprint, SynKey};
use sinkhole_tests::frames::Frame;
use sinkhole_tests::netns::{NetNs, PinDir, spawn_xdp_daemon};
use sinkhole_tests::replay::{Bot, Origin, Style, play};
use sinkhole_tests::xdp::{TestProgram, XDP_DROP, XDP_PASS};
use sinkhole_tests::{kernel_tests_allowed, sinkhole_ok, temp_dir};

const SMTP: u16 = 25;
/// mss 1460, sok, ts, nop, ws 7: Linux's SYN options.
const LINUX_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

fn syn_map(pin_dir: &Path) -> HashMap<MapData, SynKey, SynFingerprint> {
    let data = MapData::from_pin(pin_dir.join(MAP_SYN)).expect("the pinned SYN map");
    Map::from_map_data(data).unwrap().try_into().unwrap()
}

fn key(source: IpAddr) -> SynKey {
    let addr = match source {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    // Frame::tcp's source port.
    SynKey {
        addr,
        port: 40000,
        pad: 0,
    }
}

fn program(test: &str) -> Option<TestProgram> {
    if !kernel_tests_allowed(test) {
        return None;
    }
    let scope = Scope {
        all: false,
        smtp_ports: vec![SMTP],
    };
    Some(TestProgram::load("s", &scope).expect("load the XDP program"))
}

#[test]
fn passed_smtp_syns_are_recorded_with_their_options() {
    let Some(mut p) = program("passed_smtp_syns_are_recorded_with_their_options") else {
        return;
    };
    let blocked: IpAddr = "198.51.100.7".parse().unwrap();
    p.maps.insert(IpNet::from(blocked), 0, "test").unwrap();
    let v4: IpAddr = "198.51.100.9".parse().unwrap();
    let v6: IpAddr = "2001:db8::9".parse().unwrap();
    for (source, flags, port, want) in [
        (v4, 0x02, SMTP, XDP_PASS),
        (v6, 0x02, SMTP, XDP_PASS),
        (blocked, 0x02, SMTP, XDP_DROP),
        // Not a SYN, or not to an SMTP port: nothing recorded.
        ("198.51.100.10".parse().unwrap(), 0x12, SMTP, XDP_PASS),
        ("198.51.100.11".parse().unwrap(), 0x10, SMTP, XDP_PASS),
        ("198.51.100.12".parse().unwrap(), 0x02, 80, XDP_PASS),
    ] {
        let frame = Frame::tcp(source, port).tcp_header(flags, &LINUX_OPTIONS);
        assert_eq!(p.verdict(&frame.bytes()).unwrap(), want, "{source}");
    }
    let map = syn_map(p.pin_dir());
    let keys: Vec<SynKey> = map.keys().map(Result::unwrap).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for source in [v4, v6] {
        let print = map.get(&key(source), 0).unwrap();
        let syn = sinkhole::syn::Syn::from_fingerprint(&print);
        assert_eq!(
            syn.line(),
            "ttl=64 window=65535 mss=1460 wscale=7 options=mss,sok,ts,nop,ws",
            "{source}"
        );
    }
    // Options cut short, odd kinds, more than are kept: parsed as far as they go.
    let odd = "198.51.100.20".parse().unwrap();
    let frame = Frame::tcp(odd, SMTP).tcp_header(0x02, &[1; 16]);
    p.verdict(&frame.bytes()).unwrap();
    let print = map.get(&key(odd), 0).unwrap();
    assert_eq!(
        sinkhole::syn::Syn::from_fingerprint(&print).options,
        "nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,+"
    );
    let bad = "198.51.100.21".parse().unwrap();
    let frame = Frame::tcp(bad, SMTP).tcp_header(0x02, &[2, 40, 5, 180]);
    p.verdict(&frame.bytes()).unwrap();
    let print = map.get(&key(bad), 0).unwrap();
    assert_eq!(
        sinkhole::syn::Syn::from_fingerprint(&print).options,
        "mss,!"
    );
}

#[test]
fn a_syn_flood_of_spoofed_sources_cannot_grow_the_map() {
    let Some(p) = program("a_syn_flood_of_spoofed_sources_cannot_grow_the_map") else {
        return;
    };
    let sources = 2 * SYN_CAPACITY;
    let source = |n: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
    for n in 0..sources {
        let frame = Frame::tcp(source(n), SMTP).tcp_header(0x02, &LINUX_OPTIONS);
        assert_eq!(p.verdict(&frame.bytes()).unwrap(), XDP_PASS);
    }
    let map = syn_map(p.pin_dir());
    let entries = map.keys().count();
    assert!(
        entries <= SYN_CAPACITY as usize,
        "{entries} entries in a map of {SYN_CAPACITY}"
    );
    assert!(
        map.get(&key(source(sources - 1)), 0).is_ok(),
        "the newest is kept"
    );
    assert!(
        map.get(&key(source(0)), 0).is_err(),
        "the oldest is evicted"
    );
}

/// Six bots of one campaign (the seed's behaviour: MAIL FROM equal to RCPT TO, pipelined)
/// from `first`.. with a TCP stack of `ttl` and `mss`.
fn bots(first: Ipv4Addr, ttl: Option<u32>, mss: Option<u32>) -> Vec<Bot> {
    (0..6u8)
        .map(|i| {
            let o = first.octets();
            Bot {
                origin: Origin::Seed,
                source: Ipv4Addr::new(o[0], o[1], o[2], o[3] + i),
                style: Style::Pipelining,
                helo: format!("[{}]", Ipv4Addr::new(o[0], o[1], o[2], o[3] + i)),
                mail_from: "trap@example.org".into(),
                rcpt: "trap@example.org".into(),
                message: "Subject: x\r\n\r\nhello".into(),
                ttl,
                mss,
            }
        })
        .collect()
}

#[test]
fn the_daemon_logs_each_syn_and_tells_two_stacks_apart() -> anyhow::Result<()> {
    if !kernel_tests_allowed("the_daemon_logs_each_syn_and_tells_two_stacks_apart") {
        return Ok(());
    }
    let ns = NetNs::new("y")?;
    let pins = PinDir::new("y");
    let dir = temp_dir("syn");
    let config = dir.path().join("sinkhole.toml");
    let addr = SocketAddr::from(([127, 0, 0, 1], 2525));
    std::fs::write(
        &config,
        format!(
            "[smtp]\nlisten = [\"{addr}\"]\nhostname = \"sinkhole.test\"\n\
             [storage]\ndir = \"{}\"\n\
             [xdp]\ninterfaces = [\"lo\"]\nmode = \"skb\"\npin_dir = \"{}\"\n\
             [dnsbl]\nnameservers = [\"127.0.0.1:9\"]\nzone = []\ntimeout = \"300ms\"\n",
            dir.path().join("data").display(),
            pins.path().display()
        ),
    )?;
    let _daemon = spawn_xdp_daemon(&ns, &config)?;
    let linux = bots(Ipv4Addr::new(127, 5, 0, 10), None, None);
    let other = bots(Ipv4Addr::new(127, 6, 0, 10), Some(128), Some(1360));
    ns.run_in(|| {
        for bot in linux.iter().chain(&other) {
            play(addr, bot).unwrap();
        }
    })?;
    let log = dir.path().join("data/sessions.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let sessions: Vec<Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 12 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(sessions.len(), 12);
    for s in &sessions {
        let syn = &s["syn"];
        let from_other = s["client_ip"].as_str().unwrap().starts_with("127.6.");
        assert_eq!(syn["ttl"], if from_other { 128 } else { 64 }, "{s}");
        if from_other {
            assert_eq!(syn["mss"], 1360, "{s}");
        }
        assert_eq!(syn["options"], "mss,sok,ts,nop,ws", "{s}");
        assert!(syn["window"].as_u64().unwrap() > 0, "{s}");
        assert!(syn["wscale"].is_u64(), "{s}");
    }
    let out = sinkhole_ok(&["campaigns", "--json", "--config", config.to_str().unwrap()])?;
    let report: Vec<Value> = serde_json::from_str(&out)?;
    // The same behaviour and envelope: only the stack tells the two apart.
    assert_eq!(report.len(), 2, "{report:#?}");
    let stacks: Vec<&str> = report
        .iter()
        .map(|c| c["grouped_by"][0]["value"].as_str().unwrap())
        .collect();
    for ttl in [64, 128] {
        let wanted = format!(
            "behaviours=mail-from-eq-rcpt-to+pipelining sender=eq-rcpt rcpts=1 stack=ttl={ttl} options=mss,sok,ts,nop,ws"
        );
        assert!(stacks.contains(&wanted.as_str()), "{stacks:?}");
    }
    for campaign in &report {
        assert_eq!(campaign["sessions"], 6, "{campaign:#}");
        let syn = campaign["syn"][0]["name"].as_str().unwrap();
        assert!(syn.starts_with("ttl="), "{campaign:#}");
    }
    Ok(())
}
