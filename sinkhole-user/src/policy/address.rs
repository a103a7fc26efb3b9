//! One per-address file of `policy.addresses_dir`: the addresses it speaks for, their state,
//! what their owner blocks, the replies, and its `auto_close` rule; and its verdict on a
//! recipient.
//!
//! ```toml
//! addresses = ["chris@example.org", "c.smith@example.org"]
//! state = "closed"                           # open (default) | closed: every address
//! closed_at = "2026-03-01T10:00:00Z"         # written by `address close` and auto_close
//! closed_reason = "auto_close: 10 messages"
//! [closed."c.smith@example.org"]             # one address of several closed
//! at = "2026-03-01T10:00:00Z"
//! reason = "closed by `sinkhole address close` (uid 1000)"
//! [block]
//! hosts = ["203.0.113.0/24", ".dyn.example.net", "ptr:.cable.example"]
//! senders = ["@bulk.example.com", "*@*.biz", "<>"]
//! helo = ["*.spam.example"]
//! [messages]                                 # each optional: a 4xx or 5xx reply line
//! closed = "550 5.1.1 This address is closed"
//! host = "550 5.7.1 Not from your network"
//! sender = "550 5.7.1 Not from you"
//! helo = "550 5.7.1 Not from you"
//! [auto_close]                               # see `auto_close`; replaces the policy's default
//! messages = 10
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, de};

use super::Facts;
use super::auto_close::AutoClose;
use super::pattern::{Glob, HostPattern, Mailbox, SenderPattern};
use super::rule::reply_line;
use crate::config::{ConfigError, parse_toml};
use crate::smtp::Reply;

/// Largest per-address file read; a larger one is refused (its previous rules stay).
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Most addresses one file may list.
pub const MAX_ADDRESSES: usize = 1_000;
/// Most entries of one `block` list.
pub const MAX_BLOCKS: usize = 10_000;

/// Whether the address takes mail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Open,
    Closed,
}

impl State {
    pub const fn name(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Closed => "closed",
        }
    }
}

/// Why a file refused a recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    Closed,
    Host,
    Sender,
    Helo,
}

impl Refusal {
    /// The name in `[messages]`, reports and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::Closed => "closed",
            Refusal::Host => "host",
            Refusal::Sender => "sender",
            Refusal::Helo => "helo",
        }
    }
}

/// One address of several closed: `[closed."ADDRESS"]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClosedEntry {
    #[serde(default, deserialize_with = "timestamp")]
    pub at: Option<SystemTime>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Since when and why an address is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closure<'a> {
    pub at: Option<SystemTime>,
    pub reason: Option<&'a str>,
}

/// The `[block]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    #[serde(default, deserialize_with = "bounded")]
    pub hosts: Vec<HostPattern>,
    #[serde(default, deserialize_with = "bounded")]
    pub senders: Vec<SenderPattern>,
    #[serde(default, deserialize_with = "bounded")]
    pub helo: Vec<Glob>,
}

/// The `[messages]` table: the reply for each kind of refusal.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Messages {
    #[serde(default, deserialize_with = "refusal_reply")]
    pub closed: Option<Reply>,
    #[serde(default, deserialize_with = "refusal_reply")]
    pub host: Option<Reply>,
    #[serde(default, deserialize_with = "refusal_reply")]
    pub sender: Option<Reply>,
    #[serde(default, deserialize_with = "refusal_reply")]
    pub helo: Option<Reply>,
}

/// One parsed file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressFile {
    #[serde(deserialize_with = "addresses")]
    pub addresses: Vec<Mailbox>,
    #[serde(default)]
    pub state: State,
    #[serde(default, deserialize_with = "timestamp")]
    pub closed_at: Option<SystemTime>,
    #[serde(default)]
    pub closed_reason: Option<String>,
    /// Addresses of the file closed one by one (when the file lists several).
    #[serde(default)]
    pub closed: BTreeMap<Mailbox, ClosedEntry>,
    #[serde(default)]
    pub block: Block,
    #[serde(default)]
    pub messages: Messages,
    /// Its own rule; `None`: the policy file's default applies.
    #[serde(default)]
    pub auto_close: Option<AutoClose>,
}

