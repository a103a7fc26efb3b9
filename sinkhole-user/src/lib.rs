//! The sinkhole daemon's library: everything the `sinkhole` binary runs, in modules with one
//! job each (see `docs/architecture.md`).

pub mod capture;
pub mod cli;
pub mod config;
pub mod kernel;
pub mod prefix;
pub mod server;
pub mod signature;
pub mod smtp;
