//! The resolver's bounds against a DNS server that never answers: every request is answered
//! at `dnsbl.timeout` (concurrently, not one after another), queries past the in-flight cap
//! count as "no answer", and requests past the outstanding limit are refused. A server that
//! stops answering is noticed, no longer asked but probed, and asked again once it answers.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use sinkhole::config::{DnsblConfig, ZoneConfig};
use sinkhole::score::{
    Answer, Busy, ClientScore, DOWN_AFTER, Limits, PROBE_EVERY, Resolver, ScoreCounters,
};
use sinkhole_tests::dns::{stalled_dns, start_rbldnsd};

const TIMEOUT: Duration = Duration::from_millis(500);

fn config(nameserver: std::net::SocketAddr) -> DnsblConfig {
    DnsblConfig {
        nameservers: vec![nameserver],
        timeout: TIMEOUT,
        zone: vec![ZoneConfig {
            name: "zen.test".into(),
            weight: 1,
            codes: vec![],
        }],
        ..DnsblConfig::default()
    }
}

fn client(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))
}

/// Waits on the waker for `n` answers; each with when it arrived.
fn collect(poll: &mut Poll, resolver: &Resolver, n: usize) -> Vec<(Instant, Answer)> {
    let mut events = Events::with_capacity(8);
    let mut answers = Vec::new();
    let until = Instant::now() + TIMEOUT * 10;
    while answers.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {} of {n} answers", answers.len());
        poll.poll(&mut events, Some(left)).unwrap();
        while let Some(answer) = resolver.try_recv() {
            answers.push((Instant::now(), answer));
        }
    }
    answers
}

/// Asks for `ip`'s score and waits for it.
fn score_of(poll: &mut Poll, resolver: &Resolver, ip: IpAddr) -> ClientScore {
    resolver.request(0, ip).unwrap();
    match collect(poll, resolver, 1).remove(0).1 {
        Answer::Client { score, .. } => score,
        answer => panic!("{answer:?}"),
    }
}

fn start(limits: Limits) -> (Poll, Resolver, sinkhole_tests::dns::StalledDns) {
    let stalled = stalled_dns().unwrap();
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
    let resolver = Resolver::spawn_with_limits(&config(stalled.addr), waker, limits).unwrap();
    (poll, resolver, stalled)
}

#[test]
fn score_stalled_server_answers_every_request_at_the_timeout() {
    let _machine = sinkhole_tests::shared();
    let (mut poll, resolver, _stalled) = start(Limits::default());
    let start = Instant::now();
    for n in 0..50 {
        resolver.request(u64::from(n), client(n)).unwrap();
    }
    resolver
        .check_helo(99, client(1), "mail.example.test")
        .unwrap();
    let answers = collect(&mut poll, &resolver, 51);

    for (at, answer) in &answers {
        let waited = at.duration_since(start);
        // Not before the timeout; and all together, not 51 timeouts one after another.
        assert!(waited >= TIMEOUT, "{waited:?}: {answer:?}");
        assert!(waited < TIMEOUT * 4, "{waited:?}: {answer:?}");
        match answer {
            Answer::Client { score, .. } => {
                assert!(score.timed_out && score.dnsbl.is_empty() && score.score == 0);
                // No answer is no fact: no `no-rdns`.
                assert!(!score.rdns_checked && score.signatures().is_empty());
            }
            Answer::Helo { token, check } => {
                assert_eq!(*token, 99);
                assert_eq!(check.resolves_to_client, None);
                assert!(!check.is_mismatch());
            }
        }
    }
    let zone = &resolver.counters().zones[0];
    assert_eq!(ScoreCounters::load(&zone.timeout), 50);
    assert_eq!(
        ScoreCounters::load(&zone.clean) + ScoreCounters::load(&zone.listed),
        0
    );
}

#[test]
fn score_queries_past_the_in_flight_cap_count_as_no_answer() {
    let _machine = sinkhole_tests::shared();
    // One zone + PTR: the first client takes both query slots; the others wait for a slot
    // that never comes free and are answered at their deadline all the same.
    let limits = Limits {
        in_flight: 2,
        ..Limits::default()
    };
    let (mut poll, resolver, _stalled) = start(limits);
    let start = Instant::now();
    for n in 0..5 {
        resolver.request(u64::from(n), client(n)).unwrap();
    }
    let answers = collect(&mut poll, &resolver, 5);
    for (at, answer) in &answers {
        let Answer::Client { score, .. } = answer else {
            panic!("{answer:?}")
        };
        assert!(score.timed_out && score.dnsbl.is_empty());
        let waited = at.duration_since(start);
        assert!(waited >= TIMEOUT && waited < TIMEOUT * 4, "{waited:?}");
    }
    // Every zone query either waited in vain for a slot or was sent and timed out. (Which
    // one is a race at the shared deadline: slots freed at that instant may still be taken.)
    let refused = ScoreCounters::load(&resolver.counters().refused_in_flight);
    let zone_timeouts = ScoreCounters::load(&resolver.counters().zones[0].timeout);
    assert!(
        zone_timeouts >= 1 && refused + zone_timeouts >= 5,
        "{refused} {zone_timeouts}"
    );
}

