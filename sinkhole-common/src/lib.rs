//! Types shared by the XDP program (`sinkhole-ebpf`) and userspace (`sinkhole-user`).
//!
//! Everything here is `#[repr(C)]` and `no_std`: it is the binary layout of the BPF maps.
//! The maps (named by the `MAP_*` constants, pinned under `xdp.pin_dir` with those names):
//!
//! | name         | kind           | key                         | value          |
//! |--------------|----------------|-----------------------------|----------------|
//! | `BLOCK_V4`   | hash           | IPv4 address, `[u8; 4]`     | [`BlockEntry`] |
//! | `BLOCK_V6`   | hash           | IPv6 address, `[u8; 16]`    | [`BlockEntry`] |
//! | `BLOCK_CIDR` | LPM trie       | `[u8; 16]` (IPv4 as mapped) | [`BlockEntry`] |
//! | `ALLOW`      | LPM trie       | `[u8; 16]` (IPv4 as mapped) | `u8` (1)       |
//! | `COUNTERS`   | per-CPU array  | a `counter::*` index        | `u64`          |
//! | `CLOCK`      | array, 1 entry | 0                           | [`BootClock`]  |
//! | `CIDR_BUCKETS`  | array       | [`bucket`] of an address    | `u8`: 1 = look |
//! | `ALLOW_BUCKETS` | array       | [`bucket`] of an address    | `u8`: 1 = look |
//! | `SYN`        | LRU hash       | [`SynKey`]: source and port | [`SynFingerprint`] |
//!
//! `SYN` holds, for each TCP SYN to an SMTP port that the program passes, what the client's
//! stack put in it (a p0f-style signature); the daemon takes its connection's entry out at
//! accept. An LRU map: a flood of SYNs from spoofed sources evicts old entries, it cannot
//! make the map grow.
//! The scope and the SMTP ports are no maps: they are `.rodata` globals of the program
//! ([`GLOBAL_SCOPE`], [`GLOBAL_SMTP_PORTS`]), written by the loader when the daemon loads it.
//!
//! The bucket arrays spare the common packet a trie walk: the program looks into a trie only
//! when the source's bucket is marked, and userspace marks every bucket a prefix in that trie
//! touches. A mark that outlives its prefix only costs a needless lookup, so the CIDR marks are
//! never cleared by the CLI or the daemon (several writers; no lost update is possible when
//! nobody clears), while the allowlist marks, written by the daemon alone, follow `xdp.allow`.
//!
//! Both tries key IPv4 prefixes as IPv4-mapped IPv6 (`::ffff:a.b.c.d/96+len`): one 16-byte key
//! keeps the 8-byte aligned [`BlockEntry`] aligned in the trie node (a 4-byte IPv4 key would
//! not), so its drop counter can be incremented atomically.
#![no_std]

/// The exact IPv4 block map.
pub const MAP_BLOCK_V4: &str = "BLOCK_V4";
/// The exact IPv6 block map.
pub const MAP_BLOCK_V6: &str = "BLOCK_V6";
/// The CIDR block trie (both families).
pub const MAP_BLOCK_CIDR: &str = "BLOCK_CIDR";
/// The allowlist trie (both families).
pub const MAP_ALLOW: &str = "ALLOW";
/// The per-CPU packet counters.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// The offset from `CLOCK_MONOTONIC` to `CLOCK_BOOTTIME` ([`BootClock`]).
pub const MAP_CLOCK: &str = "CLOCK";
/// Buckets the CIDR trie has a prefix in.
pub const MAP_CIDR_BUCKETS: &str = "CIDR_BUCKETS";
/// Buckets the allowlist trie has a prefix in.
pub const MAP_ALLOW_BUCKETS: &str = "ALLOW_BUCKETS";

/// The SYN fingerprints by source address and port.
pub const MAP_SYN: &str = "SYN";

