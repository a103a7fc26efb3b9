//! Per-address policy: the rules of `policy.file`, decided per recipient at `RCPT TO`.
//!
//! ```toml
//! local_domains = ["example.org"]     # MAIL FROM in these domains: refused at RCPT
//! [[rule]]                            # first match wins; no match: accept
//! to = "chris@example.org"            # address, "@domain" or "*" (or a list of them)
//! from = ["@bulk.example.com"]        # address, "@domain", "@.domain-suffix", "<>"
//! host = ["203.0.113.0/24"]           # address, CIDR, ".rdns.suffix" (forward-confirmed name)
//! helo = ["*.example.net"]            # glob: * and ?
//! dnsbl = ["zen.example"]             # zone that listed the client
//! score = 3                           # DNSBL score at least this
//! signature = ["helo-bare-ip"]        # signature the session showed so far
//! action = "reject"                   # accept | reject | tempfail | stall | block
//! message = "550 5.7.1 Not from you"  # optional; its class must fit the action
//! ```
//! Each condition is a value or a list; a list matches if any entry does, a rule matches if
//! every condition it names does (see [`pattern`] for how addresses compare).
//!
//! A sender in a local domain is refused (550, signature `mail-from-local-domain`) unless the
//! first matching rule already refuses; an `accept` rule does not let it through. The null
//! sender is never refused for being null.

pub mod pattern;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, de};

use crate::config::{ConfigError, PolicyConfig, parse_toml};
use crate::signature::Signature;
use crate::smtp::Reply;
use pattern::{Glob, HostPattern, LocalDomain, RcptPattern, SenderPattern, Zone};

/// What to do with a recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    /// Refuse with 5xx.
    Reject,
    /// Refuse with 4xx now.
    Tempfail,
    /// Hold the reply for `policy.stall` (the loop does the holding), then 4xx.
    Stall,
    /// Refuse with 5xx and put the client into the drop map for `dnsbl.block_ttl`.
    Block,
}

impl Action {
    /// The reply class (first digit) this action answers with.
    const fn class(self) -> u16 {
        match self {
            Action::Accept => 2,
            Action::Tempfail | Action::Stall => 4,
            Action::Reject | Action::Block => 5,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Tempfail => "tempfail",
            Action::Stall => "stall",
            Action::Block => "block",
        }
    }
}

/// Parses a rule's own reply line, `"550 5.1.1 This address is closed"`, for `action`.
fn rule_reply(line: &str, action: Action) -> Result<Reply, String> {
    let bad = |why: String| format!("`{}` {why}", line.escape_debug());
    let b = line.as_bytes();
    let code_ok =
        b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) && (b.len() == 3 || b[3] == b' ');
    if !code_ok {
        return Err(bad("must start with a reply code like `550 `".into()));
    }
    if line.chars().any(char::is_control) {
        return Err(bad("must be one line without control characters".into()));
    }
    // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with CRLF.
    if line.len() > 510 {
        return Err(bad("is longer than 510 characters".into()));
    }
    let code: u16 = line[..3].parse().expect("three digits");
    if code / 100 != action.class() {
        return Err(bad(format!(
            "does not fit action `{}`, which needs a {}xx reply",
            action.name(),
            action.class()
        )));
    }
    let text = line.get(4..).unwrap_or("").to_owned();
    Ok(Reply { code, text })
}

/// One `[[rule]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(deserialize_with = "one_or_more")]
    to: Vec<RcptPattern>,
    #[serde(default, deserialize_with = "one_or_more")]
    from: Vec<SenderPattern>,
    #[serde(default, deserialize_with = "one_or_more")]
    host: Vec<HostPattern>,
    #[serde(default, deserialize_with = "one_or_more")]
    helo: Vec<Glob>,
    #[serde(default, deserialize_with = "one_or_more")]
    dnsbl: Vec<Zone>,
    #[serde(default)]
    score: Option<i32>,
    #[serde(default, deserialize_with = "one_or_more")]
    signature: Vec<Signature>,
    action: Action,
    /// Checked against `action` once the rule is read (see [`rule_reply`]); any value is taken
    /// here, so that every error about it is reported under `rule[N].message`.
    #[serde(default)]
    message: Option<toml::Spanned<toml::Value>>,
    #[serde(skip)]
    reply: Option<Reply>,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    local_domains: Vec<LocalDomain>,
    #[serde(default)]
    rule: Vec<Rule>,
}

