use std::cmp::Ordering;

use crate::annotations;
use crate::{Backend, MeshExclusions, Mode, Quantity};

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
    /// When not empty, an overriding image must start with one of these prefixes (see
    /// [`HelperSettings::image_allowed`]).
    pub allowed_image_prefixes: Vec<String>,
    /// How the helper reaches EC2: through its node's agent, or itself.
    pub backend: Backend,
    /// TCP port of the node agent's pod API on the node's IP (agent backend).
    pub agent_port: u16,
    /// Which pods get the service meshes' outbound exclusion of the agent port (agent
    /// backend).
    pub mesh_exclusions: MeshExclusions,
}

/// A setting with a fixed set of values, each with a name (flags, environment variables).
pub trait Choice: Copy + 'static {
    /// What the setting is, for messages.
    const SETTING: &'static str;
    /// Every value, in the order the documentation lists them.
    const ALL: &'static [Self];

    /// The value's name.
    fn name(self) -> &'static str;

    /// The value named `name` (surrounding whitespace ignored).
    fn from_name(name: &str) -> Result<Self, UnknownChoice> {
        Self::ALL
            .iter()
            .copied()
            .find(|value| value.name() == name.trim())
            .ok_or_else(|| UnknownChoice {
                setting: Self::SETTING,
                value: crate::excerpt(name).into_owned(),
                valid: Self::ALL.iter().map(|value| value.name()).collect(),
            })
    }
}

/// A name that is none of a [`Choice`]'s values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{setting} has unknown value {value:?}; valid values are {}", valid.join(", "))]
pub struct UnknownChoice {
    /// The setting.
    pub setting: &'static str,
    /// The rejected value, shortened to an [`excerpt`](crate::excerpt).
    pub value: String,
    /// The valid names.
    pub valid: Vec<&'static str>,
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
    /// An allowed image prefix is empty or contains whitespace.
    #[error(
        "allowed image prefix {0:?} is not the start of an image reference; use a registry or repository such as registry.example.com/team/"
    )]
    InvalidImagePrefix(String),
    /// Image prefixes are set while image overrides are off, where they would do nothing.
    #[error(
        "--allowed-image-prefix (IPMGR_ALLOWED_IMAGE_PREFIXES) is set but --allow-image-override is off; turn the override on or remove the prefixes"
    )]
    PrefixesWithoutOverride,
    /// The agent port is 0.
    #[error(
        "--agent-port (IPMGR_AGENT_PORT) must be the TCP port the node agent listens on (1-65535, default 9472), got 0"
    )]
    ZeroAgentPort,
}

impl ResourceSettings {
    /// Checks that no request exceeds its limit.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let check = |resource, request: &Quantity, limit: &Quantity| {
            if request.compare(limit) == Ordering::Greater {
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
        if let Some(prefix) = self
            .allowed_image_prefixes
            .iter()
            .find(|prefix| !is_image_reference(prefix))
        {
            return Err(InvalidSettings::InvalidImagePrefix(prefix.clone()));
        }
        if !self.allowed_image_prefixes.is_empty() && !self.allow_image_override {
            return Err(InvalidSettings::PrefixesWithoutOverride);
        }
        if self.agent_port == 0 {
            return Err(InvalidSettings::ZeroAgentPort);
        }
        self.resources.validate()
    }

    /// Whether a pod may run `image` through the image annotation: overrides are allowed and,
    /// when prefixes are set, `image` starts with one of them at a boundary of the reference
    /// (`registry.example.com` admits `registry.example.com/helper:1` but not
    /// `registry.example.com.attacker.io/helper:1`).
    pub fn image_allowed(&self, image: &str) -> bool {
        self.allow_image_override
            && (self.allowed_image_prefixes.is_empty()
                || self.allowed_image_prefixes.iter().any(|prefix| {
                    image.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                        prefix.ends_with(['/', ':', '@'])
                            || rest.is_empty()
                            || rest.starts_with(['/', ':', '@'])
                    })
                }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn settings(allow: bool, prefixes: &[&str]) -> HelperSettings {
        let quantity = |text: &str| text.parse().expect("quantity");
        HelperSettings {
            image: "registry.example.com/ipmgr-helper:1".to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            command: "/usr/local/bin/ipmgr-helper".to_owned(),
            extra_args: Vec::new(),
            log_filter: "info".to_owned(),
            default_mode: Mode::Init,
            resources: ResourceSettings {
                cpu_request: quantity("9m"),
                cpu_limit: quantity("0.009"),
                memory_request: quantity("24Mi"),
                memory_limit: quantity("64Mi"),
            },
            run_as_user: 65532,
            allow_image_override: allow,
            allowed_image_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            backend: Backend::Agent,
            agent_port: 9472,
            mesh_exclusions: MeshExclusions::Auto,
        }
    }

    #[test]
    fn a_request_equal_to_its_limit_in_other_notation_is_valid() {
        assert_eq!(settings(false, &[]).validate(), Ok(()));
    }

    #[rstest]
    #[case::off(false, &[], "mirror.example.com/helper:1", false)]
    #[case::any_image(true, &[], "anything/at:all", true)]
    #[case::registry(true, &["mirror.example.com"], "mirror.example.com/helper:1", true)]
    #[case::registry_with_slash(true, &["mirror.example.com/"], "mirror.example.com/helper:1", true)]
    #[case::lookalike_registry(true, &["mirror.example.com"], "mirror.example.com.attacker.io/helper:1", false)]
    #[case::lookalike_repository(true, &["mirror.example.com/team"], "mirror.example.com/team-evil/helper:1", false)]
    #[case::repository(true, &["mirror.example.com/team"], "mirror.example.com/team/helper@sha256:00", true)]
    #[case::second_prefix(true, &["a.example/", "b.example/"], "b.example/helper:1", true)]
    #[case::elsewhere(true, &["mirror.example.com/"], "docker.io/helper:1", false)]
    fn image_prefixes(
        #[case] allow: bool,
        #[case] prefixes: &[&str],
        #[case] image: &str,
        #[case] allowed: bool,
    ) {
        assert_eq!(settings(allow, prefixes).image_allowed(image), allowed);
    }

    #[rstest]
    #[case(settings(false, &["mirror.example.com/"]), InvalidSettings::PrefixesWithoutOverride)]
    #[case(settings(true, &[""]), InvalidSettings::InvalidImagePrefix(String::new()))]
    #[case(HelperSettings { agent_port: 0, ..settings(false, &[]) }, InvalidSettings::ZeroAgentPort)]
    fn refuses_settings_that_cannot_work(
        #[case] settings: HelperSettings,
        #[case] error: InvalidSettings,
    ) {
        assert_eq!(settings.validate(), Err(error));
    }

    fn round_trip<T: Choice + PartialEq + std::fmt::Debug>() {
        for value in T::ALL {
            assert_eq!(T::from_name(&format!(" {} ", value.name())), Ok(*value));
        }
    }

    #[test]
    fn choices_parse_their_names() {
        round_trip::<Backend>();
        round_trip::<MeshExclusions>();
        assert_eq!(
            MeshExclusions::from_name("sometimes")
                .expect_err("unknown")
                .to_string(),
            "mesh exclusions has unknown value \"sometimes\"; valid values are auto, always, never"
        );
    }
}
