//! Policy: the rules of `policy.file`, decided at every SMTP phase.
//!
//! ```toml
//! local_domains = ["example.org"]     # MAIL FROM in these domains: refused (at MAIL by default)
//! [[rule]]                            # per phase, in file order: the first match wins
//! phase = "rcpt"                      # connect | helo | mail | rcpt (default) | data
//! to = "chris@example.org"            # address, "@domain" or "*" (or a list of them)
//! from = ["@bulk.example.com"]        # address, "@domain", "@.domain-suffix", glob, "<>"
//! host = ["203.0.113.0/24"]           # address, CIDR, reverse name (see `pattern`)
//! helo = ["*.example.net"]            # glob: * and ?
//! dnsbl = ["zen.example"]             # zone that listed the client
//! score = 3                           # DNSBL score at least this
//! signature = ["helo-bare-ip"]        # signature the session showed so far
//! action = "reject"                   # accept | reject | tempfail | stall | block | disconnect
//! message = "550 5.7.1 Not from you"  # optional; its class must fit the action
//! ```
//! Each condition is a value or a list; a list matches if any entry does, a rule matches if
//! every condition it names does (see [`pattern`] for how addresses compare). A condition must
//! be known at the rule's phase: `helo` from `helo` on, `from` from `mail` on, `to` from `rcpt`
//! on (at `data`, any accepted recipient).
//!
//! A sender in a local domain is refused (550, signature `mail-from-local-domain`) at
//! `policy.local_domains_phase` (`mail` or `rcpt`) unless the first matching rule of that
//! phase already refuses; an `accept` rule does not let it through. The null sender is never
//! refused for being null.
//!
//! At `RCPT TO` the recipient's own file in `policy.addresses_dir` ([`book`]) decides after the
//! rules' refusals and before their accepts ([`Policy::decide_recipient`]). The file's
//! `[auto_close]` table, or else the policy file's, says when an address closes itself
//! ([`auto_close`]).

pub mod address;
pub mod address_edit;
pub mod address_io;
pub mod auto_close;
pub mod book;
pub mod keeper;
pub mod pattern;
mod rule;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{ConfigError, LocalDomainsPhase, PolicyConfig, parse_toml};
use crate::signature::Signature;
use crate::smtp::Reply;
use auto_close::AutoClose;
use book::{AddressBook, AddressRefusal};
use pattern::{LocalDomain, Mailbox};
pub use rule::{Action, default_reply, reply_line};
use rule::{Rule, rule_reply};

/// Where in the session a rule acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// At accept, before the banner.
    Connect,
    /// At HELO/EHLO.
    Helo,
    /// At `MAIL FROM`.
    Mail,
    /// At each `RCPT TO`.
    #[default]
    Rcpt,
    /// At the end of the message data, before its `250`.
    Data,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Connect,
        Phase::Helo,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Data,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Helo => "helo",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
        }
    }
}

impl From<LocalDomainsPhase> for Phase {
    fn from(phase: LocalDomainsPhase) -> Phase {
        match phase {
            LocalDomainsPhase::Mail => Phase::Mail,
            LocalDomainsPhase::Rcpt => Phase::Rcpt,
        }
    }
}

/// The recipients a decision is about.
#[derive(Clone, Copy, Debug)]
pub enum To<'a> {
    /// Before `RCPT TO`.
    None,
    /// At `RCPT TO`: the recipient without angle brackets.
    One(&'a str),
    /// At the end of data: the accepted recipients.
    All(&'a [String]),
}

impl<'a> To<'a> {
    /// Whether some recipient passes `test`.
    pub fn any(self, test: impl Fn(&str) -> bool) -> bool {
        match self {
            To::None => false,
            To::One(rcpt) => test(rcpt),
            To::All(rcpts) => rcpts.iter().any(|r| test(r)),
        }
    }

    /// The first recipient ("" when there is none), for replies.
    pub fn first(self) -> &'a str {
        match self {
            To::None => "",
            To::One(rcpt) => rcpt,
            To::All(rcpts) => rcpts.first().map_or("", String::as_str),
        }
    }
}

/// What the session knows when it asks for a decision. Borrowed, so that a decision allocates
/// nothing but its reply.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub client_ip: IpAddr,
    /// The reverse (PTR) name, if any.
    pub rdns: Option<&'a str>,
    /// Whether that name is forward-confirmed.
    pub fcrdns: bool,
    pub helo: Option<&'a str>,
    /// The reverse path without angle brackets (empty for the null sender), from `mail` on.
    pub mail_from: Option<&'a str>,
    pub to: To<'a>,
    /// Zones that listed the client.
    pub dnsbl_zones: &'a [String],
    /// The DNSBL score, when scoring has answered.
    pub score: Option<i32>,
    /// Signatures the session has shown so far.
    pub signatures: &'a [Signature],
}