/// A value or a non-empty list of values (an empty list would silently never match).
fn one_or_more<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Visitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a value or a non-empty list of values")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(de::value::StrDeserializer::new(v)).map(|t| vec![t])
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            if items.is_empty() {
                return Err(de::Error::custom(
                    "an empty list never matches; leave the key out instead",
                ));
            }
            Ok(items)
        }
    }

    d.deserialize_any(Visitor(std::marker::PhantomData))
}

/// What the session knows about a recipient when it asks for a verdict. Borrowed, so that a
/// decision allocates nothing but its reply.
#[derive(Clone, Copy, Debug)]
pub struct RcptFacts<'a> {
    pub client_ip: IpAddr,
    /// The reverse name, only when forward-confirmed.
    pub fcrdns_name: Option<&'a str>,
    pub helo: Option<&'a str>,
    /// The reverse path without angle brackets; empty for the null sender.
    pub mail_from: &'a str,
    /// The recipient without angle brackets.
    pub rcpt: &'a str,
    /// Zones that listed the client.
    pub dnsbl_zones: &'a [String],
    /// The DNSBL score, when scoring has answered.
    pub score: Option<i32>,
    /// Signatures the session has shown so far.
    pub signatures: &'a [Signature],
}

/// The decision for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// The reply to send (for `stall`: the 451 to send once the hold is over).
    pub reply: Reply,
    /// Index of the rule that decided (in file order), for the log; `None`: no rule did.
    pub rule: Option<usize>,
    /// `mail-from-local-domain` when the sender is in a local domain (whatever decided).
    pub signature: Option<Signature>,
}

impl Rule {
    fn matches(&self, f: &RcptFacts, ip: IpAddr) -> bool {
        fn any<T>(list: &[T], test: impl Fn(&T) -> bool) -> bool {
            list.is_empty() || list.iter().any(test)
        }
        self.to.iter().any(|p| p.matches(f.rcpt))
            && any(&self.from, |p| p.matches(f.mail_from))
            && any(&self.host, |p| p.matches(ip, f.fcrdns_name))
            && any(&self.helo, |g| f.helo.is_some_and(|h| g.matches(h)))
            && any(&self.dnsbl, |z| f.dnsbl_zones.iter().any(|l| z.matches(l)))
            && self
                .score
                .is_none_or(|min| f.score.is_some_and(|s| s >= min))
            && any(&self.signature, |s| f.signatures.contains(s))
    }
}

/// A parsed policy file. The default policy has no rules and no local domains: accept all.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    local_domains: Vec<LocalDomain>,
    rules: Vec<Rule>,
    /// See [`Policy::uses_score`]; worked out once, asked at every accept.
    uses_score: bool,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        Policy::parse(&text, &origin)
    }

    /// Parses a policy; `origin` names it in errors (`origin:line: key: message`).
    pub fn parse(text: &str, origin: &str) -> Result<Policy, ConfigError> {
        let mut file: PolicyFile = parse_toml(text, origin)?;
        for (i, rule) in file.rule.iter_mut().enumerate() {
            let Some(message) = &rule.message else {
                continue;
            };
            let reply_line = message.get_ref().as_str().ok_or_else(|| {
                format!(
                    "expected a string like \"550 5.7.1 ...\", found {}",
                    message.get_ref().type_str()
                )
            });
            let reply = reply_line
                .and_then(|reply_line| rule_reply(reply_line, rule.action))
                .map_err(|message_error| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    line: text.as_bytes()[..message.span().start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1,
                    key: format!("rule[{i}].message"),
                    message: message_error,
                })?;
            rule.reply = Some(reply);
        }
        let uses_score = file.rule.iter().any(|r| {
            !r.dnsbl.is_empty()
                || r.score.is_some()
                || !r.signature.is_empty()
                || r.host.iter().any(|h| matches!(h, HostPattern::Rdns(_)))
        });
        Ok(Policy {
            local_domains: file.local_domains,
            rules: file.rule,
            uses_score,
        })
    }

    /// How many rules there are (for the reload log line).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether some rule looks at what scoring finds (a `.rdns` host, `dnsbl`, `score` or
    /// `signature` condition), so that a recipient verdict must wait for the score.
    pub fn uses_score(&self) -> bool {
        self.uses_score
    }

    /// The sender is in one of `local_domains` (never true for the null sender).
    pub fn is_local_sender(&self, mail_from: &str) -> bool {
        !mail_from.is_empty() && self.local_domains.iter().any(|d| d.contains(mail_from))
    }

    /// Decides one recipient: the first matching rule, else accept; a sender in a local
    /// domain is refused unless that rule refuses anyway.
    pub fn decide(&self, facts: &RcptFacts) -> Verdict {
        let ip = facts.client_ip.to_canonical();
        let local_sender = self.is_local_sender(facts.mail_from);
        let signature = local_sender.then_some(Signature::MailFromLocalDomain);
        let hit = self
            .rules
            .iter()
            .position(|r| r.matches(facts, ip))
            .map(|i| (i, &self.rules[i]));
        match hit {
            Some((_, rule)) if rule.action == Action::Accept && local_sender => Verdict {
                action: Action::Reject,
                reply: local_sender_reply(),
                rule: None,
                signature,
            },
            Some((i, rule)) => Verdict {
                action: rule.action,
                reply: match &rule.reply {
                    Some(reply) => reply.clone(),
                    None => default_reply(rule.action, facts.rcpt),
                },
                rule: Some(i),
                signature,
            },
            None if local_sender => Verdict {
                action: Action::Reject,
                reply: local_sender_reply(),
                rule: None,
                signature,
            },
            None => Verdict {
                action: Action::Accept,
                reply: default_reply(Action::Accept, facts.rcpt),
                rule: None,
                signature,
            },
        }
    }
}

