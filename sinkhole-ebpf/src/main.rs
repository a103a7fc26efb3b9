//! The `sinkhole` XDP program: drops packets from blocked sources before the TCP stack sees
//! them. Map layout and meaning: `sinkhole-common`.
//!
//! Per packet: parse Ethernet (at most one 802.1Q tag), IPv4 (any IHL) or IPv6 (fixed header,
//! TCP right after it); with scope `smtp` only TCP to a port in [`SMTP_PORTS`] is considered.
//! The source is looked up in the exact map of its family, then (when its bucket is marked) in
//! the CIDR trie; a live (unexpired) entry drops the packet, a CIDR entry only when the source
//! is not in the allowlist (userspace keeps no exact entry for an allow-listed address).
//! Anything truncated or odd passes and is counted. No allocation.
//!
//! Its rare events (a SYN map update the kernel refused, the first malformed packet of a
//! second) go through `aya-log` into its ring buffer `AYA_LOGS`, which the daemon reads into its
//! own log under the target `sinkhole::xdp` (see `sinkhole-user/src/kernel/events.rs`). Each
//! kind is said at most once a second ([`first_this_second`]); the pass and drop paths of
//! well-formed packets never reach that code.
//!
//! A TCP SYN (without ACK) to an SMTP port that passes leaves its fingerprint (TTL, window,
//! MSS, window scale, the order of its options) in the LRU map [`SYN`] under its source
//! address and port, for the daemon to take at accept: a lookup, and an update only when the
//! entry is missing or differs (a retransmitted SYN costs no update).
//!
//! Cost per packet, in helpers: one hash lookup (`__htab_map_lookup_elem`, called directly
//! by the JIT); the array and per-CPU array lookups are inlined by the verifier (per-CPU ones
//! on recent kernels, as on 6.18; a helper call on 5.15). A drop, or an entry with a TTL,
//! reads the clock: an inlined `jiffies` load, and `bpf_ktime_get_coarse_ns` (Linux 5.11) once
//! per tick (see [`Clock`]). Tries are walked only for sources in a marked bucket. Nothing
//! here needs more than Linux 5.15.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add` (no compare-and-swap); the intrinsic lowers to
// the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_map_lookup_elem},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::{debug, warn};
use sinkhole_common::{
    ALLOW_CAPACITY, AllowFlag, BUCKETS, BlockEntry, BootClock, CIDR_CAPACITY, EXACT_CAPACITY,
    PORT_WORDS, SCOPE_ALL, SYN_CAPACITY, SYN_OPTIONS, SynFingerprint, SynKey, bucket_v4, bucket_v6,
    counter,
};

/// `BPF_F_NO_PREALLOC`: the exact maps take memory per entry, not per slot.
const NO_PREALLOC: usize = 1;

#[btf_map]
static BLOCK_V4: HashMap<[u8; 4], BlockEntry, { EXACT_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map]
static BLOCK_V6: HashMap<[u8; 16], BlockEntry, { EXACT_CAPACITY as usize }, NO_PREALLOC> =
    HashMap::new();
#[btf_map]
static BLOCK_CIDR: LpmTrie<[u8; 16], BlockEntry, { CIDR_CAPACITY as usize }> = LpmTrie::new();
#[btf_map]
static ALLOW: LpmTrie<[u8; 16], AllowFlag, { ALLOW_CAPACITY as usize }> = LpmTrie::new();
#[btf_map]
static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();
#[btf_map]
static CLOCK: Array<BootClock, 1> = Array::new();
#[btf_map]
static CIDR_BUCKETS: Array<u8, { BUCKETS as usize }> = Array::new();
#[btf_map]
static ALLOW_BUCKETS: Array<u8, { BUCKETS as usize }> = Array::new();
/// `BPF_F_NO_COMMON_LRU`: an LRU list per CPU, so that CPUs taking SYNs at once do not contend
/// for one list's lock.
const NO_COMMON_LRU: usize = 2;
#[btf_map]
static SYN: LruHashMap<SynKey, SynFingerprint, { SYN_CAPACITY as usize }, NO_COMMON_LRU> =
    LruHashMap::new();

