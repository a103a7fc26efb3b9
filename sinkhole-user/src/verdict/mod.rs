//! Verdicts: what the loop learns about one connected client (its DNSBL score and reverse DNS
//! from the resolver, the check of its HELO name, the policy it started under) and the reply
//! it gives each decision the session asks for (the connection, HELO, MAIL, each recipient,
//! each message), held back while it waits for the score or stalls.
//!
//! Pure: the loop (`server::decisions`) feeds a [`ClientJudge`] answers and instants and asks
//! it for verdicts; the loop does the I/O (replies, blocks, timers). Verdict order at
//! `RCPT TO`: a score at or above `dnsbl.reject_threshold` refuses (and, at
//! `dnsbl.block_threshold`, blocks); otherwise the session's policy decides. At the other
//! phases the policy alone decides.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::campaign;
use crate::config::{CampaignConfig, Config};
use crate::policy::book::AddressBook;
use crate::policy::{Action, Facts, Phase, Policy, To};
use crate::score::{Answer, ClientScore, DnsblListing, HeloCheck};
// Until the block source has a home below the loop.
use crate::counters::BlockSource;
use crate::signature::Signature;
use crate::smtp::Reply;

/// The parts of the configuration verdicts need, shared by every connection.
#[derive(Clone, Debug)]
pub struct Rules {
    pub reject_threshold: i32,
    pub block_threshold: i32,
    pub block_ttl: Duration,
    /// How long the score may take from accept (`dnsbl.timeout`).
    pub score_timeout: Duration,
    /// `dnsbl.zone` lists zones: recipient verdicts wait for the score.
    pub zones: bool,
    /// How long action `stall` holds its reply (`policy.stall`).
    pub stall: Duration,
    pub campaign: CampaignConfig,
}

impl Rules {
    pub fn new(config: &Config) -> Rules {
        Rules {
            reject_threshold: config.dnsbl.reject_threshold,
            block_threshold: config.dnsbl.block_threshold,
            block_ttl: config.dnsbl.block_ttl,
            score_timeout: config.dnsbl.timeout,
            zones: !config.dnsbl.zone.is_empty(),
            stall: config.policy.stall,
            campaign: config.campaign.clone(),
        }
    }
}

/// A block to make: who wants it and the reason `sinkhole list` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    pub source: BlockSource,
    pub reason: String,
}

/// The verdict for one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The reply: 2xx accepts (outside `RCPT TO` the session answers with its own text).
    pub reply: Reply,
    /// Policy `stall`: send the reply only at this instant.
    pub stall_until: Option<Instant>,
    /// Put the client into the drop map (and end the session once the reply is out).
    pub block: Option<Escalation>,
}

/// A decision the session asked for, with what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    Connect,
    Helo,
    Mail {
        mail_from: String,
    },
    Rcpt {
        mail_from: String,
        rcpt: String,
    },
    /// A complete message of `size` bytes, before its 250.
    Data {
        mail_from: String,
        rcpts: Vec<String>,
        size: u64,
    },
}

impl Ask {
    pub fn phase(&self) -> Phase {
        match self {
            Ask::Connect => Phase::Connect,
            Ask::Helo => Phase::Helo,
            Ask::Mail { .. } => Phase::Mail,
            Ask::Rcpt { .. } => Phase::Rcpt,
            Ask::Data { .. } => Phase::Data,
        }
    }

    /// The sender, from MAIL on.
    fn mail_from(&self) -> Option<&str> {
        match self {
            Ask::Connect | Ask::Helo => None,
            Ask::Mail { mail_from } | Ask::Rcpt { mail_from, .. } | Ask::Data { mail_from, .. } => {
                Some(mail_from)
            }
        }
    }

    fn to(&self) -> To<'_> {
        match self {
            Ask::Rcpt { rcpt, .. } => To::One(rcpt),
            Ask::Data { rcpts, .. } => To::All(rcpts),
            _ => To::None,
        }
    }
}

