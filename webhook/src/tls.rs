//! The serving certificate: one that follows its files, or one a certificate manager
//! installs ([`crate::managed`]).
//!
//! Kubernetes updates a mounted Secret by swapping the `..data` symlink, so watching the
//! file itself misses the change. Instead every TLS handshake stats the two files (following
//! symlinks) and reloads them when their identity, size or modification time changed. A pair
//! that does not load, or whose key does not match the certificate, is refused and the
//! previous one keeps serving: a half-written rotation never fails a request.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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
    /// PEM text holds no certificate or no usable private key.
    #[error("the {kind} of {origin} is not usable PEM: {source}")]
    Pem {
        /// `certificate` or `private key`.
        kind: &'static str,
        /// Where the text came from.
        origin: String,
        /// What went wrong.
        source: rustls_pki_types::pem::Error,
    },
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
    /// When the keeper of an installed certificate last said it is current.
    confirmed: Option<Instant>,
}

/// Where the served certificate comes from.
#[derive(Debug)]
enum Source {
    /// A PEM certificate chain and key on disk, re-read when they change.
    Files {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    /// Whatever [`ServingCertificate::install`] was last given; ready while its keeper
    /// confirmed it within `stale_after`.
    Installed { stale_after: Duration },
}

/// Resolves the certificate each TLS handshake serves.
#[derive(Debug)]
pub struct ServingCertificate {
    source: Source,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl ServingCertificate {
    /// Serves `cert_path` and `key_path`, reloading them when they change; tries a first
    /// load at once.
    pub fn from_files(cert_path: PathBuf, key_path: PathBuf) -> Self {
        let certificate = Self::with_source(Source::Files {
            cert_path,
            key_path,
        });
        certificate.current();
        certificate
    }

    /// Serves nothing until [`Self::install`] is called. Ready while a certificate is
    /// installed and [`Self::confirm`] (or `install`) was called within `stale_after`: a
    /// keeper that stopped working takes the replica out of its Service before the others
    /// may stop trusting what it serves.
    pub fn installed(stale_after: Duration) -> Self {
        Self::with_source(Source::Installed { stale_after })
    }

    /// Says the installed certificate is still the one to serve (managed certificates).
    pub fn confirm(&self) {
        self.lock().confirmed = Some(Instant::now());
    }

    fn with_source(source: Source) -> Self {
        ServingCertificate {
            source,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            loaded: Mutex::new(Loaded::default()),
        }
    }

    /// Serves `cert_pem` (a chain) with `key_pem` from the next handshake on. `origin` names
    /// where they come from, for errors. A pair that does not load is refused and the
    /// previous one keeps serving.
    pub fn install(
        &self,
        cert_pem: &str,
        key_pem: &str,
        origin: &str,
    ) -> Result<(), CertificateError> {
        let pem_error = |kind| {
            move |source| CertificateError::Pem {
                kind,
                origin: origin.to_owned(),
                source,
            }
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error("certificate"))?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate(PathBuf::from(origin)));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_error("private key"))?;
        let key = CertifiedKey::from_der(chain, key, &self.provider).map_err(|source| {
            CertificateError::Mismatch {
                cert: PathBuf::from(origin),
                key: PathBuf::from(origin),
                source,
            }
        })?;
        let mut loaded = self.lock();
        loaded.set(key);
        loaded.confirmed = Some(Instant::now());
        Ok(())
    }

    /// Whether a certificate is loaded, and for an installed one, confirmed lately
    /// (readiness).
    pub fn is_loaded(&self) -> bool {
        let loaded = self.lock();
        match self.source {
            Source::Installed { stale_after } => {
                loaded.key.is_some()
                    && loaded
                        .confirmed
                        .is_some_and(|confirmed| confirmed.elapsed() < stale_after)
            }
            Source::Files { .. } => loaded.key.is_some(),
        }
    }

    /// The newest valid certificate, reloading it when the files changed.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let Source::Files {
            cert_path,
            key_path,
        } = &self.source
        else {
            return self.lock().key.clone();
        };
        let stamps = (stamp(cert_path), stamp(key_path));
        let mut loaded = self.lock();
        if loaded.stamps != stamps {
            loaded.stamps = stamps;
            match load(cert_path, key_path, &self.provider) {
                Ok(key) => {
                    tracing::info!(cert = %cert_path.display(), "serving certificate loaded");
                    loaded.set(key);
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

impl Loaded {
    fn set(&mut self, key: CertifiedKey) {
        self.not_after = key.end_entity_cert().ok().and_then(not_after);
        self.key = Some(Arc::new(key));
    }
}

fn load(
    cert_path: &Path,
    key_path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<CertifiedKey, CertificateError> {
    let read_error = |kind, path: &Path| {
        let path = path.to_owned();
        move |source| CertificateError::Read { kind, path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(read_error("certificate", cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error("certificate", cert_path))?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate(cert_path.to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(read_error("private key", key_path))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| CertificateError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

/// The end of a DER certificate's validity, in seconds since the epoch.
fn not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}
