//! One `[[rule]]` of the policy file: its phase, its conditions, its action and its reply, read
//! and checked once, then matched against what a session knows at that phase.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, de};

use super::pattern::{Glob, HostPattern, RcptPattern, SenderPattern, Zone};
use super::{Facts, Phase};
use crate::signature::Signature;
use crate::smtp::Reply;

/// What to do with the command a rule matched.
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
    /// Answer 421 and close the connection.
    Disconnect,
}

impl Action {
    /// The reply class (first digit) this action answers with.
    pub const fn class(self) -> u16 {
        match self {
            Action::Accept => 2,
            Action::Tempfail | Action::Stall | Action::Disconnect => 4,
            Action::Reject | Action::Block => 5,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Tempfail => "tempfail",
            Action::Stall => "stall",
            Action::Block => "block",
            Action::Disconnect => "disconnect",
        }
    }

    /// Whether the command is refused (anything but `accept`).
    pub const fn refuses(self) -> bool {
        !matches!(self, Action::Accept)
    }
}

/// Parses a rule's own reply line, `"550 5.1.1 This address is closed"`, for `action` at
/// `phase`.
pub fn rule_reply(line: &str, action: Action, phase: Phase) -> Result<Reply, String> {
    let reply = reply_line(line)?;
    if reply.code / 100 != action.class() {
        return Err(format!(
            "`{}` does not fit action `{}`, which needs a {}xx reply",
            line.escape_debug(),
            action.name(),
            action.class()
        ));
    }
    let must_close =
        action == Action::Disconnect || (phase == Phase::Connect && action.class() == 4);
    if must_close && reply.code != 421 {
        return Err(format!(
            "`{}`: action `{}` at phase `{}` closes the connection, which needs a 421 reply",
            line.escape_debug(),
            action.name(),
            phase.name()
        ));
    }
    if action == Action::Accept && phase != Phase::Rcpt {
        return Err(format!(
            "an `accept` rule at phase `{}` answers with the normal reply; leave `message` out",
            phase.name()
        ));
    }
    Ok(reply)
}

/// A reply line (`"550 5.7.1 text"`), or why it is not one.
pub fn reply_line(line: &str) -> Result<Reply, String> {
    let bad = |why: &str| format!("`{}` {why}", line.escape_debug());
    let b = line.as_bytes();
    let code_ok =
        b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) && (b.len() == 3 || b[3] == b' ');
    if !code_ok {
        return Err(bad("must start with a reply code like `550 `"));
    }
    if line.chars().any(char::is_control) {
        return Err(bad("must be one line without control characters"));
    }
    // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with CRLF.
    if line.len() > 510 {
        return Err(bad("is longer than 510 characters"));
    }
    let code: u16 = line[..3].parse().map_err(|_| bad("has no reply code"))?;
    let text = line.get(4..).unwrap_or("").to_owned();
    Ok(Reply { code, text })
}

/// One `[[rule]]` as written. Checked against its phase in [`Rule::check`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, deserialize_with = "one_or_more_opt")]
    pub to: Option<Vec<RcptPattern>>,
    #[serde(default, deserialize_with = "one_or_more")]
    pub from: Vec<SenderPattern>,
    #[serde(default, deserialize_with = "one_or_more")]
    pub host: Vec<HostPattern>,
    #[serde(default, deserialize_with = "one_or_more")]
    pub helo: Vec<Glob>,
    #[serde(default, deserialize_with = "one_or_more")]
    pub dnsbl: Vec<Zone>,
    #[serde(default)]
    pub score: Option<i32>,
    #[serde(default, deserialize_with = "one_or_more")]
    pub signature: Vec<Signature>,
    pub action: Action,
    /// Checked against `action` once the rule is read (see [`rule_reply`]); any value is taken
    /// here, so that every error about it is reported under `rule[N].message`.
    #[serde(default)]
    pub message: Option<toml::Spanned<toml::Value>>,
    #[serde(skip)]
    pub reply: Option<Reply>,
}

