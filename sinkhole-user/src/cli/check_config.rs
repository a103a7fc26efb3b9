//! `sinkhole check-config`: the configuration and the policy file it names, read as the daemon
//! reads them, and what `run` would refuse at start beyond the file itself, so that a unit's
//! `ExecStartPre` catches it.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::policy::PolicyStore;
use crate::policy::book::{AddressDir, Report};
use crate::server::tls;

/// The configuration at `path` (the embedded defaults without one), what `run` would refuse at
/// start, and its policy file.
pub fn check(path: Option<&Path>) -> Result<String, ConfigError> {
    let (config, source) = Config::load_with_source(path)?;
    // The defaults name no user and no certificate.
    if let Some((text, origin)) = source {
        check_start(&config, &text, &origin)?;
    }
    PolicyStore::open(&config.policy)?;
    check_addresses(&config.policy.addresses_dir)?;
    Ok("configuration ok\n".to_owned())
}

/// Every file of `policy.addresses_dir` (when set) reads and parses.
fn check_addresses(dir: &Path) -> Result<(), ConfigError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    let mut broken = None;
    AddressDir::new(dir).scan(true, &mut |report| match report {
        Report::Broken(why) => {
            broken.get_or_insert(why);
        }
        Report::Warning(why) => eprintln!("sinkhole: warning: {why}"),
        Report::Loaded(_) | Report::Removed(_) => {}
    });
    broken.map_or(Ok(()), |why| Err(ConfigError::AddressFile(why)))
}

/// An `smtp.run_as` user that does not exist, and an `smtp.tls_cert`/`smtp.tls_key` that is not
/// a PEM certificate chain, a PEM private key, and a pair, read as `run` reads them.
fn check_start(config: &Config, text: &str, origin: &str) -> Result<(), ConfigError> {
    let invalid =
        |name: &str, message: String| ConfigError::at_key(text, origin, "smtp", name, message);
    let smtp = &config.smtp;
    if !smtp.run_as.is_empty() {
        crate::privilege::account(&smtp.run_as).map_err(|e| invalid("run_as", e.to_string()))?;
    }
    // Both or neither (checked while parsing); neither is a self-signed pair made at start.
    if !smtp.tls_cert.as_os_str().is_empty() {
        let chain =
            tls::read_certs(&smtp.tls_cert).map_err(|e| invalid("tls_cert", e.to_string()))?;
        let key = tls::read_key(&smtp.tls_key).map_err(|e| invalid("tls_key", e.to_string()))?;
        tls::with_pair(chain, key, &smtp.tls_cert, &smtp.tls_key)
            .map_err(|e| invalid("tls_key", e.to_string()))?;
    }
    Ok(())
}
