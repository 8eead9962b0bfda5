//! The Kubernetes edge of the managed certificates: the Secret and the caBundle of the
//! MutatingWebhookConfiguration, each write conditioned on the resourceVersion read.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Map, Value, json};

use super::secret::{SecretView, bundle_holds};

/// The annotation on the webhook configuration: the Secret generation its caBundle is from.
pub const BUNDLE_GENERATION: &str = "multus-ipmgr.io/ca-bundle-generation";

/// A conditioned write's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// It was written.
    Done,
    /// Someone else wrote first (409 Conflict or AlreadyExists): read again.
    Conflict,
}

/// The webhook configuration as far as certificates go.
#[derive(Clone, Debug)]
pub struct BundleView {
    /// Each webhook's caBundle, decoded (empty when unset).
    pub bundles: Vec<Vec<u8>>,
    /// [`BUNDLE_GENERATION`], when set.
    pub generation: Option<u64>,
    object: MutatingWebhookConfiguration,
}

impl BundleView {
    /// Whether every webhook's caBundle is exactly `bundle`.
    pub fn is(&self, bundle: &str) -> bool {
        !self.bundles.is_empty() && self.bundles.iter().all(|found| found == bundle.as_bytes())
    }

    /// Whether every webhook's caBundle holds `cert_pem`.
    pub fn holds(&self, cert_pem: &str) -> bool {
        !self.bundles.is_empty()
            && self
                .bundles
                .iter()
                .all(|found| bundle_holds(found, cert_pem))
    }
}

/// A call to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API server refused or could not be reached.
    #[error("{what}: {source}")]
    Api {
        /// The object and verb.
        what: String,
        /// kube's error.
        source: kube::Error,
    },
    /// The webhook configuration does not exist.
    #[error(
        "MutatingWebhookConfiguration {0} not found: the chart creates it; check \
         --webhook-configuration (IPMGR_WEBHOOK_CONFIGURATION)"
    )]
    NoConfiguration(String),
    /// The webhook configuration has no webhook to write the caBundle of.
    #[error("MutatingWebhookConfiguration {0} has no webhooks to set the caBundle of")]
    NoWebhooks(String),
}

/// The Secret `namespace/secret` and the webhook configuration `configuration`.
#[derive(Clone)]
pub struct KubeStore {
    secrets: Api<Secret>,
    configurations: Api<MutatingWebhookConfiguration>,
    /// `namespace/name` of the Secret, for messages.
    pub secret_path: String,
    secret: String,
    configuration: String,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KubeStore")
            .field("secret", &self.secret_path)
            .field("configuration", &self.configuration)
            .finish()
    }
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> StoreError {
    move |source| StoreError::Api { what, source }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_conflict() || status.is_already_exists())
}

impl KubeStore {
    /// The store of `namespace/secret` and `configuration`.
    pub fn new(client: Client, namespace: &str, secret: &str, configuration: &str) -> Self {
        KubeStore {
            secrets: Api::namespaced(client.clone(), namespace),
            configurations: Api::all(client),
            secret_path: format!("{namespace}/{secret}"),
            secret: secret.to_owned(),
            configuration: configuration.to_owned(),
        }
    }

