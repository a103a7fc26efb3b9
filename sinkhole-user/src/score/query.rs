//! DNS names the scorer asks for: DNSBL queries and PTR names are both the client address in
//! reverse order under a suffix (RFC 5782 §2.1 and §2.4, RFC 1035 §3.5, RFC 3596 §2.5).

use std::fmt::Write;
use std::net::IpAddr;

/// The reverse name of `ip` under `suffix`, fully qualified: `4.3.2.1.SUFFIX.` for 1.2.3.4,
/// 32 nibble labels, least significant first, for an IPv6 address.
pub fn reverse_name(ip: IpAddr, suffix: &str) -> String {
    // 32 nibbles and their dots is the longest prefix.
    let mut name = String::with_capacity(64 + suffix.len() + 1);
    match ip {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let _ = write!(name, "{octet}.");
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(suffix);
    name.push('.');
    name
}

/// The PTR name of `ip`: under `in-addr.arpa` or `ip6.arpa`.
pub fn ptr_name(ip: IpAddr) -> String {
    let suffix = match ip {
        IpAddr::V4(_) => "in-addr.arpa",
        IpAddr::V6(_) => "ip6.arpa",
    };
    reverse_name(ip, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_reversed_octets() {
        assert_eq!(
            reverse_name("192.0.2.99".parse().unwrap(), "zen.example"),
            "99.2.0.192.zen.example."
        );
        assert_eq!(
            ptr_name("127.0.0.2".parse().unwrap()),
            "2.0.0.127.in-addr.arpa."
        );
    }

    #[test]
    fn ipv6_is_reversed_nibbles() {
        // The example of RFC 5782 §2.4.
        assert_eq!(
            reverse_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
        assert_eq!(
            ptr_name("::1".parse().unwrap()),
            format!("1.{}ip6.arpa.", "0.".repeat(31))
        );
    }
}