/// What the session says about itself when it asks.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub client_ip: IpAddr,
    pub helo: Option<&'a str>,
    /// The protocol's signatures so far.
    pub protocol: &'a [Signature],
}

/// A reply not given yet.
#[derive(Debug)]
pub enum Held {
    /// The decision waits for the score (at most until the score is due).
    Score(Ask),
    /// A stalled reply to a decision at `phase`, given at `until`.
    Stall {
        until: Instant,
        reply: Reply,
        phase: Phase,
    },
}

/// One client's scoring and policy state.
#[derive(Debug)]
pub struct ClientJudge {
    /// The rules the session started with (a reload does not change them mid-session).
    policy: Arc<Policy>,
    /// The latest the score may come (accept + `dnsbl.timeout`); `None` when the resolver did
    /// not take the request.
    score_due: Option<Instant>,
    /// Recipient verdicts wait for the score: there are zones, or the policy's `rcpt` rules
    /// look at it.
    rcpt_waits: bool,
    score: Option<ClientScore>,
    /// A complete score came before `score_due`.
    scored: bool,
    /// The zones that listed the client (for the policy's `dnsbl` condition).
    zones: Vec<String>,
    /// A check of the HELO name was asked for (once per session: the first name given).
    helo_asked: bool,
    /// The resolver took that check and has not answered yet.
    helo_pending: bool,
    helo_check: Option<HeloCheck>,
    /// Signatures the policy found (`mail-from-local-domain`).
    policy_signatures: Vec<Signature>,
    held: Option<Held>,
    /// A block was made (or refused as allow-listed): not tried again this session.
    escalated: bool,
}

impl ClientJudge {
    /// A client at accept, unscored until [`ClientJudge::score_requested`].
    pub fn new(policy: Arc<Policy>, rules: &Rules) -> ClientJudge {
        ClientJudge {
            rcpt_waits: rules.zones || policy.uses_score(Phase::Rcpt),
            policy,
            score_due: None,
            score: None,
            scored: false,
            zones: Vec::new(),
            helo_asked: false,
            helo_pending: false,
            helo_check: None,
            policy_signatures: Vec::new(),
            held: None,
            escalated: false,
        }
    }

    /// The resolver took the score request made at `now`: it answers by `dnsbl.timeout`.
    pub fn score_requested(&mut self, now: Instant, rules: &Rules) {
        self.score_due = Some(now + rules.score_timeout);
    }

    /// Whether the decision at `phase` looks at the score (and so waits for it); at `rcpt`
    /// also when an address file in `book` blocks hosts by reverse name.
    pub fn waits_for_score(&self, phase: Phase, book: &AddressBook) -> bool {
        match phase {
            Phase::Rcpt => self.rcpt_waits || book.uses_rdns(),
            phase => self.policy.uses_score(phase),
        }
    }

    /// Whether a decision at `phase` must still wait for the score at `now`.
    pub fn awaits_score(&self, phase: Phase, book: &AddressBook, now: Instant) -> bool {
        self.waits_for_score(phase, book)
            && self.score.is_none()
            && self.score_due.is_some_and(|due| now < due)
    }

    /// The score, once the resolver answered.
    pub fn score(&self) -> Option<&ClientScore> {
        self.score.as_ref()
    }

    /// A complete score came in time (else recipients were decided without it, or the session
    /// ended first).
    pub fn is_scored(&self) -> bool {
        self.scored
    }

    /// The resolver's answer for this client: its score, or the check of its HELO name.
    pub fn take_answer(&mut self, answer: Answer, now: Instant) {
        match answer {
            Answer::Client { score, .. } => self.set_score(score, now),
            Answer::Helo { check, .. } => self.set_helo_check(check),
        }
    }

    /// The resolver's answer for this client.
    pub fn set_score(&mut self, score: ClientScore, now: Instant) {
        self.scored = !score.timed_out && self.score_due.is_some_and(|due| now <= due);
        self.zones = score.dnsbl.iter().map(|hit| hit.zone.to_string()).collect();
        self.score = Some(score);
    }

