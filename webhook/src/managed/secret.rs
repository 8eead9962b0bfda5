//! What the certificate Secret holds, read and written as plain data.
//!
//! Data keys: `ca.crt` and `ca.key` (the CA that signs the served certificate), `tls.crt`
//! and `tls.key` (the served certificate), and during a CA rotation `next-ca.crt` and
//! `next-ca.key` (the CA that will sign, already trusted) or `previous-ca.crt` (the CA that
//! signed before, still trusted). Annotations: [`GENERATION`], [`PHASE_SINCE`],
//! [`ROTATE_CA`] and one [`ACK_PREFIX`]`<replica>` per replica.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::{RootCertStore, pki_types::ServerName};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer as _, ParsedExtension, X509Certificate};

use crate::certs::PemPair;

/// The CA that signs the served certificate.
pub const CA_CERT: &str = "ca.crt";
/// Its private key.
pub const CA_KEY: &str = "ca.key";
/// The served certificate.
pub const TLS_CERT: &str = "tls.crt";
/// Its private key.
pub const TLS_KEY: &str = "tls.key";
/// The CA a rotation moves to, trusted before it signs.
pub const NEXT_CA_CERT: &str = "next-ca.crt";
/// Its private key.
pub const NEXT_CA_KEY: &str = "next-ca.key";
/// The CA a rotation moved from, trusted until every replica serves the new certificate.
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
const OUR_KEYS: [&str; 7] = [
    CA_CERT,
    CA_KEY,
    TLS_CERT,
    TLS_KEY,
    NEXT_CA_CERT,
    NEXT_CA_KEY,
    PREVIOUS_CA_CERT,
];

/// Counts every change of the data; the MutatingWebhookConfiguration records the one its
/// caBundle came from, so a replica with an older view never writes an older bundle.
pub const GENERATION: &str = "multus-ipmgr.io/generation";
/// When the rotation phase began (unix seconds): the overlap runs from it.
pub const PHASE_SINCE: &str = "multus-ipmgr.io/phase-since";
/// Set by an admin (any value) to rotate the CA now; removed when the rotation begins.
pub const ROTATE_CA: &str = "multus-ipmgr.io/rotate-ca";
/// `<prefix><replica>`: `<CA id>@<unix seconds>@<seconds>`: the CA whose certificate that
/// replica serves, when it said so, and after how long without renewal it counts as gone.
pub const ACK_PREFIX: &str = "multus-ipmgr.io/serving.";

/// The Secret as the store reads it: version, data and annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretView {
    /// `metadata.resourceVersion`: every write is conditioned on it.
    pub resource_version: String,
    /// `data`, decoded.
    pub data: BTreeMap<String, Vec<u8>>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// A CA the Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// Certificate and key.
    pub pem: PemPair,
    /// What names it: its subject key identifier (hex), or its serial number.
    pub id: String,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Start of validity, unix seconds.
    pub not_before: i64,
}

/// The served certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Certificate and key.
    pub pem: PemPair,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// Whether it is valid for the Service's name (false after the Service was renamed).
    pub names_match: bool,
}

/// A CA still trusted after the rotation away from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    /// The certificate.
    pub cert_pem: String,
    /// Its id, as [`Authority::id`].
    pub id: String,
}

/// What one replica said it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The id of the CA that signed the certificate it serves.
    pub ca_id: String,
    /// When it said so, unix seconds.
    pub at: i64,
    /// After how many seconds without renewal the replica counts as gone.
    pub stale_after: i64,
}

/// The valid contents of the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertState {
    /// The CA that signs.
    pub ca: Authority,
    /// The served certificate, signed by `ca`.
    pub served: Served,
    /// The CA a rotation moves to.
    pub next: Option<Authority>,
    /// The CA a rotation moved from.
    pub previous: Option<Retired>,
    /// [`GENERATION`].
    pub generation: u64,
    /// [`PHASE_SINCE`].
    pub phase_since: Option<i64>,
    /// [`ROTATE_CA`] is set.
    pub rotate_requested: bool,
    /// By replica.
    pub acks: BTreeMap<String, Ack>,
}

