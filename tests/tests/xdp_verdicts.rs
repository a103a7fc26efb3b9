//! The `sinkhole` XDP program through the kernel's `BPF_PROG_TEST_RUN`: crafted frames in,
//! verdicts and counters out.

use std::net::IpAddr;

use ipnet::IpNet;
use sinkhole::kernel::{KernelError, PacketCounters, Scope, clock};
use sinkhole_tests::frames::{Frame, UDP, arp};
use sinkhole_tests::xdp::{TestProgram, XDP_DROP, XDP_PASS};
use sinkhole_tests::{kernel_tests_allowed, skip};

const SMTP: u16 = 25;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> IpNet {
    sinkhole::prefix::parse_prefix(text).unwrap()
}

/// The program with scope smtp on ports 25 and 587, these blocks: exact 198.51.100.7,
/// 2001:db8::7 and 203.0.113.200; expired exact 198.51.100.8 and 2001:db8::8; CIDRs
/// 192.0.2.0/25, 2001:db8:bad::/48, 203.0.113.0/24; then an allowlist covering part of the
/// last (which removes the exact entry 203.0.113.200, as the daemon's start does).
fn setup(test: &str) -> Option<TestProgram> {
    if !kernel_tests_allowed(test) {
        return None;
    }
    let scope = Scope {
        all: false,
        smtp_ports: vec![SMTP, 587],
    };
    let mut p = TestProgram::load("t", &scope).expect("load the XDP program");
    // Well past: the program's clock is coarse (it trails by up to a tick, 1-10 ms).
    let past = clock::boot_ns() - 1_000_000_000;
    for (prefix, expires_at) in [
        ("198.51.100.7", 0),
        (
            "2001:db8::7",
            clock::expiry(Some(std::time::Duration::from_secs(3600))),
        ),
        ("203.0.113.200", 0),
        ("198.51.100.8", past),
        ("2001:db8::8", past),
        ("192.0.2.0/25", 0),
        ("2001:db8:bad::/48", 0),
        ("203.0.113.0/24", 0),
    ] {
        p.maps.insert(net(prefix), expires_at, "test").unwrap();
    }
    p.maps
        .set_allow(&[net("127.0.0.0/8"), net("203.0.113.128/25")])
        .unwrap();
    Some(p)
}

fn listed(p: &TestProgram, prefix: &str) -> bool {
    let prefix = net(prefix);
    p.maps.list().unwrap().iter().any(|b| b.prefix == prefix)
}

fn counters(p: &TestProgram) -> PacketCounters {
    p.maps.counters().unwrap()
}

fn drops_of(p: &TestProgram, prefix: &str) -> u64 {
    let prefix = net(prefix);
    p.maps
        .list()
        .unwrap()
        .into_iter()
        .find(|b| b.prefix == prefix)
        .map(|b| b.entry.drops)
        .expect("entry present")
}

#[test]
fn blocked_sources_are_dropped_and_counted() {
    let Some(p) = setup("blocked_sources_are_dropped_and_counted") else {
        return;
    };
    let frame = Frame::tcp(ip("198.51.100.7"), SMTP).bytes();
    assert_eq!(p.verdict(&frame).unwrap(), XDP_DROP);
    assert_eq!(p.verdict(&frame).unwrap(), XDP_DROP);
    assert_eq!(
        p.verdict(&Frame::tcp(ip("2001:db8::7"), 587).bytes())
            .unwrap(),
        XDP_DROP
    );
    let c = counters(&p);
    assert_eq!((c.dropped_ipv4, c.dropped_ipv6), (2, 1));
    assert_eq!(c.passed(), 0);
    assert_eq!(drops_of(&p, "198.51.100.7"), 2);
    assert_eq!(drops_of(&p, "2001:db8::7"), 1);
    let entry = p
        .maps
        .list()
        .unwrap()
        .into_iter()
        .find(|b| b.prefix == net("198.51.100.7"))
        .unwrap()
        .entry;
    // The program's estimate of boot time trails the true one by at most two kernel ticks.
    let now = clock::boot_ns();
    assert!(
        entry.last_drop_at <= now && now - entry.last_drop_at < 1_000_000_000,
        "last_drop_at {} is not within a second before {now}",
        entry.last_drop_at
    );
}

