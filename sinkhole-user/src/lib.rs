//! The sinkhole daemon's library: everything the `sinkhole` binary runs, in modules with one
//! job each (see `docs/architecture.md`).
#![forbid(unsafe_code)]

pub mod campaign;
pub mod capture;
pub mod cli;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod feeds;
pub mod handover;
pub mod history;
pub mod kernel;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod prefix;
pub mod privilege;
pub mod sandbox;
pub mod score;
pub mod server;
pub mod signature;
pub mod smtp;
pub mod syn;
pub mod text;
pub mod verdict;
