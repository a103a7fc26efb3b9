//! The pinned BPF maps: opening (or creating and pinning) them under `xdp.pin_dir`, and the
//! block table operations on them. The daemon, its fallback and the CLI all come through here,
//! so a block means the same thing wherever it was set.

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray};
use aya::{Ebpf, EbpfLoader};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustix::fs::FsWord;
use rustix::io::Errno;
use std::ops::RangeInclusive;

use sinkhole_common::{
    AllowFlag, BlockEntry, BootClock, GLOBAL_SCOPE, GLOBAL_SMTP_PORTS, MAP_ALLOW,
    MAP_ALLOW_BUCKETS, MAP_BLOCK_CIDR, MAP_BLOCK_V4, MAP_BLOCK_V6, MAP_CIDR_BUCKETS, MAP_CLOCK,
    MAP_COUNTERS, MAP_NAMES, MAP_SYN, PORT_WORDS, REASON_LEN, SCOPE_ALL, SCOPE_SMTP,
    SynFingerprint, SynKey, bucket_v4, bucket_v6, counter,
};

use super::clock;
use super::syn::SynTable;

/// The XDP object, built by `build.rs` from `sinkhole-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sinkhole"));

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: FsWord = 0xcafe_4a11;

/// Why the kernel side could not be used or changed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "{0} is not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf, or set xdp.pin_dir)"
    )]
    NoBpffs(PathBuf),
    #[error("the BPF maps need root (CAP_BPF and CAP_NET_ADMIN): {0}")]
    NoPrivilege(String),
    #[error(
        "the pinned map {path} does not match this sinkhole ({detail}); remove it to recreate it"
    )]
    StaleMap { path: PathBuf, detail: String },
    #[error("the block map for {0} is full")]
    Full(IpNet),
    #[error("{0} is in the allowlist map (xdp.allow of the daemon that last started)")]
    AllowListed(IpNet),
    #[error("{context}: {detail}")]
    Bpf { context: String, detail: String },
    #[error(
        "no sinkhole maps in {0} (xdp.pin_dir): is it the daemon's? Only `run`, `block` and `import` create them"
    )]
    NoMaps(PathBuf),
}

impl KernelError {
    /// Classifies a failed BPF operation: permission errors become [`KernelError::NoPrivilege`].
    pub(crate) fn bpf(context: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        let context = context.into();
        match os_error(err) {
            Some(Errno::PERM | Errno::ACCESS) => KernelError::NoPrivilege(context),
            _ => KernelError::Bpf {
                context,
                detail: chain(err),
            },
        }
    }
}

/// The OS error somewhere in `err`'s source chain.
fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<Errno> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Errno::from_io_error(io);
        }
        next = e.source();
    }
    None
}

/// `err` and its sources, as one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

/// One block as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub prefix: IpNet,
    pub entry: BlockEntry,
}

impl Block {
    /// The reason text (NUL padding removed).
    pub fn reason(&self) -> String {
        reason_text(&self.entry.reason)
    }
}

/// The packet counters, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub passed_ipv4: u64,
    pub passed_ipv6: u64,
    pub passed_other: u64,
    pub dropped_ipv4: u64,
    pub dropped_ipv6: u64,
    pub malformed: u64,
}

impl PacketCounters {
    pub fn passed(&self) -> u64 {
        self.passed_ipv4 + self.passed_ipv6 + self.passed_other
    }

    pub fn dropped(&self) -> u64 {
        self.dropped_ipv4 + self.dropped_ipv6
    }
}

/// The maps, opened from `pin_dir` (created and pinned there when they are not yet).
pub struct BlockMaps {
    v4: HashMap<MapData, [u8; 4], BlockEntry>,
    v6: HashMap<MapData, [u8; 16], BlockEntry>,
    cidr: LpmTrie<MapData, [u8; 16], BlockEntry>,
    allow: LpmTrie<MapData, [u8; 16], AllowFlag>,
    counters: PerCpuArray<MapData, u64>,
    clock: Array<MapData, BootClock>,
    cidr_buckets: Array<MapData, u8>,
    allow_buckets: Array<MapData, u8>,
    /// The SYN fingerprints, until the daemon takes them ([`BlockMaps::take_syn_table`]).
    syn: Option<HashMap<MapData, SynKey, SynFingerprint>>,
}

