//! `GET /metrics` in the Prometheus text format (0.0.4), on a thread of its own: the mio loop
//! never serves HTTP. Every value is read at scrape time from what the daemon already keeps
//! (the server's and the resolver's atomic counters, the pinned BPF maps with their per-CPU
//! counters summed), so nothing on the hot paths knows about Prometheus. No series carries a
//! client address.
//!
//! [`spawn`] binds `metrics.listen` and serves it from a mio loop that holds up to
//! [`MAX_CONNECTIONS`] connections at once, each under short deadlines ([`http`]); the series
//! are written by [`collect`] through `prometheus-client`.

mod collect;
mod http;
mod process;

pub use http::{MAX_CONNECTIONS, REQUEST_TIME};

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::counters::DaemonCounters;
use crate::kernel::attached::Interfaces;
use crate::kernel::maps;
use crate::kernel::{BlockMaps, KernelError};
use crate::score::ScoreCounters;

/// What a scrape reads.
pub struct Sources {
    /// Connections, messages, replies, refusals, blocks.
    pub daemon: Arc<DaemonCounters>,
    /// DNSBL queries per zone and result; `None` when the daemon runs no resolver.
    pub score: Option<Arc<ScoreCounters>>,
    /// The pinned maps (XDP packet counters, block entries); `None` when there are none.
    pub maps: Option<BlockMaps>,
    /// `xdp.interfaces`, asked at each scrape what is attached to them; `None` when none are
    /// configured (or the netlink socket could not be opened at start-up).
    pub interfaces: Option<Interfaces>,
}

impl Sources {
    /// A netlink socket for asking about `names` at each scrape, opened now: the serving
    /// daemon may no longer make one.
    pub fn interfaces(names: &[String]) -> Option<Interfaces> {
        if names.is_empty() {
            return None;
        }
        Interfaces::open(names)
            .inspect_err(|e| tracing::warn!("metrics: no sinkhole_xdp_attached ({e})"))
            .ok()
    }

    /// The maps pinned under `pin_dir` if they exist there (never created here). Opened now,
    /// so the handle outlives a later drop of privileges.
    pub fn pinned_maps(pin_dir: &Path) -> Option<BlockMaps> {
        match maps::open_existing_maps(pin_dir) {
            Ok(maps) => Some(maps),
            Err(KernelError::NoMaps(_)) => None,
            Err(e) => {
                tracing::warn!("metrics: no XDP series ({e})");
                None
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot set up the /metrics event loop: {0}")]
    Poll(io::Error),
    #[error("cannot start the metrics thread: {0}")]
    Thread(io::Error),
}

/// The endpoint's socket, bound at start-up (before the daemon gives up binding) and served
/// once the counters exist ([`Endpoint::serve`]).
#[derive(Debug)]
pub struct Endpoint {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds `listen`. A non-loopback address is served as configured, with a warning: the
    /// counters tell anyone who can reach them how the trap is doing.
    pub fn bind(listen: SocketAddr) -> Result<Endpoint, MetricsError> {
        let error = |source| MetricsError::Listen {
            addr: listen,
            source,
        };
        // SO_REUSEPORT as for SMTP: a daemon taking over serves metrics beside the old one.
        let listener = crate::listeners::bind_std(listen).map_err(error)?;
        let addr = listener.local_addr().map_err(error)?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "metrics.listen {addr} is not loopback: /metrics is open to whoever can reach it"
            );
        }
        Ok(Endpoint { listener, addr })
    }

    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/metrics` from `sources` on a new thread, until the process ends.
    pub fn serve(self, sources: Sources) -> Result<(), MetricsError> {
        let mut registry = Registry::default();
        registry
            .sub_registry_with_prefix("sinkhole")
            .register_collector(Box::new(collect::Collector::new(sources)));
        // The standard names, unprefixed.
        registry.register_collector(Box::new(process::Collector));
        let server = http::Server::new(self.listener, registry).map_err(MetricsError::Poll)?;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || server.run())
            .map_err(MetricsError::Thread)?;
        Ok(())
    }
}
