//! Sessions into campaigns, deterministically and explained: sessions are joined by the
//! *features* they share, and a campaign is a set of sessions so joined, with at least
//! [`MIN_SESSIONS`] of them.
//!
//! The features that join sessions:
//! - the same [`Key`], when it is distinctive (a campaign behaviour: see [`super::features`]);
//! - the same set of URL hosts in their messages;
//! - near-identical message bodies (simhashes within [`similarity::NEAR`] bits of the first
//!   body seen like them).
//!
//! Joining is transitive (a union-find over the features), so a campaign's variants that never
//! reached DATA join its others by key, and its parts sent from two stacks join through the
//! messages they share. What varies per bot (HELO, reverse DNS, DNSBL listings, whether the
//! trap let it reach DATA) is never a feature. The report reads the log twice: the first pass
//! files every session's features ([`Grouping::add`]), the second finds each session's
//! campaign ([`Grouping::campaign_of`]) and adds it up; memory follows the distinct features,
//! at most [`MAX_FEATURES`], not the sessions.

use std::collections::HashMap;

use super::features::Key;
use super::similarity::{self, NearIndex};

/// Sessions a campaign holds at least; fewer make no campaign.
pub const MIN_SESSIONS: u64 = 2;
/// Distinct features filed; a session's features past it are not (counted in
/// [`Grouping::refused`]).
pub const MAX_FEATURES: usize = 200_000;

/// What a session brings to the grouping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    pub key: Key,
    /// The hosts of the URLs in its messages, sorted, space-separated; `None` without any.
    pub url_hosts: Option<String>,
    /// The simhash of its first message body with enough words.
    pub body: Option<u64>,
}

/// One feature that joined sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feature {
    Key(Key),
    UrlHosts(String),
    Body(u64),
}

impl Feature {
    /// `key`, `url-hosts` or `body`.
    pub fn kind(&self) -> &'static str {
        match self {
            Feature::Key(_) => "key",
            Feature::UrlHosts(_) => "url-hosts",
            Feature::Body(_) => "body",
        }
    }

    /// Its short stable name: the key's id, `u-` and 8 hex digits of the host list, `b-` and
    /// the simhash in hex.
    pub fn id(&self) -> String {
        match self {
            Feature::Key(key) => key.id(),
            Feature::UrlHosts(hosts) => format!("u-{:08x}", fnv32(hosts)),
            Feature::Body(hash) => format!("b-{hash:016x}"),
        }
    }

    /// What it is, for people: the key's text, the hosts, `simhash 0123...`.
    pub fn value(&self) -> String {
        match self {
            Feature::Key(key) => key.to_string(),
            Feature::UrlHosts(hosts) => hosts.clone(),
            Feature::Body(hash) => format!(
                "simhash {hash:016x} (bodies within {} bits)",
                similarity::NEAR
            ),
        }
    }
}

fn fnv32(text: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 32) as u32 ^ hash as u32
}

/// A filed feature.
#[derive(Debug)]
pub struct Node {
    pub feature: Feature,
    /// Sessions that showed it.
    pub sessions: u64,
    /// Sessions it was the first feature of (each session counts once this way).
    anchored: u64,
}

/// The features of a log's sessions, joined.
#[derive(Debug, Default)]
pub struct Grouping {
    nodes: Vec<Node>,
    parent: Vec<u32>,
    keys: HashMap<Key, u32>,
    url_hosts: HashMap<String, u32>,
    bodies: NearIndex,
    /// Sessions in each joined set, by its root (after [`Grouping::finish`]).
    sizes: HashMap<u32, u64>,
    /// Sessions with a feature not filed because [`MAX_FEATURES`] were.
    pub refused: u64,
}

impl Grouping {
    /// First pass: files the features of one session and joins them.
    pub fn add(&mut self, features: &Features) {
        let mut ids = [None; 3];
        let mut refused = false;
        if features.key.is_distinctive() {
            ids[0] = self.key_node(&features.key, &mut refused);
        }
        if let Some(hosts) = &features.url_hosts {
            ids[1] = self.url_node(hosts, &mut refused);
        }
        if let Some(hash) = features.body {
            ids[2] = self.body_node(hash, &mut refused);
        }
        self.refused += u64::from(refused);
        let mut ids = ids.into_iter().flatten();
        let Some(first) = ids.next() else {
            return;
        };
        self.nodes[first as usize].sessions += 1;
        self.nodes[first as usize].anchored += 1;
        for id in ids {
            self.nodes[id as usize].sessions += 1;
            self.union(first, id);
        }
    }

    /// Between the passes: settles every set's root and size.
    pub fn finish(&mut self) {
        for i in 0..self.parent.len() as u32 {
            let root = self.find(i);
            self.parent[i as usize] = root;
            *self.sizes.entry(root).or_default() += self.nodes[i as usize].anchored;
        }
    }