/// Two CPUs dropping one source's packets at once: the entry's count is the sum of both, as
/// when a bot's connections land on several receive queues.
#[test]
fn an_entry_counts_every_drop_of_cpus_dropping_at_once() {
    let Some(p) = setup("an_entry_counts_every_drop_of_cpus_dropping_at_once") else {
        return;
    };
    const RUNS: u32 = 1_000_000;
    let allowed = rustix::thread::sched_getaffinity(None).expect("this thread's CPUs");
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| allowed.is_set(cpu))
        .take(2)
        .collect();
    if cpus.len() < 2 {
        let test = "an_entry_counts_every_drop_of_cpus_dropping_at_once";
        return skip(test, "needs two CPUs to drop on at once");
    }
    let frame = Frame::tcp(ip("198.51.100.7"), SMTP).bytes();
    let start = std::sync::Barrier::new(cpus.len());
    std::thread::scope(|scope| {
        for &cpu in &cpus {
            let (p, frame, start) = (&p, &frame, &start);
            scope.spawn(move || {
                let mut set = rustix::thread::CpuSet::new();
                set.set(cpu);
                rustix::thread::sched_setaffinity(None, &set).expect("pin the thread to a CPU");
                start.wait();
                assert_eq!(p.run(frame, RUNS).unwrap().return_value, XDP_DROP);
            });
        }
    });
    let both = 2 * u64::from(RUNS);
    assert_eq!(counters(&p).dropped_ipv4, both);
    assert_eq!(drops_of(&p, "198.51.100.7"), both);
}

#[test]
fn unblocked_sources_pass() {
    let Some(p) = setup("unblocked_sources_pass") else {
        return;
    };
    for source in [
        "198.51.100.9",
        "192.0.2.200",
        "2001:db8::9",
        "2001:db8:bae::1",
    ] {
        assert_eq!(
            p.verdict(&Frame::tcp(ip(source), SMTP).bytes()).unwrap(),
            XDP_PASS,
            "{source}"
        );
    }
    let c = counters(&p);
    assert_eq!((c.passed_ipv4, c.passed_ipv6, c.dropped()), (2, 2, 0));
    assert_eq!(c.malformed, 0);
}

