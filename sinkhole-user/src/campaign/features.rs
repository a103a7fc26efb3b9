//! What a campaign's software fixes, per session, and what varies per bot.
//!
//! A session's [`Key`] holds only the first kind: its *behaviours* (the signatures its software
//! shows whatever the trap answers), the *shape* of its envelope, and its TCP *stack* (from the
//! SYN, when the XDP program saw it). Whether a bot has reverse DNS, how it names itself in
//! HELO, which DNSBLs list it and whether it was let through to DATA vary per bot (and with the
//! trap's own answers): they make a campaign's *variants*, not its key.
//!
//! - Behaviours: `mail-from-eq-rcpt-to`, `mail-from-local-domain`, `pregreet`, `pipelining`
//!   (the session pipelined; `pipelined-run-ahead` implies it, and only says that the trap
//!   refused something the bot did not wait for) and `out-of-sequence` when the session did not
//!   pipeline (a pipelining bot runs out of sequence only behind a refusal).
//! - Envelope: the sender of the first transaction against its recipients (`eq-rcpt`,
//!   `rcpt-domain`, `null`, `other`, or `none` without a transaction) and how many recipients it
//!   tried (`0`, `1`, `2-9`, `10+`).
//! - Stack: the SYN's initial TTL and option layout ([`Syn::stack`]).
//!
//! A key with one of the first four behaviours but `pipelining` is *distinctive*: its sessions
//! are one campaign whatever else they share. The daemon's alerts count sessions per key; the
//! report also joins sessions by what their messages share ([`super::grouping`]).

use std::fmt;

use crate::signature::Signature;
use crate::syn::Syn;

/// A behaviour: one bit of [`Key::behaviours`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    MailFromEqRcptTo,
    MailFromLocalDomain,
    Pregreet,
    OutOfSequence,
    Pipelining,
}

impl Behaviour {
    /// In the order keys name them.
    pub const ALL: [Behaviour; 5] = [
        Behaviour::MailFromEqRcptTo,
        Behaviour::MailFromLocalDomain,
        Behaviour::Pregreet,
        Behaviour::OutOfSequence,
        Behaviour::Pipelining,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Behaviour::MailFromEqRcptTo => "mail-from-eq-rcpt-to",
            Behaviour::MailFromLocalDomain => "mail-from-local-domain",
            Behaviour::Pregreet => "pregreet",
            Behaviour::OutOfSequence => "out-of-sequence",
            Behaviour::Pipelining => "pipelining",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether sessions showing it are one campaign by it: every behaviour but pipelining,
    /// which legitimate MTAs share.
    const fn is_distinctive(self) -> bool {
        !matches!(self, Behaviour::Pipelining)
    }
}

/// The sender of a session's first transaction, against its recipients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    /// No transaction (no MAIL accepted).
    None,
    /// `MAIL FROM:<>`.
    Null,
    /// Equal to one of its recipients.
    EqRcpt,
    /// In the domain of one of its recipients.
    RcptDomain,
    Other,
}

impl Sender {
    pub const fn as_str(self) -> &'static str {
        match self {
            Sender::None => "none",
            Sender::Null => "null",
            Sender::EqRcpt => "eq-rcpt",
            Sender::RcptDomain => "rcpt-domain",
            Sender::Other => "other",
        }
    }
}

/// How many recipients a transaction tried, in classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recipients {
    Zero,
    One,
    Few,
    Many,
}

impl Recipients {
    fn of(n: usize) -> Recipients {
        match n {
            0 => Recipients::Zero,
            1 => Recipients::One,
            2..=9 => Recipients::Few,
            _ => Recipients::Many,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Recipients::Zero => "0",
            Recipients::One => "1",
            Recipients::Few => "2-9",
            Recipients::Many => "10+",
        }
    }
}

/// What a campaign's software fixes, as one session showed it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// [`Behaviour`] bits.
    pub behaviours: u8,
    pub sender: Sender,
    pub recipients: Recipients,
    /// [`Syn::stack`], when the SYN was seen.
    pub stack: Option<String>,
}

/// What [`Key::of`] reads from a session.
pub struct Shape<'a, S, R> {
    /// Its signatures.
    pub signatures: S,
    pub pipelined: bool,
    /// The first transaction: its sender and tried recipients.
    pub transaction: Option<(&'a str, R)>,
    pub syn: Option<&'a Syn>,
}

