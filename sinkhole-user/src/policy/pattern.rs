//! The conditions a policy rule tests, parsed once (lowercased, prefixes as `IpNet`) so that
//! matching a recipient allocates nothing.
//!
//! Addresses compare ASCII-case-insensitively in the domain (RFC 5321 §2.4) *and* in the local
//! part. RFC 5321 lets a receiver treat local parts as case-sensitive, but no spamtrap operator
//! wants `Chris@` and `chris@` to be different addresses, and spammers vary case freely; so
//! local parts compare case-insensitively too (which makes `postmaster` case-insensitive, as
//! RFC 5321 requires). Quoted local parts are compared as written. A trailing dot on a domain
//! is ignored.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

use crate::prefix::parse_prefix;

/// `local@domain` split at the last `@`; no `@`: all local part, empty domain.
pub(crate) fn split_address(addr: &str) -> (&str, &str) {
    match addr.rfind('@') {
        Some(at) => (&addr[..at], trim_dot(&addr[at + 1..])),
        None => (addr, ""),
    }
}

fn trim_dot(domain: &str) -> &str {
    domain.strip_suffix('.').unwrap_or(domain)
}

fn eq_nocase(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `name` lies strictly below `suffix` (given with its leading dot, lowercase).
fn below(name: &str, dotted_suffix: &str) -> bool {
    let (name, suffix) = (name.as_bytes(), dotted_suffix.as_bytes());
    name.len() > suffix.len() && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// A DNS name as written in the policy file: lowercased, trailing dot removed, validated.
fn domain(text: &str) -> Result<String, String> {
    let name = trim_dot(text.trim());
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("`{text}` is not a valid domain name"))
    }
}

/// `local@domain`, lowercased, both parts non-empty.
fn address(text: &str) -> Result<(String, String), String> {
    let (local, dom) = split_address(text.trim());
    if !text.contains('@') || local.is_empty() || local.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(format!("`{text}` is not an address like user@example.org"));
    }
    Ok((local.to_ascii_lowercase(), domain(dom)?))
}

/// One address, as a per-address file names it and the address book keys it: `local@domain`,
/// lowercased, without a trailing dot (see the module's note on case).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mailbox(String);

impl Mailbox {
    /// The key of a recipient as the session hands it over (no validation: it matches a
    /// mailbox or not).
    pub fn key(rcpt: &str) -> Mailbox {
        let (local, dom) = split_address(rcpt);
        let mut key = String::with_capacity(local.len() + 1 + dom.len());
        key.push_str(local);
        key.push('@');
        key.push_str(dom);
        key.make_ascii_lowercase();
        Mailbox(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Mailbox {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (local, domain) = address(text)?;
        Ok(Mailbox(format!("{local}@{domain}")))
    }
}

/// Implements `Deserialize` through `FromStr`, so that errors carry the key and line.
macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(de::Error::custom)
            }
        }
    };
}

/// Which recipients a rule is about (`to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptPattern {
    /// `*`
    Any,
    /// `@example.org`: every address in the domain.
    Domain(String),
    /// `user@example.org`
    Address { local: String, domain: String },
}

impl RcptPattern {
    pub fn matches(&self, rcpt: &str) -> bool {
        let (local, dom) = split_address(rcpt);
        match self {
            RcptPattern::Any => true,
            RcptPattern::Domain(d) => eq_nocase(dom, d),
            RcptPattern::Address {
                local: l,
                domain: d,
            } => eq_nocase(local, l) && eq_nocase(dom, d),
        }
    }
}

impl FromStr for RcptPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            Ok(RcptPattern::Any)
        } else if let Some(d) = text.strip_prefix('@') {
            Ok(RcptPattern::Domain(domain(d)?))
        } else {
            let (local, domain) = address(text)
                .map_err(|e| format!("{e}; a recipient is an address, `@domain` or `*`"))?;
            Ok(RcptPattern::Address { local, domain })
        }
    }
}
deserialize_from_str!(RcptPattern);

