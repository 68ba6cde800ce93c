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
    let chain = read_chain(&cert).map_err(|e| pem_err(CERT_ROLE, &cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(CERT_ROLE, &cert, "no certificate in file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(&key).map_err(|e| pem_err(KEY_ROLE, &key, e.to_string()))?;
    if let Some(algorithm) = not_rsa(&key_der) {
        tracing::warn!(
            key = %key.display(),
            ?algorithm,
            "the HTTPS certificate's key is not RSA: modules offer only ECDHE-RSA cipher suites \
             (TLS 1.2) and will fail the handshake (HTTPEND 701); use an RSA certificate"
        );
    }
    let mut config = identity(chain, key_der)?;
    // HTTP/1.0 too: a client offering only `http/1.0` (curl --http1.0)
    // is served as over plain HTTP, not refused in the handshake.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file, in order.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// A server configuration (TLS 1.3 and 1.2, no client certificates) for
/// `chain` and `key`.
///
/// # Errors
/// rustls refuses the pair (a key that does not match the certificate).
fn identity(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
}

/// The key's algorithm when it is not RSA (ECDSA, Ed25519), `None` for
/// RSA or a key the provider cannot load (rustls then says why).
fn not_rsa(key: &PrivateKeyDer<'_>) -> Option<rustls::SignatureAlgorithm> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .ok()?;
    let algorithm = signing.algorithm();
    (algorithm != rustls::SignatureAlgorithm::RSA).then_some(algorithm)
}

/// What a failed handshake's error means for a module, for the download
/// log's reason: rustls's own words, and a hint where they mislead.
pub fn explain_handshake_error(err: &std::io::Error) -> String {
    use rustls::PeerIncompatible as P;
    let hint = match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        // A TLS 1.0/1.1 ClientHello has no signature_algorithms extension.
        Some(rustls::Error::PeerIncompatible(P::SignatureAlgorithmsExtensionRequired)) => {
            "; the client offered TLS 1.0/1.1 only (TLS 1.2 is the oldest served)"
        }
        Some(rustls::Error::PeerIncompatible(P::NoCipherSuitesInCommon)) => {
            "; modules need ECDHE-RSA-AES128/256-GCM-SHA256/384 and an RSA certificate"
        }
        _ => "",
    };
    format!("TLS handshake failed: {err}{hint}")
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
        match unusable(&cert_path, &key_path, hosts) {
            None => {
                tracing::info!(cert = %cert_path.display(), "reusing generated TLS certificate");
                return Ok((cert_path, key_path));
            }
            Some(why) => tracing::info!(
                cert = %cert_path.display(),
                "generated TLS certificate not reused ({why}): generating a new one"
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
    // Each file whole or not at all (a temporary file renamed into place);
    // a start interrupted between the two leaves a pair the next start
    // finds mismatched and makes anew.
    write_private(&key_path, key_pair.serialize_pem().as_bytes()).map_err(write_err(&key_path))?;
    write_replacing(&cert_path, cert.pem().as_bytes(), 0o644).map_err(write_err(&cert_path))?;
    tracing::info!(cert = %cert_path.display(), sans = ?names, "generated RSA 2048 self-signed TLS certificate");
    Ok((cert_path, key_path))
}

/// Why the generated pair in `cert` and `key` cannot be reused, `None`
/// when it can: the certificate does not name one of `hosts` (the public
/// host changed since: a module that checks names would refuse it), the
/// key is unreadable or not RSA (modules speak only RSA suites), or the
/// two do not belong together (a start interrupted between writing them).
fn unusable(cert: &Path, key: &Path, hosts: &[String]) -> Option<String> {
    if let Some(host) = missing_name(cert, hosts) {
        return Some(format!("it does not name {host}"));
    }
    let Ok(key_der) = PrivateKeyDer::from_pem_file(key) else {
        return Some("unreadable key".into());
    };
    if let Some(algorithm) = not_rsa(&key_der) {
        return Some(format!("{algorithm:?} key, not RSA"));
    }
    let chain = read_chain(cert).ok()?;
    identity(chain, key_der)
        .err()
        .map(|e| format!("the key does not match the certificate: {e}"))
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
/// file exists (mode 0600, whatever the mode of the file it replaces).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_replacing(path, bytes, 0o600)
}

/// Writes `bytes` to a new temporary file of mode `mode` beside `path`,
/// then renames it over `path`: readers see the old file or the new one,
/// whole.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // A random name: two starts sharing the folder (replicas that are
    // each PID 1 in their container) never write the same file.
    let temp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
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

    /// A pair that cannot serve modules is made anew: a key that does not
    /// match the certificate (a start interrupted between the two files),
    /// or an ECDSA pair put under the generated names. The new key is
    /// owner-only whatever the old file's mode was.
    #[test]
    fn a_mismatched_or_non_rsa_pair_is_made_anew_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = vec!["192.0.2.2".to_string()];
        ensure_generated(a.path(), &hosts).unwrap();
        ensure_generated(b.path(), &hosts).unwrap();
        let (cert, key) = (a.path().join(GENERATED_CERT), a.path().join(GENERATED_KEY));
        std::fs::copy(b.path().join(GENERATED_KEY), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            unusable(&cert, &key, &hosts)
                .unwrap()
                .contains("does not match")
        );
        ensure_generated(a.path(), &hosts).unwrap();
        assert_eq!(unusable(&cert, &key, &hosts), None);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let ec = rcgen::KeyPair::generate().unwrap();
        let ec_cert = rcgen::CertificateParams::new(vec!["192.0.2.2".to_string()])
            .unwrap()
            .self_signed(&ec)
            .unwrap();
        std::fs::write(&key, ec.serialize_pem()).unwrap();
        std::fs::write(&cert, ec_cert.pem()).unwrap();
        let der = PrivateKeyDer::from_pem_file(&key).unwrap();
        assert_eq!(not_rsa(&der), Some(rustls::SignatureAlgorithm::ECDSA));
        assert!(unusable(&cert, &key, &hosts).unwrap().contains("not RSA"));
        ensure_generated(a.path(), &hosts).unwrap();
        assert_eq!(unusable(&cert, &key, &hosts), None);
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
