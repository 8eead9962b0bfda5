//! Serving certificate that follows its files.
//!
//! Kubernetes updates a mounted Secret by swapping the `..data` symlink, so watching the
//! file itself misses the change. Instead every TLS handshake stats the two files (following
//! symlinks) and reloads them when their identity, size or modification time changed. A pair
//! that does not load, or whose key does not match the certificate, is refused and the
//! previous one keeps serving: a half-written rotation never fails a request.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and key pair that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A file could not be read or holds no PEM object of the expected kind.
    #[error("cannot read {kind} from {path}: {source}")]
    Read {
        /// `certificate` or `private key`.
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// The key is not usable or does not belong to the certificate.
    #[error("certificate {cert} and key {key} do not form a usable pair: {source}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// The rustls error.
        source: rustls::Error,
    },
}

/// What identifies one version of a file: inode, size and modification time.
type FileStamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.ino(), metadata.len(), metadata.modified().ok()?))
}

#[derive(Debug, Default)]
struct Loaded {
    stamps: (FileStamp, FileStamp),
    key: Option<Arc<CertifiedKey>>,
    /// `notAfter` of the served certificate, seconds since the epoch.
    not_after: Option<i64>,
}

/// Resolves the serving certificate from a PEM certificate chain and key, reloading them
/// when the files change.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl ReloadingCertificate {
    /// Watches `cert_path` and `key_path`; tries a first load at once.
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> Self {
        let certificate = ReloadingCertificate {
            cert_path,
            key_path,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            loaded: Mutex::new(Loaded::default()),
        };
        certificate.current();
        certificate
    }

    /// Whether a certificate is loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.lock().key.is_some()
    }

    /// The newest valid certificate, reloading it when the files changed.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        let mut loaded = self.lock();
        if loaded.stamps != stamps {
            loaded.stamps = stamps;
            match self.load() {
                Ok(key) => {
                    let not_after = key.end_entity_cert().ok().and_then(not_after);
                    tracing::info!(cert = %self.cert_path.display(), not_after, "serving certificate loaded");
                    loaded.key = Some(Arc::new(key));
                    loaded.not_after = not_after;
                }
                Err(error) => tracing::warn!(
                    %error,
                    keeps_previous = loaded.key.is_some(),
                    "serving certificate not reloaded; fix the files, they are checked again on the next connection"
                ),
            }
        }
        loaded.key.clone()
    }

    /// `notAfter` of the certificate being served, in seconds since the epoch.
    pub fn not_after(&self) -> Option<i64> {
        self.lock().not_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self) -> Result<CertifiedKey, CertificateError> {
        let read_error = |kind, path: &Path| {
            let path = path.to_owned();
            move |source| CertificateError::Read { kind, path, source }
        };
        let chain = CertificateDer::pem_file_iter(&self.cert_path)
            .map_err(read_error("certificate", &self.cert_path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_error("certificate", &self.cert_path))?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate(self.cert_path.clone()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key_path)
            .map_err(read_error("private key", &self.key_path))?;
        CertifiedKey::from_der(chain, key, &self.provider).map_err(|source| {
            CertificateError::Mismatch {
                cert: self.cert_path.clone(),
                key: self.key_path.clone(),
                source,
            }
        })
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1) serving this
    /// certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The end of a DER certificate's validity, in seconds since the epoch.
fn not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}
