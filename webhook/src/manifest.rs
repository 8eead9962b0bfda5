//! Offline injection into Kubernetes manifests (`ipmgr-webhook inject`), through the same
//! [`ipmgr_injector::plan`] the webhook uses, with the network requests of the
//! NetworkAttachmentDefinitions given in files.

use std::fmt;

use ipmgr_injector::{
    Decision, DenyReason, HelperSettings, Mode, NamedDefinition, PodTemplate, SkipReason, plan,
};
use json_patch::jsonptr::{Pointer, PointerBuf};
use serde::Deserialize as _;
use serde_json::Value;

use crate::network_definitions::files::DefinitionFiles;

/// The namespace of an object that names none, as `kubectl apply` without `-n` gives it.
const DEFAULT_NAMESPACE: &str = "default";

/// What happened to one object of the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// `kind/name` of the object.
    pub object: String,
    /// Injected, skipped, or not a workload.
    pub result: ReportResult,
}

/// The result for one object.
#[derive(Clone, Debug, PartialEq)]
pub enum ReportResult {
    /// The helper was added in this mode.
    Injected(Mode),
    /// Left unchanged.
    Skipped(SkipReason),
    /// Not a kind that carries a pod template; passed through unchanged.
    NotAWorkload,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            ReportResult::Injected(mode) => write!(f, "{}: injected ({mode})", self.object),
            ReportResult::Skipped(reason) => write!(f, "{}: skipped: {reason}", self.object),
            ReportResult::NotAWorkload => write!(f, "{}: not a workload, unchanged", self.object),
        }
    }
}

/// Input that cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A document is not YAML.
    #[error("document {index} is not valid YAML: {source}")]
    Yaml {
        /// 1-based document number.
        index: usize,
        /// The parser error.
        source: serde_yaml::Error,
    },
    /// A pod template does not parse as one.
    #[error("{object}: pod template at {pointer} is not a valid pod template: {source}")]
    Template {
        /// `kind/name`.
        object: String,
        /// Where the template is.
        pointer: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A network names a definition the files do not hold.
    #[error(
        "{object}: {definition}, which is not in the --network-attachment-definitions files ({files}): add it to them or correct the annotation"
    )]
    MissingDefinition {
        /// `kind/name`.
        object: String,
        /// The definition and the selection that names it (boxed: errors stay small).
        definition: Box<NamedDefinition>,
        /// The files, comma-separated.
        files: String,
    },
    /// The injector refused the pod template, as the webhook would deny the pod.
    #[error("{object}: {reason}")]
    Denied {
        /// `kind/name`.
        object: String,
        /// Why.
        reason: DenyReason,
    },
    /// Applying the patch failed (a bug: the patch is built from the same document).
    #[error("{object}: cannot apply the injection patch: {source}")]
    Patch {
        /// `kind/name`.
        object: String,
        /// The json-patch error.
        source: json_patch::PatchError,
    },
    /// Output serialization failed.
    #[error("cannot write YAML: {0}")]
    Output(serde_yaml::Error),
}

/// Injects every workload in a multi-document YAML (or JSON) stream and returns the
/// resulting YAML stream with one report per object; with `definitions`, injected pods get
/// the requests of the `multus-ipmgr.io/` resources their networks need.
pub fn inject_yaml(
    input: &str,
    settings: &HelperSettings,
    definitions: Option<&DefinitionFiles>,
) -> Result<(String, Vec<Report>), ManifestError> {
    let mut output = String::new();
    let mut reports = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let mut value = Value::deserialize(document).map_err(|source| ManifestError::Yaml {
            index: index + 1,
            source,
        })?;
        if value.is_null() {
            continue;
        }
        inject_object(&mut value, settings, definitions, &mut reports)?;
        if !output.is_empty() {
            output.push_str("---\n");
        }
        output.push_str(&serde_yaml::to_string(&value).map_err(ManifestError::Output)?);
    }
    Ok((output, reports))
}

/// Where the pod template of a kind is, if it has one.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "PodTemplate" => Some("/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects one object (recursing into the items of a List) in place.
pub fn inject_object(
    value: &mut Value,
    settings: &HelperSettings,
    definitions: Option<&DefinitionFiles>,
    reports: &mut Vec<Report>,
) -> Result<(), ManifestError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        for item in value
            .get_mut("items")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            inject_object(item, settings, definitions, reports)?;
        }
        return Ok(());
    }
    let name = value
        .pointer("/metadata/name")
        .or_else(|| value.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let object = format!("{}/{name}", kind.to_lowercase());
    let Some(pointer) = template_pointer(&kind) else {
        reports.push(Report {
            object,
            result: ReportResult::NotAWorkload,
        });
        return Ok(());
    };
    let pointer = PointerBuf::parse(pointer).expect("template pointers are valid JSON pointers");
    let template = read_template(value, &pointer).map_err(|source| ManifestError::Template {
        object: object.clone(),
        pointer: pointer.to_string(),
        source,
    })?;
    let result = match plan(&pointer, &template, settings) {
        Decision::Inject(mut injection) => {
            if let Some(files) = definitions {
                let namespace = value["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(DEFAULT_NAMESPACE);
                injection
                    .add_network_requests(namespace, &files.definitions)
                    .map_err(|reason| match reason {
                        DenyReason::MissingNetworkDefinition(definition) => {
                            ManifestError::MissingDefinition {
                                object: object.clone(),
                                definition,
                                files: files.names(),
                            }
                        }
                        reason => ManifestError::Denied {
                            object: object.clone(),
                            reason,
                        },
                    })?;
            }
            json_patch::patch(value, &injection.patch.0).map_err(|source| {
                ManifestError::Patch {
                    object: object.clone(),
                    source,
                }
            })?;
            ReportResult::Injected(injection.mode)
        }
        Decision::Skip(reason) => ReportResult::Skipped(reason),
        Decision::Deny(reason) => return Err(ManifestError::Denied { object, reason }),
    };
    reports.push(Report { object, result });
    Ok(())
}

fn read_template(value: &Value, pointer: &Pointer) -> Result<PodTemplate, serde_json::Error> {
    pointer
        .resolve(value)
        .ok()
        .map(PodTemplate::deserialize)
        .transpose()
        .map(Option::unwrap_or_default)
}
