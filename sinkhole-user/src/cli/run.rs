//! `sinkhole run`: the daemon ([`crate::daemon`]), until it is stopped.

use crate::config::Config;
use crate::daemon;

/// `sinkhole run [--takeover]`: serves, printing nothing (the daemon logs).
pub fn serve(config: &Config, takeover: bool) -> anyhow::Result<String> {
    daemon::run(config, takeover)?;
    Ok(String::new())
}