impl AddressFile {
    /// Parses a file's text; `origin` names it in errors (`origin:line: key: why`).
    pub fn parse(text: &str, origin: &str) -> Result<AddressFile, ConfigError> {
        let file: AddressFile = parse_toml(text, origin)?;
        if let Some(stray) = file.closed.keys().find(|a| !file.addresses.contains(a)) {
            // The line that names it, other than `addresses = [...]`.
            let line = text
                .lines()
                .position(|l| {
                    let l = l.to_ascii_lowercase();
                    l.contains(stray.as_str()) && !l.trim_start().starts_with("addresses")
                })
                .map_or(1, |i| i + 1);
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                line,
                key: format!("closed.\"{stray}\""),
                message: format!("{stray} is not one of this file's `addresses`"),
            });
        }
        Ok(file)
    }

    /// Whether `address` (one of the file's) is closed: the whole file, or it alone.
    pub fn closure(&self, address: &Mailbox) -> Option<Closure<'_>> {
        if self.state == State::Closed {
            return Some(Closure {
                at: self.closed_at,
                reason: self.closed_reason.as_deref(),
            });
        }
        self.closed.get(address).map(|entry| Closure {
            at: entry.at,
            reason: entry.reason.as_deref(),
        })
    }

    /// Whether matching needs the client's reverse DNS (a name in `block.hosts`).
    pub fn uses_rdns(&self) -> bool {
        self.block.hosts.iter().any(HostPattern::uses_rdns)
    }

    /// The file's verdict on `rcpt` (one of its addresses): closed, then blocked by host,
    /// sender or HELO, in that order; `None`: it takes the mail.
    pub fn refuse(&self, rcpt: &str, facts: &Facts) -> Option<(Refusal, Reply)> {
        let ip: IpAddr = facts.client_ip.to_canonical();
        let block = &self.block;
        let refusal = if self.closure(&Mailbox::key(rcpt)).is_some() {
            Refusal::Closed
        } else if block
            .hosts
            .iter()
            .any(|h| h.matches(ip, facts.rdns, facts.fcrdns))
        {
            Refusal::Host
        } else if facts
            .mail_from
            .is_some_and(|from| block.senders.iter().any(|s| s.matches(from)))
        {
            Refusal::Sender
        } else if facts
            .helo
            .is_some_and(|helo| block.helo.iter().any(|g| g.matches(helo)))
        {
            Refusal::Helo
        } else {
            return None;
        };
        let own = match refusal {
            Refusal::Closed => &self.messages.closed,
            Refusal::Host => &self.messages.host,
            Refusal::Sender => &self.messages.sender,
            Refusal::Helo => &self.messages.helo,
        };
        let reply = own.clone().unwrap_or_else(|| default_reply(refusal, rcpt));
        Some((refusal, reply))
    }
}

/// `550 5.1.1 <rcpt>: Recipient address rejected: this address is closed`, and the like.
fn default_reply(refusal: Refusal, rcpt: &str) -> Reply {
    let (status, why) = match refusal {
        Refusal::Closed => ("5.1.1", "this address is closed"),
        Refusal::Host => ("5.7.1", "its owner does not take mail from your host"),
        Refusal::Sender => ("5.7.1", "its owner does not take mail from this sender"),
        Refusal::Helo => ("5.7.1", "its owner does not take mail from your host"),
    };
    let rcpt: String = rcpt
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Reply {
        code: 550,
        text: format!("{status} <{rcpt}>: Recipient address rejected: {why}"),
    }
}