/// The Secret holds something this webhook did not write and cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key {key} of the certificate Secret: {problem}; nothing was overwritten. Fix or remove the \
     Secret's data (kubectl patch secret NAME --type=json -p '[{{\"op\":\"remove\",\"path\":\"/data\"}}]' \
     makes a new CA) or annotate it with multus-ipmgr.io/rotate-ca after a fix"
)]
pub struct InvalidSecret {
    /// The data key or annotation at fault.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

fn invalid(key: &str, problem: impl Into<String>) -> InvalidSecret {
    InvalidSecret {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

impl SecretView {
    /// The Secret's valid state; `None` when it holds none of our keys yet (a new Secret, or
    /// one whose data an admin removed).
    pub fn state(&self, dns_name: &str) -> Result<Option<CertState>, InvalidSecret> {
        if OUR_KEYS.iter().all(|key| !self.data.contains_key(*key)) {
            return Ok(None);
        }
        let ca = self.authority(CA_CERT, CA_KEY)?;
        let served = self.served(&ca, dns_name)?;
        let next = match (
            self.data.contains_key(NEXT_CA_CERT),
            self.data.contains_key(NEXT_CA_KEY),
        ) {
            (false, false) => None,
            _ => Some(self.authority(NEXT_CA_CERT, NEXT_CA_KEY)?),
        };
        let previous = match self.data.get(PREVIOUS_CA_CERT) {
            None => None,
            Some(_) => {
                let cert_pem = self.text(PREVIOUS_CA_CERT)?;
                let (id, ..) = describe(&single_certificate(PREVIOUS_CA_CERT, &cert_pem)?)
                    .map_err(|problem| invalid(PREVIOUS_CA_CERT, problem))?;
                Some(Retired { cert_pem, id })
            }
        };
        if next.is_some() && previous.is_some() {
            return Err(invalid(
                NEXT_CA_CERT,
                "a rotation cannot have both a next and a previous CA",
            ));
        }
        Ok(Some(CertState {
            ca,
            served,
            next,
            previous,
            generation: self.number(GENERATION)?.unwrap_or(0),
            phase_since: self.number(PHASE_SINCE)?,
            rotate_requested: self.annotations.contains_key(ROTATE_CA),
            acks: self.acks(),
        }))
    }

    fn text(&self, key: &str) -> Result<String, InvalidSecret> {
        let bytes = self.data.get(key).ok_or_else(|| invalid(key, "missing"))?;
        String::from_utf8(bytes.clone()).map_err(|_| invalid(key, "not UTF-8 PEM text"))
    }

    fn number<T: std::str::FromStr>(&self, annotation: &str) -> Result<Option<T>, InvalidSecret> {
        self.annotations
            .get(annotation)
            .map(|text| {
                text.parse()
                    .map_err(|_| invalid(annotation, format!("{text:?} is not a number")))
            })
            .transpose()
    }

    fn acks(&self) -> BTreeMap<String, Ack> {
        self.annotations
            .iter()
            .filter_map(|(key, value)| {
                let replica = key.strip_prefix(ACK_PREFIX)?;
                let mut parts = value.split('@');
                let ack = Ack {
                    ca_id: parts.next()?.to_owned(),
                    at: parts.next()?.parse().ok()?,
                    stale_after: parts.next()?.parse().ok()?,
                };
                Some((replica.to_owned(), ack))
            })
            .collect()
    }

    fn authority(&self, cert_key: &str, key_key: &str) -> Result<Authority, InvalidSecret> {
        let pem = PemPair {
            cert_pem: self.text(cert_key)?,
            key_pem: self.text(key_key)?,
        };
        Authority::from_pem(pem, cert_key, key_key)
    }

    fn served(&self, ca: &Authority, dns_name: &str) -> Result<Served, InvalidSecret> {
        let pem = PemPair {
            cert_pem: self.text(TLS_CERT)?,
            key_pem: self.text(TLS_KEY)?,
        };
        Served::from_pem(pem, ca, dns_name)
    }
}

impl Authority {
    /// A CA from its PEM pair; `cert_key` and `key_key` name them in errors.
    pub fn from_pem(pem: PemPair, cert_key: &str, key_key: &str) -> Result<Self, InvalidSecret> {
        let der = single_certificate(cert_key, &pem.cert_pem)?;
        let (id, not_before, not_after, is_ca) =
            describe(&der).map_err(|problem| invalid(cert_key, problem))?;
        if !is_ca {
            return Err(invalid(
                cert_key,
                "not a CA certificate (basicConstraints CA:FALSE)",
            ));
        }
        check_key_matches(key_key, &der, &pem.key_pem)?;
        Ok(Authority {
            pem,
            id,
            not_after,
            not_before,
        })
    }
}

impl Served {
    /// The served certificate from its PEM pair, checked against `ca` and `dns_name`.
    pub fn from_pem(pem: PemPair, ca: &Authority, dns_name: &str) -> Result<Self, InvalidSecret> {
        let der = single_certificate(TLS_CERT, &pem.cert_pem)?;
        let (_, not_before, not_after, _) =
            describe(&der).map_err(|problem| invalid(TLS_CERT, problem))?;
        check_key_matches(TLS_KEY, &der, &pem.key_pem)?;
        let names_match = verify_signed_by(&der, ca, not_before, dns_name)?;
        Ok(Served {
            pem,
            not_after,
            not_before,
            names_match,
        })
    }
}

fn single_certificate(key: &str, pem: &str) -> Result<CertificateDer<'static>, InvalidSecret> {
    let mut certificates = CertificateDer::pem_slice_iter(pem.as_bytes());
    match (certificates.next(), certificates.next()) {
        (Some(Ok(der)), None) => Ok(der),
        (Some(Ok(_)), Some(_)) => Err(invalid(key, "holds more than one certificate")),
        (Some(Err(error)), _) => Err(invalid(key, format!("not PEM: {error}"))),
        (None, _) => Err(invalid(key, "holds no PEM certificate")),
    }
}

/// Id, notBefore, notAfter and whether it is a CA.
fn describe(der: &CertificateDer<'_>) -> Result<(String, i64, i64, bool), String> {
    let (_, certificate) = X509Certificate::from_der(der)
        .map_err(|error| format!("not an X.509 certificate: {error}"))?;
    let key_identifier =
        certificate
            .extensions()
            .iter()
            .find_map(|extension| match extension.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(identifier) => Some(hex(identifier.0)),
                _ => None,
            });
    let id = key_identifier.unwrap_or_else(|| hex(certificate.raw_serial()));
    let validity = certificate.validity();
    Ok((
        id,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        certificate.is_ca(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn check_key_matches(
    key_key: &str,
    cert: &CertificateDer<'_>,
    key_pem: &str,
) -> Result<(), InvalidSecret> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|error| invalid(key_key, format!("not a PEM private key: {error}")))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(vec![cert.clone().into_owned()], key, &provider)
        .map(|_| ())
        .map_err(|error| {
            invalid(
                key_key,
                format!("does not belong to its certificate: {error}"),
            )
        })
}

/// Whether `served` verifies under `ca` as the API server checks it (WebPKI, at the start
/// of its validity, so an expired pair is renewed rather than refused): `Ok(false)` when
/// only the name does not match.
fn verify_signed_by(
    served: &CertificateDer<'_>,
    ca: &Authority,
    not_before: i64,
    dns_name: &str,
) -> Result<bool, InvalidSecret> {
    let mut roots = RootCertStore::empty();
    let ca_der = single_certificate(CA_CERT, &ca.pem.cert_pem)?;
    roots
        .add(ca_der)
        .map_err(|error| invalid(CA_CERT, format!("not usable as a trust anchor: {error}")))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|error| invalid(CA_CERT, error.to_string()))?;
    let name = ServerName::try_from(dns_name.to_owned())
        .map_err(|_| invalid(TLS_CERT, format!("{dns_name} is not a DNS name")))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(not_before + 60).unwrap_or_default(),
    ));
    match verifier.verify_server_cert(served, &[], &name, &[], at) {
        Ok(_) => Ok(true),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        | Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { .. },
        )) => Ok(false),
        Err(error) => Err(invalid(
            TLS_CERT,
            format!("does not verify under {CA_CERT}: {error}"),
        )),
    }
}