#[test]
fn score_requests_past_the_outstanding_limit_are_refused() {
    let _machine = sinkhole_tests::shared();
    let limits = Limits {
        outstanding: 3,
        cache_entries: NonZeroUsize::new(16).unwrap(),
        ..Limits::default()
    };
    let (mut poll, resolver, _stalled) = start(limits);
    for n in 0..3 {
        resolver.request(u64::from(n), client(n)).unwrap();
    }
    assert_eq!(resolver.request(3, client(3)), Err(Busy));
    assert_eq!(
        resolver.check_helo(4, client(3), "a.example.test"),
        Err(Busy)
    );
    assert_eq!(ScoreCounters::load(&resolver.counters().refused_busy), 2);

    // Received answers free their places.
    collect(&mut poll, &resolver, 3);
    resolver.request(5, client(5)).unwrap();
    let last = collect(&mut poll, &resolver, 1);
    assert_eq!(last[0].1.token(), 5);
}

#[test]
fn score_resolver_stops_when_dropped() {
    let _machine = sinkhole_tests::shared();
    let (mut poll, resolver, _stalled) = start(Limits::default());
    resolver.request(1, client(1)).unwrap();
    // Dropping with a request in flight returns promptly (the runtime cancels it) and does
    // not wake the loop afterwards.
    let start = Instant::now();
    drop(resolver);
    assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(TIMEOUT * 2)).unwrap();
    assert!(events.is_empty());
}

#[test]
fn score_a_server_that_stops_answering_is_only_probed_until_it_answers_again() {
    let _machine = sinkhole_tests::shared();
    // Every client is listed; rbldnsd serves no reverse zone, so PTR queries are refused (an
    // answer all the same).
    let rbldnsd = start_rbldnsd(&[("zen.test", "ip4set", "127.0.0.0/8\n")]).unwrap();
    let pid = rbldnsd.process.pid().to_string();
    let mut poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
    let resolver = Resolver::spawn(&config(rbldnsd.addr), waker).unwrap();
    let counters = resolver.counters().clone();
    let listed = |score: &ClientScore| !score.timed_out && score.score == 1;
    assert!(listed(&score_of(&mut poll, &resolver, client(1))));

    // Stopped, the server leaves queries unanswered: enough of them in a row and it is down.
    sinkhole_tests::run("kill", &["-STOP", &pid]).unwrap();
    let clients = (0..DOWN_AFTER).map(|n| client(10 + n as u8));
    for (token, ip) in clients.enumerate() {
        resolver.request(token as u64, ip).unwrap();
    }
    for (_, answer) in collect(&mut poll, &resolver, DOWN_AFTER as usize) {
        let Answer::Client { score, .. } = answer else {
            panic!("{answer:?}")
        };
        assert!(score.timed_out && score.score == 0, "{score:?}");
    }
    assert_eq!(
        ScoreCounters::load(&counters.zones[0].timeout),
        u64::from(DOWN_AFTER)
    );

    // Down: the next client is answered at once, unscored, and nothing is sent for it.
    let asked = Instant::now();
    let score = score_of(&mut poll, &resolver, client(100));
    assert!(asked.elapsed() < TIMEOUT / 2, "{:?}", asked.elapsed());
    assert!(score.timed_out && score.score == 0, "{score:?}");
    assert_eq!(
        ScoreCounters::load(&counters.refused_down),
        2,
        "zone and PTR"
    );
    assert_eq!(
        ScoreCounters::load(&counters.zones[0].timeout),
        u64::from(DOWN_AFTER)
    );

    // Running again, the server answers the next probe, and clients are scored again.
    sinkhole_tests::run("kill", &["-CONT", &pid]).unwrap();
    let resumed = Instant::now();
    let mut n = 101;
    while !listed(&score_of(&mut poll, &resolver, client(n))) {
        assert!(
            resumed.elapsed() < PROBE_EVERY + TIMEOUT * 2,
            "still down {:?} after the server resumed",
            resumed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
        n += 1;
    }
    assert!(listed(&score_of(&mut poll, &resolver, client(n + 1))));
}
