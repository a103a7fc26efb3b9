//! `sinkhole run`: the daemon ([`crate::daemon`]), until it is stopped.

use std::path::Path;

use crate::config::Config;
use crate::daemon;

/// `sinkhole run [--takeover]`: serves, printing nothing (the daemon logs).
pub fn serve(
    config: &Config,
    config_file: Option<&Path>,
    takeover: bool,
) -> anyhow::Result<String> {
    daemon::run(config, config_file, takeover)?;
    Ok(String::new())
}
