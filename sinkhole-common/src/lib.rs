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
//! | `SETTINGS`   | array, 1 entry | 0                           | [`Settings`]   |
//! | `SMTP_PORTS` | array          | `port / 64`                 | `u64` bit set  |
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
/// The program's settings ([`Settings`]).
pub const MAP_SETTINGS: &str = "SETTINGS";
/// The TCP destination ports scope `smtp` covers, as a 65,536-bit set.
pub const MAP_SMTP_PORTS: &str = "SMTP_PORTS";

/// Every map the program uses, in the order userspace opens them.
pub const MAP_NAMES: [&str; 7] = [
    MAP_BLOCK_V4,
    MAP_BLOCK_V6,
    MAP_BLOCK_CIDR,
    MAP_ALLOW,
    MAP_COUNTERS,
    MAP_SETTINGS,
    MAP_SMTP_PORTS,
];

/// Capacity of each exact block map: room for a million single-client blocks and then some.
/// The maps are not preallocated, so the memory follows the entries.
pub const EXACT_CAPACITY: u32 = 1 << 21;
/// Capacity of the CIDR block trie.
pub const CIDR_CAPACITY: u32 = 1 << 17;
/// Capacity of the allowlist trie.
pub const ALLOW_CAPACITY: u32 = 4096;
/// Words in [`MAP_SMTP_PORTS`]: one bit per TCP port.
pub const PORT_WORDS: u32 = 65536 / 64;

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

/// Value type of the allowlist trie (always 1: presence is what counts).
pub type AllowFlag = u8;

/// The program's settings, written by the daemon when it attaches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`SCOPE_SMTP`] or [`SCOPE_ALL`].
    pub scope: u32,
}

/// Drop only TCP to a port in [`MAP_SMTP_PORTS`] (a zeroed map means this).
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
    // SAFETY: #[repr(C)], only integer and byte-array fields, no padding (8+8+8+40 bytes).
    unsafe impl aya::Pod for super::BlockEntry {}
    // SAFETY: #[repr(C)], a single u32.
    unsafe impl aya::Pod for super::Settings {}
}