/// A reply line of a refusal: 4xx or 5xx, not 421 (a file refuses a recipient, it does not
/// end the session). A line without a code is taken as the text of a `550 5.7.1`.
pub fn refusal_reply_line(line: &str) -> Result<Reply, String> {
    let line = line.trim();
    let has_code = line.len() >= 3 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit);
    let reply = if has_code {
        reply_line(line)?
    } else {
        reply_line(&format!("550 5.7.1 {line}"))?
    };
    if !matches!(reply.code / 100, 4 | 5) || reply.code == 421 {
        return Err(format!(
            "`{}` must be a 4xx or 5xx reply other than 421",
            line.escape_debug()
        ));
    }
    Ok(reply)
}

fn refusal_reply<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reply>, D::Error> {
    let line = String::deserialize(d)?;
    refusal_reply_line(&line)
        .map(Some)
        .map_err(de::Error::custom)
}

/// `addresses`: at least one, at most [`MAX_ADDRESSES`].
fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mailbox>, D::Error> {
    let list = Vec::<Mailbox>::deserialize(d)?;
    if list.is_empty() {
        return Err(de::Error::custom("names no address; list at least one"));
    }
    if list.len() > MAX_ADDRESSES {
        return Err(de::Error::custom(format!(
            "lists {} addresses; at most {MAX_ADDRESSES}",
            list.len()
        )));
    }
    Ok(list)
}

/// A `block` list of at most [`MAX_BLOCKS`] entries.
fn bounded<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let list = Vec::<T>::deserialize(d)?;
    if list.len() > MAX_BLOCKS {
        return Err(de::Error::custom(format!(
            "{} entries; at most {MAX_BLOCKS}",
            list.len()
        )));
    }
    Ok(list)
}

