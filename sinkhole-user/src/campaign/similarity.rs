//! Bodies that say the same thing: a 64-bit simhash (Charikar, the `simhash` crate) of a
//! message body, and an index that finds an earlier body within [`NEAR`] bits.
//!
//! A campaign's messages come from one template with a few words changed (a name, an amount, a
//! tracking token). The hash is taken over the body's character 4-grams, after lowercasing,
//! dropping every word with a digit in it (amounts, ids, tokens) and joining the rest with one
//! space: a changed word then changes a few percent of the features. Measured on the replay's
//! templates (`tests/src/replay.rs`), bodies of one template differed in at most 8 bits, bodies
//! of different texts in at least 19 (over words instead of 4-grams: 11 against 15). Two
//! unrelated 64-bit hashes are within 8 bits with a probability of about 2.4e-10.

use std::collections::HashMap;

/// Bodies whose simhashes differ in at most this many bits are near-duplicates.
pub const NEAR: u32 = 8;
/// The index's buckets: two hashes within [`NEAR`] bits agree on at least one of `NEAR + 1`
/// slices (pigeonhole); eight slices of 7 bits and one of 8.
const SLICES: u32 = NEAR + 1;
/// Bodies with fewer words are not compared (a short body says too little).
pub const MIN_WORDS: usize = 8;
/// Bodies kept per bucket of the index; later ones with a full bucket are found only through
/// their other buckets.
const BUCKET_LIMIT: usize = 256;
/// Characters per feature.
const GRAM: usize = 4;

/// The simhash of the body of `message` (what follows its header block): over the character
/// 4-grams of its words without digits, lowercased, one space apart; `None` below
/// [`MIN_WORDS`] such words.
pub fn body_hash(message: &[u8]) -> Option<u64> {
    let body = header_end(message).map_or(message, |at| &message[at..]);
    let text = String::from_utf8_lossy(body).to_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !w.chars().any(|c| c.is_ascii_digit()))
        .collect();
    if words.len() < MIN_WORDS {
        return None;
    }
    let joined = words.join(" ");
    let starts: Vec<usize> = joined
        .char_indices()
        .map(|(i, _)| i)
        .chain([joined.len()])
        .collect();
    Some(simhash::simhash_stream(
        starts.windows(GRAM + 1).map(|w| &joined[w[0]..w[GRAM]]),
    ))
}

/// Where the body starts: after the first empty line.
fn header_end(message: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(message, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(message, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Simhashes seen, each with a value of the caller's (a node), found again by any simhash
/// within [`NEAR`] bits. Each hash is filed under its [`SLICES`] slices and only the hashes
/// sharing one are compared.
#[derive(Debug, Default)]
pub struct NearIndex {
    hashes: Vec<(u64, u32)>,
    buckets: HashMap<(u8, u8), Vec<u32>>,
}

impl NearIndex {
    /// The value of the earliest hash within [`NEAR`] bits of `hash`.
    pub fn find(&self, hash: u64) -> Option<u32> {
        let mut best: Option<usize> = None;
        for n in 0..SLICES as u8 {
            let Some(bucket) = self.buckets.get(&(n, slice(hash, n))) else {
                continue;
            };
            for &i in bucket {
                let i = i as usize;
                if (self.hashes[i].0 ^ hash).count_ones() <= NEAR && best.is_none_or(|b| i < b) {
                    best = Some(i);
                }
            }
        }
        best.map(|i| self.hashes[i].1)
    }

    /// Files `hash` with `value`.
    pub fn insert(&mut self, hash: u64, value: u32) {
        let index = self.hashes.len() as u32;
        self.hashes.push((hash, value));
        for n in 0..SLICES as u8 {
            let bucket = self.buckets.entry((n, slice(hash, n))).or_default();
            if bucket.len() < BUCKET_LIMIT {
                bucket.push(index);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// Slice `n`: bits `7n..7n+7`, the last one bits 56..64.
fn slice(hash: u64, n: u8) -> u8 {
    let width = if u32::from(n) == SLICES - 1 { 8 } else { 7 };
    ((hash >> (7 * n)) & ((1 << width) - 1)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed campaign's template (`tests/src/replay.rs`).
    const TEMPLATE: &str = "Subject: Your order is ready\r\nX-Id: 1\r\n\r\nDear friend, we ship \
        genuine pharmacy pills worldwide without prescription. Order today at the lowest prices \
        and save up to ninety percent on your next order with free express delivery.\r\nVisit \
        http://pharma-seed.example/shop?ref=9e37 before the offer ends.\r\n";

    #[test]
    fn a_template_with_words_changed_is_near_another_text_is_not() {
        let a = body_hash(TEMPLATE.as_bytes()).unwrap();
        let changed = TEMPLATE
            .replace("Dear friend", "Dear Maria")
            .replace("ref=9e37", "ref=4c1a")
            .replace("X-Id: 1", "X-Id: 2");
        let b = body_hash(changed.as_bytes()).unwrap();
        let other = body_hash(
            b"\r\n\r\nYour parcel could not be delivered because the address label was \
              damaged, please confirm your details and pay the redelivery fee online",
        )
        .unwrap();
        assert!((a ^ b).count_ones() <= NEAR, "{}", (a ^ b).count_ones());
        assert!(
            (a ^ other).count_ones() > 3 * NEAR,
            "{}",
            (a ^ other).count_ones()
        );
        // Headers do not count; a short body is not compared.
        assert_eq!(
            body_hash(TEMPLATE.replace("X-Id: 1", "X-Other: 9").as_bytes()),
            Some(a)
        );
        assert_eq!(body_hash(b"Subject: x\r\n\r\nbuy now"), None);
    }

    #[test]
    fn the_index_finds_the_earliest_near_hash() {
        let mut index = NearIndex::default();
        let base = 0x0123_4567_89ab_cdefu64;
        let spread = |bits: u32| (0..bits).fold(0u64, |h, i| h | 1 << (i * 7 + 3));
        index.insert(base, 10);
        index.insert(base ^ 0xffff << 40, 11);
        index.insert(!base, 12);
        // Eight bits apart, one in each of eight slices: found through the ninth.
        assert_eq!(index.find(base ^ spread(8)), Some(10));
        assert_eq!(index.find(base ^ 0xffff << 40 ^ 1), Some(11));
        // Within reach of both: the earlier.
        assert_eq!(index.find(base ^ 0xff << 40), Some(10));
        assert_eq!(index.find(base ^ spread(9)), None);
        assert_eq!(index.find(!base ^ 1 << 63), Some(12));
        assert_eq!(index.len(), 3);
    }
}
