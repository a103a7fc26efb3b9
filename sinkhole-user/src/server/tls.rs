//! STARTTLS set-up: the certificate and key (`smtp.tls_cert`/`smtp.tls_key`, or a self-signed
//! pair made at first start and kept in `STORAGE/tls/`) and the rustls server configuration
//! (ring provider, TLS 1.2 and 1.3 only).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("making a self-signed certificate for {hostname}: {source}")]
    Generate {
        hostname: String,
        source: rcgen::Error,
    },
    #[error("{cert} with {key}: {source}")]
    Rustls {
        cert: String,
        key: String,
        source: rustls::Error,
    },
}

/// Where the self-signed pair lives.
pub fn self_signed_paths(storage_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = storage_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The server configuration for STARTTLS: the configured pair, or the self-signed one (made now
/// if it is not there yet).
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let smtp = &config.smtp;
    let (cert, key) = if smtp.tls_cert.as_os_str().is_empty() {
        let (cert, key) = self_signed_paths(&config.storage.dir);
        if !(cert.exists() && key.exists()) {
            make_self_signed(&smtp.hostname, &cert, &key)?;
            tracing::info!(
                "STARTTLS: made a self-signed certificate for {} in {}",
                smtp.hostname,
                cert.display()
            );
        }
        (cert, key)
    } else {
        (smtp.tls_cert.clone(), smtp.tls_key.clone())
    };
    let chain = read_certs(&cert)?;
    let private = read_key(&key)?;
    with_pair(chain, private, &cert, &key)
}

/// The server configuration with `chain` and its `private` key (read from `cert` and `key`);
/// fails when the two do not go together.
pub fn with_pair(
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|source| TlsError::Rustls {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            source,
        })?;
    Ok(Arc::new(server))
}

/// The PEM private key in `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The PEM certificate chain in `path` (at least one certificate).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(pem_error(path, rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(chain)
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error;
    let message = match e {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM section of the expected kind".to_owned(),
        other => format!("not valid PEM: {other:?}"),
    };
    TlsError::Pem {
        path: path.display().to_string(),
        message,
    }
}

fn make_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let generate = |source| TlsError::Generate {
        hostname: hostname.to_owned(),
        source,
    };
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let pair = rcgen::KeyPair::generate().map_err(generate)?;
    let made = params.self_signed(&pair).map_err(generate)?;
    if let Some(dir) = cert.parent() {
        fs::create_dir_all(dir).map_err(|source| write_error(dir, source))?;
    }
    // The key first and private from its creation; the certificate marks the pair complete.
    write_file(key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert, made.pem().as_bytes(), 0o644)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .map_err(|source| write_error(path, source))
}

fn write_error(path: &Path, source: io::Error) -> TlsError {
    TlsError::Write {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path) -> Config {
        let mut config = Config::default();
        config.storage.dir = dir.to_path_buf();
        config.smtp.hostname = "trap.example.org".into();
        config
    }

    #[test]
    fn self_signed_pair_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path());
        server_config(&config).unwrap();
        let (cert, key) = self_signed_paths(dir.path());
        let mode = fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let first = fs::read(&cert).unwrap();
        server_config(&config).unwrap();
        assert_eq!(fs::read(&cert).unwrap(), first);
    }

    #[test]
    fn unparsable_pem_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        server_config(&config).unwrap();
        let (cert, key) = self_signed_paths(dir.path());
        let bad = dir.path().join("bad.pem");
        fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
        config.smtp.tls_cert = bad.clone();
        config.smtp.tls_key = key.clone();
        let e = server_config(&config).unwrap_err().to_string();
        assert!(e.starts_with(&bad.display().to_string()), "{e}");
        // A certificate where the key should be.
        config.smtp.tls_cert = cert.clone();
        config.smtp.tls_key = cert.clone();
        let e = server_config(&config).unwrap_err().to_string();
        assert!(e.starts_with(&cert.display().to_string()), "{e}");
    }
}