/// What the program drops, fixed when it is loaded (its `.rodata` globals, which the verifier
/// sees as constants: no map lookup per packet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Every packet from a blocked source, not only TCP to `smtp_ports` (`xdp.scope = "all"`).
    pub all: bool,
    /// The TCP destination ports scope `smtp` covers.
    pub smtp_ports: Vec<u16>,
}

impl Scope {
    /// The ports as the program's bit set: bit `port % 64` of word `port / 64`.
    fn port_words(&self) -> [u64; PORT_WORDS as usize] {
        let mut words = [0u64; PORT_WORDS as usize];
        for &port in &self.smtp_ports {
            words[usize::from(port >> 6)] |= 1 << (port & 63);
        }
        words
    }
}

/// Opens (or creates and pins) every map under `pin_dir`, for commands that only work on the
/// maps (the program is never loaded from here).
pub fn open_maps(pin_dir: &Path) -> Result<BlockMaps, KernelError> {
    open(pin_dir, &Scope::default()).map(|(_, maps)| maps)
}

/// Opens the maps pinned under `pin_dir`, failing with [`KernelError::NoMaps`] when there are
/// none: for the commands that read them (`list`, `stats`, `unblock`, `export`, `/metrics`),
/// where new empty maps would only hide a mistyped `pin_dir`.
pub fn open_existing_maps(pin_dir: &Path) -> Result<BlockMaps, KernelError> {
    if !MAP_NAMES.iter().all(|name| pin_dir.join(name).exists()) {
        return Err(KernelError::NoMaps(pin_dir.to_path_buf()));
    }
    open_maps(pin_dir)
}

/// Opens (or creates and pins) every map under `pin_dir`. The returned [`Ebpf`] still holds the
/// (not yet loaded) `sinkhole` program, set to `scope`, for the caller that attaches it.
pub fn open(pin_dir: &Path, scope: &Scope) -> Result<(Ebpf, BlockMaps), KernelError> {
    open_object(pin_dir, scope, OBJECT)
}

