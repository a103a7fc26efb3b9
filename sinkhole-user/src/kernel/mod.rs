//! The kernel side: loading, attaching and pinning the XDP program, the block table with
//! expiry, the counters, and the [`Blocker`] the daemon escalates clients into.
//!
//! [`open_blocker`] is what the daemon calls: the XDP program attached to `xdp.interfaces` with
//! the pinned maps ([`MapBlocker`] owning the [`xdp::Attachment`]), else the pinned maps alone,
//! else an in-memory table ([`MemoryBlocker`]). The last two rely on the server closing blocked
//! clients right after `accept()`.

pub mod attached;
pub mod clock;
pub mod events;
pub mod maps;
pub mod memory;
pub mod syn;
pub mod xdp;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::Config;
pub use events::XdpEvents;
pub use maps::{Block, BlockMaps, KernelError, PacketCounters, Scope};
pub use memory::MemoryBlocker;
pub use syn::SynTable;

/// Where the daemon puts the clients it wants gone. The XDP implementation writes the pinned
/// maps (the kernel then drops the client's packets); the userspace fallback keeps a table and
/// the server closes such clients right after `accept()`.
///
/// Owned by the event loop thread; every call is quick (a map syscall at most).
pub trait Blocker {
    /// Puts `ip` into the drop set for `ttl`, with a reason shown by `sinkhole list` (e.g.
    /// `dnsbl:zen.spamhaus.org`). Returns `Ok(false)` when `ip` is allow-listed (`xdp.allow`)
    /// and so was not blocked.
    fn block(&mut self, ip: IpAddr, ttl: Duration, reason: &str) -> Result<bool, BlockError>;

    /// Whether `ip` is blocked now (an unexpired exact or covering CIDR entry, not allow-listed).
    /// The server asks this right after `accept()` and closes blocked clients at once.
    fn is_blocked(&self, ip: IpAddr) -> bool;

    /// Removes expired entries; the loop calls it every few seconds. Returns how many went.
    fn sweep(&mut self) -> Result<usize, BlockError>;

    /// Whether the XDP program is attached (its link pins are then removed at stop).
    fn is_attached(&self) -> bool;
}

/// A block table operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The pinned maps refused or failed ([`MapBlocker`]); shown as the kernel error itself.
    #[error(transparent)]
    Map(#[from] KernelError),
    /// The in-memory table ([`MemoryBlocker`]) holds `capacity` unexpired entries.
    #[error("the in-memory block table is full ({capacity} entries)")]
    MemoryFull { capacity: usize },
}

/// What the daemon's event loop gets of the kernel side.
pub struct Blocking {
    pub blocker: Box<dyn Blocker>,
    /// The SYN fingerprints the program records, with the program attached (none without: a
    /// field absent, not invented).
    pub syn: Option<SynTable>,
    /// The program's own events, with the program attached.
    pub events: Option<XdpEvents>,
}

/// The blocker for the daemon, saying once (in the log) which kind it is and why; with the
/// XDP program attached, also its SYN fingerprints and its events.
pub fn open_blocker(config: &Config) -> Blocking {
    let pin_dir = config.xdp.pin_dir.display();
    let detached = |blocker: Box<dyn Blocker>| Blocking {
        blocker,
        syn: None,
        events: None,
    };
    let (mut ebpf, mut maps) = match open_maps(config) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::warn!(
                "XDP unavailable ({e}); blocks are kept in memory only and blocked clients are closed after accept()"
            );
            return detached(Box::new(MemoryBlocker::new(config.xdp.allow.clone())));
        }
    };
    if config.xdp.interfaces.is_empty() {
        tracing::info!(
            "no XDP interfaces configured (xdp.interfaces): blocked clients are closed after accept(); blocks are kept in {pin_dir}"
        );
        return detached(Box::new(MapBlocker::new(maps, config, None)));
    }
    let events = XdpEvents::take(&mut ebpf)
        .inspect_err(|e| tracing::warn!("the XDP program's events will not be logged: {e}"))
        .ok();
    match xdp::attach(ebpf, config) {
        Ok(attachment) => Blocking {
            syn: maps.take_syn_table(),
            blocker: Box::new(MapBlocker::new(maps, config, Some(attachment))),
            events,
        },
        Err(e) => {
            tracing::warn!(
                "XDP unavailable ({e}); blocked clients are closed after accept(); blocks are kept in {pin_dir}"
            );
            detached(Box::new(MapBlocker::new(maps, config, None)))
        }
    }
}

/// The pinned maps, with the allowlist map brought in step with `xdp.allow`, and the program
/// set to the configured scope.
fn open_maps(config: &Config) -> Result<(aya::Ebpf, BlockMaps), KernelError> {
    let (ebpf, mut maps) = maps::open(&config.xdp.pin_dir, &xdp::scope(config))?;
    maps.set_allow(&config.xdp.allow)?;
    Ok((ebpf, maps))
}

/// How often the blocker rescans the maps for expired entries when it knows of none due
/// sooner (the CLI may have added entries it did not see).
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Blocks in the pinned maps; with an [`xdp::Attachment`], the kernel drops blocked clients.
pub struct MapBlocker {
    maps: BlockMaps,
    allow: Vec<IpNet>,
    /// Boot ns at which the next sweep has work (or is due for a rescan).
    next_sweep: u64,
    attachment: Option<xdp::Attachment>,
}

impl MapBlocker {
    fn new(maps: BlockMaps, config: &Config, attachment: Option<xdp::Attachment>) -> Self {
        MapBlocker {
            maps,
            allow: config.xdp.allow.clone(),
            next_sweep: 0,
            attachment,
        }
    }

    /// The maps, for counters and listings.
    pub fn maps(&self) -> &BlockMaps {
        &self.maps
    }
}

fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    allow.iter().any(|net| net.contains(&ip))
}

impl Blocker for MapBlocker {
    fn block(&mut self, ip: IpAddr, ttl: Duration, reason: &str) -> Result<bool, BlockError> {
        if allowed(&self.allow, ip) {
            return Ok(false);
        }
        let expires_at = clock::expiry(Some(ttl));
        self.maps.insert(IpNet::from(ip), expires_at, reason)?;
        self.next_sweep = self.next_sweep.min(expires_at);
        Ok(true)
    }

    fn is_blocked(&self, ip: IpAddr) -> bool {
        if allowed(&self.allow, ip) {
            return false;
        }
        match self.maps.blocking(ip, clock::boot_ns()) {
            Ok(entry) => entry.is_some(),
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        }
    }

    fn sweep(&mut self) -> Result<usize, BlockError> {
        // Every few seconds: a resume from suspend shows in the program's clock soon after.
        self.maps.sync_clock()?;
        let now = clock::boot_ns();
        if now < self.next_sweep {
            return Ok(0);
        }
        let (removed, next_expiry) = self.maps.sweep(now)?;
        let rescan = now.saturating_add(FULL_SWEEP_INTERVAL.as_nanos() as u64);
        self.next_sweep = match next_expiry {
            0 => rescan,
            next => next.min(rescan),
        };
        Ok(removed)
    }

    fn is_attached(&self) -> bool {
        self.attachment.is_some()
    }
}
