//! The Kubernetes edge of the managed certificates: the Secret and the caBundle of the
//! MutatingWebhookConfiguration, each write conditioned on the resourceVersion read.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::secret::{SecretView, bundle_holds};
use crate::kube_api::{ApiClient, ApiError};

/// The annotation on the webhook configuration: the Secret generation its caBundle is from.
pub const BUNDLE_GENERATION: &str = "multus-ipmgr.io/ca-bundle-generation";
const MERGE_PATCH: &str = "application/merge-patch+json";
const JSON: &str = "application/json";

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
    object: Value,
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
    /// The API server could not be reached.
    #[error(transparent)]
    Transport(#[from] ApiError),
    /// The API server refused.
    #[error("{what}: HTTP {code}: {message}{hint}")]
    Refused {
        /// The object and verb.
        what: String,
        /// The HTTP status.
        code: u16,
        /// The Status message.
        message: String,
        /// What to check.
        hint: &'static str,
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
    /// The API server answered something that is not the object asked for.
    #[error("{what}: the answer is not a Kubernetes object: {detail}")]
    Unreadable {
        /// The object.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

fn refused(what: String, status: StatusCode, body: &Value) -> StoreError {
    StoreError::Refused {
        what,
        code: status.as_u16(),
        message: body["message"].as_str().unwrap_or("no message").to_owned(),
        hint: if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            " (check the webhook's RBAC: the chart grants get and patch on the Secret (Role \
             ipmgr-webhook) and get and update on the MutatingWebhookConfiguration \
             (ClusterRole multus-ipmgr-webhook), by name)"
        } else {
            ""
        },
    }
}

/// The Secret `namespace/secret` and the webhook configuration `configuration`.
#[derive(Clone, Debug)]
pub struct KubeStore {
    api: ApiClient,
    /// `namespace/name` of the Secret, for messages.
    pub secret_path: String,
    secrets: String,
    secret: String,
    configuration: String,
}

impl KubeStore {
    /// The store of `namespace/secret` and `configuration`.
    pub fn new(api: ApiClient, namespace: &str, secret: &str, configuration: &str) -> Self {
        KubeStore {
            api,
            secret_path: format!("{namespace}/{secret}"),
            secrets: format!("/api/v1/namespaces/{namespace}/secrets"),
            secret: secret.to_owned(),
            configuration: configuration.to_owned(),
        }
    }

    fn secret_url(&self) -> String {
        format!("{}/{}", self.secrets, self.secret)
    }

    fn configuration_url(&self) -> String {
        format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{}",
            self.configuration
        )
    }

    /// The Secret, or `None` when it does not exist.
    pub async fn read_secret(&self) -> Result<Option<SecretView>, StoreError> {
        let what = || format!("cannot get Secret {}", self.secret_path);
        let (status, secret) = self.api.call(Method::GET, &self.secret_url(), None).await?;
        match status {
            StatusCode::NOT_FOUND => return Ok(None),
            status if !status.is_success() => return Err(refused(what(), status, &secret)),
            _ => {}
        }
        let strings = |value: &Value| -> BTreeMap<String, String> {
            value
                .as_object()
                .map(|map| {
                    map.iter()
                        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let data = strings(&secret["data"])
            .into_iter()
            .map(|(key, encoded)| {
                BASE64
                    .decode(encoded)
                    .map(|decoded| (key.clone(), decoded))
                    .map_err(|_| StoreError::Unreadable {
                        what: what(),
                        detail: format!("data key {key} is not base64"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(SecretView {
            resource_version: secret["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            annotations: strings(&secret["metadata"]["annotations"]),
            data,
        }))
    }

    /// Creates the Secret empty (the chart does this; RBAC may not allow it).
    pub async fn create_secret(&self) -> Result<Written, StoreError> {
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": self.secret},
        });
        let namespace = self.secret_path.split('/').next().unwrap_or_default();
        self.write(Method::POST, &self.secrets, JSON, &secret, || {
            format!(
                "Secret {} does not exist and cannot be created (the chart creates it; \
                 without the chart: kubectl create secret generic {} -n {namespace})",
                self.secret_path, self.secret
            )
        })
        .await
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
            "data": changes(&read.data, &written.data, |value| json!(BASE64.encode(value))),
        });
        self.write(
            Method::PATCH,
            &self.secret_url(),
            MERGE_PATCH,
            &patch,
            || format!("cannot update Secret {}", self.secret_path),
        )
        .await
    }

    /// The webhook configuration's caBundles.
    pub async fn read_bundle(&self) -> Result<BundleView, StoreError> {
        let what = || {
            format!(
                "cannot get MutatingWebhookConfiguration {}",
                self.configuration
            )
        };
        let (status, object) = self
            .api
            .call(Method::GET, &self.configuration_url(), None)
            .await?;
        match status {
            StatusCode::NOT_FOUND => {
                return Err(StoreError::NoConfiguration(self.configuration.clone()));
            }
            status if !status.is_success() => return Err(refused(what(), status, &object)),
            _ => {}
        }
        let webhooks = object["webhooks"].as_array().cloned().unwrap_or_default();
        if webhooks.is_empty() {
            return Err(StoreError::NoWebhooks(self.configuration.clone()));
        }
        let bundles = webhooks
            .iter()
            .map(
                |webhook| match webhook["clientConfig"]["caBundle"].as_str() {
                    None => Ok(Vec::new()),
                    Some(encoded) => BASE64.decode(encoded).map_err(|_| StoreError::Unreadable {
                        what: what(),
                        detail: format!(
                            "the caBundle of webhook {} is not base64",
                            webhook["name"]
                        ),
                    }),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(BundleView {
            bundles,
            generation: object["metadata"]["annotations"][BUNDLE_GENERATION]
                .as_str()
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
        let encoded = Value::from(BASE64.encode(bundle));
        for webhook in object["webhooks"].as_array_mut().into_iter().flatten() {
            webhook["clientConfig"]["caBundle"] = encoded.clone();
        }
        let metadata = &mut object["metadata"];
        if !metadata["annotations"].is_object() {
            metadata["annotations"] = json!({});
        }
        metadata["annotations"][BUNDLE_GENERATION] = Value::from(generation.to_string());
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.remove("managedFields");
        }
        self.write(
            Method::PUT,
            &self.configuration_url(),
            JSON,
            &object,
            || {
                format!(
                    "cannot update the caBundle of MutatingWebhookConfiguration {}",
                    self.configuration
                )
            },
        )
        .await
    }

    /// One conditioned write: done, a conflict (409: someone wrote first, or the object
    /// exists), or refused, described by `what`.
    async fn write(
        &self,
        method: Method,
        url: &str,
        content_type: &str,
        body: &Value,
        what: impl FnOnce() -> String,
    ) -> Result<Written, StoreError> {
        let (status, answer) = self
            .api
            .call(method, url, Some((content_type, body)))
            .await?;
        match status {
            status if status.is_success() => Ok(Written::Done),
            StatusCode::CONFLICT => Ok(Written::Conflict),
            status => Err(refused(what(), status, &answer)),
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