/// Which envelope senders a rule is about (`from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderPattern {
    /// `<>`: the null sender (bounces).
    Null,
    /// `@example.com`
    Domain(String),
    /// `@.example.com`: any domain strictly below `example.com` (stored as `.example.com`).
    Below(String),
    /// `user@example.com`
    Address { local: String, domain: String },
    /// `news*@*.example`: a glob (`*`, `?`) over the whole address.
    Glob(Glob),
}

impl SenderPattern {
    /// `mail_from` is the reverse path without angle brackets; empty for the null sender.
    pub fn matches(&self, mail_from: &str) -> bool {
        if mail_from.is_empty() {
            return *self == SenderPattern::Null;
        }
        let (local, dom) = split_address(mail_from);
        match self {
            SenderPattern::Null => false,
            SenderPattern::Domain(d) => eq_nocase(dom, d),
            SenderPattern::Below(suffix) => below(dom, suffix),
            SenderPattern::Address {
                local: l,
                domain: d,
            } => eq_nocase(local, l) && eq_nocase(dom, d),
            SenderPattern::Glob(glob) => glob.matches(mail_from),
        }
    }
}

impl FromStr for SenderPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "<>" {
            Ok(SenderPattern::Null)
        } else if text.contains(['*', '?']) {
            if !text.contains('@') {
                return Err(format!(
                    "`{text}` is a glob without `@`; a sender glob covers the whole address, \
                     e.g. `*@*.example`"
                ));
            }
            text.parse().map(SenderPattern::Glob)
        } else if let Some(suffix) = text.strip_prefix("@.") {
            Ok(SenderPattern::Below(format!(".{}", domain(suffix)?)))
        } else if let Some(d) = text.strip_prefix('@') {
            Ok(SenderPattern::Domain(domain(d)?))
        } else {
            let (local, domain) = address(text).map_err(|e| {
                format!("{e}; a sender is an address, `@domain`, `@.domain-suffix`, a glob or `<>`")
            })?;
            Ok(SenderPattern::Address { local, domain })
        }
    }
}
deserialize_from_str!(SenderPattern);

/// As written in a file (lowercased).
impl std::fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderPattern::Null => f.write_str("<>"),
            SenderPattern::Domain(d) => write!(f, "@{d}"),
            SenderPattern::Below(suffix) => write!(f, "@{suffix}"),
            SenderPattern::Address { local, domain } => write!(f, "{local}@{domain}"),
            SenderPattern::Glob(glob) => glob.fmt(f),
        }
    }
}

/// Which clients a rule is about (`host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// An address or CIDR prefix.
    Net(IpNet),
    /// A reverse (PTR) name: `.example.net` is any name strictly below `example.net`,
    /// `mx.example.net` that name. Only a forward-confirmed name counts, unless written with
    /// `ptr:` in front (`ptr:.example.net`), which takes the PTR name as it comes: a client's
    /// owner controls his PTR records, so that form is for names nobody would fake.
    Rdns { name: String, confirmed: bool },
}

impl HostPattern {
    /// `ip` is canonical (IPv4-mapped IPv6 already turned into IPv4); `rdns` is the PTR name,
    /// `fcrdns` whether it is forward-confirmed.
    pub fn matches(&self, ip: IpAddr, rdns: Option<&str>, fcrdns: bool) -> bool {
        match self {
            HostPattern::Net(net) => net.contains(&ip),
            HostPattern::Rdns { name, confirmed } => {
                let Some(rdns) = rdns.filter(|_| fcrdns || !confirmed) else {
                    return false;
                };
                let rdns = trim_dot(rdns);
                match name.starts_with('.') {
                    true => below(rdns, name),
                    false => eq_nocase(rdns, name),
                }
            }
        }
    }