/// [`open`] with another build of the XDP object (the benchmark measures variants of the
/// program side by side on the same maps).
pub fn open_object(
    pin_dir: &Path,
    scope: &Scope,
    object: &[u8],
) -> Result<(Ebpf, BlockMaps), KernelError> {
    prepare_pin_dir(pin_dir)?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = MAP_NAMES
        .iter()
        .map(|&name| (name, pin_dir.join(name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let scope_value = if scope.all { SCOPE_ALL } else { SCOPE_SMTP };
    let port_words = scope.port_words();
    let log_level = super::events::program_level();
    loader
        .override_global(GLOBAL_SCOPE, &scope_value, true)
        .override_global(GLOBAL_SMTP_PORTS, &port_words, true)
        // Not in older builds of the program (the XDP bench loads some).
        .override_global(aya_log::LEVEL, &log_level, false);
    let mut ebpf = loader.load(object).map_err(|e| {
        KernelError::bpf(
            format!("cannot create the BPF maps in {}", pin_dir.display()),
            &e,
        )
    })?;
    let mut take = |name: &str| {
        ebpf.take_map(name).ok_or_else(|| KernelError::Bpf {
            context: format!("map {name}"),
            detail: "missing from the XDP object".into(),
        })
    };
    let stale = |name: &str| {
        let path = pin_dir.join(name);
        move |e: MapError| KernelError::StaleMap {
            path,
            detail: e.to_string(),
        }
    };
    let mut maps = BlockMaps {
        v4: take(MAP_BLOCK_V4)?
            .try_into()
            .map_err(stale(MAP_BLOCK_V4))?,
        v6: take(MAP_BLOCK_V6)?
            .try_into()
            .map_err(stale(MAP_BLOCK_V6))?,
        cidr: take(MAP_BLOCK_CIDR)?
            .try_into()
            .map_err(stale(MAP_BLOCK_CIDR))?,
        allow: take(MAP_ALLOW)?.try_into().map_err(stale(MAP_ALLOW))?,
        counters: take(MAP_COUNTERS)?
            .try_into()
            .map_err(stale(MAP_COUNTERS))?,
        clock: take(MAP_CLOCK)?.try_into().map_err(stale(MAP_CLOCK))?,
        cidr_buckets: take(MAP_CIDR_BUCKETS)?
            .try_into()
            .map_err(stale(MAP_CIDR_BUCKETS))?,
        allow_buckets: take(MAP_ALLOW_BUCKETS)?
            .try_into()
            .map_err(stale(MAP_ALLOW_BUCKETS))?,
        // An older build of the program (the XDP bench measures builds side by side) has none.
        syn: match ebpf.take_map(MAP_SYN) {
            Some(map) => Some(map.try_into().map_err(stale(MAP_SYN))?),
            None => None,
        },
    };
    maps.sync_clock()?;
    Ok((ebpf, maps))
}

/// Makes `pin_dir` exist on a bpffs, or says clearly why it cannot.
fn prepare_pin_dir(pin_dir: &Path) -> Result<(), KernelError> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let on_bpffs = fs_magic(existing).is_some_and(|m| m == BPF_FS_MAGIC);
    if !on_bpffs {
        return Err(KernelError::NoBpffs(pin_dir.to_owned()));
    }
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| KernelError::bpf(format!("cannot create {}", pin_dir.display()), &e))
}

/// The filesystem type (`f_type` of `statfs(2)`) of the filesystem `path` is on; `None` when
/// `statfs` fails.
fn fs_magic(path: &Path) -> Option<FsWord> {
    rustix::fs::statfs(path).ok().map(|stat| stat.f_type)
}

impl BlockMaps {
    /// The SYN fingerprint map, for the daemon's event loop (once).
    pub fn take_syn_table(&mut self) -> Option<SynTable> {
        self.syn.take().map(SynTable::new)
    }

    /// Puts `prefix` in the block table until `expires_at` (boot ns, 0 = never), replacing
    /// any entry for exactly `prefix` (its drop counter starts again from 0).
    ///
    /// A single address the allowlist map covers is refused ([`KernelError::AllowListed`]):
    /// the program checks only CIDR matches against the allowlist, so an exact entry must never
    /// be allow-listed ([`BlockMaps::set_allow`] removes those a new allowlist covers).
    pub fn insert(
        &mut self,
        prefix: IpNet,
        expires_at: u64,
        reason: &str,
    ) -> Result<(), KernelError> {
        if prefix.prefix_len() == prefix.max_prefix_len() && self.allow_listed(prefix.addr())? {
            return Err(KernelError::AllowListed(prefix));
        }
        let entry = BlockEntry {
            expires_at,
            drops: 0,
            last_drop_at: 0,
            reason: reason_bytes(reason),
        };
        let result = match slot(prefix) {
            Slot::V4(k) => self.v4.insert(k, entry, 0),
            Slot::V6(k) => self.v6.insert(k, entry, 0),
            Slot::Cidr(k) => {
                // Marked first: the program must never skip a trie that holds the prefix.
                mark(&mut self.cidr_buckets, buckets(prefix), 1)?;
                self.cidr.insert(&k, entry, 0)
            }
        };
        result.map_err(|e| match os_error(&e) {
            Some(Errno::TOOBIG | Errno::NOSPC | Errno::NOMEM) => KernelError::Full(prefix),
            _ => KernelError::bpf(format!("block {prefix}"), &e),
        })
    }

    /// Removes the entry for exactly `prefix`; `false` when there was none.
    pub fn remove(&mut self, prefix: IpNet) -> Result<bool, KernelError> {
        let result = match slot(prefix) {
            Slot::V4(k) => self.v4.remove(&k),
            Slot::V6(k) => self.v6.remove(&k),
            Slot::Cidr(k) => self.cidr.remove(&k),
        };
        not_found_is_none(result.map(|()| true), || format!("unblock {prefix}"))
            .map(|removed| removed.unwrap_or(false))
    }

    /// The live entry blocking `ip` at `now` (boot ns): its exact entry, else the longest CIDR
    /// entry covering it. The allowlist is not consulted here.
    pub fn blocking(&self, ip: IpAddr, now: u64) -> Result<Option<BlockEntry>, KernelError> {
        let exact = match ip {
            IpAddr::V4(a) => self.v4.get(&a.octets(), 0),
            IpAddr::V6(a) => self.v6.get(&a.octets(), 0),
        };
        if let Some(entry) = not_found_is_none(exact, || format!("look up {ip}"))?
            && entry.is_live(now)
        {
            return Ok(Some(entry));
        }
        let key = Key::new(128, mapped(ip));
        let cidr = not_found_is_none(self.cidr.get(&key, 0), || format!("look up {ip}"))?;
        Ok(cidr.filter(|e| e.is_live(now)))
    }

    /// Every block, exact and CIDR, expired ones included.
    pub fn list(&self) -> Result<Vec<Block>, KernelError> {
        let err = |e: MapError| KernelError::bpf("read the block maps", &e);
        let mut blocks = Vec::new();
        for item in self.v4.iter() {
            let (k, entry) = item.map_err(err)?;
            blocks.push(Block {
                prefix: IpNet::from(IpAddr::from(k)),
                entry,
            });
        }
        for item in self.v6.iter() {
            let (k, entry) = item.map_err(err)?;
            blocks.push(Block {
                prefix: IpNet::from(IpAddr::from(k)),
                entry,
            });
        }
        for item in self.cidr.iter() {
            let (k, entry) = item.map_err(err)?;
            if let Some(prefix) = lpm_prefix(&k) {
                blocks.push(Block { prefix, entry });
            }
        }
        Ok(blocks)
    }

    /// Removes every entry expired at `now`; returns how many went and the earliest expiry
    /// among those that stay (0: none expires).
    pub fn sweep(&mut self, now: u64) -> Result<(usize, u64), KernelError> {
        let mut next = 0u64;
        let mut expired = Vec::new();
        for block in self.list()? {
            if block.entry.is_live(now) {
                if block.entry.expires_at != 0 {
                    next = match next {
                        0 => block.entry.expires_at,
                        n => n.min(block.entry.expires_at),
                    };
                }
            } else {
                expired.push(block.prefix);
            }
        }
        let mut removed = 0;
        for prefix in expired {
            if self.remove(prefix)? {
                removed += 1;
            }
        }
        Ok((removed, next))
    }

    /// The counters summed over CPUs.
    pub fn counters(&self) -> Result<PacketCounters, KernelError> {
        let read = |index: u32| -> Result<u64, KernelError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(|e| KernelError::bpf("read the XDP counters", &e))?;
            Ok(values.iter().sum())
        };
        Ok(PacketCounters {
            passed_ipv4: read(counter::PASSED_IPV4)?,
            passed_ipv6: read(counter::PASSED_IPV6)?,
            passed_other: read(counter::PASSED_OTHER)?,
            dropped_ipv4: read(counter::DROPPED_IPV4)?,
            dropped_ipv6: read(counter::DROPPED_IPV6)?,
            malformed: read(counter::MALFORMED)?,
        })
    }

    /// Whether the allowlist map covers `ip`.
    fn allow_listed(&self, ip: IpAddr) -> Result<bool, KernelError> {
        let key = Key::new(128, mapped(ip));
        not_found_is_none(self.allow.get(&key, 0), || format!("look up {ip}"))
            .map(|found| found.is_some())
    }

    /// Makes the allowlist trie (and its bucket marks) hold exactly `allow`. Only the daemon
    /// writes the allowlist, so stale marks can be cleared safely. When it gains a prefix, the
    /// exact entries it covers are removed (and logged): the program does not check exact
    /// matches against the allowlist (see [`BlockMaps::insert`]).
    pub fn set_allow(&mut self, allow: &[IpNet]) -> Result<(), KernelError> {
        let err = |e: MapError| KernelError::bpf("update the allowlist map", &e);
        let wanted: Vec<Key<[u8; 16]>> = allow.iter().map(|&p| lpm_key(p)).collect();
        let present: Vec<Key<[u8; 16]>> =
            self.allow.keys().collect::<Result<_, _>>().map_err(err)?;
        for &prefix in allow {
            mark(&mut self.allow_buckets, buckets(prefix), 1)?;
        }
        for key in &wanted {
            self.allow.insert(key, 1, 0).map_err(err)?;
        }
        if wanted
            .iter()
            .any(|w| !present.iter().any(|p| same_key(w, p)))
        {
            self.remove_exact_allowed(allow)?;
        }
        for key in present
            .iter()
            .filter(|k| !wanted.iter().any(|w| same_key(w, k)))
        {
            self.allow.remove(key).map_err(err)?;
            if let Some(prefix) = lpm_prefix(key) {
                let stale =
                    buckets(prefix).filter(|b| !allow.iter().any(|&a| buckets(a).contains(b)));
                mark(&mut self.allow_buckets, stale, 0)?;
            }
        }
        Ok(())
    }

    /// Removes the exact entries for addresses `allow` covers, logging each.
    fn remove_exact_allowed(&mut self, allow: &[IpNet]) -> Result<(), KernelError> {
        let err = |e: MapError| KernelError::bpf("read the block maps", &e);
        let allowed = |ip: &IpAddr| allow.iter().any(|a| a.contains(ip));
        let mut covered: Vec<IpAddr> = Vec::new();
        for key in self.v4.keys() {
            let ip = IpAddr::from(key.map_err(err)?);
            if allowed(&ip) {
                covered.push(ip);
            }
        }
        for key in self.v6.keys() {
            let ip = IpAddr::from(key.map_err(err)?);
            if allowed(&ip) {
                covered.push(ip);
            }
        }
        for ip in covered {
            if self.remove(IpNet::from(ip))? {
                tracing::info!("unblocked {ip}: it is in the allowlist (xdp.allow)");
            }
        }
        Ok(())
    }

    /// Writes the current offset from `CLOCK_MONOTONIC` to `CLOCK_BOOTTIME` (the time spent
    /// suspended) for the program's clock estimate (see [`BootClock`]).
    pub fn sync_clock(&mut self) -> Result<(), KernelError> {
        let clock = BootClock {
            monotonic_to_boot_ns: clock::monotonic_to_boot_ns(),
        };
        self.clock
            .set(0, clock, 0)
            .map_err(|e| KernelError::bpf("write the XDP clock offset", &e))
    }
}

