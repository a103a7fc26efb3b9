//! Campaigns: the signature set of each session, the `[campaign] block_signatures` check, what
//! a campaign's software fixes per session (`features`), grouping sessions into campaigns
//! (`grouping`, `similarity`), and the `sinkhole campaigns` report over the session log.

pub mod alert;
pub mod features;
pub mod grouping;
pub mod html;
pub mod log;
pub mod report;
pub mod similarity;
pub mod uribl;
pub mod urls;

use crate::config::CampaignConfig;
use crate::signature::Signature;

/// A session's signatures: what the SMTP session recorded (`pregreet`, `helo-bare-ip`, ...),
/// what the policy found (`mail-from-local-domain`, from [`crate::policy::Verdict::signature`])
/// and what scoring found (`no-rdns`, `dnsbl-listed`, ...), merged, in report order, each once.
pub fn signatures(
    protocol: &[Signature],
    policy: &[Signature],
    score: &[Signature],
) -> Vec<Signature> {
    let mut all: Vec<Signature> = [protocol, policy, score].concat();
    all.sort_unstable();
    all.dedup();
    all
}

/// The first of `config.block_signatures` that `session` shows completely, as a block reason
/// like `campaign:mail-from-eq-rcpt-to+mail-from-local-domain`.
pub fn matches_block_set(session: &[Signature], config: &CampaignConfig) -> Option<String> {
    config
        .block_signatures
        .iter()
        // An empty set would match every session; it blocks nothing instead.
        .filter(|set| !set.is_empty())
        .find(|set| set.iter().all(|s| session.contains(s)))
        .map(|set| {
            let names: Vec<&str> = set.iter().map(|s| s.as_str()).collect();
            format!("campaign:{}", names.join("+"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Signature::*;

    #[test]
    fn signatures_merge_sorted_and_deduplicated() {
        assert_eq!(
            signatures(
                &[Pregreet, MailFromEqRcptTo, Pregreet],
                &[MailFromLocalDomain, MailFromLocalDomain],
                &[DnsblListed, NoRdns]
            ),
            vec![
                MailFromEqRcptTo,
                MailFromLocalDomain,
                NoRdns,
                Pregreet,
                DnsblListed
            ]
        );
        assert!(signatures(&[], &[], &[]).is_empty());
    }

    #[test]
    fn block_sets_need_every_member() {
        let config = CampaignConfig {
            block_signatures: vec![
                vec![],
                vec![MailFromEqRcptTo, MailFromLocalDomain],
                vec![Pregreet],
            ],
            ..CampaignConfig::default()
        };
        assert_eq!(
            matches_block_set(&[MailFromEqRcptTo, MailFromLocalDomain, NoRdns], &config).as_deref(),
            Some("campaign:mail-from-eq-rcpt-to+mail-from-local-domain")
        );
        assert_eq!(
            matches_block_set(&[MailFromEqRcptTo, NoRdns], &config),
            None
        );
        assert_eq!(
            matches_block_set(&[Pregreet], &config).as_deref(),
            Some("campaign:pregreet")
        );
        assert_eq!(matches_block_set(&[], &config), None);
        assert_eq!(
            matches_block_set(&[Pregreet], &CampaignConfig::default()),
            None
        );
    }
}
