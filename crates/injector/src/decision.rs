use std::fmt;

use json_patch::jsonptr::{Pointer, PointerBuf};
use json_patch::{AddOperation, Patch, PatchOperation};
use serde::Serialize;
use serde_json::Value;

use crate::container::{ContainerSpec, run_volume};
use crate::mesh::Mesh;
use crate::network_resources::{
    InvalidOwnQuantity, NamedDefinition, NetworkDefinitions, NetworkPlan, named_definitions,
    network_requests,
};
use crate::networks::{ManagedInterfaces, parse_networks};
use crate::settings::is_image_reference;
use crate::template::AppContainers;
use crate::{
    Backend, HELPER_CONTAINER_NAME, HelperSettings, InvalidNetworks, Mode, NetworkSelection,
    PodTemplate, Quantity, QuantityError, RUN_VOLUME_NAME, UnknownMode, annotations, excerpt,
};

/// What the injector does with one pod template.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Add the helper with this patch.
    Inject(Injection),
    /// Leave the pod unchanged.
    Skip(SkipReason),
    /// Refuse the pod: its annotations ask for something invalid.
    Deny(DenyReason),
}

/// A planned injection.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    /// The mode the helper runs in.
    pub mode: Mode,
    /// RFC 6902 operations, relative to the document the template pointer was given for.
    pub patch: Patch,
    /// Where the pod's network requests come from and go.
    networks: NetworkPlan,
}

impl Injection {
    /// The NetworkAttachmentDefinitions the pod's networks name (a pod in `namespace`), whose
    /// resourceName [`Injection::add_network_requests`] needs.
    pub fn network_definitions(&self, namespace: &str) -> Vec<NamedDefinition> {
        named_definitions(&self.networks.selections, namespace)
    }

    /// Adds to the patch the requests and limits of `multus-ipmgr.io/` resources the pod's
    /// networks need ([`crate::RESOURCE_PREFIX`]), given the `definitions` they name (a
    /// pod in `namespace`); refused when one is missing from `definitions`, or when the
    /// first container sets one of them to something that is not a quantity.
    pub fn add_network_requests(
        &mut self,
        namespace: &str,
        definitions: &NetworkDefinitions,
    ) -> Result<(), DenyReason> {
        let requests = network_requests(&self.networks.selections, namespace, definitions)
            .map_err(|missing| DenyReason::MissingNetworkDefinition(Box::new(missing)))?;
        let operations = self.networks.operations(&requests)?;
        self.patch.0.extend(operations);
        Ok(())
    }
}

/// Why a pod is left unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No (or an empty) Multus networks annotation.
    NoMultusNetworks,
    /// The pod uses the node's network namespace: it has no Multus interfaces of its own.
    HostNetwork,
    /// The mode annotation says `disabled` (or the default mode is `disabled`).
    Disabled,
    /// The status annotation is present: injected before (reinvocation or an injected template).
    AlreadyInjected,
    /// A container or initContainer named `aws-ip-mgmt` exists (added by hand).
    HelperPresent,
}

impl SkipReason {
    /// Short stable label, used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::NoMultusNetworks => "no_multus_networks",
            SkipReason::HostNetwork => "host_network",
            SkipReason::Disabled => "disabled",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::HelperPresent => "helper_present",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            SkipReason::NoMultusNetworks => {
                "no Multus networks requested (annotation k8s.v1.cni.cncf.io/networks absent or empty)"
            }
            SkipReason::HostNetwork => "hostNetwork pods are never injected",
            SkipReason::Disabled => "injection disabled by annotation multus-ipmgr.io/mode",
            SkipReason::AlreadyInjected => {
                "already injected (annotation multus-ipmgr.io/status present)"
            }
            SkipReason::HelperPresent => "a container named aws-ip-mgmt is already present",
        };
        f.write_str(text)
    }
}

