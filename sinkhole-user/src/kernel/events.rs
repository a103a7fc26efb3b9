//! The XDP program's own rare events (a SYN map update the kernel refused, the first malformed
//! packet of a second), which it writes with `aya-log` into its ring buffer: read here into
//! `tracing`, under the target [`TARGET`], by the event loop whenever the ring's descriptor is
//! readable. The ring is the program's (128 KiB, not pinned: a new program brings its own);
//! the program says each kind at most once a second, so it does not fill, and when no one
//! reads it (a daemon that could not attach) what does not fit is dropped in the kernel.
//!
//! The level the program logs at is fixed when it is loaded ([`program_level`], aya-log's
//! `AYA_LOG_LEVEL`): an event the daemon's filter would discard is not even written.

use std::io;
use std::os::fd::AsRawFd as _;

use aya::Ebpf;
use aya_log::{EbpfLogger, Level};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// The target the program's events carry in the daemon's log (`RUST_LOG=sinkhole::xdp=debug`).
pub const TARGET: &str = "sinkhole::xdp";

/// The program's ring buffer, read into the daemon's log.
pub struct XdpEvents {
    ring: EbpfLogger<ToTracing>,
}

impl XdpEvents {
    /// Takes the ring buffer out of the loaded object (once, before its program is loaded).
    pub fn take(ebpf: &mut Ebpf) -> Result<XdpEvents, aya_log::Error> {
        Ok(XdpEvents {
            ring: EbpfLogger::init_with_logger(ebpf, ToTracing)?,
        })
    }

    /// Has `registry` wake the loop with `token` when the program has written an event.
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.ring.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Logs every event waiting in the ring (memory reads: no system call).
    pub fn drain(&mut self) {
        self.ring.flush();
    }
}

/// aya-log's records, as `tracing` events of [`TARGET`] at their level.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The value of the program's `AYA_LOG_LEVEL`: the most verbose level the daemon's filter lets
/// through for [`TARGET`] (0: none).
pub fn program_level() -> u8 {
    // `enabled!` takes its level as a constant (it makes a callsite), hence one arm per level.
    let level = if tracing::enabled!(target: TARGET, tracing::Level::TRACE) {
        Level::Trace
    } else if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        Level::Debug
    } else if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        Level::Info
    } else if tracing::enabled!(target: TARGET, tracing::Level::WARN) {
        Level::Warn
    } else if tracing::enabled!(target: TARGET, tracing::Level::ERROR) {
        Level::Error
    } else {
        return 0;
    };
    level as u8
}