    /// Second pass: the campaign (the root of its set) of a session with `features`, when its
    /// set holds at least [`MIN_SESSIONS`]; `None` for a session in no campaign.
    pub fn campaign_of(&self, features: &Features) -> Option<u32> {
        let id = features
            .key
            .is_distinctive()
            .then(|| self.keys.get(&features.key).copied())
            .flatten()
            .or_else(|| {
                features
                    .url_hosts
                    .as_ref()
                    .and_then(|h| self.url_hosts.get(h).copied())
            })
            .or_else(|| features.body.and_then(|h| self.bodies.find(h)));
        let root = self.parent[id? as usize];
        (self.sizes.get(&root).copied().unwrap_or(0) >= MIN_SESSIONS).then_some(root)
    }

    /// The features of every campaign, by its root.
    pub fn members(&self) -> HashMap<u32, Vec<&Node>> {
        let mut members: HashMap<u32, Vec<&Node>> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let root = self.parent[i];
            if self.sizes.get(&root).copied().unwrap_or(0) >= MIN_SESSIONS {
                members.entry(root).or_default().push(node);
            }
        }
        members
    }

    fn key_node(&mut self, key: &Key, refused: &mut bool) -> Option<u32> {
        if let Some(&id) = self.keys.get(key) {
            return Some(id);
        }
        let id = self.new_node(Feature::Key(key.clone()), refused)?;
        self.keys.insert(key.clone(), id);
        Some(id)
    }

    fn url_node(&mut self, hosts: &str, refused: &mut bool) -> Option<u32> {
        if let Some(&id) = self.url_hosts.get(hosts) {
            return Some(id);
        }
        let id = self.new_node(Feature::UrlHosts(hosts.to_owned()), refused)?;
        self.url_hosts.insert(hosts.to_owned(), id);
        Some(id)
    }

    fn body_node(&mut self, hash: u64, refused: &mut bool) -> Option<u32> {
        if let Some(id) = self.bodies.find(hash) {
            return Some(id);
        }
        let id = self.new_node(Feature::Body(hash), refused)?;
        self.bodies.insert(hash, id);
        Some(id)
    }

    fn new_node(&mut self, feature: Feature, refused: &mut bool) -> Option<u32> {
        if self.nodes.len() >= MAX_FEATURES {
            *refused = true;
            return None;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            feature,
            sessions: 0,
            anchored: 0,
        });
        self.parent.push(id);
        Some(id)
    }

    fn find(&mut self, mut i: u32) -> u32 {
        let mut root = i;
        while self.parent[root as usize] != root {
            root = self.parent[root as usize];
        }
        while self.parent[i as usize] != root {
            let next = self.parent[i as usize];
            self.parent[i as usize] = root;
            i = next;
        }
        root
    }

    /// Joins two sets; the one with the lower root keeps it (so roots follow first sight).
    fn union(&mut self, a: u32, b: u32) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            let (keep, join) = if a < b { (a, b) } else { (b, a) };
            self.parent[join as usize] = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::features::Shape;
    use crate::signature::Signature::{self, *};

    fn features(
        signatures: &[Signature],
        from: &str,
        hosts: Option<&str>,
        body: Option<u64>,
    ) -> Features {
        Features {
            key: Key::of(Shape {
                signatures: signatures.iter().copied(),
                pipelined: true,
                transaction: Some((from, ["trap@example.org"])),
                syn: None,
            }),
            url_hosts: hosts.map(str::to_owned),
            body,
        }
    }

    #[test]
    fn keys_and_content_join_sessions_and_singletons_are_no_campaign() {
        let eq_refused = features(
            &[MailFromEqRcptTo, DnsblListed, PipelinedRunAhead],
            "trap@example.org",
            None,
            None,
        );
        let eq_data = features(
            &[MailFromEqRcptTo, HeloIpLiteral],
            "trap@example.org",
            Some("pharma.example"),
            Some(0xff00),
        );
        // No campaign behaviour, but the same message as the campaign's DATA variant.
        let plain_same_body = features(&[], "x@y.example", None, Some(0xff01));
        let plain_alone = features(
            &[],
            "x@y.example",
            Some("news.example"),
            Some(0x1234_5678_9abc_def0),
        );
        let no_features = features(&[NoRdns], "x@y.example", None, None);
        let mut g = Grouping::default();
        for f in [
            &eq_refused,
            &eq_data,
            &plain_same_body,
            &plain_alone,
            &no_features,
        ] {
            g.add(f);
        }
        g.finish();
        let campaign = g.campaign_of(&eq_refused).expect("a campaign");
        assert_eq!(g.campaign_of(&eq_data), Some(campaign));
        assert_eq!(g.campaign_of(&plain_same_body), Some(campaign));
        assert_eq!(
            g.campaign_of(&plain_alone),
            None,
            "one session is no campaign"
        );
        assert_eq!(g.campaign_of(&no_features), None);
        let members = g.members();
        assert_eq!(members.len(), 1);
        let kinds: Vec<(&str, u64)> = members[&campaign]
            .iter()
            .map(|n| (n.feature.kind(), n.sessions))
            .collect();
        assert_eq!(kinds, [("key", 2), ("url-hosts", 1), ("body", 2)]);
        assert_eq!(g.refused, 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut g = Grouping::default();
        for i in 0..(MAX_FEATURES as u64 + 10) {
            g.add(&features(&[], "a@b", Some(&format!("h{i}.example")), None));
        }
        assert_eq!(g.nodes.len(), MAX_FEATURES);
        assert_eq!(g.refused, 10);
    }
}