    /// Whether matching needs the client's reverse DNS (known once it is scored).
    pub fn uses_rdns(&self) -> bool {
        matches!(self, HostPattern::Rdns { .. })
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (confirmed, name) = match text.strip_prefix("ptr:") {
            Some(name) => (false, name.trim()),
            None => (true, text),
        };
        if let Some(suffix) = name.strip_prefix('.') {
            let name = format!(".{}", domain(suffix)?);
            return Ok(HostPattern::Rdns { name, confirmed });
        }
        let hint = "a host is an address, a CIDR prefix or a reverse name";
        // A DNS name has a letter in its last label: anything else is meant as an address.
        let looks_like_address = name.contains(['/', ':'])
            || name
                .rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if !looks_like_address {
            let name = domain(name)
                .ok()
                .filter(|name| name.contains('.'))
                .ok_or_else(|| {
                    format!("`{name}` is not a reverse name like mx.example.net; {hint}")
                })?;
            return Ok(HostPattern::Rdns { name, confirmed });
        }
        if !confirmed {
            return Err(format!("`{text}`: `ptr:` goes with a name, not an address"));
        }
        parse_prefix(name)
            .map(HostPattern::Net)
            .map_err(|e| format!("{e}; {hint}"))
    }
}
deserialize_from_str!(HostPattern);

/// As written in a file (lowercased).
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Net(net) => write!(f, "{net}"),
            HostPattern::Rdns { name, confirmed } => {
                let prefix = if *confirmed { "" } else { "ptr:" };
                write!(f, "{prefix}{name}")
            }
        }
    }
}

/// A HELO/EHLO glob: `*` any run, `?` one character; ASCII case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// Iterative wildcard matching with one backtrack point: O(pattern × text) at worst, no
    /// recursion, whatever the client sends.
    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti].to_ascii_lowercase()) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }
}

impl FromStr for Glob {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.chars().any(char::is_control) {
            return Err(format!("`{}` is not a HELO glob", text.escape_debug()));
        }
        Ok(Glob(text.to_ascii_lowercase()))
    }
}
deserialize_from_str!(Glob);

impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DNSBL zone name (`dnsbl`), lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone(String);

impl Zone {
    pub fn matches(&self, zone: &str) -> bool {
        eq_nocase(trim_dot(zone), &self.0)
    }
}

impl FromStr for Zone {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        domain(text).map(Zone)
    }
}
deserialize_from_str!(Zone);

/// A domain in `local_domains`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalDomain(String);

impl LocalDomain {
    pub fn contains(&self, addr: &str) -> bool {
        eq_nocase(split_address(addr).1, &self.0)
    }
}

