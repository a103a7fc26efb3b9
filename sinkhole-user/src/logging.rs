//! Where the events of the daemon and the commands go: `tracing`, filtered by `RUST_LOG`
//! (`info` when unset; directives as `sinkhole=debug,hickory_resolver=warn`). Under systemd,
//! whose `JOURNAL_STREAM` says stderr is the journal, events go to journald natively, each with
//! its priority (`journalctl -p warning` shows the warnings) and its fields; elsewhere they are
//! readable lines on stderr. Events carry fields where an operator filters on them (`client`,
//! `session`, `zone`, `reason`, `address`). Libraries that log through `log` (aya, and aya-log's
//! records of the XDP program's own events) come in through `tracing-log`; hickory's events are
//! `tracing` already.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The identifier journald files the events under.
const IDENTIFIER: &str = "sinkhole";

/// Installs the subscriber for this process. Opens the journal's socket now, while the
/// process may still make one.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let installed = match journald {
        Some(journald) => registry
            .with(
                journald
                    .with_syslog_identifier(IDENTIFIER.into())
                    // Fields under their own names (`journalctl CLIENT=192.0.2.7`), not `F_CLIENT`.
                    .with_field_prefix(None),
            )
            .try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
    };
    if let Err(e) = installed {
        eprintln!("sinkhole: no log output: {e}");
    }
}
