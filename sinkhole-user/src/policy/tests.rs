use std::net::IpAddr;

use super::*;

fn policy() -> Policy {
    Policy::parse(EXAMPLE_FILE, "p.toml").unwrap()
}

/// Facts for a plain recipient from a clean client; tests override what they probe.
fn facts<'a>(mail_from: &'a str, rcpt: &'a str) -> Facts<'a> {
    Facts {
        client_ip: "198.51.100.7".parse().unwrap(),
        rdns: None,
        fcrdns: false,
        helo: Some("mx.clean.example"),
        mail_from: Some(mail_from),
        to: To::One(rcpt),
        dnsbl_zones: &[],
        score: None,
        signatures: &[],
    }
}

/// The policy's verdict on a recipient.
fn rcpt(p: &Policy, facts: &Facts) -> Verdict {
    p.decide(Phase::Rcpt, facts)
}

/// The index of the rule that decided a recipient, if a rule did.
fn rule_of(p: &Policy, facts: &Facts) -> Option<usize> {
    match rcpt(p, facts).source {
        Source::Rule(i) => Some(i),
        _ => None,
    }
}

fn rule_index(v: &Verdict) -> Option<usize> {
    match v.source {
        Source::Rule(i) => Some(i),
        _ => None,
    }
}

fn err(text: &str) -> String {
    Policy::parse(text, "p.toml").unwrap_err().to_string()
}

#[test]
fn the_good_file_parses() {
    let p = policy();
    assert_eq!(p.rule_count(), 10);
    assert!(p.is_local_sender("a@EXAMPLE.org"));
    assert!(p.is_local_sender("a@example.net"));
    assert!(!p.is_local_sender("a@sub.example.org"));
    assert!(!p.is_local_sender(""));
    assert_eq!(Policy::parse("", "p.toml").unwrap().rule_count(), 0);
}