/// The buckets (see `sinkhole_common::bucket_v4`) that addresses inside `prefix` fall in.
fn buckets(prefix: IpNet) -> RangeInclusive<u32> {
    match prefix {
        IpNet::V4(net) => bucket_v4(&net.network().octets())..=bucket_v4(&net.broadcast().octets()),
        IpNet::V6(net) if net.prefix_len() <= 16 => bucket_v6(&[0; 16])..=bucket_v6(&[0xff; 16]),
        IpNet::V6(net) => bucket_v6(&net.network().octets())..=bucket_v6(&net.broadcast().octets()),
    }
}

fn mark(
    map: &mut Array<MapData, u8>,
    buckets: impl Iterator<Item = u32>,
    value: u8,
) -> Result<(), KernelError> {
    for bucket in buckets {
        map.set(bucket, value, 0)
            .map_err(|e| KernelError::bpf("mark the lookup buckets", &e))?;
    }
    Ok(())
}

/// Where a prefix lives: the exact map of its family, or the CIDR trie.
enum Slot {
    V4([u8; 4]),
    V6([u8; 16]),
    Cidr(Key<[u8; 16]>),
}

fn slot(prefix: IpNet) -> Slot {
    match prefix {
        IpNet::V4(net) if net.prefix_len() == 32 => Slot::V4(net.addr().octets()),
        IpNet::V6(net) if net.prefix_len() == 128 => Slot::V6(net.addr().octets()),
        _ => Slot::Cidr(lpm_key(prefix)),
    }
}