// Load-time settings, in `.rodata`: the loader writes them before it loads the program (see
// `sinkhole-user/src/kernel/maps.rs`), the kernel freezes them, and the verifier, knowing
// `SCOPE`, removes the branch not taken. Read through `read_volatile` so the compiler does not
// fold the zero they are built with.
/// [`sinkhole_common::SCOPE_SMTP`] or [`SCOPE_ALL`].
#[unsafe(no_mangle)]
static SCOPE: u32 = 0;
/// The TCP destination ports scope `smtp` covers: bit `port % 64` of word `port / 64`.
#[unsafe(no_mangle)]
static SMTP_PORTS: [u64; PORT_WORDS as usize] = [0; PORT_WORDS as usize];

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOPT_WSCALE: u8 = 3;

#[xdp]
pub fn sinkhole(ctx: XdpContext) -> u32 {
    let (verdict, counter) = decide(&ctx);
    count(counter);
    verdict
}

/// The verdict and the counter it goes to.
#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, u32) {
    let Some(ethertype) = be16_at(ctx, ETH_HLEN - 2) else {
        return malformed(ctx, counter::PASSED_OTHER);
    };
    let (ethertype, l3) = if ethertype == ETH_P_8021Q {
        match be16_at(ctx, ETH_HLEN + VLAN_HLEN - 2) {
            Some(inner) => (inner, ETH_HLEN + VLAN_HLEN),
            None => return malformed(ctx, counter::PASSED_OTHER),
        }
    } else {
        (ethertype, ETH_HLEN)
    };
    // SAFETY: a plain read of a static the loader initialised.
    let scope_all = unsafe { core::ptr::read_volatile(&raw const SCOPE) } == SCOPE_ALL;
    match ethertype {
        ETH_P_IP => match parse_ipv4(ctx, l3, scope_all) {
            Parsed::Candidate(source, syn) => {
                let judged = judge_v4(source);
                if let (XDP_PASS, Some(syn)) = (judged.0, syn) {
                    record_syn(ctx, mapped_key(source), syn);
                }
                judged
            }
            Parsed::OutOfScope => (XDP_PASS, counter::PASSED_IPV4),
            Parsed::Malformed => malformed(ctx, counter::PASSED_IPV4),
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, l3, scope_all) {
            Parsed::Candidate(source, syn) => {
                let judged = judge_v6(source);
                if let (XDP_PASS, Some(syn)) = (judged.0, syn) {
                    record_syn(ctx, *source, syn);
                }
                judged
            }
            Parsed::OutOfScope => (XDP_PASS, counter::PASSED_IPV6),
            Parsed::Malformed => malformed(ctx, counter::PASSED_IPV6),
        },
        _ => (XDP_PASS, counter::PASSED_OTHER),
    }
}

/// A truncated or odd packet: it passes, and counts as malformed besides its family. The first
/// of a second is logged (at debug level).
#[inline(always)]
fn malformed(ctx: &XdpContext, family_counter: u32) -> (u32, u32) {
    count(counter::MALFORMED);
    if first_this_second(Event::Malformed) {
        let family = match family_counter {
            counter::PASSED_IPV4 => "IPv4",
            counter::PASSED_IPV6 => "IPv6",
            _ => "Ethernet",
        };
        let length = ctx.data_end() - ctx.data();
        debug!(
            ctx,
            target: EVENTS_TARGET,
            "malformed {} packet of {} bytes on interface {} (passed; the others this second are only counted)",
            family,
            length,
            ctx.ingress_ifindex()
        );
    }
    (XDP_PASS, family_counter)
}

/// The log target of the program's events, as the daemon's log shows (and `RUST_LOG` filters)
/// them.
const EVENTS_TARGET: &str = "sinkhole::xdp";

