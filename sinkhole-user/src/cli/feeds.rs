//! `sinkhole import` and `sinkhole export`: block lists in and out of the pinned maps
//! ([`crate::feeds`]).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::feeds::{self, ExportOptions, Family, Format};

/// `sinkhole import FILE --format F [--ttl T] [--reason R]`: each bad line named on stderr.
pub fn import(
    config: &Config,
    file: &Path,
    format: Format,
    ttl: Option<Duration>,
    reason: Option<&str>,
) -> anyhow::Result<String> {
    Ok(feeds::import(
        config,
        file,
        format,
        ttl,
        reason,
        &mut |bad| eprintln!("sinkhole: {bad}"),
    )?)
}

/// `sinkhole export --format rbldnsd [--output DIR] [--family F] [--zone Z] [--skip-reason P]`.
pub fn export(
    config: &Config,
    output: Option<&Path>,
    family: Option<Family>,
    zone: &str,
    skip_reasons: &[String],
) -> anyhow::Result<String> {
    let options = ExportOptions {
        output,
        family,
        zone,
        skip_reasons,
    };
    Ok(feeds::export_rbldnsd(config, &options)?)
}