/// The trie key of a prefix; IPv4 as IPv4-mapped IPv6.
pub(crate) fn lpm_key(prefix: IpNet) -> Key<[u8; 16]> {
    match prefix {
        IpNet::V4(net) => Key::new(
            96 + u32::from(net.prefix_len()),
            net.network().to_ipv6_mapped().octets(),
        ),
        IpNet::V6(net) => Key::new(u32::from(net.prefix_len()), net.network().octets()),
    }
}

/// The prefix a trie key stands for (IPv4-mapped keys read back as IPv4).
fn lpm_prefix(key: &Key<[u8; 16]>) -> Option<IpNet> {
    let len = u8::try_from(key.prefix_len()).ok()?;
    let addr = Ipv6Addr::from(key.data());
    match addr.to_ipv4_mapped() {
        Some(v4) if len >= 96 => Ipv4Net::new(v4, len - 96).ok().map(IpNet::V4),
        _ => Ipv6Net::new(addr, len).ok().map(IpNet::V6),
    }
}

fn same_key(a: &Key<[u8; 16]>, b: &Key<[u8; 16]>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn not_found_is_none<T>(
    result: Result<T, MapError>,
    context: impl FnOnce() -> String,
) -> Result<Option<T>, KernelError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) if os_error(&e) == Some(Errno::NOENT) => Ok(None),
        Err(e) => Err(KernelError::bpf(context(), &e)),
    }
}