impl Key {
    pub fn of<'a, S, R>(shape: Shape<'a, S, R>) -> Key
    where
        S: IntoIterator<Item = Signature>,
        R: IntoIterator<Item = &'a str>,
    {
        let mut behaviours = 0;
        let mut out_of_sequence = false;
        for signature in shape.signatures {
            let behaviour = match signature {
                Signature::MailFromEqRcptTo => Behaviour::MailFromEqRcptTo,
                Signature::MailFromLocalDomain => Behaviour::MailFromLocalDomain,
                Signature::Pregreet => Behaviour::Pregreet,
                Signature::PipelinedRunAhead => Behaviour::Pipelining,
                Signature::OutOfSequence => {
                    out_of_sequence = true;
                    continue;
                }
                _ => continue,
            };
            behaviours |= behaviour.bit();
        }
        if shape.pipelined {
            behaviours |= Behaviour::Pipelining.bit();
        }
        if out_of_sequence && behaviours & Behaviour::Pipelining.bit() == 0 {
            behaviours |= Behaviour::OutOfSequence.bit();
        }
        let (sender, recipients) = match shape.transaction {
            None => (Sender::None, Recipients::Zero),
            Some((from, rcpts)) => {
                let mut sender = if from.is_empty() {
                    Sender::Null
                } else {
                    Sender::Other
                };
                let from_domain = domain(from);
                let mut n = 0;
                for rcpt in rcpts {
                    n += 1;
                    if sender == Sender::Null {
                        continue;
                    }
                    if from.eq_ignore_ascii_case(rcpt) {
                        sender = Sender::EqRcpt;
                    } else if sender == Sender::Other
                        && from_domain.is_some_and(|d| {
                            domain(rcpt).is_some_and(|r| r.eq_ignore_ascii_case(d))
                        })
                    {
                        sender = Sender::RcptDomain;
                    }
                }
                (sender, Recipients::of(n))
            }
        };
        Key {
            behaviours,
            sender,
            recipients,
            stack: shape.syn.map(Syn::stack),
        }
    }

    pub fn behaviours(&self) -> impl Iterator<Item = Behaviour> + '_ {
        Behaviour::ALL
            .into_iter()
            .filter(|b| self.behaviours & b.bit() != 0)
    }

    /// Whether its sessions are a campaign by the key alone (a behaviour other than
    /// pipelining).
    pub fn is_distinctive(&self) -> bool {
        self.behaviours().any(Behaviour::is_distinctive)
    }

    /// A short stable name: `k-` and 8 hex digits of a hash of its text (FNV-1a), the same in
    /// the daemon's alert and in the report.
    pub fn id(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.to_string().bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("k-{:08x}", (hash >> 32) as u32 ^ hash as u32)
    }
}

/// `behaviours=mail-from-eq-rcpt-to+pipelining sender=eq-rcpt rcpts=1 stack=ttl=64
/// options=mss,sok,ts,nop,ws` (`behaviours=-` for none, no `stack` when the SYN was not seen).
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.behaviours().map(Behaviour::as_str).collect();
        let names = if names.is_empty() {
            "-".to_owned()
        } else {
            names.join("+")
        };
        write!(
            f,
            "behaviours={names} sender={} rcpts={}",
            self.sender.as_str(),
            self.recipients.as_str()
        )?;
        if let Some(stack) = &self.stack {
            write!(f, " stack={stack}")?;
        }
        Ok(())
    }
}

/// The domain of `local@domain`.
fn domain(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Signature::*;

    fn key(signatures: &[Signature], pipelined: bool, from: Option<(&str, &[&str])>) -> Key {
        Key::of(Shape {
            signatures: signatures.iter().copied(),
            pipelined,
            transaction: from.map(|(f, r)| (f, r.iter().copied())),
            syn: None,
        })
    }

    #[test]
    fn what_varies_per_bot_is_not_in_the_key() {
        let rdns_listed = key(
            &[MailFromEqRcptTo, HeloIsRdns, DnsblListed, PipelinedRunAhead],
            true,
            Some(("trap@example.org", &["trap@example.org"])),
        );
        let literal_through = key(
            &[MailFromEqRcptTo, HeloIpLiteral, NoRdns],
            true,
            Some(("Trap@Example.org", &["trap@example.org"])),
        );
        assert_eq!(rdns_listed, literal_through);
        assert!(rdns_listed.is_distinctive());
        assert_eq!(
            rdns_listed.to_string(),
            "behaviours=mail-from-eq-rcpt-to+pipelining sender=eq-rcpt rcpts=1"
        );
        assert_eq!(rdns_listed.id(), literal_through.id());
        assert!(rdns_listed.id().starts_with("k-") && rdns_listed.id().len() == 10);
    }

    #[test]
    fn envelopes_and_behaviours() {
        let plain = key(&[], false, Some(("a@x.example", &["t@example.org"])));
        assert_eq!(plain.to_string(), "behaviours=- sender=other rcpts=1");
        assert!(!plain.is_distinctive());
        let pipelining = key(&[], true, Some(("a@x", &["t@y"])));
        assert!(!pipelining.is_distinctive(), "legitimate MTAs pipeline");
        let domain = key(
            &[],
            false,
            Some(("x@example.org", &["a@b", "t@EXAMPLE.org"])),
        );
        assert_eq!(
            domain.to_string(),
            "behaviours=- sender=rcpt-domain rcpts=2-9"
        );
        let null = key(&[], false, Some(("", &["a@b"; 12])));
        assert_eq!(null.to_string(), "behaviours=- sender=null rcpts=10+");
        assert_eq!(
            key(&[], false, None).to_string(),
            "behaviours=- sender=none rcpts=0"
        );
        // Out of sequence counts only without pipelining (with it, it follows a refusal).
        let oos = key(&[OutOfSequence], false, None);
        assert!(oos.is_distinctive());
        assert_eq!(
            oos.to_string(),
            "behaviours=out-of-sequence sender=none rcpts=0"
        );
        let behind = key(&[OutOfSequence, PipelinedRunAhead], false, None);
        assert_eq!(
            behind.to_string(),
            "behaviours=pipelining sender=none rcpts=0"
        );
        let pregreet = key(&[Pregreet, HeloBareIp], false, None);
        assert!(pregreet.is_distinctive());
    }

    #[test]
    fn the_stack_is_part_of_the_key() {
        let syn = Syn {
            ttl: 117,
            window: 8192,
            mss: Some(1460),
            wscale: Some(8),
            options: "mss,nop,ws,nop,nop,sok".into(),
        };
        let with = Key::of(Shape {
            signatures: [Pregreet],
            pipelined: false,
            transaction: None::<(&str, [&str; 0])>,
            syn: Some(&syn),
        });
        assert_eq!(
            with.to_string(),
            "behaviours=pregreet sender=none rcpts=0 stack=ttl=128 options=mss,nop,ws,nop,nop,sok"
        );
        assert_ne!(with, key(&[Pregreet], false, None));
    }
}