/// The kinds of events the program logs, each at most once a second.
#[derive(Clone, Copy)]
enum Event {
    Malformed = 0,
    SynUpdateFailed = 1,
}

/// Per [`Event`], the second (of the coarse monotonic clock, plus one so that 0 means never) it
/// was last logged in. A global of the program's own, like [`TICK`]; CPUs racing on it can both
/// log in the same second, no more.
static mut LOGGED_IN_SECOND: [u64; 2] = [0; 2];

/// Whether `event` is the first of its kind this second (and so to be logged): one helper call,
/// made only on the rare paths that log.
#[inline(always)]
fn first_this_second(event: Event) -> bool {
    // SAFETY: a helper without arguments or side effects.
    let second = unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000 + 1;
    let slot = event as usize;
    // SAFETY: the program's own global, indexed by an enum within its length; a racing CPU can
    // only make the event logged twice in a second.
    unsafe {
        if core::ptr::read_volatile(&raw const LOGGED_IN_SECOND[slot]) == second {
            return false;
        }
        core::ptr::write_volatile(&raw mut LOGGED_IN_SECOND[slot], second);
    }
    true
}

enum Parsed<T> {
    /// In scope: the source may be blocked; with the SYN it is, when it opens a connection to
    /// an SMTP port.
    Candidate(T, Option<Syn>),
    OutOfScope,
    Malformed,
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, scope_all: bool) -> Parsed<&[u8; 4]> {
    let Some(header) = bytes_at::<20>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let version_ihl = header[0];
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let Some(source) = bytes_at::<4>(ctx, l3 + 12) else {
        return Parsed::Malformed;
    };
    // A later fragment carries no TCP header: nothing to match a port against.
    let tcp = header[9] == IPPROTO_TCP && (header[6] & 0x1f) == 0 && header[7] == 0;
    let l4 = l3 + ihl * 4;
    if scope_all {
        let syn = if tcp {
            tcp_at(ctx, l4, header[8])
        } else {
            None
        };
        return Parsed::Candidate(source, syn.and_then(Tcp::smtp_syn));
    }
    if !tcp {
        return Parsed::OutOfScope;
    }
    match tcp_at(ctx, l4, header[8]) {
        Some(segment) if segment.smtp => Parsed::Candidate(source, segment.smtp_syn()),
        Some(_) => Parsed::OutOfScope,
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, scope_all: bool) -> Parsed<&[u8; 16]> {
    let Some(header) = bytes_at::<IPV6_HLEN>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let Some(source) = bytes_at::<16>(ctx, l3 + 8) else {
        return Parsed::Malformed;
    };
    // Only TCP directly after the fixed header; extension headers are out of scope.
    let tcp = header[6] == IPPROTO_TCP;
    if scope_all {
        let syn = if tcp {
            tcp_at(ctx, l3 + IPV6_HLEN, header[7])
        } else {
            None
        };
        return Parsed::Candidate(source, syn.and_then(Tcp::smtp_syn));
    }
    if !tcp {
        return Parsed::OutOfScope;
    }
    match tcp_at(ctx, l3 + IPV6_HLEN, header[7]) {
        Some(segment) if segment.smtp => Parsed::Candidate(source, segment.smtp_syn()),
        Some(_) => Parsed::OutOfScope,
        None => Parsed::Malformed,
    }
}

/// A TCP segment: whether it goes to an SMTP port, and whether it opens a connection.
struct Tcp {
    smtp: bool,
    /// SYN without ACK: where its header starts and the TTL (hop limit) it came with.
    syn: Option<Syn>,
}

/// A SYN's header offset and TTL.
#[derive(Clone, Copy)]
struct Syn {
    l4: usize,
    ttl: u8,
}

impl Tcp {
    #[inline(always)]
    fn smtp_syn(self) -> Option<Syn> {
        if self.smtp { self.syn } else { None }
    }
}

/// The TCP segment at `l4` (of a packet with `ttl`); `None` when its header is cut short.
#[inline(always)]
fn tcp_at(ctx: &XdpContext, l4: usize, ttl: u8) -> Option<Tcp> {
    let tcp = bytes_at::<TCP_MIN_HLEN>(ctx, l4)?;
    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    // SAFETY: `port / 64` is below `PORT_WORDS`; a plain read of a static the loader set.
    let word = unsafe { core::ptr::read_volatile(&raw const SMTP_PORTS[usize::from(port >> 6)]) };
    Some(Tcp {
        smtp: word & (1u64 << (port & 63)) != 0,
        syn: (tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN).then_some(Syn { l4, ttl }),
    })
}

/// The `SYN` map key of an IPv4 source: IPv4-mapped.
#[inline(always)]
fn mapped_key(addr: &[u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Keeps the fingerprint of the SYN at `syn` from `addr` in [`SYN`], unless the same is there.
#[inline(always)]
fn record_syn(ctx: &XdpContext, addr: [u8; 16], syn: Syn) {
    let Some(tcp) = bytes_at::<TCP_MIN_HLEN>(ctx, syn.l4) else {
        return;
    };
    let key = SynKey {
        addr,
        port: u16::from_be_bytes([tcp[0], tcp[1]]),
        pad: 0,
    };
    let mut print = SynFingerprint {
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        ttl: syn.ttl,
        ..SynFingerprint::default()
    };
    let end = syn.l4 + usize::from(tcp[12] >> 4) * 4;
    let mut at = syn.l4 + TCP_MIN_HLEN;
    let mut i = 0;
    while i < SYN_OPTIONS {
        if at >= end {
            break;
        }
        let Some(&[kind]) = bytes_at::<1>(ctx, at) else {
            print.flags |= SynFingerprint::BAD_OPTIONS;
            break;
        };
        print.options[i] = kind;
        print.option_count += 1;
        i += 1;
        match kind {
            TCPOPT_EOL => break,
            TCPOPT_NOP => at += 1,
            _ => {
                let Some(&[_, len]) = bytes_at::<2>(ctx, at) else {
                    print.flags |= SynFingerprint::BAD_OPTIONS;
                    break;
                };
                if len < 2 || at + usize::from(len) > end {
                    print.flags |= SynFingerprint::BAD_OPTIONS;
                    break;
                }
                if kind == TCPOPT_MSS && len == 4 {
                    if let Some(&[_, _, high, low]) = bytes_at::<4>(ctx, at) {
                        print.mss = u16::from_be_bytes([high, low]);
                        print.flags |= SynFingerprint::HAS_MSS;
                    }
                } else if kind == TCPOPT_WSCALE && len == 3 {
                    if let Some(&[_, _, shift]) = bytes_at::<3>(ctx, at) {
                        print.wscale = shift;
                        print.flags |= SynFingerprint::HAS_WSCALE;
                    }
                }
                at += usize::from(len);
            }
        }
    }
    if i == SYN_OPTIONS && at < end {
        print.flags |= SynFingerprint::MORE_OPTIONS;
    }
    if SYN.get_ptr(&key).is_some_and(|old| {
        // SAFETY: a value pointer the map just returned, read as a whole copy.
        let old: SynFingerprint = unsafe { core::ptr::read_volatile(old) };
        old == print
    }) {
        return;
    }
    // Full or not, an LRU map takes it (evicting the least recently used entry); it can still
    // fail when the kernel finds no free element (memory, or every CPU evicting at once).
    if let Err(error) = SYN.insert(&key, &print, 0)
        && first_this_second(Event::SynUpdateFailed)
    {
        warn!(
            ctx,
            target: EVENTS_TARGET,
            "the SYN map refused an update (error {}): this connection will have no SYN fingerprint (further failures this second are not logged)",
            error
        );
    }
}

#[inline(always)]
fn judge_v4(source: &[u8; 4]) -> (u32, u32) {
    let bucket = bucket_v4(source);
    let verdict = judge(BLOCK_V4.get_ptr_mut(source), bucket, || {
        TrieKey::ipv4_mapped(source)
    });
    (
        verdict,
        if verdict == XDP_DROP {
            counter::DROPPED_IPV4
        } else {
            counter::PASSED_IPV4
        },
    )
}

#[inline(always)]
fn judge_v6(source: &[u8; 16]) -> (u32, u32) {
    let bucket = bucket_v6(source);
    let verdict = judge(BLOCK_V6.get_ptr_mut(source), bucket, || {
        TrieKey::ipv6(source)
    });
    (
        verdict,
        if verdict == XDP_DROP {
            counter::DROPPED_IPV6
        } else {
            counter::PASSED_IPV6
        },
    )
}

/// Drops when a live entry covers the source: its exact entry, else, when `bucket` is marked,
/// the CIDR trie, unless the allowlist covers the source. Only a CIDR match is checked against
/// the allowlist: userspace never keeps an exact entry for an allow-listed address (blocking
/// one is refused, and setting the allowlist removes those it covers; see
/// `sinkhole-user/src/kernel/maps.rs`). The trie key is built only when a trie is looked into.
#[inline(always)]
fn judge(exact: Option<*mut BlockEntry>, bucket: u32, key: impl Fn() -> TrieKey) -> u32 {
    let mut clock = Clock(None);
    let entry = match live(exact, &mut clock) {
        Some(entry) => entry,
        None if marked(&CIDR_BUCKETS, bucket) => {
            let Some(entry) = live(trie_lookup(&BLOCK_CIDR, &key()), &mut clock) else {
                return XDP_PASS;
            };
            if marked(&ALLOW_BUCKETS, bucket) && trie_lookup(&ALLOW, &key()).is_some() {
                return XDP_PASS;
            }
            entry
        }
        None => return XDP_PASS,
    };
    let now = clock.now();
    // SAFETY: `entry` points at a map value the kernel just returned; `drops` and
    // `last_drop_at` are u64 fields at 8-byte aligned offsets of an 8-byte aligned value (see
    // sinkhole-common on the trie key size), so the atomic add is an aligned `lock add` and
    // the store does not tear.
    //
    // The count must be atomic: a bot's connections land on several receive queues, and a
    // plain load, add and store lost 40% of the counts of two CPUs dropping one source at once
    // (test `an_entry_counts_every_drop_of_cpus_dropping_at_once`). For `last_drop_at` the last
    // writer wins.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).drops, 1);
        core::ptr::write_volatile(&raw mut (*entry).last_drop_at, now);
    }
    XDP_DROP
}

/// `CLOCK_BOOTTIME`, estimated, read at most once per packet and only when an entry needs it.
///
/// `bpf_ktime_get_boot_ns` reads the clock source (~50 ns on a VM); `bpf_ktime_get_coarse_ns`
/// (Linux 5.11) reads `CLOCK_MONOTONIC_COARSE`, the time of the last tick, in a helper call.
/// Boot time is monotonic time plus the time spent suspended, which userspace writes into the
/// `CLOCK` map when it opens the maps and at every sweep ([`BootClock`]). And since the coarse
/// clock only moves at a tick, the estimate is kept in [`TICK`] with the tick (`jiffies`, which
/// `bpf_jiffies64`, Linux 5.5, reads inline) it was made at: one helper call per tick, not per
/// drop. The estimate trails the true boot time by at most two ticks (2-20 ms by `CONFIG_HZ`;
/// CPUs racing on the refresh can only leave an older estimate), and after a resume by the
/// suspend until userspace writes the new offset and a tick passes: close enough for TTLs of
/// minutes and for `last_drop_at`.
struct Clock(Option<u64>);

/// The last estimate of [`Clock`]: (`jiffies`, boot ns) of the tick it was made at. A global of
/// the program's own (`.bss`), not a map entry: the verifier gives its address as a constant,
/// so reading it takes no lookup. It only lives a tick, so it needs no pin.
static mut TICK: (u64, u64) = (0, 0);

impl Clock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        *self.0.get_or_insert_with(|| {
            // SAFETY: a helper without arguments or side effects.
            let tick = unsafe { bpf_jiffies64() };
            // SAFETY: the program's own global; a torn read across CPUs can only pair a tick
            // with an older estimate (see above).
            unsafe {
                if core::ptr::read_volatile(&raw const TICK.0) == tick {
                    return core::ptr::read_volatile(&raw const TICK.1);
                }
            }
            let offset = CLOCK.get(0).map_or(0, |clock| clock.monotonic_to_boot_ns);
            // SAFETY: a helper without arguments or side effects.
            let now = unsafe { bpf_ktime_get_coarse_ns() }.wrapping_add(offset);
            // SAFETY: the program's own global (see above).
            unsafe {
                core::ptr::write_volatile(&raw mut TICK.1, now);
                core::ptr::write_volatile(&raw mut TICK.0, tick);
            }
            now
        })
    }
}

