//! Client scoring against real DNS servers: `rbldnsd` serving Spamhaus-like zones and `nsd`
//! serving PTR and forward records, behind a zone router (as a recursive resolver would be).
//! The resolver API is driven directly, as the event loop will drive it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use sinkhole::config::{DnsblConfig, ZoneConfig};
use sinkhole::score::{Answer, ClientScore, HeloCheck, Resolver, ScoreCounters};
use sinkhole::signature::Signature;
use sinkhole::smtp::Reply;
use sinkhole_tests::dns::{DnsWorld, RBLDNSD_SOA, start_dns_world, start_rbldnsd, zone_file};

/// Spamhaus' zen codes: 127.0.0.2 SBL, .3 CSS, .4-.7 XBL, .10-.11 PBL; 127.255.255.254 is
/// "query through a public resolver", an error.
const ZEN_SBL: &str = ":127.0.0.2:SBL\n\
    127.0.0.2\n\
    127.0.0.3 :127.0.0.3:CSS\n\
    127.0.0.4 :127.0.0.4:XBL\n\
    127.0.0.5 :127.0.0.10:PBL\n\
    127.0.0.6 :127.255.255.254:public resolver\n";
/// A second dataset in the same zone: 127.0.0.2 also answers 127.0.0.4 (two A records).
const ZEN_XBL: &str = ":127.0.0.4:XBL\n127.0.0.2\n";
const ZEN_V6: &str = "::1 :127.0.0.4:XBL\n2001:db8::25 :127.0.0.2:SBL\n";
const BL: &str = ":127.0.0.9:listed\n127.0.0.2\n127.0.0.4\n";
const ALLOW: &str = ":127.0.0.2:known good\n127.0.0.4\n";

const FORWARD: &str = "ns IN A 127.0.0.1\n\
    good IN A 127.0.0.2\n\
    forged IN A 127.0.0.99\n\
    six IN AAAA ::1\n\
    helo IN A 127.0.0.3\n";
const REVERSE4: &str = "2 IN PTR Good.TEST.\n\
    3 IN PTR forged.test.\n";
const REVERSE6: &str = "1 IN PTR six.test.\n";

fn world() -> DnsWorld {
    let zen = format!("{RBLDNSD_SOA}{ZEN_SBL}");
    let rbldnsd = start_rbldnsd(&[
        ("zen.test", "ip4set", &zen),
        ("zen.test", "ip4set", ZEN_XBL),
        ("zen.test", "ip6trie", ZEN_V6),
        ("bl.test", "ip4set", &format!("{RBLDNSD_SOA}{BL}")),
        ("allow.test", "ip4set", &format!("{RBLDNSD_SOA}{ALLOW}")),
    ])
    .expect("rbldnsd");
    let reverse6 = format!("{}ip6.arpa", "0.".repeat(31));
    start_dns_world(
        rbldnsd,
        &[
            ("test", &zone_file(FORWARD)),
            ("0.0.127.in-addr.arpa", &zone_file(REVERSE4)),
            (&reverse6, &zone_file(REVERSE6)),
        ],
    )
    .expect("DNS servers")
}