    pub fn set_helo_check(&mut self, check: HeloCheck) {
        self.helo_pending = false;
        self.helo_check = Some(check);
    }

    /// Whether the HELO name is still to be checked (only the first name given is).
    pub fn wants_helo_check(&self) -> bool {
        !self.helo_asked
    }

    /// The check of the HELO name was asked for; `taken`: the resolver took it and owes an
    /// answer (else the session has no `helo-mismatch` verdict).
    pub fn helo_check_asked(&mut self, taken: bool) {
        self.helo_asked = true;
        self.helo_pending = taken;
    }

    /// The resolver still owes an answer (the score, or the HELO check). It answers every
    /// request it took within `dnsbl.timeout`, so this ends by itself.
    pub fn awaits_answers(&self) -> bool {
        (self.score.is_none() && self.score_due.is_some()) || self.helo_pending
    }

    /// When the loop must come back for a held reply.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.held {
            Some(Held::Score(_)) => self.score_due,
            Some(Held::Stall { until, .. }) => Some(*until),
            None => None,
        }
    }

    /// Holds a decision until the score is in, or is due ([`ClientJudge::deadline`]).
    pub fn hold_for_score(&mut self, ask: Ask) {
        self.held = Some(Held::Score(ask));
    }

    /// Holds a stalled reply to a decision at `phase` until `until`.
    pub fn hold_stall(&mut self, until: Instant, reply: Reply, phase: Phase) {
        self.held = Some(Held::Stall {
            until,
            reply,
            phase,
        });
    }

    /// The decision held for the score, once the score is in, to decide now.
    pub fn take_scored(&mut self) -> Option<Ask> {
        self.score.as_ref()?;
        match self.held.take_if(|held| matches!(held, Held::Score(_))) {
            Some(Held::Score(ask)) => Some(ask),
            _ => None,
        }
    }

    /// The held reply whose deadline has come by `now`.
    pub fn take_held_due(&mut self, now: Instant) -> Option<Held> {
        if self.deadline().is_none_or(|due| due > now) {
            return None;
        }
        self.held.take()
    }

    /// The held reply, due or not (at shutdown nobody waits any longer).
    pub fn take_held(&mut self) -> Option<Held> {
        self.held.take()
    }

    /// A block was made for this client (or refused as allow-listed): none is tried again at
    /// the end of the session.
    pub fn mark_escalated(&mut self) {
        self.escalated = true;
    }

    /// The verdict for one decision with what is known now (at `rcpt`, the recipient's own
    /// file in `book` decides too).
    pub fn decide(
        &mut self,
        rules: &Rules,
        book: &AddressBook,
        context: &Context,
        ask: &Ask,
        now: Instant,
    ) -> Decision {
        let phase = ask.phase();
        let mail_from = ask.mail_from();
        if mail_from.is_some_and(|m| self.policy.is_local_sender(m)) {
            add(&mut self.policy_signatures, Signature::MailFromLocalDomain);
        }
        if phase == Phase::Rcpt
            && let Some(score) = &self.score
            && let Some(reply) = score.reject_reply(rules.reject_threshold)
        {
            let block = score
                .should_block(rules.block_threshold)
                .then(|| Escalation {
                    source: BlockSource::Dnsbl,
                    reason: score.block_reason(),
                });
            return Decision {
                reply,
                stall_until: None,
                block,
            };
        }
        let signatures = self.signatures(context.protocol, context.helo);
        let facts = Facts {
            client_ip: context.client_ip,
            rdns: self.score.as_ref().and_then(|s| s.rdns.as_deref()),
            fcrdns: self.score.as_ref().is_some_and(|s| s.fcrdns),
            helo: context.helo,
            mail_from,
            to: ask.to(),
            dnsbl_zones: &self.zones,
            score: self.score.as_ref().map(|s| s.score),
            signatures: &signatures,
        };
        let verdict = match phase {
            Phase::Rcpt => self.policy.decide_recipient(book, &facts),
            phase => self.policy.decide(phase, &facts),
        };
        Decision {
            reply: verdict.reply,
            stall_until: (verdict.action == Action::Stall).then(|| now + rules.stall),
            block: (verdict.action == Action::Block).then(|| Escalation {
                source: BlockSource::Policy,
                reason: format!("policy:{}", verdict.source.name()),
            }),
        }
    }

    /// Every signature the session has shown: the protocol's, the policy's and the score's,
    /// with `helo-is-rdns` and `helo-mismatch`, merged in report order.
    pub fn signatures(&self, protocol: &[Signature], helo: Option<&str>) -> Vec<Signature> {
        let mut score = self
            .score
            .as_ref()
            .map(ClientScore::signatures)
            .unwrap_or_default();
        if let (Some(s), Some(helo)) = (&self.score, helo)
            && s.helo_is_rdns(helo)
        {
            score.push(Signature::HeloIsRdns);
        }
        if self.helo_check.as_ref().is_some_and(HeloCheck::is_mismatch) {
            score.push(Signature::HeloMismatch);
        }
        campaign::signatures(protocol, &self.policy_signatures, &score)
    }

    /// The block due when the session ends, if none was made yet: a score at
    /// `dnsbl.block_threshold` (a client that never reached `RCPT TO`), else a complete
    /// `campaign.block_signatures` set.
    pub fn escalation_at_end(&self, rules: &Rules, signatures: &[Signature]) -> Option<Escalation> {
        if self.escalated {
            return None;
        }
        if let Some(score) = &self.score
            && score.should_block(rules.block_threshold)
        {
            return Some(Escalation {
                source: BlockSource::Dnsbl,
                reason: score.block_reason(),
            });
        }
        campaign::matches_block_set(signatures, &rules.campaign).map(|reason| Escalation {
            source: BlockSource::Campaign,
            reason,
        })
    }

    /// The listings for the session log and the `X-Sinkhole-Dnsbl` header.
    pub fn listings(&self) -> Vec<DnsblListing> {
        self.score
            .iter()
            .flat_map(|s| &s.dnsbl)
            .map(|hit| DnsblListing {
                zone: hit.zone.to_string(),
                codes: hit.codes.iter().map(ToString::to_string).collect(),
            })
            .collect()
    }

    /// `rdns` and `fcrdns` for the log: the PTR name, and whether it is forward-confirmed
    /// (unknown when the lookups did not complete and nothing confirmed it).
    pub fn rdns(&self) -> (Option<String>, Option<bool>) {
        match &self.score {
            Some(s) => (
                s.rdns.clone(),
                (s.rdns_checked || s.fcrdns).then_some(s.fcrdns),
            ),
            None => (None, None),
        }
    }
}