/// Why a pod is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// The mode annotation has an unknown value.
    #[error(transparent)]
    UnknownMode(#[from] UnknownMode),
    /// A resource override annotation is not a quantity.
    #[error("annotation {annotation}: {source}")]
    InvalidQuantity {
        /// The annotation key.
        annotation: &'static str,
        /// What is wrong with its value.
        source: QuantityError,
    },
    /// After overrides, a request is larger than its limit.
    #[error(
        "{0} (set by the multus-ipmgr.io/*-request and *-limit annotations or the webhook defaults)"
    )]
    RequestAboveLimit(crate::InvalidSettings),
    /// The image annotation is not an image reference.
    #[error("annotation {annotation} has value {value:?}, which is not an image reference", annotation = annotations::IMAGE)]
    InvalidImage {
        /// The rejected value.
        value: String,
    },
    /// The image annotation is used but the webhook does not allow it.
    #[error("annotation {annotation} is not allowed by this webhook (allow-image-override is off); remove it", annotation = annotations::IMAGE)]
    ImageOverrideNotAllowed,
    /// The image annotation names an image outside the allowed prefixes.
    #[error("annotation {annotation} has value {value:?}, which does not start with an allowed image prefix ({prefixes}); use an image from there or remove the annotation", annotation = annotations::IMAGE)]
    ImageNotAllowed {
        /// The rejected value, shortened.
        value: String,
        /// The allowed prefixes, comma-separated.
        prefixes: String,
    },
    /// The networks annotation does not parse (Multus would refuse the pod too).
    #[error("annotation {annotation} has value {value:?}, which Multus cannot read: {reason}; fix the network selection", annotation = annotations::NETWORKS)]
    InvalidNetworks {
        /// The rejected value, shortened.
        value: String,
        /// What is wrong with it (boxed: denials stay small).
        reason: Box<InvalidNetworks>,
    },
    /// The pod already has a volume with the name the helper needs.
    #[error(
        "the pod already has a volume named {RUN_VOLUME_NAME}, which the native-sidecar helper needs; rename it"
    )]
    VolumeNameTaken,
    /// A network selection names a NetworkAttachmentDefinition that does not exist (boxed:
    /// denials stay small).
    #[error("{0}, which does not exist: create it or correct the annotation")]
    MissingNetworkDefinition(Box<NamedDefinition>),
    /// The first container sets a request or limit of our resources to a non-quantity.
    #[error(transparent)]
    InvalidNetworkRequest(#[from] InvalidOwnQuantity),
}

/// Decides the injection for one pod template.
///
/// `template` points at the pod template inside the document the patch will be applied to:
/// the root for a Pod, `/spec/template` for a Deployment. The result depends only on the
/// arguments.
pub fn plan(template: &Pointer, pod: &PodTemplate, settings: &HelperSettings) -> Decision {
    match candidate(pod, settings) {
        Ok((mode, selections)) => {
            let interfaces = ManagedInterfaces::of(&selections);
            match build_patch(template, mode, &interfaces, pod, settings) {
                Ok(patch) => Decision::Inject(Injection {
                    mode,
                    patch,
                    networks: NetworkPlan {
                        selections,
                        container: first_container(template, pod),
                    },
                }),
                Err(reason) => Decision::Deny(reason),
            }
        }
        Err(ModeDecision::Skip(reason)) => Decision::Skip(reason),
        Err(ModeDecision::Deny(reason)) => Decision::Deny(reason),
    }
}

enum ModeDecision {
    Skip(SkipReason),
    Deny(DenyReason),
}

/// The mode of a pod that gets the helper, and its network selections.
fn candidate(
    pod: &PodTemplate,
    settings: &HelperSettings,
) -> Result<(Mode, Vec<NetworkSelection>), ModeDecision> {
    let networks = pod.annotation(annotations::NETWORKS).unwrap_or_default();
    if networks.trim().is_empty() {
        return Err(ModeDecision::Skip(SkipReason::NoMultusNetworks));
    }
    if pod.host_network() {
        return Err(ModeDecision::Skip(SkipReason::HostNetwork));
    }
    if pod.annotation(annotations::STATUS).is_some() {
        return Err(ModeDecision::Skip(SkipReason::AlreadyInjected));
    }
    if pod.containers().holds(HELPER_CONTAINER_NAME)
        || pod.init_containers().holds(HELPER_CONTAINER_NAME)
    {
        return Err(ModeDecision::Skip(SkipReason::HelperPresent));
    }
    let mode = match pod.annotation(annotations::MODE) {
        Some(value) => value
            .parse::<Mode>()
            .map_err(|error| ModeDecision::Deny(error.into()))?,
        None => settings.default_mode,
    };
    if mode == Mode::Disabled {
        return Err(ModeDecision::Skip(SkipReason::Disabled));
    }
    let selections = parse_networks(networks).map_err(|reason| {
        ModeDecision::Deny(DenyReason::InvalidNetworks {
            value: excerpt(networks).into_owned(),
            reason: Box::new(reason),
        })
    })?;
    if selections.is_empty() {
        // `[]`: Multus attaches nothing.
        return Err(ModeDecision::Skip(SkipReason::NoMultusNetworks));
    }
    Ok((mode, selections))
}

/// The pointer of the first app container (before the helper is added) and its resources.
fn first_container(
    template: &Pointer,
    pod: &PodTemplate,
) -> Option<(PointerBuf, Option<crate::ContainerResources>)> {
    let resources = pod
        .app_containers()
        .and_then(AppContainers::first_resources)?;
    let path = child(&child(&child(template, "spec"), "containers"), "0");
    Some((path, resources.cloned()))
}