/// What decided a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The rule at this index of the file (counting all phases, in file order).
    Rule(usize),
    /// `local_domains`.
    LocalDomains,
    /// The recipient's own file in `policy.addresses_dir` refused it.
    Address(AddressRefusal),
    /// No rule matched: accepted.
    Default,
}

impl Source {
    /// How reports and block reasons name it: `rule[3]`, `local_domains`,
    /// `address:chris.toml:sender`, `default`.
    pub fn name(&self) -> String {
        match self {
            Source::Rule(i) => format!("rule[{i}]"),
            Source::LocalDomains => "local_domains".into(),
            Source::Address(refusal) => format!("address:{}:{}", refusal.file, refusal.why.name()),
            Source::Default => "default".into(),
        }
    }
}

/// The decision for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// The reply to send (for `stall`: the 4xx to send once the hold is over; for `accept`
    /// outside `rcpt`, a 2xx the session replaces with its own reply).
    pub reply: Reply,
    pub source: Source,
    /// `mail-from-local-domain` when the sender is in a local domain (whatever decided).
    pub signature: Option<Signature>,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    local_domains: Vec<LocalDomain>,
    #[serde(default)]
    rule: Vec<Rule>,
    /// The default for per-address files without an `[auto_close]` table of their own.
    #[serde(default)]
    auto_close: Option<AutoClose>,
}

/// A parsed policy file. The default policy has no rules and no local domains: accept all.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    local_domains: Vec<LocalDomain>,
    /// Where `local_domains` refuses (`policy.local_domains_phase`).
    local_domains_phase: Phase,
    rules: Vec<Rule>,
    /// Per phase (index: `Phase as usize`), whether a rule of it looks at what scoring finds;
    /// worked out once, asked at every decision.
    uses_score: [bool; 5],
    /// `[auto_close]`: the default for per-address files.
    auto_close: Option<AutoClose>,
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

    /// Parses a policy; `origin` names it in errors (`origin:line: key: message`). Its
    /// `local_domains` refuse at MAIL until [`Policy::with_local_domains_phase`] says otherwise.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, ConfigError> {
        let mut file: PolicyFile = parse_toml(text, origin)?;
        let invalid = |i: usize, key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            line: rule_key_line(text, i, key),
            key: format!("rule[{i}]{}{key}", if key.is_empty() { "" } else { "." }),
            message,
        };
        for (i, rule) in file.rule.iter_mut().enumerate() {
            if let Some((key, needs)) = rule.unknown_condition() {
                return Err(invalid(
                    i,
                    key,
                    format!(
                        "not known yet at phase `{}` (it is from phase `{}` on)",
                        rule.phase.name(),
                        needs.name()
                    ),
                ));
            }
            if rule.phase == Phase::Rcpt && rule.to.is_none() {
                return Err(invalid(
                    i,
                    "",
                    "missing field `to` (a rule at phase `rcpt` names its recipients; `*` for all)"
                        .into(),
                ));
            }
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
                .and_then(|line| rule_reply(line, rule.action, rule.phase))
                .map_err(|message_error| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    line: line_of(text, message.span().start),
                    key: format!("rule[{i}].message"),
                    message: message_error,
                })?;
            rule.reply = Some(reply);
        }
        let mut uses_score = [false; 5];
        for rule in &file.rule {
            uses_score[rule.phase as usize] |= rule.uses_score();
        }
        Ok(Policy {
            local_domains: file.local_domains,
            local_domains_phase: Phase::Mail,
            rules: file.rule,
            uses_score,
            auto_close: file.auto_close,
        })
    }

    /// The policy with `local_domains` refusing at `phase` (`policy.local_domains_phase`).
    pub fn with_local_domains_phase(mut self, phase: Phase) -> Policy {
        self.local_domains_phase = phase;
        self
    }

    /// How many rules there are (for the reload log line).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether a decision at `phase` must wait for the score: some rule of that phase looks at
    /// what scoring finds (a reverse-DNS `host`, `dnsbl`, `score` or `signature` condition).
    pub fn uses_score(&self, phase: Phase) -> bool {
        self.uses_score[phase as usize]
    }

    /// The `[auto_close]` rule of a per-address file: its own, else this policy's default.
    pub fn auto_close<'a>(&'a self, own: Option<&'a AutoClose>) -> Option<&'a AutoClose> {
        own.or(self.auto_close.as_ref())
            .filter(|rule| !rule.is_empty())
    }

    /// The `auto_close` rule in force for `rcpt` when it is open and has a file in `book`: its
    /// mailbox, its file, and the rule.
    pub fn auto_close_for<'a>(
        &'a self,
        book: &'a AddressBook,
        rcpt: &str,
    ) -> Option<(Mailbox, &'a Arc<book::Entry>, &'a AutoClose)> {
        let key = Mailbox::key(rcpt);
        let entry = book
            .lookup(rcpt)
            .filter(|entry| entry.file.closure(&key).is_none())?;
        let rule = self.auto_close(entry.file.auto_close.as_ref())?;
        Some((key, entry, rule))
    }

    /// The sender is in one of `local_domains` (never true for the null sender).
    pub fn is_local_sender(&self, mail_from: &str) -> bool {
        !mail_from.is_empty() && self.local_domains.iter().any(|d| d.contains(mail_from))
    }

    /// Decides one command at `phase`: the first matching rule of that phase, else accept; at
    /// `policy.local_domains_phase` a sender in a local domain is refused unless that rule
    /// refuses anyway.
    pub fn decide(&self, phase: Phase, facts: &Facts) -> Verdict {
        let ip = facts.client_ip.to_canonical();
        let local_sender = phase == self.local_domains_phase
            && facts.mail_from.is_some_and(|m| self.is_local_sender(m));
        let signature = local_sender.then_some(Signature::MailFromLocalDomain);
        let hit = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.phase == phase && r.matches(facts, ip));
        match hit {
            Some((i, rule)) if rule.action.refuses() || !local_sender => Verdict {
                action: rule.action,
                reply: match &rule.reply {
                    Some(reply) => reply.clone(),
                    None => default_reply(phase, rule.action, facts),
                },
                source: Source::Rule(i),
                signature,
            },
            _ if local_sender => Verdict {
                action: Action::Reject,
                reply: local_sender_reply(),
                source: Source::LocalDomains,
                signature,
            },
            _ => Verdict {
                action: Action::Accept,
                reply: default_reply(phase, Action::Accept, facts),
                source: Source::Default,
                signature,
            },
        }
    }
}

