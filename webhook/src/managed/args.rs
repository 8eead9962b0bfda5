//! The `serve` flags of the managed certificates.

use std::time::Duration;

use clap::Args;

use super::ManagedSettings;
use super::plan::Policy;
use crate::certs::ServiceIdentity;

const DAY: i64 = 24 * 60 * 60;

/// Where the certificates live and how long they last (with `--certificates managed`).
#[derive(Args, Clone, Debug)]
pub struct ManagedArgs {
    /// Secret that holds the CA and the serving certificate (the chart creates it empty).
    #[arg(long, env = "IPMGR_CERT_SECRET", default_value = "ipmgr-webhook-certs")]
    pub cert_secret: String,

    /// Namespace of the Secret and of the webhook Service (the chart passes the pod's).
    #[arg(long, env = "IPMGR_NAMESPACE", default_value = "multus-ipmgr")]
    pub namespace: String,

    /// Name of this replica (the chart passes the pod's name): it acknowledges the
    /// certificate it serves under it during a CA rotation.
    #[arg(long, env = "IPMGR_REPLICA_NAME", default_value = "ipmgr-webhook", value_parser = replica_name)]
    pub replica_name: String,

    /// MutatingWebhookConfiguration whose caBundle the webhook writes.
    #[arg(
        long,
        env = "IPMGR_WEBHOOK_CONFIGURATION",
        default_value = "multus-ipmgr"
    )]
    pub webhook_configuration: String,

    /// Name of the webhook Service (the certificate is for <service>.<namespace>.svc).
    #[arg(long, env = "IPMGR_SERVICE", default_value = "ipmgr-webhook")]
    pub service: String,

    /// Validity of a new CA, in days; it is rotated when a third is left.
    #[arg(long, env = "IPMGR_CA_VALID_DAYS", default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_valid_days: u32,

    /// Validity of a new serving certificate, in days (never beyond its CA's); it is
    /// re-issued when a third is left.
    #[arg(long, env = "IPMGR_CERT_VALID_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub cert_valid_days: u32,

    /// Seconds both CAs stay trusted before a CA rotation's next step: longer than the API
    /// server takes to see a new caBundle.
    #[arg(long, env = "IPMGR_ROTATION_OVERLAP_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub rotation_overlap_seconds: u32,

    /// Seconds between checks of the Secret and the caBundle.
    #[arg(long, env = "IPMGR_CERT_CHECK_SECONDS", default_value = "30", value_parser = crate::config::seconds)]
    pub cert_check_seconds: Duration,
}

/// A replica name: a pod name (lower-case letters, digits, `-` and `.`).
fn replica_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 253
        && text.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-.".contains(&byte)
        });
    valid.then(|| text.to_owned()).ok_or_else(|| {
        format!("{text:?} is not a pod name (lower-case letters, digits, '-' and '.')")
    })
}

impl ManagedArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> ManagedSettings {
        let check = self.cert_check_seconds;
        ManagedSettings {
            identity: ServiceIdentity {
                service: self.service.clone(),
                namespace: self.namespace.clone(),
                valid_days: self.cert_valid_days,
            },
            replica: self.replica_name.clone(),
            policy: Policy::new(
                i64::from(self.ca_valid_days) * DAY,
                i64::from(self.cert_valid_days) * DAY,
                i64::from(self.rotation_overlap_seconds),
                i64::try_from(check.as_secs().max(1)).unwrap_or(i64::MAX),
            ),
            check,
        }
    }
}