/// An RFC 3339 time, as `closed_at` is written (`2026-03-01T10:00:00Z`).
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(text.trim())
        .map(Some)
        .map_err(|_| de::Error::custom(format!("`{text}` is not a time like 2026-03-01T10:00:00Z")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::To;

    const CHRIS: &str = r#"
addresses = ["Chris@Example.org", "c.smith@example.org"]
[block]
hosts = ["203.0.113.0/24", ".dyn.example.net"]
senders = ["@bulk.example.com", "*@*.biz"]
helo = ["*.spam.example"]
[messages]
sender = "Not from you, thanks"
"#;

    fn facts<'a>(ip: &str, from: &'a str, helo: &'a str) -> Facts<'a> {
        Facts {
            client_ip: ip.parse().unwrap(),
            rdns: Some("h1.dyn.example.net"),
            fcrdns: false,
            helo: Some(helo),
            mail_from: Some(from),
            to: To::One("chris@example.org"),
            dnsbl_zones: &[],
            score: None,
            signatures: &[],
        }
    }

    #[test]
    fn a_file_refuses_by_state_then_host_sender_and_helo() {
        let file = AddressFile::parse(CHRIS, "chris.toml").unwrap();
        assert_eq!(file.addresses[0].as_str(), "chris@example.org");
        let refuse = |f: &Facts| {
            file.refuse("Chris@example.org", f)
                .map(|(why, r)| (why, r.code, r.text))
        };
        assert_eq!(
            refuse(&facts("198.51.100.1", "a@ok.example", "mx.ok.example")),
            None
        );
        assert_eq!(
            refuse(&facts("203.0.113.9", "a@ok.example", "mx.ok.example")),
            Some((
                Refusal::Host,
                550,
                "5.7.1 <Chris@example.org>: Recipient address rejected: its owner does not take mail from your host".into()
            ))
        );
        assert_eq!(
            refuse(&facts("198.51.100.1", "deals@shop.biz", "mx.ok.example")),
            Some((Refusal::Sender, 550, "5.7.1 Not from you, thanks".into()))
        );
        assert_eq!(
            refuse(&facts("198.51.100.1", "a@ok.example", "x.spam.example")).map(|r| r.0),
            Some(Refusal::Helo)
        );
        // The reverse name counts only forward-confirmed.
        let mut confirmed = facts("198.51.100.1", "a@ok.example", "mx.ok.example");
        confirmed.fcrdns = true;
        assert_eq!(refuse(&confirmed).map(|r| r.0), Some(Refusal::Host));

        let closed = AddressFile::parse(
            "addresses = [\"x@example.org\"]\nstate = \"closed\"\nclosed_at = \"2026-03-01T10:00:00Z\"\n",
            "x.toml",
        )
        .unwrap();
        let (why, reply) = closed
            .refuse("x@example.org", &facts("198.51.100.1", "", "h"))
            .unwrap();
        assert_eq!(why, Refusal::Closed);
        assert_eq!(
            reply.text,
            "5.1.1 <x@example.org>: Recipient address rejected: this address is closed"
        );
        assert!(closed.closed_at.is_some());

        // One address of two closed: the other takes mail.
        let one = AddressFile::parse(
            "addresses = [\"a@example.org\", \"b@example.org\"]\n[closed.\"A@example.org\"]\nreason = \"spammed\"\n",
            "ab.toml",
        )
        .unwrap();
        let f = facts("198.51.100.1", "", "h");
        assert_eq!(one.refuse("a@example.org", &f).unwrap().0, Refusal::Closed);
        assert_eq!(one.refuse("b@example.org", &f), None);
        let a: Mailbox = "a@example.org".parse().unwrap();
        assert_eq!(one.closure(&a).unwrap().reason, Some("spammed"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = |text: &str| AddressFile::parse(text, "f.toml").unwrap_err().to_string();
        assert!(
            err("").starts_with("f.toml:1: (top level): missing field `addresses`"),
            "{}",
            err("")
        );
        assert!(err("addresses = []").starts_with("f.toml:1: addresses: names no address"));
        assert!(
            err("addresses = [\"chris\"]")
                .starts_with("f.toml:1: addresses[0]: `chris` is not an address"),
            "{}",
            err("addresses = [\"chris\"]")
        );
        assert!(
            err("addresses = [\"a@b.example\"]\nstate = \"gone\"\n")
                .starts_with("f.toml:2: state: unknown variant `gone`")
        );
        assert!(
            err("addresses = [\"a@b.example\"]\n[block]\nhosts = [\"203.0.113.7/24\"]\n")
                .starts_with("f.toml:3: block.hosts[0]: ")
        );
        assert!(
            err("addresses = [\"a@b.example\"]\n[messages]\nclosed = \"421 4.7.0 bye\"\n")
                .starts_with("f.toml:3: messages.closed: `421 4.7.0 bye` must be a 4xx or 5xx reply other than 421")
        );
        assert!(
            err("addresses = [\"a@b.example\"]\nclosed_at = \"yesterday\"\n")
                .starts_with("f.toml:2: closed_at: `yesterday` is not a time")
        );
        assert!(
            err("addresses = [\"a@b.example\"]\n[auto_close]\nmessages = 0\n")
                .starts_with("f.toml:3: auto_close.messages: 0 is outside")
        );
        assert_eq!(
            err("addresses = [\"a@b.example\"]\n[closed]\n\"c@b.example\" = { reason = \"x\" }\n"),
            "f.toml:3: closed.\"c@b.example\": c@b.example is not one of this file's `addresses`"
        );
        let many = format!(
            "addresses = [{}]",
            (0..=MAX_ADDRESSES)
                .map(|i| format!("\"a{i}@b.example\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(err(&many).contains("at most 1000"));
    }

    #[test]
    fn messages_take_a_bare_text_or_a_reply_line() {
        assert_eq!(
            refusal_reply_line("Closed, sorry").unwrap(),
            Reply {
                code: 550,
                text: "5.7.1 Closed, sorry".into()
            }
        );
        assert_eq!(refusal_reply_line("450 4.2.1 later").unwrap().code, 450);
        assert!(refusal_reply_line("250 ok").is_err());
        assert!(refusal_reply_line("550 a\nb").is_err());
    }
}
