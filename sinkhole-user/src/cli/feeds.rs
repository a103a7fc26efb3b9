//! `sinkhole import` and `sinkhole export`: block lists in and out of the pinned maps
//! ([`crate::feeds`]).

use std::path::Path;

use crate::config::Config;
use crate::feeds::{self, ExportOptions, Family, ImportOptions};

/// `sinkhole import FILE --format F [--ttl T] [--reason R] [--force]`: each bad line named on
/// stderr.
pub fn import(config: &Config, file: &Path, options: &ImportOptions) -> anyhow::Result<String> {
    Ok(feeds::import(config, file, options, &mut |bad| {
        eprintln!("sinkhole: {bad}")
    })?)
}

/// `sinkhole export --format rbldnsd [--output DIR] [--family F] [--zone Z] [--skip-reason P]`.
pub fn export(
    config: &Config,
    output: Option<&Path>,
    family: Option<Family>,
    zone: &str,
    skip_reasons: &[String],
) -> anyhow::Result<String> {
    if output.is_none() && family.is_none() {
        anyhow::bail!(
            "export --format rbldnsd writes one family to stdout: give --family ipv4|ipv6, or --output DIR"
        );
    }
    let options = ExportOptions {
        output,
        family,
        zone,
        skip_reasons,
    };
    Ok(feeds::export_rbldnsd(config, &options)?)
}
