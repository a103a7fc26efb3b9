//! IP prefixes as operators write them: `203.0.113.7`, `203.0.113.0/24`, `2001:db8::/32`.
//!
//! One parser serves the config (`xdp.allow`), the CLI (`block`, `unblock`) and the policy file,
//! so every place accepts and refuses exactly the same spellings.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a prefix did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("`{0}` is not an IP address or CIDR prefix")]
    Syntax(String),
    #[error("`{0}` has host bits set after the prefix length (did you mean `{1}`?)")]
    HostBits(String, IpNet),
}

/// Parses an address (a /32 or /128) or a CIDR prefix. Host bits after the prefix length are
/// refused rather than silently cleared: `203.0.113.7/24` is almost always a typo.
pub fn parse_prefix(text: &str) -> Result<IpNet, PrefixError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| PrefixError::Syntax(text.to_owned()))?;
    if net.trunc() != net {
        return Err(PrefixError::HostBits(text.to_owned(), net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_addresses_and_prefixes() {
        assert_eq!(
            parse_prefix("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            parse_prefix(" 198.51.100.0/24 ").unwrap().to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            parse_prefix("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_prefix("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn refuses_garbage_and_host_bits() {
        assert!(matches!(
            parse_prefix("203.0.113.300"),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(
            parse_prefix("198.51.100.0/33"),
            Err(PrefixError::Syntax(_))
        ));
        assert!(matches!(parse_prefix(""), Err(PrefixError::Syntax(_))));
        let err = parse_prefix("203.0.113.7/24").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`203.0.113.7/24` has host bits set after the prefix length (did you mean `203.0.113.0/24`?)"
        );
    }
}