/// `reason` as stored: UTF-8 cut at a character boundary to fit, NUL-padded.
pub fn reason_bytes(reason: &str) -> [u8; REASON_LEN] {
    let mut end = reason.len().min(REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut bytes = [0u8; REASON_LEN];
    bytes[..end].copy_from_slice(&reason.as_bytes()[..end]);
    bytes
}

/// The stored reason as text.
pub fn reason_text(bytes: &[u8; REASON_LEN]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(REASON_LEN);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_character_boundaries() {
        assert_eq!(reason_text(&reason_bytes("manual")), "manual");
        let long = "é".repeat(30);
        let text = reason_text(&reason_bytes(&long));
        assert_eq!(text, "é".repeat(REASON_LEN / 2));
    }

    #[test]
    fn trie_keys_round_trip() {
        for text in ["198.51.100.0/24", "0.0.0.0/0", "2001:db8::/32", "::/0"] {
            let prefix: IpNet = text.parse().unwrap();
            assert_eq!(lpm_prefix(&lpm_key(prefix)), Some(prefix), "{text}");
        }
        assert_eq!(
            lpm_key("198.51.100.0/24".parse().unwrap()).prefix_len(),
            120
        );
    }

    #[test]
    fn buckets_cover_the_prefix() {
        let b = |text: &str| buckets(text.parse().unwrap());
        assert_eq!(b("198.51.100.0/24"), 0xc633..=0xc633);
        assert_eq!(b("10.0.0.0/8"), 0x0a00..=0x0aff);
        assert_eq!(b("2001:db8:bad::/48"), 65536 + 0x0db8..=65536 + 0x0db8);
        assert_eq!(b("2001:d00::/24"), 65536 + 0x0d00..=65536 + 0x0dff);
        assert_eq!(b("2000::/3"), 65536..=131071);
    }
}
