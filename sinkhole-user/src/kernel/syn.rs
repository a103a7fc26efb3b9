//! The SYN fingerprints the XDP program records (the pinned LRU map `SYN`), taken out by the
//! daemon as it accepts each connection. Two map calls per accept (a lookup and a delete), both
//! within the serving daemon's system call allowlist.

use std::net::{IpAddr, SocketAddr};

use aya::maps::{HashMap, MapData, MapError};
use sinkhole_common::{SynFingerprint, SynKey};

use crate::syn::Syn;

/// The `SYN` map, held by the event loop while the program runs.
pub struct SynTable {
    map: HashMap<MapData, SynKey, SynFingerprint>,
}

impl SynTable {
    pub(super) fn new(map: HashMap<MapData, SynKey, SynFingerprint>) -> SynTable {
        SynTable { map }
    }

    /// The fingerprint of the SYN that `peer` opened its connection with, removed from the map
    /// (a later connection from the same address and port brings its own). `None` when the
    /// program saw none: the map had evicted it (a flood of SYNs), or the SYN came another way.
    pub fn take(&mut self, peer: SocketAddr) -> Option<Syn> {
        let addr = match peer.ip().to_canonical() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        };
        let key = SynKey {
            addr,
            port: peer.port(),
            pad: 0,
        };
        let print = match self.map.get(&key, 0) {
            Ok(print) => print,
            Err(MapError::KeyNotFound) => return None,
            Err(e) => {
                tracing::debug!("SYN fingerprint of {peer}: {e}");
                return None;
            }
        };
        // Gone already (evicted meanwhile) is as good as removed.
        let _ = self.map.remove(&key);
        Some(Syn::from_fingerprint(&print))
    }
}