/// Every map the program uses, in the order userspace opens them.
pub const MAP_NAMES: [&str; 9] = [
    MAP_BLOCK_V4,
    MAP_BLOCK_V6,
    MAP_BLOCK_CIDR,
    MAP_ALLOW,
    MAP_COUNTERS,
    MAP_CLOCK,
    MAP_CIDR_BUCKETS,
    MAP_ALLOW_BUCKETS,
    MAP_SYN,
];

/// Capacity of each exact block map: room for a million single-client blocks and then some.
/// The maps are not preallocated, so the memory follows the entries.
pub const EXACT_CAPACITY: u32 = 1 << 21;
/// Capacity of the CIDR block trie.
pub const CIDR_CAPACITY: u32 = 1 << 17;
/// Capacity of the allowlist trie.
pub const ALLOW_CAPACITY: u32 = 4096;
/// Words in [`GLOBAL_SMTP_PORTS`]: one bit per TCP port.
pub const PORT_WORDS: u32 = 65536 / 64;

/// Entries in each bucket array: 65,536 IPv4 buckets, then 65,536 IPv6 buckets.
pub const BUCKETS: u32 = 2 * 65536;

/// The bucket of an IPv4 address: its top 16 bits.
#[inline(always)]
pub fn bucket_v4(addr: &[u8; 4]) -> u32 {
    (addr[0] as u32) << 8 | addr[1] as u32
}

/// The bucket of an IPv6 address: bits 16..32 (the first 16 bits are nearly always 2001 or
/// another few global unicast values, so they would not tell prefixes apart).
#[inline(always)]
pub fn bucket_v6(addr: &[u8; 16]) -> u32 {
    65536 + ((addr[2] as u32) << 8 | addr[3] as u32)
}

/// Bytes of reason text kept per entry (UTF-8, NUL-padded, cut at a character boundary).
pub const REASON_LEN: usize = 40;

/// One block: an exact address or a CIDR prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry no longer applies; 0 = never.
    pub expires_at: u64,
    /// Packets dropped because of this entry. The program adds atomically (several CPUs).
    pub drops: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the last drop; 0 = none yet.
    pub last_drop_at: u64,
    /// Why, as `sinkhole list` shows it.
    pub reason: [u8; REASON_LEN],
}

impl BlockEntry {
    /// Whether the entry still applies at `now` (`CLOCK_BOOTTIME` ns).
    #[inline(always)]
    pub fn is_live(&self, now: u64) -> bool {
        self.expires_at == 0 || now < self.expires_at
    }
}

/// Capacity of the SYN fingerprint map: connections being opened, not yet accepted. Its
/// entries are taken out at accept, and the least recently used go first when it is full.
pub const SYN_CAPACITY: u32 = 1 << 16;
/// TCP option kinds kept per SYN, in the order the client sent them.
pub const SYN_OPTIONS: usize = 12;

/// Key of the `SYN` map: the client's address (IPv4 as IPv4-mapped IPv6) and source port
/// (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynKey {
    pub addr: [u8; 16],
    pub port: u16,
    /// Always 0 (the key's padding, written so that equal keys are equal bytes).
    pub pad: u16,
}

/// What a client's TCP stack put into its SYN: the IP TTL (IPv6 hop limit), the window, the
/// MSS and window scale options and the order of all options (p0f's `olayout`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynFingerprint {
    pub window: u16,
    /// Valid with [`SynFingerprint::HAS_MSS`].
    pub mss: u16,
    pub ttl: u8,
    /// Valid with [`SynFingerprint::HAS_WSCALE`].
    pub wscale: u8,
    /// `HAS_MSS | HAS_WSCALE | MORE_OPTIONS | BAD_OPTIONS`.
    pub flags: u8,
    /// How many of `options` are set.
    pub option_count: u8,
    /// Option kinds (0 EOL, 1 NOP, 2 MSS, 3 window scale, 4 SACK permitted, 8 timestamps...).
    pub options: [u8; SYN_OPTIONS],
}

