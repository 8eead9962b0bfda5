use crate::annotations;
use crate::{Mode, Quantity};

/// CPU and memory requests and limits of the injected container.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSettings {
    /// CPU request, e.g. `10m`.
    pub cpu_request: Quantity,
    /// CPU limit, e.g. `200m`.
    pub cpu_limit: Quantity,
    /// Memory request, e.g. `24Mi`.
    pub memory_request: Quantity,
    /// Memory limit, e.g. `64Mi`.
    pub memory_limit: Quantity,
}

/// Everything the injector needs to know to build the helper container.
#[derive(Clone, Debug, PartialEq)]
pub struct HelperSettings {
    /// Helper image reference.
    pub image: String,
    /// `imagePullPolicy` of the helper container.
    pub image_pull_policy: String,
    /// Path of the `ipmgr-helper` binary inside the image (also used by the startup probe).
    pub command: String,
    /// Extra arguments appended after the helper subcommand.
    pub extra_args: Vec<String>,
    /// The helper's log filter (`IPMGR_LOG` in its container).
    pub log_filter: String,
    /// Mode used when a pod has no mode annotation.
    pub default_mode: Mode,
    /// Requests and limits.
    pub resources: ResourceSettings,
    /// UID and GID the helper runs as (non-root).
    pub run_as_user: i64,
    /// Whether pods may choose another image through the image annotation.
    pub allow_image_override: bool,
}

/// A combination of settings that would give pods the API server rejects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSettings {
    /// A request is larger than its limit.
    #[error(
        "{resource} request {request} is larger than its limit {limit}; raise the limit or lower the request"
    )]
    RequestAboveLimit {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// The request as written.
        request: String,
        /// The limit as written.
        limit: String,
    },
    /// The run-as user is root.
    #[error("run-as-user must be a non-zero UID (the helper runs as non-root), got {0}")]
    RootUser(i64),
    /// The image is empty or contains whitespace.
    #[error(
        "helper image {0:?} is not an image reference; set --helper-image (IPMGR_HELPER_IMAGE)"
    )]
    InvalidImage(String),
}

impl ResourceSettings {
    /// Checks that no request exceeds its limit.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let check = |resource, request: &Quantity, limit: &Quantity| {
            if request.value() > limit.value() {
                Err(InvalidSettings::RequestAboveLimit {
                    resource,
                    request: request.to_string(),
                    limit: limit.to_string(),
                })
            } else {
                Ok(())
            }
        };
        check("cpu", &self.cpu_request, &self.cpu_limit)?;
        check("memory", &self.memory_request, &self.memory_limit)
    }

    /// The annotation that overrides each field, with a mutable reference to that field.
    pub(crate) fn overridable(&mut self) -> [(&'static str, &mut Quantity); 4] {
        [
            (annotations::CPU_REQUEST, &mut self.cpu_request),
            (annotations::CPU_LIMIT, &mut self.cpu_limit),
            (annotations::MEMORY_REQUEST, &mut self.memory_request),
            (annotations::MEMORY_LIMIT, &mut self.memory_limit),
        ]
    }
}

/// Whether `image` can be an image reference: non-empty, no whitespace.
pub(crate) fn is_image_reference(image: &str) -> bool {
    !image.is_empty() && !image.contains(char::is_whitespace)
}

impl HelperSettings {
    /// Checks the settings once at start-up, so that no pod gets an invalid container.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        if !is_image_reference(&self.image) {
            return Err(InvalidSettings::InvalidImage(self.image.clone()));
        }
        if self.run_as_user == 0 {
            return Err(InvalidSettings::RootUser(self.run_as_user));
        }
        self.resources.validate()
    }
}
