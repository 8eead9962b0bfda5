//! Pure planning of the multus-ipmgr helper injection.
//!
//! Given a pod template (its metadata and spec) and the injection settings, [`plan`] decides
//! whether the `aws-ip-mgmt` helper container is added and, if so, returns the RFC 6902 JSON
//! Patch that adds it. There is no IO here: the admission webhook and the offline `inject`
//! command both call [`plan`] and differ only in what they do with the patch. The requests
//! of `multus-ipmgr.io/` resources the pod's networks need ([`RESOURCE_PREFIX`]) depend on
//! the NetworkAttachmentDefinitions they name: the caller reads them and gives them to
//! [`Injection::add_network_requests`].

mod backend;
mod container;
mod decision;
mod mesh;
mod mode;
mod network_resources;
mod networks;
mod quantity;
mod settings;
mod template;

pub use backend::Backend;
pub use container::{HELPER_CONTAINER_NAME, RUN_VOLUME_NAME};
pub use decision::{Decision, DenyReason, Injection, SkipReason, plan};
pub use mesh::{Mesh, MeshExclusions};
pub use mode::{Mode, UnknownMode};
pub use network_resources::{
    InvalidOwnQuantity, NamedDefinition, NetworkDefinitions, NetworkRequests,
    RESOURCE_NAME_ANNOTATION, RESOURCE_PREFIX,
};
pub use networks::{
    InvalidNetworks, ManagedInterfaces, NetworkSelection, SelectionProblem, managed_interfaces,
    parse_networks,
};
pub use quantity::{Quantity, QuantityError};
pub use settings::{
    Choice, FirstPassBudget, HelperSettings, InvalidSettings, ResourceSettings,
    STARTUP_MARGIN_SECONDS, UnknownChoice,
};
pub use template::{
    Annotations, AppContainers, ContainerResources, Kept, Labels, MAX_ANNOTATION_BYTES, NameList,
    OwnResources, PodTemplate, TemplateMetadata, TemplateSpec,
};

use std::borrow::Cow;

/// Longest piece of a pod's own text (an annotation value, a uid) that goes into a denial,
/// a warning or a log line.
pub const EXCERPT_BYTES: usize = 96;

/// `text`, or its first [`EXCERPT_BYTES`] (cut at a character boundary) and its length when
/// it is longer: what a message may quote of untrusted input.
pub fn excerpt(text: &str) -> Cow<'_, str> {
    if text.len() <= EXCERPT_BYTES {
        return Cow::Borrowed(text);
    }
    let cut = (0..=EXCERPT_BYTES)
        .rev()
        .find(|&index| text.is_char_boundary(index))
        .unwrap_or(0);
    Cow::Owned(format!("{}... ({} bytes)", &text[..cut], text.len()))
}

/// Pod annotations the injector reads or writes.
pub mod annotations {
    /// Multus network selection; a pod is a candidate only when this is present and non-empty.
    pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
    /// Injection mode: `init`, `sidecar`, `native-sidecar` or `disabled`.
    pub const MODE: &str = "multus-ipmgr.io/mode";
    /// Written by the injector; its presence marks a pod as already injected.
    pub const STATUS: &str = "multus-ipmgr.io/status";
    /// Per-pod override of the injected container's image, whichever the backend gives it
    /// (the pod client's with the agent backend, the helper's with the direct one).
    pub const IMAGE: &str = "multus-ipmgr.io/image";
    /// Per-pod override of the helper's CPU request.
    pub const CPU_REQUEST: &str = "multus-ipmgr.io/cpu-request";
    /// Per-pod override of the helper's CPU limit.
    pub const CPU_LIMIT: &str = "multus-ipmgr.io/cpu-limit";
    /// Per-pod override of the helper's memory request.
    pub const MEMORY_REQUEST: &str = "multus-ipmgr.io/memory-request";
    /// Per-pod override of the helper's memory limit.
    pub const MEMORY_LIMIT: &str = "multus-ipmgr.io/memory-limit";
    /// Istio injects its proxy when this (or the label of the same name) is `true`.
    pub const ISTIO_INJECT: &str = "sidecar.istio.io/inject";
    /// Outbound ports Istio's proxy leaves alone (comma-separated); written with the agent
    /// backend.
    pub const ISTIO_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    /// Linkerd injects its proxy when this is `enabled` or `ingress`.
    pub const LINKERD_INJECT: &str = "linkerd.io/inject";
    /// Outbound ports Linkerd's proxy leaves alone (comma-separated ports and ranges);
    /// written with the agent backend.
    pub const LINKERD_SKIP_OUTBOUND_PORTS: &str = "config.linkerd.io/skip-outbound-ports";

    /// Every annotation the injector reads; a pod's other annotations are skipped unread.
    pub const READ: [&str; 12] = [
        NETWORKS,
        MODE,
        STATUS,
        IMAGE,
        CPU_REQUEST,
        CPU_LIMIT,
        MEMORY_REQUEST,
        MEMORY_LIMIT,
        ISTIO_INJECT,
        ISTIO_EXCLUDE_OUTBOUND_PORTS,
        LINKERD_INJECT,
        LINKERD_SKIP_OUTBOUND_PORTS,
    ];
}

/// Pod labels the injector reads.
pub mod labels {
    /// Istio injects its proxy when this (or the annotation of the same name) is `true`.
    pub const ISTIO_INJECT: &str = super::annotations::ISTIO_INJECT;

    /// Every label the injector reads; a pod's other labels are skipped unread.
    pub const READ: [&str; 1] = [ISTIO_INJECT];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_short_text_and_shortens_long_text_at_a_character_boundary() {
        assert_eq!(excerpt("short"), "short");
        let exact = "a".repeat(EXCERPT_BYTES);
        assert_eq!(excerpt(&exact), exact.as_str());
        let long = "é".repeat(1_000_000);
        let shortened = excerpt(&long);
        assert!(shortened.len() < EXCERPT_BYTES + 32, "{shortened}");
        assert!(shortened.starts_with("éé"));
        assert!(shortened.ends_with("... (2000000 bytes)"), "{shortened}");
    }
}
