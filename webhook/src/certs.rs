//! Self-signed CA and serving certificate for the webhook Service: made here, written where
//! kustomize picks them up (`certs`), or kept in a Secret by [`crate::managed`].

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Where the webhook Service lives, and for how long the certificate is valid.
#[derive(Clone, Debug)]
pub struct ServiceIdentity {
    /// Service name.
    pub service: String,
    /// Service namespace.
    pub namespace: String,
    /// Validity of the CA and the serving certificate, in days.
    pub valid_days: u32,
}

/// PEM texts of a freshly generated CA and serving certificate.
#[derive(Debug)]
pub struct GeneratedCertificates {
    /// The CA certificate (the webhook's caBundle).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// Certificate generation or writing failed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused the parameters.
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

impl ServiceIdentity {
    /// The DNS names the API server may use for the Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (service, namespace) = (&self.service, &self.namespace);
        vec![
            service.clone(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]
    }

    /// The name the API server calls the Service by (`<service>.<namespace>.svc`).
    pub fn service_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// Generates a new CA and a serving certificate for [`Self::dns_names`], signed by it,
    /// both valid for `valid_days`.
    pub fn generate(&self) -> Result<GeneratedCertificates, CertsError> {
        let not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(self.valid_days));
        let ca = self.new_authority(not_after)?;
        let serving = self.issue_serving(&ca, not_after)?;
        Ok(GeneratedCertificates {
            ca_pem: ca.cert_pem,
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
        })
    }

    /// A new self-signed CA (ECDSA P-256, path length 0) valid from five minutes ago (clock
    /// skew) until `not_after`.
    pub fn new_authority(&self, not_after: OffsetDateTime) -> Result<PemPair, CertsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("multus-ipmgr webhook CA ({})", self.namespace),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, not_after);
        let key = KeyPair::generate()?;
        let ca = CertifiedIssuer::self_signed(params, key)?;
        Ok(PemPair {
            cert_pem: ca.pem(),
            key_pem: ca.key().serialize_pem(),
        })
    }

    /// A new serving certificate for [`Self::dns_names`] (fresh key), signed by `ca`, valid
    /// from five minutes ago until `not_after`.
    pub fn issue_serving(
        &self,
        ca: &PemPair,
        not_after: OffsetDateTime,
    ) -> Result<PemPair, CertsError> {
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, KeyPair::from_pem(&ca.key_pem)?)?;
        let mut params = CertificateParams::new(self.dns_names())?;
        params
            .distinguished_name
            .push(DnType::CommonName, self.service_name());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, not_after);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Valid from five minutes ago (the API server's clock may lag ours) until `not_after`.
fn set_validity(params: &mut CertificateParams, not_after: OffsetDateTime) {
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    params.not_after = not_after;
}

/// The JSON 6902 patch (YAML) that sets the caBundle of the MutatingWebhookConfiguration.
pub fn ca_bundle_patch(ca_pem: &str) -> String {
    format!(
        "# Generated by `ipmgr-webhook certs`: sets the caBundle of the webhook.\n- op: add\n  path: /webhooks/0/clientConfig/caBundle\n  value: {}\n",
        BASE64.encode(ca_pem)
    )
}

/// Writes `tls.crt`, `tls.key` (mode 0600), `ca.crt` and `cabundle-patch.yaml` into `dir`,
/// creating it. Returns the written paths.
pub fn write_for_kustomize(
    dir: &Path,
    certificates: &GeneratedCertificates,
) -> Result<Vec<PathBuf>, CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let files = [
        ("tls.crt", certificates.cert_pem.as_str(), 0o644),
        ("tls.key", certificates.key_pem.as_str(), 0o600),
        ("ca.crt", certificates.ca_pem.as_str(), 0o644),
        (
            "cabundle-patch.yaml",
            &ca_bundle_patch(&certificates.ca_pem),
            0o644,
        ),
    ];
    files
        .into_iter()
        .map(|(name, contents, mode)| {
            let path = dir.join(name);
            write_file(&path, contents, mode)
                .map(|()| path.clone())
                .map_err(|source| CertsError::Write { path, source })
        })
        .collect()
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}