fn add(signatures: &mut Vec<Signature>, signature: Signature) {
    if !signatures.contains(&signature) {
        signatures.push(signature);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::ZoneHit;

    fn rules() -> Rules {
        Rules {
            reject_threshold: 3,
            block_threshold: 5,
            block_ttl: Duration::from_secs(3600),
            score_timeout: Duration::from_secs(2),
            zones: true,
            stall: Duration::from_secs(30),
            campaign: CampaignConfig {
                block_signatures: vec![vec![Signature::MailFromLocalDomain, Signature::NoRdns]],
                ..CampaignConfig::default()
            },
        }
    }

    fn policy(text: &str) -> Arc<Policy> {
        Arc::new(Policy::parse(text, "policy.toml").unwrap())
    }

    fn score(zones: &[(&str, i32)], rdns: Option<&str>, fcrdns: bool) -> ClientScore {
        let dnsbl: Vec<ZoneHit> = zones
            .iter()
            .map(|&(zone, weight)| ZoneHit {
                zone: zone.into(),
                codes: vec!["127.0.0.2".parse().unwrap()],
                weight,
            })
            .collect();
        ClientScore {
            ip: "192.0.2.9".parse().unwrap(),
            score: dnsbl.iter().map(|h| h.weight).sum(),
            dnsbl,
            rdns: rdns.map(Into::into),
            fcrdns,
            rdns_checked: true,
            timed_out: false,
        }
    }

    const IP: &str = "192.0.2.9";

    fn rcpt(mail_from: &str, rcpt: &str) -> Ask {
        Ask::Rcpt {
            mail_from: mail_from.into(),
            rcpt: rcpt.into(),
        }
    }

    fn ask(client: &mut ClientJudge, ask: &Ask, now: Instant) -> Decision {
        let context = Context {
            client_ip: IP.parse().unwrap(),
            helo: Some("mx.example.net"),
            protocol: &[],
        };
        client.decide(&rules(), &AddressBook::default(), &context, ask, now)
    }

    fn decide(client: &mut ClientJudge, mail_from: &str, rcpt: &str, now: Instant) -> Decision {
        ask(client, &self::rcpt(mail_from, rcpt), now)
    }

    #[test]
    fn a_score_at_the_thresholds_refuses_then_blocks() {
        let now = Instant::now();
        let mut client = requested(policy(""), now, &rules());
        assert!(client.awaits_score(Phase::Rcpt, &AddressBook::default(), now));
        client.set_score(
            score(&[("zen.example", 3), ("bl.example", 1)], None, false),
            now,
        );
        assert!(
            client.is_scored() && !client.awaits_score(Phase::Rcpt, &AddressBook::default(), now)
        );
        let d = decide(&mut client, "a@x.example", "b@y.example", now);
        assert_eq!(d.reply.code, 550);
        assert_eq!(
            d.reply.text,
            "5.7.1 Service unavailable; client [192.0.2.9] blocked using zen.example, bl.example"
        );
        assert_eq!(d.block, None);
        client.set_score(
            score(&[("zen.example", 3), ("bl.example", 2)], None, false),
            now,
        );
        let d = decide(&mut client, "a@x.example", "b@y.example", now);
        assert_eq!(
            d.block,
            Some(Escalation {
                source: BlockSource::Dnsbl,
                reason: "dnsbl:zen.example,bl.example".into()
            })
        );
    }

    #[test]
    fn an_allowlist_zone_lowers_the_score_below_reject() {
        let now = Instant::now();
        let mut client = requested(policy(""), now, &rules());
        client.set_score(
            score(&[("zen.example", 3), ("allow.example", -2)], None, false),
            now,
        );
        let d = decide(&mut client, "a@x.example", "b@y.example", now);
        assert_eq!(d.reply.code, 250);
        assert_eq!(client.listings().len(), 2);
    }

    #[test]
    fn policy_actions_stall_and_block_with_facts_from_the_score() {
        let now = Instant::now();
        let rules_text = r#"
local_domains = ["example.org"]
[[rule]]
to = "slow@example.org"
action = "stall"
[[rule]]
to = "*"
host = ".good.example"
action = "block"
[[rule]]
to = "*"
dnsbl = "zen.example"
action = "tempfail"
"#;
        let mut client = requested(policy(rules_text), now, &rules());
        let d = decide(&mut client, "a@x.example", "slow@example.org", now);
        assert_eq!(d.reply.code, 451);
        assert_eq!(d.stall_until, Some(now + Duration::from_secs(30)));
        // Unscored: neither host nor dnsbl conditions can match.
        assert_eq!(
            decide(&mut client, "a@x.example", "b@x.example", now)
                .reply
                .code,
            250
        );
        // A PTR name only counts when forward-confirmed.
        client.set_score(
            score(&[("zen.example", 1)], Some("mx.good.example"), false),
            now,
        );
        assert_eq!(
            decide(&mut client, "a@x.example", "b@x.example", now)
                .reply
                .code,
            451
        );
        client.set_score(score(&[], Some("mx.good.example"), true), now);
        let d = decide(&mut client, "a@x.example", "b@x.example", now);
        assert_eq!(d.reply.code, 550);
        assert_eq!(
            d.block,
            Some(Escalation {
                source: BlockSource::Policy,
                reason: "policy:rule[1]".into()
            })
        );
    }

    #[test]
    fn every_phase_is_decided_by_its_own_rules_and_the_score_refuses_only_recipients() {
        let now = Instant::now();
        let text = r#"
local_domains = ["example.org"]
[[rule]]
phase = "connect"
host = "192.0.2.0/24"
dnsbl = "zen.example"
action = "disconnect"
[[rule]]
phase = "helo"
helo = "*.example.net"
action = "tempfail"
[[rule]]
phase = "data"
to = "trap@example.org"
action = "block"
"#;
        let mut client = requested(policy(text), now, &rules());
        assert_eq!(ask(&mut client, &Ask::Connect, now).reply.code, 220);
        client.set_score(score(&[("zen.example", 9)], None, false), now);
        let d = ask(&mut client, &Ask::Connect, now);
        assert_eq!((d.reply.code, d.block), (421, None));
        assert_eq!(ask(&mut client, &Ask::Helo, now).reply.code, 451);
        // The score refuses recipients only: the sender is refused by local_domains.
        let mail = |from: &str| Ask::Mail {
            mail_from: from.into(),
        };
        assert_eq!(ask(&mut client, &mail("a@x.example"), now).reply.code, 250);
        let d = ask(&mut client, &mail("a@example.org"), now);
        assert_eq!(
            d.reply.text,
            "5.7.1 Sender address in a local domain is not accepted from outside"
        );
        let data = Ask::Data {
            mail_from: "a@x.example".into(),
            rcpts: vec!["b@y.example".into(), "trap@example.org".into()],
            size: 10,
        };
        let d = ask(&mut client, &data, now);
        assert_eq!(d.reply.code, 550);
        assert_eq!(d.block.unwrap().reason, "policy:rule[2]");
    }

    #[test]
    fn session_signatures_merge_and_campaign_sets_block_at_the_end() {
        let now = Instant::now();
        let mut client = requested(policy("local_domains = [\"example.org\"]"), now, &rules());
        let mail = Ask::Mail {
            mail_from: "x@example.org".into(),
        };
        assert_eq!(ask(&mut client, &mail, now).reply.code, 550);
        client.set_score(score(&[], None, false), now);
        client.set_helo_check(HeloCheck {
            ip: IP.parse().unwrap(),
            helo: "mx.example.net".into(),
            resolves_to_client: Some(false),
        });
        let all = client.signatures(&[Signature::Pregreet], Some("mx.example.net"));
        assert_eq!(
            all,
            vec![
                Signature::MailFromLocalDomain,
                Signature::HeloMismatch,
                Signature::NoRdns,
                Signature::Pregreet
            ]
        );
        assert_eq!(
            client.escalation_at_end(&rules(), &all),
            Some(Escalation {
                source: BlockSource::Campaign,
                reason: "campaign:mail-from-local-domain+no-rdns".into()
            })
        );
        client.mark_escalated();
        assert_eq!(client.escalation_at_end(&rules(), &all), None);
    }

    #[test]
    fn helo_is_rdns_and_late_or_partial_scores_are_not_scored() {
        let now = Instant::now();
        let mut client = requested(policy(""), now, &rules());
        client.set_score(
            score(&[], Some("mx.example.net"), true),
            now + Duration::from_secs(3),
        );
        assert!(!client.is_scored());
        assert!(
            client
                .signatures(&[], Some("MX.example.net."))
                .contains(&Signature::HeloIsRdns)
        );
        assert_eq!(client.rdns(), (Some("mx.example.net".into()), Some(true)));
        let mut partial = score(&[], None, false);
        partial.timed_out = true;
        client.set_score(partial, now);
        assert!(!client.is_scored());
        let unrequested = ClientJudge::new(policy(""), &rules());
        assert!(!unrequested.awaits_score(Phase::Rcpt, &AddressBook::default(), now));
        assert_eq!(unrequested.rdns(), (None, None));
        // No zones and a policy blind to the score: nothing to wait for.
        let no_zones = Rules {
            zones: false,
            ..rules()
        };
        assert!(!requested(policy(""), now, &no_zones).awaits_score(
            Phase::Rcpt,
            &AddressBook::default(),
            now
        ));
        let scoring_policy = policy("[[rule]]\nto = \"*\"\nscore = 1\naction = \"reject\"\n");
        assert!(requested(scoring_policy, now, &no_zones).awaits_score(
            Phase::Rcpt,
            &AddressBook::default(),
            now
        ));
        // A phase waits only when its own rules look at the score.
        let at_mail =
            policy("[[rule]]\nphase = \"mail\"\ndnsbl = \"zen.example\"\naction = \"reject\"\n");
        let client = requested(at_mail, now, &no_zones);
        assert!(client.awaits_score(Phase::Mail, &AddressBook::default(), now));
        assert!(
            !client.awaits_score(Phase::Connect, &AddressBook::default(), now)
                && !client.awaits_score(Phase::Rcpt, &AddressBook::default(), now)
        );
    }

    /// A client whose score request the resolver took at `now`.
    fn requested(policy: Arc<Policy>, now: Instant, rules: &Rules) -> ClientJudge {
        let mut client = ClientJudge::new(policy, rules);
        client.score_requested(now, rules);
        client
    }

    #[test]
    fn held_replies_have_deadlines() {
        let now = Instant::now();
        let mut client = requested(policy(""), now, &rules());
        assert_eq!(client.deadline(), None);
        client.hold_for_score(rcpt("", "a@b"));
        assert_eq!(client.deadline(), Some(now + Duration::from_secs(2)));
        assert!(!client.awaits_score(
            Phase::Rcpt,
            &AddressBook::default(),
            now + Duration::from_secs(2)
        ));
    }

    #[test]
    fn held_replies_are_taken_when_due_or_when_the_score_is_in() {
        let now = Instant::now();
        let due = now + Duration::from_secs(2);
        let mut client = requested(policy(""), now, &rules());
        client.hold_for_score(rcpt("a@x.example", "b@y.example"));
        assert!(client.take_held_due(now).is_none());
        // A HELO answer is not the score: the recipient keeps waiting.
        client.take_answer(
            Answer::Helo {
                token: 0,
                check: HeloCheck {
                    ip: IP.parse().unwrap(),
                    helo: "mx.example.net".into(),
                    resolves_to_client: Some(true),
                },
            },
            now,
        );
        assert_eq!(client.take_scored(), None);
        client.take_answer(
            Answer::Client {
                token: 0,
                score: score(&[], None, false),
            },
            now,
        );
        assert_eq!(
            client.take_scored(),
            Some(rcpt("a@x.example", "b@y.example"))
        );
        assert_eq!(client.deadline(), None);

        let reply = Reply {
            code: 451,
            text: "4.7.1 Try later".into(),
        };
        client.hold_stall(due, reply.clone(), Phase::Rcpt);
        assert_eq!(client.take_scored(), None, "a stall is not for the score");
        assert!(client.take_held_due(now).is_none());
        assert!(matches!(
            client.take_held_due(due),
            Some(Held::Stall { reply: r, .. }) if r == reply
        ));
        client.hold_stall(due, reply, Phase::Rcpt);
        assert!(client.take_held().is_some(), "forced, before it is due");
        assert!(client.take_held().is_none());
    }

    #[test]
    fn the_helo_check_is_asked_once_and_owed_until_answered() {
        let now = Instant::now();
        let mut client = ClientJudge::new(policy(""), &rules());
        assert!(client.wants_helo_check() && !client.awaits_answers());
        client.helo_check_asked(true);
        assert!(!client.wants_helo_check() && client.awaits_answers());
        client.set_helo_check(HeloCheck {
            ip: IP.parse().unwrap(),
            helo: "mx.example.net".into(),
            resolves_to_client: None,
        });
        assert!(!client.awaits_answers());
        // Busy: asked, but nothing is owed.
        let mut busy = ClientJudge::new(policy(""), &rules());
        busy.helo_check_asked(false);
        assert!(!busy.wants_helo_check() && !busy.awaits_answers());
        // A score request taken is owed too.
        busy.score_requested(now, &rules());
        assert!(busy.awaits_answers());
    }
}