impl Policy {
    /// Decides one recipient: the rules' refusal (of phase `rcpt`), else the recipient's own
    /// file's refusal, else the rules' accept.
    pub fn decide_recipient(&self, book: &AddressBook, facts: &Facts) -> Verdict {
        let verdict = self.decide(Phase::Rcpt, facts);
        if verdict.action.refuses() {
            return verdict;
        }
        match book.refuse(facts.to.first(), facts) {
            Some(refusal) => Verdict {
                action: match refusal.reply.code / 100 {
                    4 => Action::Tempfail,
                    _ => Action::Reject,
                },
                reply: refusal.reply.clone(),
                source: Source::Address(refusal),
                signature: verdict.signature,
            },
            None => verdict,
        }
    }
}

fn local_sender_reply() -> Reply {
    Reply {
        code: 550,
        text: "5.7.1 Sender address in a local domain is not accepted from outside".into(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of `key = ...` in the `i`th `[[rule]]` table of `text` (`key` empty: its header),
/// or the header's line, or 1.
fn rule_key_line(text: &str, i: usize, key: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let Some(header) = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[rule]]")
        .nth(i)
        .map(|(n, _)| n)
    else {
        return 1;
    };
    if key.is_empty() {
        return header + 1;
    }
    lines[header + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['))
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(header + 1, |n| header + n + 2)
}

/// The policy in force, swapped whole on reload. A session takes [`PolicyStore::current`] at
/// connect and keeps deciding with it, so a reload never changes the rules mid-session.
#[derive(Debug)]
pub struct PolicyStore {
    /// `None`: no policy file configured (accept all, reload does nothing).
    path: Option<PathBuf>,
    local_domains_phase: Phase,
    current: Arc<Policy>,
}

impl PolicyStore {
    /// Loads `policy.file` (empty path: the default policy).
    pub fn open(config: &PolicyConfig) -> Result<PolicyStore, ConfigError> {
        let path = (!config.file.as_os_str().is_empty()).then(|| config.file.clone());
        let local_domains_phase = config.local_domains_phase.into();
        let current = match &path {
            Some(p) => Policy::load(p)?,
            None => Policy::default(),
        };
        Ok(PolicyStore {
            path,
            local_domains_phase,
            current: Arc::new(current.with_local_domains_phase(local_domains_phase)),
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
            let policy = Policy::load(path)?.with_local_domains_phase(self.local_domains_phase);
            self.current = Arc::new(policy);
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

[[rule]]
phase = "connect"
host = "192.0.2.66"
action = "disconnect"

[[rule]]
phase = "helo"
helo = "*.spam.example"
action = "reject"

[[rule]]
phase = "mail"
from = "*@*.biz"
host = ["ptr:.dsl.example", "mx.bulk.example", "0.0.0.0/0", "::/0"]
action = "tempfail"

[[rule]]
phase = "data"
to = "@traps.example.org"
signature = "pregreet"
action = "reject"
message = "554 5.7.1 No"
"#;

#[cfg(test)]
mod tests;
