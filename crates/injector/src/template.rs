use std::collections::BTreeMap;

use serde::Deserialize;

/// The parts of a pod template the injector reads, as plain data.
///
/// It deserializes from a Pod, or from the `template` of a workload, and skips every other
/// field, which makes reading an admission request several times cheaper than a full
/// `k8s_openapi` Pod. `null` is accepted wherever Kubernetes accepts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PodTemplate {
    /// `metadata` of the template.
    #[serde(default)]
    pub metadata: Option<TemplateMetadata>,
    /// `spec` of the template.
    #[serde(default)]
    pub spec: Option<TemplateSpec>,
}

/// `metadata` of a pod template: only the annotations matter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TemplateMetadata {
    /// `metadata.annotations`.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `spec` of a pod template: what decides the injection and where the patch goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// `spec.hostNetwork`.
    #[serde(default)]
    pub host_network: Option<bool>,
    /// `spec.containers`, names only.
    #[serde(default)]
    pub containers: Option<Vec<Named>>,
    /// `spec.initContainers`, names only.
    #[serde(default)]
    pub init_containers: Option<Vec<Named>>,
    /// `spec.volumes`, names only.
    #[serde(default)]
    pub volumes: Option<Vec<Named>>,
}

/// A container or volume, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Named {
    /// Its `name`.
    #[serde(default)]
    pub name: String,
}

impl PodTemplate {
    /// The value of annotation `key`, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// Whether the pod shares the node's network namespace.
    pub fn host_network(&self) -> bool {
        self.spec.as_ref().and_then(|spec| spec.host_network) == Some(true)
    }

    /// `spec.containers` (empty when absent).
    pub fn containers(&self) -> &[Named] {
        self.list(|spec| &spec.containers)
    }

    /// `spec.initContainers` (empty when absent).
    pub fn init_containers(&self) -> &[Named] {
        self.list(|spec| &spec.init_containers)
    }

    /// `spec.volumes` (empty when absent).
    pub fn volumes(&self) -> &[Named] {
        self.list(|spec| &spec.volumes)
    }

    fn list(&self, field: impl Fn(&TemplateSpec) -> &Option<Vec<Named>>) -> &[Named] {
        self.spec
            .as_ref()
            .and_then(|spec| field(spec).as_deref())
            .unwrap_or_default()
    }
}
