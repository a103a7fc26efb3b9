//! `Policy::parse` on any text (before the marker): no panic, an error names a line; a policy
//! that parses is then asked about arbitrary recipients (facts from the schedule), and every
//! verdict is a single reply line whose class fits its action.
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use sinkhole::config::ConfigError;
use sinkhole::policy::{Action, Policy, RcptFacts};
use sinkhole::signature::Signature;
use sinkhole_fuzz::split_input;

#[derive(Arbitrary, Debug)]
struct Facts {
    client_ip: IpAddr,
    fcrdns_name: Option<String>,
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
        let verdict = policy.decide(&RcptFacts {
            client_ip: facts.client_ip,
            fcrdns_name: facts.fcrdns_name.as_deref(),
            helo: facts.helo.as_deref(),
            mail_from: &facts.mail_from,
            rcpt: &facts.rcpt,
            dnsbl_zones: &facts.dnsbl_zones,
            score: facts.score,
            signatures: &signatures,
        });
        let class = match verdict.action {
            Action::Accept => 2,
            Action::Tempfail | Action::Stall => 4,
            Action::Reject | Action::Block => 5,
        };
        assert_eq!(verdict.reply.code / 100, class, "{verdict:?}");
        assert!(
            !verdict.reply.text.chars().any(char::is_control),
            "a reply with a control character: {verdict:?}"
        );
        let local = policy.is_local_sender(&facts.mail_from);
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
