//! Campaign signatures: short, stable names for things a session did. The names are contract
//! (`sessions.jsonl`, `sinkhole campaigns`, policy `signature = ...`, `campaign.block_signatures`).

use std::fmt;
use std::str::FromStr;

/// One signature. Order is the order in which they are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signature {
    /// A transaction's `MAIL FROM` equals one of its `RCPT TO` addresses.
    MailFromEqRcptTo,
    /// `MAIL FROM` in one of the policy's `local_domains`.
    MailFromLocalDomain,
    /// `EHLO [203.0.113.7]`: an address literal.
    HeloIpLiteral,
    /// `EHLO 203.0.113.7`: a bare address, not even bracketed.
    HeloBareIp,
    /// The HELO name is the client's reverse DNS name.
    HeloIsRdns,
    /// The HELO name is a domain that does not resolve to the client.
    HeloMismatch,
    /// No PTR record for the client.
    NoRdns,
    /// A PTR name whose forward lookup does not contain the client address.
    RdnsNoForward,
    /// The client talked before the banner.
    Pregreet,
    /// A pipelining client sent commands after one that was refused and depended on it.
    PipelinedRunAhead,
    /// A command out of sequence (answered 503).
    OutOfSequence,
    /// At least one DNSBL zone listed the client.
    DnsblListed,
}

impl Signature {
    /// Every signature, in report order.
    pub const ALL: [Signature; 12] = [
        Signature::MailFromEqRcptTo,
        Signature::MailFromLocalDomain,
        Signature::HeloIpLiteral,
        Signature::HeloBareIp,
        Signature::HeloIsRdns,
        Signature::HeloMismatch,
        Signature::NoRdns,
        Signature::RdnsNoForward,
        Signature::Pregreet,
        Signature::PipelinedRunAhead,
        Signature::OutOfSequence,
        Signature::DnsblListed,
    ];

    /// The contract name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signature::MailFromEqRcptTo => "mail-from-eq-rcpt-to",
            Signature::MailFromLocalDomain => "mail-from-local-domain",
            Signature::HeloIpLiteral => "helo-ip-literal",
            Signature::HeloBareIp => "helo-bare-ip",
            Signature::HeloIsRdns => "helo-is-rdns",
            Signature::HeloMismatch => "helo-mismatch",
            Signature::NoRdns => "no-rdns",
            Signature::RdnsNoForward => "rdns-no-forward",
            Signature::Pregreet => "pregreet",
            Signature::PipelinedRunAhead => "pipelined-run-ahead",
            Signature::OutOfSequence => "out-of-sequence",
            Signature::DnsblListed => "dnsbl-listed",
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a known signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signature `{0}` (known: {known})", known = Signature::ALL.map(Signature::as_str).join(", "))]
pub struct UnknownSignature(pub String);

impl FromStr for Signature {
    type Err = UnknownSignature;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Signature::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownSignature(name.to_owned()))
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Signature::ALL {
            assert_eq!(s.as_str().parse::<Signature>(), Ok(s));
        }
        assert!("helo-ip".parse::<Signature>().is_err());
    }
}
