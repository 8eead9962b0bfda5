//! Pure planning of the multus-ipmgr helper injection.
//!
//! Given a pod template (its metadata and spec) and the injection settings, [`plan`] decides
//! whether the `aws-ip-mgmt` helper container is added and, if so, returns the RFC 6902 JSON
//! Patch that adds it. There is no IO here: the admission webhook and the offline `inject`
//! command both call [`plan`] and differ only in what they do with the patch.

mod container;
mod decision;
mod mode;
mod quantity;
mod settings;
mod template;

pub use container::{HELPER_CONTAINER_NAME, RUN_VOLUME_NAME};
pub use decision::{Decision, DenyReason, Injection, SkipReason, plan};
pub use mode::{Mode, UnknownMode};
pub use quantity::{Quantity, QuantityError};
pub use settings::{HelperSettings, InvalidSettings, ResourceSettings};
pub use template::{Named, PodTemplate, TemplateMetadata, TemplateSpec};

/// Pod annotations the injector reads or writes.
pub mod annotations {
    /// Multus network selection; a pod is a candidate only when this is present and non-empty.
    pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
    /// Injection mode: `init`, `sidecar`, `native-sidecar` or `disabled`.
    pub const MODE: &str = "multus-ipmgr.io/mode";
    /// Written by the injector; its presence marks a pod as already injected.
    pub const STATUS: &str = "multus-ipmgr.io/status";
    /// Per-pod override of the helper image.
    pub const IMAGE: &str = "multus-ipmgr.io/image";
    /// Per-pod override of the helper's CPU request.
    pub const CPU_REQUEST: &str = "multus-ipmgr.io/cpu-request";
    /// Per-pod override of the helper's CPU limit.
    pub const CPU_LIMIT: &str = "multus-ipmgr.io/cpu-limit";
    /// Per-pod override of the helper's memory request.
    pub const MEMORY_REQUEST: &str = "multus-ipmgr.io/memory-request";
    /// Per-pod override of the helper's memory limit.
    pub const MEMORY_LIMIT: &str = "multus-ipmgr.io/memory-limit";
}