impl FromStr for LocalDomain {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        domain(text.strip_prefix('@').unwrap_or(text)).map(LocalDomain)
    }
}
deserialize_from_str!(LocalDomain);
deserialize_from_str!(Mailbox);

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(p: &str) -> RcptPattern {
        p.parse().unwrap()
    }
    fn from(p: &str) -> SenderPattern {
        p.parse().unwrap()
    }
    fn host(p: &str) -> HostPattern {
        p.parse().unwrap()
    }
    fn glob(p: &str) -> Glob {
        p.parse().unwrap()
    }

    #[test]
    fn recipients_compare_case_insensitively() {
        assert!(rcpt("*").matches("anything@anywhere.example"));
        assert!(rcpt("Chris@Example.ORG").matches("chris@example.org"));
        assert!(rcpt("chris@example.org").matches("CHRIS@EXAMPLE.org."));
        assert!(!rcpt("chris@example.org").matches("chris@example.org.evil"));
        assert!(!rcpt("chris@example.org").matches("chri@example.org"));
        assert!(rcpt("postmaster@example.org").matches("PostMaster@example.org"));
        assert!(rcpt("@example.org").matches("x@EXAMPLE.org"));
        assert!(!rcpt("@example.org").matches("x@sub.example.org"));
        assert!(!rcpt("@example.org").matches("example.org"));
        // The last `@` splits: a quoted local part may contain one.
        assert!(rcpt("@example.org").matches("\"a@b\"@example.org"));
    }

    #[test]
    fn senders_null_domain_and_suffix() {
        assert!(from("<>").matches(""));
        assert!(!from("@example.com").matches(""));
        assert!(!from("<>").matches("a@example.com"));
        assert!(from("@bulk.example.com").matches("news@BULK.example.com"));
        assert!(!from("@bulk.example.com").matches("news@x.bulk.example.com"));
        assert!(from("@.example.com").matches("a@bulk.example.com"));
        assert!(from("@.example.com").matches("a@x.y.EXAMPLE.com"));
        assert!(!from("@.example.com").matches("a@example.com"));
        assert!(!from("@.example.com").matches("a@badexample.com"));
        assert!(from("Boss@Example.com").matches("boss@example.com"));
    }

    #[test]
    fn hosts_by_prefix_and_confirmed_name() {
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(host("203.0.113.0/24").matches(v4, None, false));
        assert!(host("203.0.113.9").matches(v4, None, false));
        assert!(!host("198.51.100.0/24").matches(v4, None, false));
        assert!(host("2001:db8::/32").matches("2001:db8::25".parse().unwrap(), None, false));
        assert!(!host("2001:db8::/32").matches(v4, None, false));
        assert!(host(".dyn.example.net").matches(v4, Some("a-1.DYN.example.net."), true));
        assert!(!host(".dyn.example.net").matches(v4, Some("dyn.example.net"), true));
        assert!(!host(".dyn.example.net").matches(v4, None, false));
        // A name, exactly; confirmed unless `ptr:` says otherwise.
        assert!(host("mx.bulk.example").matches(v4, Some("MX.bulk.example."), true));
        assert!(!host("mx.bulk.example").matches(v4, Some("mx.bulk.example"), false));
        assert!(!host("mx.bulk.example").matches(v4, Some("a.mx.bulk.example"), true));
        assert!(host("ptr:mx.bulk.example").matches(v4, Some("mx.bulk.example"), false));
        assert!(host("ptr:.example").matches(v4, Some("a.b.example"), false));
        assert!(!host("ptr:.example").matches(v4, None, false));
        assert!(host("mx.bulk.example").uses_rdns() && !host("192.0.2.0/24").uses_rdns());
    }

    #[test]
    fn sender_globs_cover_the_whole_address() {
        assert!(from("news*@*.example").matches("NEWS-1@mail.example"));
        assert!(!from("news*@*.example").matches("news@example"));
        assert!(from("*@*").matches("a@b"));
        assert!(!from("*@*").matches(""), "the null sender is only `<>`");
        assert!(
            "news*"
                .parse::<SenderPattern>()
                .unwrap_err()
                .contains("without `@`")
        );
    }

    #[test]
    fn globs() {
        assert!(glob("*").matches(""));
        assert!(glob("*.example.net").matches("MX1.example.NET"));
        assert!(!glob("*.example.net").matches("example.net"));
        assert!(glob("[*]").matches("[203.0.113.9]"));
        assert!(glob("h?lo").matches("helo"));
        assert!(!glob("h?lo").matches("hello"));
        assert!(glob("a*b*c").matches("aXXbYYbZc"));
        assert!(!glob("a*b*c").matches("aXXbYYbZ"));
        assert!(!glob("*a*a*a*a*a*a*b").matches(&"a".repeat(2000)));
    }

    #[test]
    fn bad_patterns_say_what_is_accepted() {
        assert!(
            "chris"
                .parse::<RcptPattern>()
                .unwrap_err()
                .contains("`@domain` or `*`"),
            "no domain"
        );
        assert!("@".parse::<RcptPattern>().is_err());
        assert!("@exa mple.org".parse::<SenderPattern>().is_err());
        assert!(
            "mx_example net"
                .parse::<HostPattern>()
                .unwrap_err()
                .contains("a reverse name")
        );
        assert!("203.0.113.7/24".parse::<HostPattern>().is_err());
        assert!("ptr:192.0.2.1".parse::<HostPattern>().is_err());
        assert!("192.0.2.300".parse::<HostPattern>().is_err());
        assert!("".parse::<Glob>().is_err());
    }
}