#[test]
fn every_error_names_file_line_and_key() {
    assert_eq!(
        err("[[rule]]\nto = \"*\"\naction = \"drop\"\n"),
        "p.toml:3: rule[0].action: unknown variant `drop`, expected one of `accept`, `reject`, `tempfail`, `stall`, `block`, `disconnect`"
    );
    assert!(
        err("[[rule]]\naction = \"accept\"\n").starts_with("p.toml:1: rule[0]: missing field `to`"),
        "{}",
        err("[[rule]]\naction = \"accept\"\n")
    );
    let e = err("local_domains = [\"ok.example\", \"bad domain\"]\n");
    assert!(
        e.starts_with("p.toml:1: local_domains[1]: `bad domain` is not a valid domain"),
        "{e}"
    );
    let e = err("[[rule]]\nto = \"chris\"\naction = \"reject\"\n");
    assert!(
        e.starts_with("p.toml:2: rule[0].to: `chris` is not an address"),
        "{e}"
    );
    let e =
        err("\n[[rule]]\nto = \"*\"\nfrom = [\"@ok.example\", \"nope\"]\naction = \"reject\"\n");
    assert!(e.starts_with("p.toml:4: rule[0].from[1]: `nope`"), "{e}");
    let e = err("[[rule]]\nto = \"*\"\nhost = [\"203.0.113.7/24\"]\naction = \"reject\"\n");
    assert!(
        e.starts_with("p.toml:3: rule[0].host[0]: `203.0.113.7/24` has host bits"),
        "{e}"
    );
    let e = err("[[rule]]\nto = \"*\"\nsignature = \"bogus\"\naction = \"reject\"\n");
    assert!(
        e.starts_with("p.toml:3: rule[0].signature: unknown signature `bogus`"),
        "{e}"
    );
    let e = err("[[rule]]\nto = \"*\"\nscore = \"high\"\naction = \"reject\"\n");
    assert!(e.starts_with("p.toml:3: rule[0].score: "), "{e}");
    let e = err("[[rule]]\nto = \"*\"\ndnsbl = []\naction = \"reject\"\n");
    assert!(
        e.starts_with("p.toml:3: rule[0].dnsbl: an empty list never matches"),
        "{e}"
    );
    let e = err("[[rule]]\nto = \"*\"\nhelo = \"\"\naction = \"reject\"\n");
    assert!(e.starts_with("p.toml:3: rule[0].helo: "), "{e}");
    let e = err("[[rule]]\nto = \"*\"\naction = \"reject\"\nmessage = \"closed\"\n");
    assert!(
        e.starts_with("p.toml:4: rule[0].message: `closed` must start with a reply code"),
        "{e}"
    );
    assert_eq!(
        err("[[rule]]\nto = \"*\"\naction = \"reject\"\nmessage = 550\n"),
        "p.toml:4: rule[0].message: expected a string like \"550 5.7.1 ...\", found integer"
    );
    let e = err("[[rule]]\nto = \"*\"\naction = \"reject\"\nmessage = \"550 a\\r\\nb\"\n");
    assert!(e.starts_with("p.toml:4: rule[0].message: "), "{e}");
    // The reply class must fit the action, whichever key comes first.
    assert_eq!(
        err(
            "[[rule]]\nto = \"*\"\naction = \"accept\"\n[[rule]]\nto = \"*\"\nmessage = \"451 4.7.1 later\"\naction = \"reject\"\n"
        ),
        "p.toml:6: rule[1].message: `451 4.7.1 later` does not fit action `reject`, which needs a 5xx reply"
    );
    let e = err("[[rule]]\nto = \"*\"\naction = \"stall\"\nmessage = \"550 no\"\n");
    assert!(
        e.starts_with("p.toml:4: rule[0].message: `550 no` does not fit action `stall`"),
        "{e}"
    );
    let e = err("[[rule]]\nto = \"*\"\naction = \"reject\"\nwhen = 1\n");
    assert!(
        e.starts_with("p.toml:4: rule[0].when: unknown field `when`"),
        "{e}"
    );
    assert!(err("[[rule]\n").starts_with("p.toml:1: (syntax): "));
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("sinkhole-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[[rule]]\nto = \"*\"\naction = \"nope\"\n").unwrap();
    let e = Policy::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:3: rule[0].action: ", path.display())),
        "{e}"
    );
    let missing = dir.join("missing.toml");
    assert!(
        Policy::load(&missing)
            .unwrap_err()
            .to_string()
            .starts_with(&missing.display().to_string())
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn first_match_wins_and_no_match_accepts() {
    let p = Policy::parse(
        "[[rule]]\nto = \"a@example.org\"\naction = \"tempfail\"\n[[rule]]\nto = \"@example.org\"\naction = \"reject\"\n",
        "p.toml",
    )
    .unwrap();
    let v = rcpt(&p, &facts("x@sender.example", "A@Example.org"));
    assert_eq!((v.action, rule_index(&v)), (Action::Tempfail, Some(0)));
    assert_eq!(
        v.reply,
        Reply {
            code: 451,
            text: "4.7.1 <A@Example.org>: Recipient address rejected: try again later".into()
        }
    );
    let v = rcpt(&p, &facts("x@sender.example", "b@example.org"));
    assert_eq!((v.action, rule_index(&v)), (Action::Reject, Some(1)));
    assert_eq!(
        v.reply,
        Reply {
            code: 550,
            text: "5.1.1 <b@example.org>: Recipient address rejected".into()
        }
    );
    let v = rcpt(&p, &facts("x@sender.example", "b@other.example"));
    assert_eq!(
        v,
        Verdict {
            action: Action::Accept,
            reply: Reply {
                code: 250,
                text: "2.1.5 Ok".into()
            },
            source: Source::Default,
            signature: None
        }
    );
}

#[test]
fn rule_messages_replace_the_default_reply() {
    let v = rcpt(
        &policy(),
        &facts("x@sender.example", "old-shop@example.org"),
    );
    assert_eq!((v.action, rule_index(&v)), (Action::Reject, Some(0)));
    assert_eq!(
        v.reply,
        Reply {
            code: 550,
            text: "5.1.1 This address is closed".into()
        }
    );
    let v = rcpt(&policy(), &facts("x@sender.example", "anyone@else.example"));
    assert_eq!((v.action, rule_index(&v)), (Action::Accept, Some(5)));
    assert_eq!(
        v.reply,
        Reply {
            code: 250,
            text: "2.1.5 Welcome".into()
        }
    );
}

#[test]
fn keys_and_lists_from_and_host() {
    let p = policy();
    let chris = |from: &'static str, ip: &str, name: Option<&'static str>| {
        let mut f = facts(from, "Chris@example.org");
        f.client_ip = ip.parse().unwrap();
        f.rdns = name;
        f.fcrdns = name.is_some();
        rule_of(&p, &f)
    };
    // from AND host; each list ORs.
    assert_eq!(chris("n@bulk.example.com", "203.0.113.5", None), Some(1));
    assert_eq!(chris("n@a.mailer.example", "2001:db8::5", None), Some(1));
    assert_eq!(chris("", "203.0.113.200", None), Some(1), "null sender");
    assert_eq!(
        chris("n@bulk.example.com", "198.51.100.5", None),
        Some(5),
        "host fails"
    );
    assert_eq!(
        chris("n@mailer.example", "203.0.113.5", None),
        Some(5),
        "@. is below only"
    );
    assert_eq!(
        chris("n@other.example", "203.0.113.5", None),
        Some(5),
        "from fails"
    );
    // The rdns suffix counts only for a forward-confirmed name.
    assert_eq!(
        chris(
            "n@bulk.example.com",
            "198.51.100.5",
            Some("h1.dyn.example.net")
        ),
        Some(1)
    );
    assert_eq!(chris("n@bulk.example.com", "198.51.100.5", None), Some(5));
    // An IPv4-mapped IPv6 client matches IPv4 prefixes.
    assert_eq!(
        chris("n@bulk.example.com", "::ffff:203.0.113.5", None),
        Some(1)
    );
}

#[test]
fn helo_glob_block() {
    let p = policy();
    let mut f = facts("x@sender.example", "x@TRAPS.example.org");
    f.helo = Some("Host.BAD.example");
    let v = rcpt(&p, &f);
    assert_eq!((v.action, rule_index(&v)), (Action::Block, Some(2)));
    assert_eq!(v.reply.code, 550);
    f.helo = None;
    assert_eq!(
        rule_of(&p, &f),
        Some(5),
        "no HELO never matches a helo condition"
    );
    f.helo = Some("bad.example");
    assert_eq!(rule_of(&p, &f), Some(5));
}

#[test]
fn dnsbl_and_score_together() {
    let p = policy();
    let zones = ["other.example".to_owned(), "B.example.".to_owned()];
    let mut f = facts("x@sender.example", "any@where.example");
    f.dnsbl_zones = &zones;
    f.score = Some(2);
    let v = rcpt(&p, &f);
    assert_eq!(
        (v.action, rule_index(&v), v.reply.code),
        (Action::Tempfail, Some(3), 451)
    );
    f.score = Some(1);
    assert_eq!(rule_of(&p, &f), Some(5), "score too low");
    f.score = None;
    assert_eq!(rule_of(&p, &f), Some(5), "no score yet");
    f.score = Some(9);
    f.dnsbl_zones = &zones[..1];
    assert_eq!(rule_of(&p, &f), Some(5), "zone not listed");
}

#[test]
fn signature_condition_stalls() {
    let p = policy();
    let mut f = facts("x@sender.example", "slow@example.org");
    assert_eq!(rule_of(&p, &f), Some(5));
    f.signatures = &[Signature::NoRdns, Signature::Pregreet];
    let v = rcpt(&p, &f);
    assert_eq!(
        (v.action, rule_index(&v), v.reply.code),
        (Action::Stall, Some(4), 451)
    );
}

#[test]
fn local_domain_senders_are_refused_unless_a_rule_refuses_first() {
    let p = policy().with_local_domains_phase(Phase::Rcpt);
    let v = rcpt(&p, &facts("Boss@Example.ORG.", "anyone@else.example"));
    assert_eq!(
        v,
        Verdict {
            action: Action::Reject,
            reply: Reply {
                code: 550,
                text: "5.7.1 Sender address in a local domain is not accepted from outside".into()
            },
            source: Source::LocalDomains,
            signature: Some(Signature::MailFromLocalDomain),
        }
    );
    // A refusing rule keeps its own reply; the finding is still reported.
    let v = rcpt(&p, &facts("boss@example.org", "old-shop@example.org"));
    assert_eq!(
        (v.action, rule_index(&v), v.signature),
        (
            Action::Reject,
            Some(0),
            Some(Signature::MailFromLocalDomain)
        )
    );
    // Without rules, too.
    let p = Policy::parse("local_domains = [\"example.org\"]", "p.toml")
        .unwrap()
        .with_local_domains_phase(Phase::Rcpt);
    assert_eq!(
        rcpt(&p, &facts("a@example.org", "b@example.org")).action,
        Action::Reject
    );
    // The null sender is never refused for being null.
    assert_eq!(rcpt(&p, &facts("", "b@example.org")).action, Action::Accept);
}

#[test]
fn local_domains_refuse_at_mail_by_default() {
    let p = Policy::parse("local_domains = [\"example.org\"]", "p.toml").unwrap();
    let mut f = facts("a@example.org", "b@example.org");
    f.to = To::None;
    let v = p.decide(Phase::Mail, &f);
    assert_eq!(
        (v.action, v.source, v.reply.code),
        (Action::Reject, Source::LocalDomains, 550)
    );
    // At RCPT it no longer refuses by itself.
    assert_eq!(
        rcpt(&p, &facts("a@example.org", "b@example.org")).action,
        Action::Accept
    );
    // An accepting mail rule does not let it through; a refusing one keeps its reply.
    let p = Policy::parse(
        "local_domains = [\"example.org\"]\n[[rule]]\nphase = \"mail\"\nfrom = \"boss@example.org\"\naction = \"accept\"\n[[rule]]\nphase = \"mail\"\nfrom = \"*@*\"\naction = \"disconnect\"\n",
        "p.toml",
    )
    .unwrap();
    f.mail_from = Some("boss@example.org");
    assert_eq!(p.decide(Phase::Mail, &f).source, Source::LocalDomains);
    f.mail_from = Some("x@example.org");
    let v = p.decide(Phase::Mail, &f);
    assert_eq!(
        (v.action, v.source, v.reply.code),
        (Action::Disconnect, Source::Rule(1), 421)
    );
    assert_eq!(v.signature, Some(Signature::MailFromLocalDomain));
}

#[test]
fn each_phase_has_its_rules_conditions_and_default_replies() {
    let p = policy();
    let mut f = facts("x@sender.example", "a@example.org");
    f.to = To::None;
    f.mail_from = None;
    f.helo = None;
    // Connect: the disconnect rule for one host.
    f.client_ip = "192.0.2.66".parse().unwrap();
    let v = p.decide(Phase::Connect, &f);
    assert_eq!(
        (v.action, v.source.clone()),
        (Action::Disconnect, Source::Rule(6))
    );
    assert_eq!(v.reply.code, 421);
    f.client_ip = "192.0.2.67".parse().unwrap();
    assert_eq!(p.decide(Phase::Connect, &f).reply.code, 220);
    // HELO.
    f.helo = Some("a.spam.example");
    let v = p.decide(Phase::Helo, &f);
    assert_eq!(
        (v.reply.code, v.reply.text.as_str()),
        (
            550,
            "5.7.1 <a.spam.example>: Helo command rejected: access denied"
        )
    );
    // MAIL: a sender glob.
    f.mail_from = Some("deals@shop.biz");
    let v = p.decide(Phase::Mail, &f);
    assert_eq!(
        (v.reply.code, v.reply.text.as_str()),
        (
            451,
            "4.7.1 <deals@shop.biz>: Sender address rejected: try again later"
        )
    );
    f.mail_from = Some("deals@biz");
    assert_eq!(p.decide(Phase::Mail, &f).action, Action::Accept);
    // DATA: any accepted recipient, and the signatures so far.
    let rcpts = ["a@example.org".to_owned(), "x@traps.example.org".to_owned()];
    f.to = To::All(&rcpts);
    assert_eq!(p.decide(Phase::Data, &f).action, Action::Accept);
    f.signatures = &[Signature::Pregreet];
    let v = p.decide(Phase::Data, &f);
    assert_eq!((v.reply.code, v.reply.text.as_str()), (554, "5.7.1 No"));
    f.to = To::All(&rcpts[..1]);
    assert_eq!(p.decide(Phase::Data, &f).action, Action::Accept);
}

#[test]
fn phases_refuse_conditions_not_known_yet_and_replies_that_do_not_fit() {
    let e = err("[[rule]]\nphase = \"connect\"\nhelo = \"x\"\naction = \"reject\"\n");
    assert_eq!(
        e,
        "p.toml:3: rule[0].helo: not known yet at phase `connect` (it is from phase `helo` on)"
    );
    let e = err(
        "[[rule]]\nto = \"*\"\naction = \"accept\"\n[[rule]]\nphase = \"mail\"\naction = \"reject\"\nto = \"a@b.example\"\n",
    );
    assert_eq!(
        e,
        "p.toml:7: rule[1].to: not known yet at phase `mail` (it is from phase `rcpt` on)"
    );
    let e = err("[[rule]]\nphase = \"helo\"\nfrom = \"<>\"\naction = \"reject\"\n");
    assert!(
        e.starts_with("p.toml:3: rule[0].from: not known yet at phase `helo`"),
        "{e}"
    );
    let e = err("[[rule]]\nphase = \"later\"\naction = \"reject\"\n");
    assert!(
        e.starts_with("p.toml:2: rule[0].phase: unknown variant `later`"),
        "{e}"
    );
    let e =
        err("[[rule]]\nphase = \"mail\"\naction = \"disconnect\"\nmessage = \"451 4.7.1 go\"\n");
    assert!(e.starts_with("p.toml:4: rule[0].message: `451 4.7.1 go`: action `disconnect` at phase `mail` closes the connection, which needs a 421 reply"), "{e}");
    let e = err("[[rule]]\nphase = \"connect\"\naction = \"tempfail\"\nmessage = \"450 later\"\n");
    assert!(e.contains("needs a 421 reply"), "{e}");
    let e = err("[[rule]]\nphase = \"helo\"\naction = \"accept\"\nmessage = \"250 hi\"\n");
    assert!(e.contains("leave `message` out"), "{e}");
    // Without `to`, a rule at data is about any message; at rcpt `to` is needed.
    assert!(
        Policy::parse(
            "[[rule]]\nphase = \"data\"\naction = \"reject\"\n",
            "p.toml"
        )
        .is_ok()
    );
    assert!(
        Policy::parse(
            "[[rule]]\nphase = \"connect\"\naction = \"disconnect\"\nmessage = \"421 4.7.0 bye\"\n",
            "p.toml"
        )
        .is_ok()
    );
}

#[test]
fn replies_never_carry_control_characters() {
    let p = Policy::parse("[[rule]]\nto = \"*\"\naction = \"reject\"\n", "p.toml").unwrap();
    let v = rcpt(&p, &facts("", "a\r\nb@example.org"));
    assert_eq!(
        v.reply.text,
        "5.1.1 <a??b@example.org>: Recipient address rejected"
    );
}

#[test]
fn reload_keeps_the_old_rules_on_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("sinkhole-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, "[[rule]]\nto = \"*\"\naction = \"reject\"\n").unwrap();
    let config = PolicyConfig {
        file: path.clone(),
        ..PolicyConfig::default()
    };
    let mut store = PolicyStore::open(&config).unwrap();
    let session = store.current();
    let f = facts("", "a@example.org");
    assert_eq!(rcpt(&session, &f).action, Action::Reject);

    std::fs::write(&path, "[[rule]]\nto = \"*\"\naction = \"tempfail\"\n").unwrap();
    store.reload().unwrap();
    assert_eq!(rcpt(&store.current(), &f).action, Action::Tempfail);
    assert_eq!(
        rcpt(&session, &f).action,
        Action::Reject,
        "a running session keeps its rules"
    );

    std::fs::write(&path, "[[rule]]\nto = \"*\"\naction = \"explode\"\n").unwrap();
    let e = store.reload().unwrap_err().to_string();
    assert!(e.contains(":3: rule[0].action: "), "{e}");
    assert_eq!(
        rcpt(&store.current(), &f).action,
        Action::Tempfail,
        "old rules stay"
    );

    std::fs::remove_file(&path).unwrap();
    assert!(store.reload().is_err());
    assert_eq!(rcpt(&store.current(), &f).action, Action::Tempfail);
    std::fs::remove_dir_all(dir).unwrap();

    let mut none = PolicyStore::open(&PolicyConfig::default()).unwrap();
    none.reload().unwrap();
    assert_eq!(rcpt(&none.current(), &f).action, Action::Accept);
}

