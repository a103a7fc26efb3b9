//! The `sinkhole` XDP program: drops packets from blocked sources before the TCP stack sees
//! them. Map layout and meaning: `sinkhole-common`.
//!
//! Per packet: parse Ethernet (at most one 802.1Q tag), IPv4 (any IHL) or IPv6 (fixed header,
//! TCP right after it); with scope `smtp` only TCP to a port in `SMTP_PORTS` is considered.
//! The source is looked up in the exact map of its family, then in the CIDR trie; a live
//! (unexpired) entry drops the packet unless the source is in the allowlist. Anything
//! truncated or odd passes and is counted. No allocation, no logging, no helper beyond the
//! map lookups and one clock read on the drop path.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add` (no compare-and-swap); the intrinsic lowers to
// the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::{bpf_ktime_get_boot_ns, bpf_map_lookup_elem},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use sinkhole_common::{
    ALLOW_CAPACITY, AllowFlag, BlockEntry, CIDR_CAPACITY, EXACT_CAPACITY, PORT_WORDS, SCOPE_ALL,
    Settings, counter,
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
static SETTINGS: Array<Settings, 1> = Array::new();
#[btf_map]
static SMTP_PORTS: Array<u64, { PORT_WORDS as usize }> = Array::new();

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;

#[xdp]
pub fn sinkhole(ctx: XdpContext) -> u32 {
    let (verdict, counter) = decide(&ctx);
    count(counter);
    verdict
}

/// What the parser found: the family's counters, and the source when a block may apply.
enum Packet<'a> {
    V4(&'a [u8; 4]),
    V6(&'a [u8; 16]),
}

/// The verdict and the counter it goes to.
#[inline(always)]
fn decide(ctx: &XdpContext) -> (u32, u32) {
    let Some(ethertype) = be16_at(ctx, ETH_HLEN - 2) else {
        return malformed(counter::PASSED_OTHER);
    };
    let (ethertype, l3) = if ethertype == ETH_P_8021Q {
        match be16_at(ctx, ETH_HLEN + VLAN_HLEN - 2) {
            Some(inner) => (inner, ETH_HLEN + VLAN_HLEN),
            None => return malformed(counter::PASSED_OTHER),
        }
    } else {
        (ethertype, ETH_HLEN)
    };
    let scope_all = match SETTINGS.get(0) {
        Some(settings) => settings.scope == SCOPE_ALL,
        None => false,
    };
    match ethertype {
        ETH_P_IP => match parse_ipv4(ctx, l3, scope_all) {
            Parsed::Candidate(source) => judge(Packet::V4(source)),
            Parsed::OutOfScope => (XDP_PASS, counter::PASSED_IPV4),
            Parsed::Malformed => malformed(counter::PASSED_IPV4),
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, l3, scope_all) {
            Parsed::Candidate(source) => judge(Packet::V6(source)),
            Parsed::OutOfScope => (XDP_PASS, counter::PASSED_IPV6),
            Parsed::Malformed => malformed(counter::PASSED_IPV6),
        },
        _ => (XDP_PASS, counter::PASSED_OTHER),
    }
}

/// A truncated or odd packet: it passes, and counts as malformed besides its family.
#[inline(always)]
fn malformed(family_counter: u32) -> (u32, u32) {
    count(counter::MALFORMED);
    (XDP_PASS, family_counter)
}

enum Parsed<T> {
    /// In scope: the source may be blocked.
    Candidate(T),
    OutOfScope,
    Malformed,
}

#[inline(always)]
fn parse_ipv4<'a>(ctx: &'a XdpContext, l3: usize, scope_all: bool) -> Parsed<&'a [u8; 4]> {
    // Version/IHL, then the source address at offset 12.
    let Some(&[version_ihl, ..]) = bytes_at::<20>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let Some(source) = bytes_at::<4>(ctx, l3 + 12) else {
        return Parsed::Malformed;
    };
    if scope_all {
        return Parsed::Candidate(source);
    }
    let Some(&[_, _, _, _, _, _, flags_frag_hi, frag_lo, _, protocol, ..]) =
        bytes_at::<20>(ctx, l3)
    else {
        return Parsed::Malformed;
    };
    if protocol != IPPROTO_TCP {
        return Parsed::OutOfScope;
    }
    // A later fragment carries no TCP header: nothing to match a port against.
    if (flags_frag_hi & 0x1f) != 0 || frag_lo != 0 {
        return Parsed::OutOfScope;
    }
    match tcp_to_smtp(ctx, l3 + ihl * 4) {
        Some(true) => Parsed::Candidate(source),
        Some(false) => Parsed::OutOfScope,
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_ipv6<'a>(ctx: &'a XdpContext, l3: usize, scope_all: bool) -> Parsed<&'a [u8; 16]> {
    let Some(header) = bytes_at::<IPV6_HLEN>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let Some(source) = bytes_at::<16>(ctx, l3 + 8) else {
        return Parsed::Malformed;
    };
    if scope_all {
        return Parsed::Candidate(source);
    }
    // Only TCP directly after the fixed header; extension headers are out of scope.
    if header[6] != IPPROTO_TCP {
        return Parsed::OutOfScope;
    }
    match tcp_to_smtp(ctx, l3 + IPV6_HLEN) {
        Some(true) => Parsed::Candidate(source),
        Some(false) => Parsed::OutOfScope,
        None => Parsed::Malformed,
    }
}