fn zone(name: &str, weight: i32, codes: &[&str]) -> ZoneConfig {
    ZoneConfig {
        name: name.into(),
        weight,
        codes: codes.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn config(nameserver: SocketAddr) -> DnsblConfig {
    DnsblConfig {
        nameservers: vec![nameserver],
        timeout: Duration::from_secs(2),
        zone: vec![
            // SBL, CSS, XBL
            zone("zen.test", 3, &["127.0.0.2-127.0.0.7"]),
            // The same zone again for PBL only, with its own weight.
            zone("zen.test", 1, &["127.0.0.10-127.0.0.11"]),
            // No filter: any 127/8 answer outside the error range.
            zone("bl.test", 2, &[]),
            zone("allow.test", -2, &[]),
        ],
        ..DnsblConfig::default()
    }
}

/// The event loop's side: a poll with the resolver's waker.
struct Loop {
    poll: Poll,
    resolver: Resolver,
}

const WAKER: Token = Token(0);

impl Loop {
    fn new(config: &DnsblConfig) -> Loop {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        let resolver = Resolver::spawn(config, waker).expect("resolver starts");
        Loop { poll, resolver }
    }

    /// Waits (on the waker only) for `n` answers.
    fn answers(&mut self, n: usize) -> Vec<Answer> {
        let mut events = Events::with_capacity(8);
        let mut answers = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while answers.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} of {n} answers", answers.len());
            self.poll.poll(&mut events, Some(left)).unwrap();
            while let Some(answer) = self.resolver.try_recv() {
                answers.push(answer);
            }
        }
        answers
    }

    fn score(&mut self, ips: &[IpAddr]) -> HashMap<IpAddr, ClientScore> {
        for (token, ip) in ips.iter().enumerate() {
            self.resolver.request(token as u64, *ip).unwrap();
        }
        self.answers(ips.len())
            .into_iter()
            .map(|answer| match answer {
                Answer::Client { token, score } => {
                    assert_eq!(score.ip, ips[token as usize].to_canonical());
                    (ips[token as usize], score)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn helo(&mut self, ip: IpAddr, helo: &str) -> HeloCheck {
        self.resolver.check_helo(7, ip, helo).unwrap();
        match self.answers(1).pop().unwrap() {
            Answer::Helo { token: 7, check } => check,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn zone_counter(
        &self,
        index: usize,
        pick: fn(&sinkhole::score::ZoneCounters) -> &AtomicU64,
    ) -> u64 {
        ScoreCounters::load(pick(&self.resolver.counters().zones[index]))
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn codes(score: &ClientScore, zone_index: usize) -> Vec<String> {
    let zone = ["zen.test", "zen.test", "bl.test", "allow.test"][zone_index];
    let weight = [3, 1, 2, -2][zone_index];
    score
        .dnsbl
        .iter()
        .filter(|hit| &*hit.zone == zone && hit.weight == weight)
        .flat_map(|hit| hit.codes.iter().map(ToString::to_string))
        .collect()
}

#[test]
fn score_weights_codes_and_reverse_dns() {
    let _machine = sinkhole_tests::shared();
    let world = world();
    let mut lp = Loop::new(&config(world.router.addr));
    let doc6: IpAddr = "2001:db8::25".parse().unwrap();
    let clients = [
        v4(2),
        v4(3),
        v4(4),
        v4(5),
        v4(6),
        v4(8),
        "::1".parse().unwrap(),
        doc6,
    ];
    let scores = lp.score(&clients);

    // 127.0.0.2: SBL and XBL in zen (weight 3 once, two codes) + bl.test (2); FCrDNS.
    let s = &scores[&v4(2)];
    assert_eq!(codes(s, 0), ["127.0.0.2", "127.0.0.4"]);
    assert_eq!(codes(s, 2), ["127.0.0.9"]);
    assert_eq!(s.score, 5);
    assert_eq!(s.rdns.as_deref(), Some("good.test"));
    assert!(s.fcrdns && s.rdns_checked && !s.timed_out);
    assert_eq!(s.signatures(), [Signature::DnsblListed]);
    assert_eq!(
        s.reject_reply(3),
        Some(Reply {
            code: 550,
            text: "5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.test, bl.test"
                .into()
        })
    );
    assert!(s.should_block(5));
    assert_eq!(s.block_reason(), "dnsbl:zen.test,bl.test");

    // 127.0.0.3: CSS only; its PTR name points elsewhere.
    let s = &scores[&v4(3)];
    assert_eq!(codes(s, 0), ["127.0.0.3"]);
    assert_eq!(s.score, 3);
    assert_eq!(s.rdns.as_deref(), Some("forged.test"));
    assert!(!s.fcrdns);
    assert_eq!(
        s.signatures(),
        [Signature::RdnsNoForward, Signature::DnsblListed]
    );
    assert!(s.reject_reply(3).is_some() && !s.should_block(5));

    // 127.0.0.4: XBL (3) + bl.test (2) + allow.test (-2): the allowlist pulls it under 5.
    let s = &scores[&v4(4)];
    assert_eq!(s.dnsbl.len(), 3);
    assert_eq!(codes(s, 3), ["127.0.0.2"]);
    assert_eq!(s.score, 3);
    assert!(!s.should_block(5));
    assert_eq!(
        s.reject_reply(3),
        Some(Reply {
            code: 550,
            text: "5.7.1 Service unavailable; client [127.0.0.4] blocked using zen.test, bl.test"
                .into()
        })
    );
    assert_eq!(s.rdns, None);
    assert_eq!(s.signatures(), [Signature::NoRdns, Signature::DnsblListed]);

    // 127.0.0.5: PBL, which only the second zen entry counts.
    let s = &scores[&v4(5)];
    assert_eq!(codes(s, 0), Vec::<String>::new());
    assert_eq!(codes(s, 1), ["127.0.0.10"]);
    assert_eq!(s.score, 1);
    assert_eq!(s.reject_reply(3), None);

    // 127.0.0.6: zen answers 127.255.255.254, a refusal: never a listing.
    let s = &scores[&v4(6)];
    assert!(s.dnsbl.is_empty(), "{s:?}");
    assert_eq!(s.score, 0);
    assert!(!s.timed_out);
    // Counted as an error for both zen entries.
    assert_eq!(lp.zone_counter(0, |z| &z.error), 1);
    assert_eq!(lp.zone_counter(1, |z| &z.error), 1);

    // 127.0.0.8: listed nowhere, no PTR.
    let s = &scores[&v4(8)];
    assert!(s.dnsbl.is_empty() && s.score == 0 && s.rdns.is_none() && s.rdns_checked);
    assert_eq!(s.signatures(), [Signature::NoRdns]);

    // ::1 through the nibble zone and ip6.arpa.
    let s = &scores[&"::1".parse::<IpAddr>().unwrap()];
    assert_eq!(codes(s, 0), ["127.0.0.4"]);
    assert_eq!(s.score, 3);
    assert_eq!(s.rdns.as_deref(), Some("six.test"));
    assert!(s.fcrdns);

    // 2001:db8::25: listed; nsd refuses its PTR query (no such zone), which is no fact about
    // the client: no `no-rdns`.
    let s = &scores[&doc6];
    assert_eq!(codes(s, 0), ["127.0.0.2"]);
    assert!(!s.rdns_checked && !s.timed_out && s.rdns.is_none());
    assert_eq!(s.signatures(), [Signature::DnsblListed]);

    // Every (client, zone) was one real query: 8 clients × 4 zones.
    let total: u64 = (0..4)
        .map(|i| {
            lp.zone_counter(i, |z| &z.listed)
                + lp.zone_counter(i, |z| &z.clean)
                + lp.zone_counter(i, |z| &z.error)
        })
        .sum();
    assert_eq!(total, 32);
    assert_eq!(lp.zone_counter(0, |z| &z.listed), 5); // .2 .3 .4 ::1 2001:db8::25
    assert_eq!(lp.zone_counter(2, |z| &z.listed), 2); // .2 .4
    drop(world);
}

#[test]
fn score_ipv4_mapped_clients_are_scored_as_ipv4() {
    let _machine = sinkhole_tests::shared();
    let world = world();
    let mut lp = Loop::new(&config(world.router.addr));
    let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
    let s = &lp.score(&[mapped])[&mapped];
    assert_eq!(s.ip, v4(2));
    assert_eq!(s.score, 5);
    assert_eq!(s.rdns.as_deref(), Some("good.test"));
}

#[test]
fn score_cache_answers_when_the_servers_are_gone() {
    let _machine = sinkhole_tests::shared();
    let mut world = world();
    let mut lp = Loop::new(&config(world.router.addr));
    let clients = [v4(2), v4(8)];
    let first = lp.score(&clients);
    assert_eq!(lp.zone_counter(0, |z| &z.cache_hits), 0);

    world.rbldnsd.process.stop();
    world.nsd.process.stop();

    let again = lp.score(&clients);
    assert_eq!(first, again, "the cached answers, listing and not listing");
    for i in 0..4 {
        assert_eq!(lp.zone_counter(i, |z| &z.cache_hits), 2, "zone {i}");
        assert_eq!(lp.zone_counter(i, |z| &z.timeout), 0, "zone {i}");
    }
    assert_eq!(
        ScoreCounters::load(&lp.resolver.counters().rdns_cache_hits),
        2
    );

    // A client never seen has no cached answer and now gets none at all.
    let fresh = lp.score(&[v4(3)]);
    assert!(fresh[&v4(3)].timed_out || !fresh[&v4(3)].rdns_checked);
    assert!(fresh[&v4(3)].dnsbl.is_empty());
}

#[test]
fn score_server_errors_are_cached_like_answers() {
    let _machine = sinkhole_tests::shared();
    let world = world();
    // Straight to rbldnsd, which serves no reverse zone: every PTR query is refused.
    let mut lp = Loop::new(&DnsblConfig {
        nameservers: vec![world.rbldnsd.addr],
        ..config(world.router.addr)
    });
    let rdns_hits = |lp: &Loop| ScoreCounters::load(&lp.resolver.counters().rdns_cache_hits);
    let first = lp.score(&[v4(2)]);
    assert!(!first[&v4(2)].rdns_checked, "{:?}", first[&v4(2)]);
    assert_eq!(first[&v4(2)].score, 5, "the zones still answer");
    assert_eq!(rdns_hits(&lp), 0);
    // The client comes back at once: the refusal is not asked for again.
    let again = lp.score(&[v4(2)]);
    assert_eq!(first, again);
    assert_eq!(rdns_hits(&lp), 1);
}

#[test]
fn score_helo_names() {
    let _machine = sinkhole_tests::shared();
    let world = world();
    let mut lp = Loop::new(&config(world.router.addr));
    let scores = lp.score(&[v4(2)]);

    // The PTR name itself: helo-is-rdns, and it resolves to the client.
    let check = lp.helo(v4(2), "GOOD.test.");
    assert_eq!(check.helo, "good.test");
    assert_eq!(check.resolves_to_client, Some(true));
    assert!(!check.is_mismatch());
    assert!(scores[&v4(2)].helo_is_rdns("GOOD.test."));

    // A name of someone else's address, and one that does not exist: helo-mismatch.
    assert!(lp.helo(v4(2), "helo.test").is_mismatch());
    assert!(lp.helo(v4(2), "nowhere.test").is_mismatch());
    assert!(!scores[&v4(2)].helo_is_rdns("helo.test"));
    // It is 127.0.0.3's name.
    assert_eq!(lp.helo(v4(3), "helo.test").resolves_to_client, Some(true));

    // Address literals and single labels are the session's business: no lookup, no verdict.
    for helo in ["[127.0.0.2]", "127.0.0.2", "localhost"] {
        let check = lp.helo(v4(2), helo);
        assert_eq!(check.resolves_to_client, None, "{helo}");
    }
    drop(world);
}
