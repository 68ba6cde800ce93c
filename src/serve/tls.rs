//! TLS for the HTTPS listener: certificate loading or one-time generation,
//! and a rustls configuration modules can speak.
//!
//! Modules offer TLS 1.0–1.2 and only ECDHE-RSA suites (SPEC §7), so the
//! generated certificate is **RSA 2048** (rcgen's default ECDSA key would
//! fail every real module) and TLS 1.2 stays enabled beside 1.3. One crypto
//! provider, aws-lc-rs, is chosen explicitly for every rustls object in the
//! crate (it is also the one rcgen needs for RSA key generation).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the generated certificate inside the certs folder.
pub const GENERATED_CERT: &str = "qfota-serve.crt";
/// File name of the generated private key inside the certs folder.
pub const GENERATED_KEY: &str = "qfota-serve.key";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{role} {path}: {detail}")]
    Pem {
        /// What the file is for: `TLS certificate` or `TLS private key`.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The generated files could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rustls refused the certificate/key pair.
    #[error("certificate and key do not form a usable TLS identity: {0}")]
    Rustls(#[from] rustls::Error),
    /// The runtime shut down before the identity was loaded.
    #[error("shut down while loading the TLS identity")]
    Interrupted,
}

/// The crypto provider every rustls object in the crate uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Where the HTTPS identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// `--tls-cert` and `--tls-key` PEM files.
    Files {
        /// Certificate chain, PEM.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1), PEM.
        key: PathBuf,
    },
    /// Generate an RSA 2048 self-signed certificate in this folder once and
    /// reuse it on later starts.
    Generated {
        /// The certs folder (`--certs-dir`).
        dir: PathBuf,
        /// Extra subject alternative names (the public host); `localhost`,
        /// `127.0.0.1` and `::1` are always included.
        hosts: Vec<String>,
    },
}

/// Loads or generates the identity and returns a rustls server config with
/// TLS 1.2 and 1.3 and ALPN `http/1.1`.
///
/// # Errors
/// [`TlsError`] when PEM files are unreadable, generation fails, or the pair
/// is rejected by rustls.
pub fn server_config(source: &TlsSource) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::Generated { dir, hosts } => ensure_generated(dir, hosts)?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_err(CERT_ROLE, &cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(CERT_ROLE, &cert, "no certificate in file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(&key).map_err(|e| pem_err(KEY_ROLE, &key, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] off the async runtime (RSA key generation takes a
/// CPU-bound while), as the acceptor the HTTPS listener uses.
///
/// # Errors
/// As [`server_config`], or [`TlsError::Interrupted`] when the runtime
/// shuts down first. A panic while loading is passed on.
pub async fn acceptor(source: TlsSource) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    match tokio::task::spawn_blocking(move || server_config(&source)).await {
        Ok(config) => config.map(tokio_rustls::TlsAcceptor::from),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => Err(TlsError::Interrupted),
    }
}

const CERT_ROLE: &str = "TLS certificate";
const KEY_ROLE: &str = "TLS private key";

fn pem_err(role: &'static str, path: &Path, detail: String) -> TlsError {
    TlsError::Pem {
        role,
        path: path.to_path_buf(),
        detail,
    }
}

/// Returns the generated certificate and key paths in `dir`, creating them
/// (RSA 2048, SHA-256, SANs `localhost`, `127.0.0.1`, `::1` and `hosts`)
/// when either is missing or the certificate does not name every one of
/// `hosts` (the public host changed).
///
/// # Errors
/// [`TlsError::Generate`] or [`TlsError::Write`].
pub fn ensure_generated(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join(GENERATED_CERT);
    let key_path = dir.join(GENERATED_KEY);
    if cert_path.is_file() && key_path.is_file() {
        match missing_name(&cert_path, hosts) {
            None => {
                tracing::info!(cert = %cert_path.display(), "reusing generated TLS certificate");
                return Ok((cert_path, key_path));
            }
            // A host the modules are told (`--public-host` changed since):
            // a module that checks names would refuse the old one.
            Some(host) => tracing::info!(
                cert = %cert_path.display(),
                %host,
                "generated TLS certificate does not name the public host: generating a new one"
            ),
        }
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    for h in hosts {
        if !h.is_empty() && !names.contains(h) {
            names.push(h.clone());
        }
    }
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "qfota-serve");
    let cert = params.self_signed(&key_pair)?;
    write_private(&key_path, key_pair.serialize_pem().as_bytes()).map_err(write_err(&key_path))?;
    std::fs::write(&cert_path, cert.pem()).map_err(write_err(&cert_path))?;
    tracing::info!(cert = %cert_path.display(), sans = ?names, "generated RSA 2048 self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// The first of `hosts` (IP addresses or DNS names) the certificate in
/// `cert` is not valid for; also `Some` when the file cannot be read as a
/// certificate (it is then made anew). `None`: it names them all.
fn missing_name(cert: &Path, hosts: &[String]) -> Option<String> {
    let unreadable = || Some(format!("(unreadable {})", cert.display()));
    let Ok(der) = CertificateDer::from_pem_file(cert) else {
        return unreadable();
    };
    let Ok(parsed) = webpki::EndEntityCert::try_from(&der) else {
        return unreadable();
    };
    hosts
        .iter()
        .filter(|h| !h.is_empty())
        .find(|h| {
            rustls::pki_types::ServerName::try_from(h.as_str()).map_or(true, |name| {
                parsed.verify_is_valid_for_subject_name(&name).is_err()
            })
        })
        .cloned()
}

/// Writes a private key readable by its owner only, from the moment the
/// file exists (mode 0600 at creation).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_rsa_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let src = TlsSource::Generated {
            dir: dir.path().to_path_buf(),
            hosts: vec!["192.0.2.2".into()],
        };
        server_config(&src).unwrap();
        let key = std::fs::read_to_string(dir.path().join(GENERATED_KEY)).unwrap();
        let cert1 = std::fs::read(dir.path().join(GENERATED_CERT)).unwrap();
        // PKCS#8 RSA keys carry the rsaEncryption OID 1.2.840.113549.1.1.1.
        let der = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
        assert!(der.secret_der().windows(oid.len()).any(|w| w == oid));
        server_config(&src).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(GENERATED_CERT)).unwrap(),
            cert1
        );
        let cert_path = dir.path().join(GENERATED_CERT);
        assert_eq!(missing_name(&cert_path, &["192.0.2.2".into()]), None);
        // Another public host (a name this time): made anew, naming it.
        let hosts = vec!["fota.example.com".to_string()];
        assert_eq!(
            missing_name(&cert_path, &hosts).as_deref(),
            Some("fota.example.com")
        );
        ensure_generated(dir.path(), &hosts).unwrap();
        assert_ne!(std::fs::read(&cert_path).unwrap(), cert1);
        assert_eq!(missing_name(&cert_path, &hosts), None);
        assert_eq!(missing_name(&cert_path, &["127.0.0.1".into()]), None);
    }

    #[test]
    fn missing_pem_is_a_clear_error() {
        let err = server_config(&TlsSource::Files {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