/// Whether the TCP segment at `l4` goes to an SMTP port; `None` when its header is cut short.
#[inline(always)]
fn tcp_to_smtp(ctx: &XdpContext, l4: usize) -> Option<bool> {
    let tcp = bytes_at::<TCP_MIN_HLEN>(ctx, l4)?;
    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let word = SMTP_PORTS.get(u32::from(port >> 6)).copied().unwrap_or(0);
    Some(word & (1u64 << (port & 63)) != 0)
}

/// Looks the source up and drops it when a live entry covers it and the allowlist does not.
#[inline(always)]
fn judge(packet: Packet<'_>) -> (u32, u32) {
    let (exact, mapped, passed, dropped) = match packet {
        Packet::V4(source) => (
            BLOCK_V4.get_ptr_mut(source),
            ipv4_mapped(source),
            counter::PASSED_IPV4,
            counter::DROPPED_IPV4,
        ),
        Packet::V6(source) => (
            BLOCK_V6.get_ptr_mut(source),
            *source,
            counter::PASSED_IPV6,
            counter::DROPPED_IPV6,
        ),
    };
    let key = Key::new(128, mapped);
    let mut clock = Clock(None);
    let Some(entry) = live(exact, &mut clock).or_else(|| live(cidr_lookup(&key), &mut clock))
    else {
        return (XDP_PASS, passed);
    };
    if ALLOW.get(&key).is_some() {
        return (XDP_PASS, passed);
    }
    let now = clock.now();
    // SAFETY: `entry` points at a map value the kernel just returned; `drops` and
    // `last_drop_at` are u64 fields at 8-byte aligned offsets of an 8-byte aligned value (see
    // sinkhole-common on the trie key size), so the atomic add is an aligned `lock add`.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).drops, 1);
        // Last writer wins; an aligned 8-byte store does not tear.
        core::ptr::write_volatile(&raw mut (*entry).last_drop_at, now);
    }
    (XDP_DROP, dropped)
}

/// `CLOCK_BOOTTIME` read at most once per packet, and only when an entry needs it.
struct Clock(Option<u64>);

impl Clock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        *self.0.get_or_insert_with(|| {
            // SAFETY: a helper without arguments or side effects.
            unsafe { bpf_ktime_get_boot_ns() }
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

/// The longest CIDR entry covering `key`. (aya-ebpf's `LpmTrie::get` hands out a shared
/// reference; the drop counter needs the writable pointer the helper returns.)
#[inline(always)]
fn cidr_lookup(key: &Key<[u8; 16]>) -> Option<*mut BlockEntry> {
    let map = core::ptr::from_ref(&BLOCK_CIDR).cast_mut().cast();
    // SAFETY: `map` is the map definition the loader relocates; `key` is a full trie key on
    // the stack.
    let value = unsafe { bpf_map_lookup_elem(map, core::ptr::from_ref(key).cast()) };
    (!value.is_null()).then_some(value.cast())
}

#[inline(always)]
fn ipv4_mapped(addr: &[u8; 4]) -> [u8; 16] {
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12] = addr[0];
    mapped[13] = addr[1];
    mapped[14] = addr[2];
    mapped[15] = addr[3];
    mapped
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