/// `entry` when it is there and has not expired.
#[inline(always)]
fn live(entry: Option<*mut BlockEntry>, clock: &mut Clock) -> Option<*mut BlockEntry> {
    let entry = entry?;
    // SAFETY: a map value pointer from a lookup of this packet; userspace replaces
    // `expires_at` only as part of a whole-entry update.
    let expires_at = unsafe { (*entry).expires_at };
    (expires_at == 0 || clock.now() < expires_at).then_some(entry)
}

/// The value of the longest prefix in `trie` covering `key`. (aya-ebpf's `LpmTrie::get` takes
/// its own key type and hands out a shared reference; the drop counter needs the writable
/// pointer the helper returns.)
#[inline(always)]
fn trie_lookup<V, const N: usize, const F: usize>(
    trie: &LpmTrie<[u8; 16], V, N, F>,
    key: &TrieKey,
) -> Option<*mut V> {
    let map = core::ptr::from_ref(trie).cast_mut().cast();
    // SAFETY: `map` is the map definition the loader relocates; `key` is a full trie key on
    // the stack, laid out as the kernel's `struct bpf_lpm_trie_key` with 16 bytes of data.
    let value = unsafe { bpf_map_lookup_elem(map, core::ptr::from_ref(key).cast()) };
    (!value.is_null()).then_some(value.cast())
}