impl CertState {
    /// The caBundle: every CA a replica may serve a certificate of, PEM, the signing one
    /// first, each on lines of its own (a CA edited in by hand may lack the last newline,
    /// and Go's PEM decoder finds no block glued to the end of another).
    pub fn bundle(&self) -> String {
        let next = self.next.as_ref().map(|next| next.pem.cert_pem.as_str());
        let previous = self
            .previous
            .as_ref()
            .map(|previous| previous.cert_pem.as_str());
        let mut bundle = String::new();
        for pem in [Some(self.ca.pem.cert_pem.as_str()), next, previous]
            .into_iter()
            .flatten()
        {
            bundle.push_str(pem);
            if !pem.ends_with('\n') {
                bundle.push('\n');
            }
        }
        bundle
    }

    /// `view` with this state written over our keys and annotations; everything else in it
    /// is left as it was.
    pub fn written_over(&self, view: &SecretView) -> SecretView {
        let mut written = view.clone();
        written
            .data
            .retain(|key, _| !OUR_KEYS.contains(&key.as_str()));
        let mut put = |key: &str, text: &str| {
            written
                .data
                .insert(key.to_owned(), text.as_bytes().to_vec());
        };
        put(CA_CERT, &self.ca.pem.cert_pem);
        put(CA_KEY, &self.ca.pem.key_pem);
        put(TLS_CERT, &self.served.pem.cert_pem);
        put(TLS_KEY, &self.served.pem.key_pem);
        if let Some(next) = &self.next {
            put(NEXT_CA_CERT, &next.pem.cert_pem);
            put(NEXT_CA_KEY, &next.pem.key_pem);
        }
        if let Some(previous) = &self.previous {
            put(PREVIOUS_CA_CERT, &previous.cert_pem);
        }
        let annotations = &mut written.annotations;
        annotations.retain(|key, _| {
            !(key.starts_with(ACK_PREFIX)
                || [GENERATION, PHASE_SINCE, ROTATE_CA].contains(&key.as_str()))
        });
        annotations.insert(GENERATION.to_owned(), self.generation.to_string());
        if let Some(since) = self.phase_since {
            annotations.insert(PHASE_SINCE.to_owned(), since.to_string());
        }
        if self.rotate_requested {
            annotations.insert(ROTATE_CA.to_owned(), "requested".to_owned());
        }
        for (replica, ack) in &self.acks {
            annotations.insert(
                ack_key(replica),
                format!("{}@{}@{}", ack.ca_id, ack.at, ack.stale_after),
            );
        }
        written
    }
}

/// The name a replica acknowledges under: the name part of an annotation key is at most 63
/// characters, so a longer replica name (ASCII, as pod names are) keeps its last part.
pub fn ack_name(replica: &str) -> &str {
    let room = 63 - (ACK_PREFIX.len() - "multus-ipmgr.io/".len());
    &replica[replica.len().saturating_sub(room)..]
}

fn ack_key(name: &str) -> String {
    format!("{ACK_PREFIX}{name}")
}

/// Whether the base64-decoded caBundle `bundle` holds `cert_pem`'s certificate.
pub fn bundle_holds(bundle: &[u8], cert_pem: &str) -> bool {
    let Some(Ok(wanted)) = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() else {
        return false;
    };
    CertificateDer::pem_slice_iter(bundle).any(|found| found.is_ok_and(|found| found == wanted))
}
