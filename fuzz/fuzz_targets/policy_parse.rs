//! `Policy::parse` on any text (before the marker): no panic, an error names a line; a policy
//! that parses is then asked about arbitrary commands at every phase (facts from the schedule),
//! and every verdict is a single reply line whose class fits its action.
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sinkhole::config::ConfigError;
use sinkhole::policy::{Action, Facts as PolicyFacts, Phase, Policy, To};
use sinkhole::signature::Signature;
use sinkhole_fuzz::split_input;

#[derive(Arbitrary, Debug)]
struct Facts {
    phase: u8,
    client_ip: IpAddr,
    rdns: Option<String>,
    fcrdns: bool,
    helo: Option<String>,
    mail_from: String,
    rcpt: String,
    dnsbl_zones: Vec<String>,
    score: Option<i32>,
    signatures: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let (text, schedule) = split_input(data);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let policy = match Policy::parse(text, "policy.toml") {
        Ok(policy) => policy,
        Err(ConfigError::Invalid { line, .. }) => {
            assert!((1..=text.lines().count() + 1).contains(&line));
            return;
        }
        Err(e) => panic!("parse reported a read error: {e}"),
    };
    let mut u = Unstructured::new(schedule);
    for _ in 0..16 {
        let Ok(facts) = Facts::arbitrary(&mut u) else {
            break;
        };
        let signatures: Vec<Signature> = facts
            .signatures
            .iter()
            .map(|&i| Signature::ALL[usize::from(i) % Signature::ALL.len()])
            .collect();
        let phase = Phase::ALL[usize::from(facts.phase) % Phase::ALL.len()];
        let rcpts = [facts.rcpt.clone()];
        let to = match phase {
            Phase::Rcpt => To::One(&facts.rcpt),
            Phase::Data => To::All(&rcpts),
            _ => To::None,
        };
        let verdict = policy.decide(
            phase,
            &PolicyFacts {
                client_ip: facts.client_ip,
                rdns: facts.rdns.as_deref(),
                fcrdns: facts.fcrdns,
                helo: facts.helo.as_deref(),
                mail_from: (phase >= Phase::Mail).then_some(facts.mail_from.as_str()),
                to,
                dnsbl_zones: &facts.dnsbl_zones,
                score: facts.score,
                signatures: &signatures,
            },
        );
        let class = match verdict.action {
            Action::Accept => 2,
            Action::Tempfail | Action::Stall | Action::Disconnect => 4,
            Action::Reject | Action::Block => 5,
        };
        assert_eq!(verdict.reply.code / 100, class, "{verdict:?}");
        if verdict.action == Action::Disconnect || (phase == Phase::Connect && class == 4) {
            assert_eq!(verdict.reply.code, 421, "{verdict:?}");
        }
        assert!(
            !verdict.reply.text.chars().any(char::is_control),
            "a reply with a control character: {verdict:?}"
        );
        // The default policy phase for local_domains is MAIL.
        let local = phase == Phase::Mail && policy.is_local_sender(&facts.mail_from);
        assert_eq!(verdict.signature.is_some(), local);
        if local {
            assert_ne!(
                verdict.action,
                Action::Accept,
                "a local sender was accepted"
            );
        }
        if u.is_empty() {
            break;
        }
    }
});