#[test]
fn cidr_entries_cover_their_range() {
    let Some(p) = setup("cidr_entries_cover_their_range") else {
        return;
    };
    for source in ["192.0.2.1", "192.0.2.127", "2001:db8:bad:ffff::1"] {
        assert_eq!(
            p.verdict(&Frame::tcp(ip(source), SMTP).bytes()).unwrap(),
            XDP_DROP,
            "{source}"
        );
    }
    assert_eq!(
        p.verdict(&Frame::tcp(ip("192.0.2.128"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(drops_of(&p, "192.0.2.0/25"), 2);
    assert_eq!(drops_of(&p, "2001:db8:bad::/48"), 1);
}

#[test]
fn expired_entries_do_not_drop_but_a_live_cidr_still_does() {
    let Some(mut p) = setup("expired_entries_do_not_drop_but_a_live_cidr_still_does") else {
        return;
    };
    assert_eq!(
        p.verdict(&Frame::tcp(ip("198.51.100.8"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        p.verdict(&Frame::tcp(ip("2001:db8::8"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(drops_of(&p, "198.51.100.8"), 0);
    p.maps.insert(net("198.51.100.0/24"), 0, "range").unwrap();
    assert_eq!(
        p.verdict(&Frame::tcp(ip("198.51.100.8"), SMTP).bytes())
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(drops_of(&p, "198.51.100.0/24"), 1);
    // A CIDR entry that expired no longer drops either.
    let past = clock::boot_ns() - 1_000_000_000;
    p.maps
        .insert(net("198.51.100.0/24"), past, "range")
        .unwrap();
    assert_eq!(
        p.verdict(&Frame::tcp(ip("198.51.100.8"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
}

#[test]
fn the_allowlist_wins_over_blocks() {
    let Some(mut p) = setup("the_allowlist_wins_over_blocks") else {
        return;
    };
    // The exact entry inside 203.0.113.128/25 went when the allowlist was set; the covering
    // CIDR stays, and the allowlist wins over it.
    assert!(!listed(&p, "203.0.113.200"));
    assert!(listed(&p, "203.0.113.0/24"));
    assert_eq!(
        p.verdict(&Frame::tcp(ip("203.0.113.200"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        p.verdict(&Frame::tcp(ip("203.0.113.129"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
    // The rest of the /24 is not allowed.
    assert_eq!(
        p.verdict(&Frame::tcp(ip("203.0.113.1"), SMTP).bytes())
            .unwrap(),
        XDP_DROP
    );
    // An exact block of an allow-listed address is refused (the program checks only CIDR
    // matches against the allowlist); a CIDR covering one is not.
    assert!(matches!(
        p.maps.insert(net("127.0.0.1"), 0, "oops"),
        Err(KernelError::AllowListed(_))
    ));
    assert!(!listed(&p, "127.0.0.1"));
    p.maps.insert(net("127.0.0.0/24"), 0, "oops").unwrap();
    assert_eq!(
        p.verdict(&Frame::tcp(ip("127.0.0.1"), SMTP).bytes())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(drops_of(&p, "203.0.113.0/24"), 1);
    // Taking the allowlist away lets the CIDR block apply.
    p.maps.set_allow(&[]).unwrap();
    assert_eq!(
        p.verdict(&Frame::tcp(ip("203.0.113.200"), SMTP).bytes())
            .unwrap(),
        XDP_DROP
    );
}

#[test]
fn an_allowlist_that_gains_an_address_removes_its_exact_block() {
    let Some(mut p) = setup("an_allowlist_that_gains_an_address_removes_its_exact_block") else {
        return;
    };
    let frame = Frame::tcp(ip("198.51.100.7"), SMTP).bytes();
    assert_eq!(p.verdict(&frame).unwrap(), XDP_DROP);
    // Setting the same allowlist again (a restart without a change) keeps every entry.
    p.maps
        .set_allow(&[net("127.0.0.0/8"), net("203.0.113.128/25")])
        .unwrap();
    assert!(listed(&p, "198.51.100.7") && listed(&p, "2001:db8::7"));
    // A restart with 198.51.100.7 and 2001:db8::/64 added to xdp.allow.
    p.maps
        .set_allow(&[
            net("127.0.0.0/8"),
            net("203.0.113.128/25"),
            net("198.51.100.7"),
            net("2001:db8::/64"),
        ])
        .unwrap();
    assert!(!listed(&p, "198.51.100.7"));
    assert!(!listed(&p, "2001:db8::7") && !listed(&p, "2001:db8::8"));
    assert!(listed(&p, "198.51.100.8") && listed(&p, "192.0.2.0/25"));
    assert_eq!(p.verdict(&frame).unwrap(), XDP_PASS);
    assert_eq!(
        p.verdict(&Frame::tcp(ip("2001:db8::7"), 587).bytes())
            .unwrap(),
        XDP_PASS
    );
}

#[test]
fn scope_smtp_spares_other_traffic_and_scope_all_does_not() {
    let Some(mut p) = setup("scope_smtp_spares_other_traffic_and_scope_all_does_not") else {
        return;
    };
    let blocked = ip("198.51.100.7");
    let other = [
        Frame::tcp(blocked, 80),
        Frame::tcp(blocked, SMTP).protocol(UDP),
        Frame::tcp(ip("2001:db8::7"), 443),
        // IPv6 with an extension header (hop-by-hop) before anything else.
        Frame::tcp(ip("2001:db8::7"), SMTP).protocol(0),
    ];
    for frame in &other {
        assert_eq!(p.verdict(&frame.bytes()).unwrap(), XDP_PASS, "{frame:?}");
    }
    assert_eq!(counters(&p).dropped(), 0);
    p.reload(&Scope {
        all: true,
        smtp_ports: vec![SMTP],
    })
    .unwrap();
    for frame in &other {
        assert_eq!(p.verdict(&frame.bytes()).unwrap(), XDP_DROP, "{frame:?}");
    }
    assert_eq!(counters(&p).dropped(), other.len() as u64);
}

#[test]
fn vlan_tags_and_ipv4_options_are_parsed() {
    let Some(p) = setup("vlan_tags_and_ipv4_options_are_parsed") else {
        return;
    };
    let blocked = ip("198.51.100.7");
    for frame in [
        Frame::tcp(blocked, SMTP).vlan(42),
        Frame::tcp(blocked, SMTP).ipv4_options(10),
        Frame::tcp(blocked, SMTP).vlan(7).ipv4_options(3),
        Frame::tcp(ip("2001:db8::7"), SMTP).vlan(42),
    ] {
        assert_eq!(p.verdict(&frame.bytes()).unwrap(), XDP_DROP, "{frame:?}");
    }
    // With options, the port is found after them: port 80 passes.
    assert_eq!(
        p.verdict(&Frame::tcp(blocked, 80).ipv4_options(10).bytes())
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(counters(&p).malformed, 0);
}

#[test]
fn fragments_without_a_tcp_header_pass_in_scope_smtp() {
    let Some(p) = setup("fragments_without_a_tcp_header_pass_in_scope_smtp") else {
        return;
    };
    let blocked = ip("198.51.100.7");
    // The first fragment carries the TCP header: dropped.
    assert_eq!(
        p.verdict(&Frame::tcp(blocked, SMTP).fragment(0, true).bytes())
            .unwrap(),
        XDP_DROP
    );
    // Later fragments have no ports to match.
    for (offset, more) in [(1, true), (185, false)] {
        assert_eq!(
            p.verdict(&Frame::tcp(blocked, SMTP).fragment(offset, more).bytes())
                .unwrap(),
            XDP_PASS
        );
    }
}

#[test]
fn truncated_frames_pass_at_every_header_boundary() {
    let Some(p) = setup("truncated_frames_pass_at_every_header_boundary") else {
        return;
    };
    let mut truncated = 0;
    for frame in [
        Frame::tcp(ip("198.51.100.7"), SMTP),
        Frame::tcp(ip("198.51.100.7"), SMTP).vlan(1).ipv4_options(2),
        Frame::tcp(ip("2001:db8::7"), SMTP),
        Frame::tcp(ip("2001:db8::7"), SMTP).vlan(1),
    ] {
        let (bytes, boundaries) = frame.build();
        assert_eq!(p.verdict(&bytes).unwrap(), XDP_DROP, "whole {frame:?}");
        // Every length from the end of the Ethernet header (the kernel refuses shorter test
        // frames) to one byte short, which includes each header boundary.
        for len in 14..bytes.len() {
            assert_eq!(
                p.verdict(&bytes[..len]).unwrap(),
                XDP_PASS,
                "{frame:?} cut to {len} (boundaries {boundaries:?})"
            );
            truncated += 1;
        }
    }
    let c = counters(&p);
    assert_eq!(c.malformed, truncated);
    assert_eq!(c.passed(), truncated);
    assert_eq!(c.dropped(), 4);
}

#[test]
fn odd_packets_pass() {
    let Some(p) = setup("odd_packets_pass") else {
        return;
    };
    assert_eq!(p.verdict(&arp()).unwrap(), XDP_PASS);
    let mut bad_ihl = Frame::tcp(ip("198.51.100.7"), SMTP).bytes();
    bad_ihl[14] = 0x44; // IHL 4: shorter than the fixed header
    assert_eq!(p.verdict(&bad_ihl).unwrap(), XDP_PASS);
    let mut wrong_version = Frame::tcp(ip("198.51.100.7"), SMTP).bytes();
    wrong_version[14] = 0x65;
    assert_eq!(p.verdict(&wrong_version).unwrap(), XDP_PASS);
    let mut v6_says_v4 = Frame::tcp(ip("2001:db8::7"), SMTP).bytes();
    v6_says_v4[14] = 0x40;
    assert_eq!(p.verdict(&v6_says_v4).unwrap(), XDP_PASS);
    let c = counters(&p);
    assert_eq!(c.passed_other, 1);
    assert_eq!(c.malformed, 3);
    assert_eq!(c.dropped(), 0);
}
