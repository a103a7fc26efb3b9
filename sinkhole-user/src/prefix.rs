//! IP prefixes as operators write them: `203.0.113.7`, `203.0.113.0/24`, `2001:db8::/32`.
//!
//! One parser serves the config (`xdp.allow`), the CLI (`block`, `unblock`) and the policy file,
//! so every place accepts and refuses exactly the same spellings. [`check_width`] is the rule
//! for what an operator may block without `--force`.

use std::net::IpAddr;

use ipnet::IpNet;

/// The widest prefixes `block` and `import` take without `--force`, IPv4 and IPv6: a wider one
/// (`0.0.0.0/0`, a /7) drops a good part of the Internet and is almost always a slip.
pub const WIDEST_V4: u8 = 8;
pub const WIDEST_V6: u8 = 16;

/// Why a prefix did not parse, or is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("`{0}` is not an IP address or CIDR prefix")]
    Syntax(String),
    #[error("`{0}` has host bits set after the prefix length (did you mean `{1}`?)")]
    HostBits(String, IpNet),
    #[error("{0} is wider than /{1}; --force blocks it anyway")]
    TooWide(IpNet, u8),
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

/// Refuses a prefix wider than [`WIDEST_V4`] (IPv4) or [`WIDEST_V6`] (IPv6), `0.0.0.0/0` and
/// `::/0` included: what `block` and `import` check unless `--force`.
pub fn check_width(prefix: IpNet) -> Result<(), PrefixError> {
    let widest = match prefix {
        IpNet::V4(_) => WIDEST_V4,
        IpNet::V6(_) => WIDEST_V6,
    };
    if prefix.prefix_len() < widest {
        return Err(PrefixError::TooWide(prefix, widest));
    }
    Ok(())
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

    #[test]
    fn refuses_prefixes_wider_than_8_or_16() {
        for wide in ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2000::/15"] {
            let prefix = parse_prefix(wide).unwrap();
            assert!(
                matches!(check_width(prefix), Err(PrefixError::TooWide(p, _)) if p == prefix),
                "{wide}"
            );
        }
        for narrow in ["10.0.0.0/8", "203.0.113.7", "2001::/16", "2001:db8::1"] {
            assert_eq!(
                check_width(parse_prefix(narrow).unwrap()),
                Ok(()),
                "{narrow}"
            );
        }
        assert_eq!(
            check_width(parse_prefix("0.0.0.0/0").unwrap())
                .unwrap_err()
                .to_string(),
            "0.0.0.0/0 is wider than /8; --force blocks it anyway"
        );
    }
}