#[test]
fn matching_ignores_address_family_of_other_rules() {
    let p = Policy::parse(
        "[[rule]]\nto = \"*\"\nhost = \"2001:db8::/32\"\naction = \"reject\"\n",
        "p.toml",
    )
    .unwrap();
    let mut f = facts("", "a@example.org");
    f.client_ip = IpAddr::from([203, 0, 113, 1]);
    assert_eq!(rcpt(&p, &f).action, Action::Accept);
}

#[test]
fn uses_score_when_a_rule_looks_at_scoring_facts() {
    let parse = |text: &str| Policy::parse(text, "p.toml").unwrap();
    assert!(!Policy::default().uses_score(Phase::Rcpt));
    assert!(!parse("local_domains = [\"example.org\"]\n[[rule]]\nto = \"*\"\nhost = \"192.0.2.0/24\"\nhelo = \"*.example\"\naction = \"reject\"\n").uses_score(Phase::Rcpt));
    for condition in [
        "host = \".rdns.example\"",
        "dnsbl = \"zen.example\"",
        "score = 2",
        "signature = \"helo-bare-ip\"",
    ] {
        let text = format!(
            "[[rule]]\nto = \"*\"\naction = \"accept\"\n[[rule]]\nto = \"*\"\n{condition}\naction = \"reject\"\n"
        );
        let p = parse(&text);
        assert!(p.uses_score(Phase::Rcpt), "{condition}");
        assert!(!p.uses_score(Phase::Mail), "{condition}");
    }
}