impl SynFingerprint {
    pub const HAS_MSS: u8 = 1;
    pub const HAS_WSCALE: u8 = 2;
    /// More options followed than [`SYN_OPTIONS`].
    pub const MORE_OPTIONS: u8 = 4;
    /// An option's length was below 2 or ran past the header: parsing stopped there.
    pub const BAD_OPTIONS: u8 = 8;
}

/// Value type of the allowlist trie (always 1: presence is what counts).
pub type AllowFlag = u8;

/// The program global (`u32`, `.rodata`) holding [`SCOPE_SMTP`] or [`SCOPE_ALL`].
pub const GLOBAL_SCOPE: &str = "SCOPE";
/// The program global (`[u64; PORT_WORDS]`, `.rodata`) holding the TCP destination ports scope
/// `smtp` covers: bit `port % 64` of word `port / 64`.
pub const GLOBAL_SMTP_PORTS: &str = "SMTP_PORTS";

/// What the program needs to estimate `CLOCK_BOOTTIME` (the time stamps of [`BlockEntry`])
/// cheaply: it reads `CLOCK_MONOTONIC_COARSE` and adds the time spent suspended, which only
/// userspace can read. Userspace writes it whenever it opens the maps and at every sweep of
/// the daemon; the program keeps its estimate for the current kernel tick to itself.
///
/// The value of the one-entry `CLOCK` map: a single `u64`, 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootClock {
    /// `CLOCK_BOOTTIME - CLOCK_MONOTONIC`, ns.
    pub monotonic_to_boot_ns: u64,
}

/// Drop only TCP to a port in [`GLOBAL_SMTP_PORTS`].
pub const SCOPE_SMTP: u32 = 0;
/// Drop everything from a blocked source.
pub const SCOPE_ALL: u32 = 1;

/// Indexes into [`MAP_COUNTERS`]. Every packet counts once in a `PASSED_*` or `DROPPED_*`;
/// [`counter::MALFORMED`] counts the passed packets that were truncated or odd on top.
pub mod counter {
    pub const PASSED_IPV4: u32 = 0;
    pub const PASSED_IPV6: u32 = 1;
    /// Neither IPv4 nor IPv6 (ARP, LLDP, ...), always passed.
    pub const PASSED_OTHER: u32 = 2;
    pub const DROPPED_IPV4: u32 = 3;
    pub const DROPPED_IPV6: u32 = 4;
    /// Truncated headers, IPv4 header length below 5: passed, counted here as well.
    pub const MALFORMED: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

#[cfg(feature = "user")]
mod pod {
    use super::{BlockEntry, BootClock, REASON_LEN, SYN_OPTIONS, SynFingerprint, SynKey};

    // No padding: each size is the sum of the struct's fields.
    const _: () = assert!(size_of::<BlockEntry>() == 3 * size_of::<u64>() + REASON_LEN);
    const _: () = assert!(size_of::<BootClock>() == size_of::<u64>());
    const _: () = assert!(size_of::<SynKey>() == 16 + 2 + 2);
    const _: () = assert!(size_of::<SynFingerprint>() == 2 + 2 + 4 + SYN_OPTIONS);

    // SAFETY: #[repr(C)] with three u64 then a [u8; REASON_LEN] (8+8+8+40 bytes, 8-byte aligned):
    // no padding (asserted above), and every bit pattern of every field is a valid value.
    unsafe impl aya::Pod for BlockEntry {}
    // SAFETY: #[repr(C)] with a single u64 field: 8 bytes, no padding (asserted above), and
    // every bit pattern is a valid u64.
    unsafe impl aya::Pod for BootClock {}
    // SAFETY: #[repr(C)] with a [u8; 16] then two u16 (20 bytes, 2-byte aligned): no padding
    // (asserted above), and every bit pattern of every field is a valid value.
    unsafe impl aya::Pod for SynKey {}
    // SAFETY: #[repr(C)] with two u16, four u8 and a [u8; SYN_OPTIONS] (2-byte aligned, an even
    // size): no padding (asserted above), and every bit pattern is a valid value.
    unsafe impl aya::Pod for SynFingerprint {}
}