fn local_sender_reply() -> Reply {
    Reply {
        code: 550,
        text: "5.7.1 Sender address in a local domain is not accepted from outside".into(),
    }
}

/// The reply for an action without a rule message, e.g.
/// `550 5.1.1 <chris@example.org>: Recipient address rejected`.
fn default_reply(action: Action, rcpt: &str) -> Reply {
    let (code, status, why) = match action {
        Action::Accept => {
            return Reply {
                code: 250,
                text: "2.1.5 Ok".into(),
            };
        }
        Action::Reject => (550, "5.1.1", "Recipient address rejected"),
        Action::Block => (550, "5.7.1", "Recipient address rejected: access denied"),
        Action::Tempfail | Action::Stall => {
            (451, "4.7.1", "Recipient address rejected: try again later")
        }
    };
    let mut text = String::with_capacity(rcpt.len() + 48);
    let _ = write!(text, "{status} <");
    // The session only hands over valid paths, but a reply must never carry a line break.
    text.extend(rcpt.chars().map(|c| if c.is_control() { '?' } else { c }));
    let _ = write!(text, ">: {why}");
    Reply { code, text }
}

/// The policy in force, swapped whole on reload. A session takes [`PolicyStore::current`] at
/// connect and keeps deciding with it, so a reload never changes the rules mid-session.
#[derive(Debug)]
pub struct PolicyStore {
    /// `None`: no policy file configured (accept all, reload does nothing).
    path: Option<PathBuf>,
    current: Arc<Policy>,
}

impl PolicyStore {
    /// Loads `policy.file` (empty path: the default policy).
    pub fn open(config: &PolicyConfig) -> Result<PolicyStore, ConfigError> {
        let path = (!config.file.as_os_str().is_empty()).then(|| config.file.clone());
        let current = match &path {
            Some(p) => Policy::load(p)?,
            None => Policy::default(),
        };
        Ok(PolicyStore {
            path,
            current: Arc::new(current),
        })
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current)
    }

    /// Re-reads the file (SIGHUP). The new file is parsed completely first; on error the old
    /// policy stays in force and the error is returned for the log.
    pub fn reload(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.path {
            self.current = Arc::new(Policy::load(path)?);
        }
        Ok(())
    }
}

/// A good policy file with rules of every action and conditions of every kind: the fixture of
/// the unit tests, and of the integration test of `sinkhole check-config`.
#[doc(hidden)]
pub const EXAMPLE_FILE: &str = r#"
local_domains = ["example.org", "@Example.NET"]

[[rule]]
to = "old-shop@example.org"
action = "reject"
message = "550 5.1.1 This address is closed"

[[rule]]
to = "chris@example.org"
from = ["@bulk.example.com", "@.mailer.example", "<>"]
host = ["203.0.113.0/24", "2001:db8::/32", ".dyn.example.net"]
action = "reject"

[[rule]]
to = ["trap@example.org", "@traps.example.org"]
helo = "*.bad.example"
action = "block"

[[rule]]
to = "*"
dnsbl = ["zen.example", "b.example"]
score = 2
action = "tempfail"

[[rule]]
to = "slow@example.org"
signature = ["helo-bare-ip", "pregreet"]
action = "stall"

[[rule]]
to = "*"
action = "accept"
message = "250 2.1.5 Welcome"
"#;

#[cfg(test)]
mod tests;