/// A trie key as the kernel reads it (`struct bpf_lpm_trie_key`: prefix length, then the 16
/// address bytes), built from 4-byte words: byte-wise building made the compiler zero it with
/// a `memset` loop.
#[repr(C)]
struct TrieKey {
    prefix_len: u32,
    data: [u32; 4],
}

impl TrieKey {
    /// `::ffff:a.b.c.d/128`: the tries hold IPv4 prefixes IPv4-mapped.
    #[inline(always)]
    fn ipv4_mapped(addr: &[u8; 4]) -> TrieKey {
        TrieKey {
            prefix_len: 128,
            data: [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                u32::from_ne_bytes(*addr),
            ],
        }
    }

    #[inline(always)]
    fn ipv6(addr: &[u8; 16]) -> TrieKey {
        let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        TrieKey {
            prefix_len: 128,
            data: [word(0), word(4), word(8), word(12)],
        }
    }
}

/// Whether `bucket` is marked: only then can the trie behind it hold a prefix covering the source.
#[inline(always)]
fn marked(buckets: &Array<u8, { BUCKETS as usize }>, bucket: u32) -> bool {
    buckets.get(bucket).is_some_and(|&mark| mark != 0)
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP does not preempt itself on a CPU.
        unsafe { *counter += 1 };
    }
}

/// `N` bytes of the packet at `offset`, when the packet is that long.
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the range was just checked against `data_end`, and `[u8; N]` has alignment 1.
    Some(unsafe { &*((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    bytes_at::<2>(ctx, offset).map(|b| u16::from_be_bytes(*b))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
