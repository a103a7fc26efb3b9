//! `sinkhole check-config`: the configuration and the policy file it names, read as the daemon
//! reads them.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::policy::PolicyStore;

/// The configuration at `path` (the embedded defaults without one) and its policy file.
pub fn check(path: Option<&Path>) -> Result<String, ConfigError> {
    let config = Config::load(path)?;
    PolicyStore::open(&config.policy)?;
    Ok("configuration ok\n".to_owned())
}