impl Rule {
    /// A condition this rule names that is not known yet at its phase: `(key, phase it needs)`.
    pub fn unknown_condition(&self) -> Option<(&'static str, Phase)> {
        let named = [
            ("to", self.to.is_some(), Phase::Rcpt),
            ("from", !self.from.is_empty(), Phase::Mail),
            ("helo", !self.helo.is_empty(), Phase::Helo),
        ];
        named
            .into_iter()
            .find(|&(_, set, needs)| set && self.phase < needs)
            .map(|(key, _, needs)| (key, needs))
    }

    /// Whether the rule looks at what scoring finds (a reverse-DNS host, `dnsbl`, `score` or
    /// `signature`), so that its phase waits for the score.
    pub fn uses_score(&self) -> bool {
        !self.dnsbl.is_empty()
            || self.score.is_some()
            || !self.signature.is_empty()
            || self.host.iter().any(HostPattern::uses_rdns)
    }

    /// Whether every condition holds for `facts` (`ip` canonical).
    pub fn matches(&self, f: &Facts, ip: IpAddr) -> bool {
        fn any<T>(list: &[T], test: impl Fn(&T) -> bool) -> bool {
            list.is_empty() || list.iter().any(test)
        }
        self.to
            .as_deref()
            .is_none_or(|to| f.to.any(|rcpt| to.iter().any(|p| p.matches(rcpt))))
            && any(&self.from, |p| f.mail_from.is_some_and(|m| p.matches(m)))
            && any(&self.host, |p| p.matches(ip, f.rdns, f.fcrdns))
            && any(&self.helo, |g| f.helo.is_some_and(|h| g.matches(h)))
            && any(&self.dnsbl, |z| f.dnsbl_zones.iter().any(|l| z.matches(l)))
            && self
                .score
                .is_none_or(|min| f.score.is_some_and(|s| s >= min))
            && any(&self.signature, |s| f.signatures.contains(s))
    }
}

/// The reply of `action` at `phase` when its rule has no message of its own, e.g.
/// `550 5.1.1 <chris@example.org>: Recipient address rejected`.
pub fn default_reply(phase: Phase, action: Action, facts: &Facts) -> Reply {
    let reply = |code: u16, text: String| Reply { code, text };
    if action == Action::Disconnect || (phase == Phase::Connect && action.class() == 4) {
        return reply(
            421,
            "4.7.0 Service not available, closing transmission channel".into(),
        );
    }
    let (subject, what) = match phase {
        Phase::Connect => {
            return match action {
                Action::Accept => reply(220, "2.0.0 Ok".into()),
                _ => reply(554, "5.7.1 Service unavailable; access denied".into()),
            };
        }
        Phase::Helo => (facts.helo.unwrap_or(""), "Helo command rejected"),
        Phase::Mail => (facts.mail_from.unwrap_or(""), "Sender address rejected"),
        Phase::Rcpt => (facts.to.first(), "Recipient address rejected"),
        Phase::Data => ("", "Message rejected"),
    };
    let (code, status, why) = match action {
        Action::Accept if phase == Phase::Rcpt => return reply(250, "2.1.5 Ok".into()),
        Action::Accept => return reply(250, "2.0.0 Ok".into()),
        Action::Reject if phase == Phase::Rcpt => (550, "5.1.1", ""),
        Action::Reject => (550, "5.7.1", ": access denied"),
        Action::Block => (550, "5.7.1", ": access denied"),
        Action::Tempfail | Action::Stall | Action::Disconnect => {
            (451, "4.7.1", ": try again later")
        }
    };
    let mut text = String::with_capacity(subject.len() + 64);
    let _ = write!(text, "{status} ");
    if phase != Phase::Data {
        text.push('<');
        // The session only hands over valid paths, but a reply must never carry a line break.
        text.extend(
            subject
                .chars()
                .map(|c| if c.is_control() { '?' } else { c }),
        );
        text.push_str(">: ");
    }
    let _ = write!(text, "{what}{why}");
    reply(code, text)
}

/// A value or a non-empty list of values (an empty list would silently never match).
pub fn one_or_more<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
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

/// [`one_or_more`] for a key whose absence means something (`to`).
fn one_or_more_opt<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    one_or_more(d).map(Some)
}
