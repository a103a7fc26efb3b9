//! Bodies that say the same thing: a 64-bit simhash (Charikar, the `simhash` crate) of a
//! message body's words, and an index that finds an earlier body within [`NEAR`] bits.
//!
//! A campaign's messages come from one template with a few words changed (a name, a number, a
//! tracking token); their simhashes then differ in a few bits, while unrelated bodies differ in
//! about half of them.

use std::collections::HashMap;

/// Bodies whose simhashes differ in at most this many bits are near-duplicates.
pub const NEAR: u32 = 3;
/// Bodies with fewer words are not compared (a short body says too little).
pub const MIN_WORDS: usize = 8;
/// Bodies kept per bucket of the index; later ones with a full bucket are found only through
/// their other buckets.
const BUCKET_LIMIT: usize = 64;

/// The simhash of the body of `message` (what follows its header block), over its words
/// (letters and digits, lowercased); `None` below [`MIN_WORDS`].
pub fn body_hash(message: &[u8]) -> Option<u64> {
    let body = header_end(message).map_or(message, |at| &message[at..]);
    let text = String::from_utf8_lossy(body).to_lowercase();
    let words = || {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
    };
    if words().nth(MIN_WORDS - 1).is_none() {
        return None;
    }
    Some(simhash::simhash_stream(words()))
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
/// within [`NEAR`] bits. By the pigeonhole principle two hashes within 3 bits agree on at least
/// one of four 16-bit quarters, so each hash is filed under its four quarters and only the
/// hashes sharing one are compared.
#[derive(Debug, Default)]
pub struct NearIndex {
    hashes: Vec<(u64, u32)>,
    buckets: HashMap<(u8, u16), Vec<u32>>,
}

impl NearIndex {
    /// The value of the earliest hash within [`NEAR`] bits of `hash`.
    pub fn find(&self, hash: u64) -> Option<u32> {
        let mut best: Option<usize> = None;
        for quarter in 0..4u8 {
            let Some(bucket) = self.buckets.get(&(quarter, slice(hash, quarter))) else {
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
        for quarter in 0..4u8 {
            let bucket = self
                .buckets
                .entry((quarter, slice(hash, quarter)))
                .or_default();
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

fn slice(hash: u64, quarter: u8) -> u16 {
    (hash >> (16 * quarter)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = "Subject: meds\r\nX-Id: 1\r\n\r\nDear friend, our pharmacy ships \
        genuine pills worldwide without prescription, order today at cheap prices and save \
        ninety percent on every order you place with us this week only";

    #[test]
    fn a_template_with_words_changed_is_near_another_text_is_not() {
        let a = body_hash(TEMPLATE.as_bytes()).unwrap();
        let changed = TEMPLATE
            .replace("Dear friend", "Dear Maria")
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
        index.insert(base, 10);
        index.insert(base ^ 0b1111 << 40, 11);
        index.insert(!base, 12);
        assert_eq!(index.find(base ^ 0b111), Some(10));
        assert_eq!(index.find(base ^ 0b1111 << 40 ^ 1), Some(11));
        // Within 3 bits of both: the earlier.
        assert_eq!(index.find(base ^ 0b11 << 40), Some(10));
        assert_eq!(index.find(base ^ 0b1111), None);
        assert_eq!(index.find(!base ^ 1 << 63), Some(12));
        assert_eq!(index.len(), 3);
    }
}