    /// The Secret, or `None` when it does not exist.
    pub async fn read_secret(&self) -> Result<Option<SecretView>, StoreError> {
        let secret = self
            .secrets
            .get_opt(&self.secret)
            .await
            .map_err(api_error(format!("cannot get Secret {}", self.secret_path)))?;
        Ok(secret.map(|secret| SecretView {
            resource_version: secret.metadata.resource_version.unwrap_or_default(),
            annotations: secret.metadata.annotations.unwrap_or_default(),
            data: secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, value)| (key, value.0))
                .collect(),
        }))
    }

    /// Creates the Secret empty (the chart does this; RBAC may not allow it).
    pub async fn create_secret(&self) -> Result<Written, StoreError> {
        let mut secret = Secret::default();
        secret.metadata.name = Some(self.secret.clone());
        secret.type_ = Some("Opaque".to_owned());
        match self.secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(Written::Done),
            Err(error) if is_conflict(&error) => Ok(Written::Conflict),
            Err(error) => Err(api_error(format!(
                "Secret {} does not exist and cannot be created (the chart creates it; \
                 without the chart create it: kubectl create secret generic {} -n {})",
                self.secret_path,
                self.secret,
                self.secrets_namespace()
            ))(error)),
        }
    }

    fn secrets_namespace(&self) -> &str {
        self.secret_path.split('/').next().unwrap_or_default()
    }

    /// Writes what changed from `read` to `written` as a merge patch conditioned on the
    /// version read; other fields and keys stay as they are.
    pub async fn write_secret(
        &self,
        read: &SecretView,
        written: &SecretView,
    ) -> Result<Written, StoreError> {
        let patch = json!({
            "metadata": {
                "resourceVersion": read.resource_version,
                "annotations": changes(&read.annotations, &written.annotations, |value| json!(value)),
            },
            "data": changes(&read.data, &written.data, |value| {
                json!(ByteString(value.clone()))
            }),
        });
        let outcome = self
            .secrets
            .patch(&self.secret, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        match outcome {
            Ok(_) => Ok(Written::Done),
            Err(error) if is_conflict(&error) => Ok(Written::Conflict),
            Err(error) => Err(api_error(format!(
                "cannot update Secret {}",
                self.secret_path
            ))(error)),
        }
    }

    /// The webhook configuration's caBundles.
    pub async fn read_bundle(&self) -> Result<BundleView, StoreError> {
        let object = self
            .configurations
            .get_opt(&self.configuration)
            .await
            .map_err(api_error(format!(
                "cannot get MutatingWebhookConfiguration {}",
                self.configuration
            )))?
            .ok_or_else(|| StoreError::NoConfiguration(self.configuration.clone()))?;
        let webhooks = object.webhooks.as_deref().unwrap_or_default();
        if webhooks.is_empty() {
            return Err(StoreError::NoWebhooks(self.configuration.clone()));
        }
        Ok(BundleView {
            bundles: webhooks
                .iter()
                .map(|webhook| {
                    let bundle = webhook.client_config.ca_bundle.as_ref();
                    bundle.map(|bundle| bundle.0.clone()).unwrap_or_default()
                })
                .collect(),
            generation: object
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(BUNDLE_GENERATION))
                .and_then(|generation| generation.parse().ok()),
            object,
        })
    }

    /// Sets every webhook's caBundle to `bundle`, from Secret generation `generation`,
    /// replacing the configuration as read (conditioned on its version).
    pub async fn write_bundle(
        &self,
        read: &BundleView,
        bundle: &str,
        generation: u64,
    ) -> Result<Written, StoreError> {
        let mut object = read.object.clone();
        for webhook in object.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(ByteString(bundle.as_bytes().to_vec()));
        }
        object
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(BUNDLE_GENERATION.to_owned(), generation.to_string());
        object.metadata.managed_fields = None;
        match self
            .configurations
            .replace(&self.configuration, &PostParams::default(), &object)
            .await
        {
            Ok(_) => Ok(Written::Done),
            Err(error) if is_conflict(&error) => Ok(Written::Conflict),
            Err(error) => Err(api_error(format!(
                "cannot update the caBundle of MutatingWebhookConfiguration {}",
                self.configuration
            ))(error)),
        }
    }
}

/// A merge patch's map from `read` to `written`: changed keys with their values, removed
/// ones as null.
fn changes<T: PartialEq>(
    read: &BTreeMap<String, T>,
    written: &BTreeMap<String, T>,
    value: impl Fn(&T) -> Value,
) -> Map<String, Value> {
    let removed = read
        .keys()
        .filter(|key| !written.contains_key(*key))
        .map(|key| (key.clone(), Value::Null));
    let changed = written
        .iter()
        .filter(|(key, found)| read.get(*key) != Some(found))
        .map(|(key, found)| (key.clone(), value(found)));
    removed.chain(changed).collect()
}
