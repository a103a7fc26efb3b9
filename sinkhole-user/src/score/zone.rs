//! What a DNSBL zone's answer means: which return codes count as a listing under the zone's
//! `codes` filter, and which are the zone refusing the query.

use std::net::Ipv4Addr;

use crate::config::CodeRange;

/// A zone's verdict on one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneResult {
    /// Listed, with the return codes that passed the filter (never empty).
    Listed(Vec<Ipv4Addr>),
    /// Not listed: NXDOMAIN, no A records, or only answers the filter ignores.
    Clean,
    /// The zone refused the query (an answer in 127.255.255.0/24, e.g. Spamhaus' "public
    /// resolver" 127.255.255.254); never a listing.
    Refused(Ipv4Addr),
}

/// 127.255.255.0/24: DNSBL operators' "query error" codes.
pub fn is_error_code(answer: Ipv4Addr) -> bool {
    let [a, b, c, _] = answer.octets();
    (a, b, c) == (127, 255, 255)
}

/// Classifies the A records of a zone's answer. Only 127.0.0.0/8 answers can list (anything
/// else is a broken or hijacking resolver); with `codes` empty every such answer counts.
pub fn classify(codes: &[CodeRange], answers: &[Ipv4Addr]) -> ZoneResult {
    if let Some(&error) = answers.iter().find(|a| is_error_code(**a)) {
        return ZoneResult::Refused(error);
    }
    let mut listed: Vec<Ipv4Addr> = answers
        .iter()
        .copied()
        .filter(|a| a.is_loopback() && (codes.is_empty() || codes.iter().any(|r| r.contains(*a))))
        .collect();
    if listed.is_empty() {
        return ZoneResult::Clean;
    }
    listed.sort_unstable();
    listed.dedup();
    ZoneResult::Listed(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ranges(specs: &[&str]) -> Vec<CodeRange> {
        specs.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn empty_filter_takes_any_loopback_answer() {
        assert_eq!(
            classify(&[], &[ip("127.0.0.4")]),
            ZoneResult::Listed(vec![ip("127.0.0.4")])
        );
        assert_eq!(
            classify(&[], &[ip("127.1.2.3")]),
            ZoneResult::Listed(vec![ip("127.1.2.3")])
        );
        assert_eq!(classify(&[], &[]), ZoneResult::Clean);
    }

    #[test]
    fn answers_outside_loopback_never_list() {
        assert_eq!(classify(&[], &[ip("198.51.100.7")]), ZoneResult::Clean);
    }

    #[test]
    fn filter_keeps_only_codes_in_range() {
        let sbl_xbl = ranges(&["127.0.0.2-127.0.0.7"]);
        assert_eq!(classify(&sbl_xbl, &[ip("127.0.0.10")]), ZoneResult::Clean);
        assert_eq!(
            classify(
                &sbl_xbl,
                &[ip("127.0.0.10"), ip("127.0.0.4"), ip("127.0.0.2")]
            ),
            ZoneResult::Listed(vec![ip("127.0.0.2"), ip("127.0.0.4")])
        );
        let two = ranges(&["127.0.0.2", "127.0.0.10-127.0.0.11"]);
        assert_eq!(
            classify(&two, &[ip("127.0.0.11"), ip("127.0.0.3")]),
            ZoneResult::Listed(vec![ip("127.0.0.11")])
        );
    }

    #[test]
    fn error_range_is_a_refusal_even_without_filter() {
        assert_eq!(
            classify(&[], &[ip("127.255.255.254")]),
            ZoneResult::Refused(ip("127.255.255.254"))
        );
        // A filter that would cover it changes nothing.
        assert_eq!(
            classify(
                &ranges(&["127.0.0.0-127.255.255.255"]),
                &[ip("127.255.255.252")]
            ),
            ZoneResult::Refused(ip("127.255.255.252"))
        );
        // Nor does a listing code beside it.
        assert!(matches!(
            classify(&[], &[ip("127.0.0.2"), ip("127.255.255.255")]),
            ZoneResult::Refused(_)
        ));
    }
}