fn build_patch(
    template: &Pointer,
    mode: Mode,
    interfaces: &ManagedInterfaces,
    pod: &PodTemplate,
    settings: &HelperSettings,
) -> Result<Patch, DenyReason> {
    let image = match pod.annotation(annotations::IMAGE) {
        Some(_) if !settings.allow_image_override => {
            return Err(DenyReason::ImageOverrideNotAllowed);
        }
        Some(value) if !is_image_reference(value.trim()) => {
            return Err(DenyReason::InvalidImage {
                value: excerpt(value).into_owned(),
            });
        }
        Some(value) if !settings.image_allowed(value.trim()) => {
            return Err(DenyReason::ImageNotAllowed {
                value: excerpt(value.trim()).into_owned(),
                prefixes: settings.allowed_image_prefixes.join(", "),
            });
        }
        Some(value) => value.trim(),
        None => settings.backend_image(),
    };
    let mut resources = settings.resources.clone();
    for (key, field) in resources.overridable() {
        if let Some(value) = pod.annotation(key) {
            *field =
                value
                    .trim()
                    .parse::<Quantity>()
                    .map_err(|source| DenyReason::InvalidQuantity {
                        annotation: key,
                        source,
                    })?;
        }
    }
    resources
        .validate()
        .map_err(DenyReason::RequestAboveLimit)?;
    let agent_port = (settings.backend == Backend::Agent).then_some(settings.agent_port);
    let meshes: Vec<Mesh> = settings.mesh_exclusions.meshes(pod).collect();
    let container = ContainerSpec {
        mode,
        image,
        image_pull_policy: &settings.image_pull_policy,
        command: settings.backend_command(),
        extra_args: &settings.extra_args,
        log_filter: &settings.log_filter,
        interfaces,
        resources: &resources,
        run_as_user: meshes
            .first()
            .map_or(settings.run_as_user, |mesh| mesh.proxy_uid()),
        agent_port,
        first_pass: settings.first_pass,
    }
    .container();

    let mut operations = Vec::with_capacity(5);
    let spec_path = child(template, "spec");
    match mode {
        Mode::Init => operations.push(add_to_list(
            &spec_path,
            "initContainers",
            pod.init_containers().len(),
            At::Index(0),
            &container,
        )),
        // A native sidecar stops after those behind it: behind a mesh's native proxy, the
        // helper's release runs before the proxy stops.
        Mode::NativeSidecar => {
            let init_containers = pod.init_containers();
            let after_proxies = Mesh::ALL
                .iter()
                .filter_map(|mesh| init_containers.position(mesh.proxy_container()))
                .map(|position| position + 1)
                .max()
                .unwrap_or(0);
            operations.push(add_to_list(
                &spec_path,
                "initContainers",
                init_containers.len(),
                At::Index(after_proxies),
                &container,
            ));
        }
        Mode::Sidecar | Mode::Disabled => operations.push(add_to_list(
            &spec_path,
            "containers",
            pod.containers().len(),
            At::End,
            &container,
        )),
    }
    if mode == Mode::NativeSidecar {
        let volumes = pod.volumes();
        if volumes.holds(RUN_VOLUME_NAME) {
            return Err(DenyReason::VolumeNameTaken);
        }
        operations.push(add_to_list(
            &spec_path,
            "volumes",
            volumes.len(),
            At::End,
            &run_volume(),
        ));
    }
    if let Some(port) = agent_port {
        for mesh in meshes {
            if let Some(ports) = mesh.excluding(pod, port) {
                operations.push(add_annotation(template, mesh.exclusion_annotation(), ports));
            }
        }
    }
    operations.push(add_annotation(
        template,
        annotations::STATUS,
        mode.as_str().to_owned(),
    ));
    Ok(Patch(operations))
}

fn child(parent: &Pointer, token: &str) -> PointerBuf {
    let mut path = parent.to_buf();
    path.push_back(token);
    path
}

fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("Kubernetes API types always serialize to JSON")
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// Where [`add_to_list`] puts the new item.
#[derive(Clone, Copy)]
enum At {
    /// At this index (the items from there on move back by one).
    Index(usize),
    /// After the last item.
    End,
}

/// Adds `item` to the array `parent/field` `at` a place; when the array is absent or empty
/// it is (re)created holding just `item`, so the patch applies to any valid pod.
fn add_to_list(
    parent: &Pointer,
    field: &str,
    existing_len: usize,
    at: At,
    item: &impl Serialize,
) -> PatchOperation {
    let list = child(parent, field);
    if existing_len == 0 {
        return add(list, Value::Array(vec![to_value(item)]));
    }
    let index = match at {
        At::Index(index) if index < existing_len => index.to_string(),
        At::Index(_) | At::End => "-".to_owned(),
    };
    add(child(&list, &index), to_value(item))
}

/// Sets annotation `key` of the template (the status that marks it injected, a mesh's
/// exclusions). The annotations map exists: the networks annotation is in it, or there would
/// be no injection.
fn add_annotation(template: &Pointer, key: &str, value: String) -> PatchOperation {
    let mut path = child(&child(template, "metadata"), "annotations");
    path.push_back(key);
    add(path, Value::String(value))
}
