use std::cmp::Ordering;

use ipmgr_contract::budget;

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

/// The helper's first-pass budgets, in seconds: set in its environment, and the source of
/// its native-sidecar startup probe ([`FirstPassBudget::startup_seconds`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstPassBudget {
    /// How long it waits for the pod's Multus addresses (`IPMGR_WAIT_SECONDS`).
    pub wait_seconds: u64,
    /// How long one EC2 call, or one question to the agent, is retried
    /// (`IPMGR_EC2_RETRY_SECONDS`).
    pub ec2_retry_seconds: u64,
    /// How long instance metadata may be unreachable, direct backend
    /// (`IPMGR_METADATA_RETRY_SECONDS`).
    pub metadata_retry_seconds: u64,
}

/// Added to the first pass's budget for the startup probe: the process's start, its probe
/// runs and a retry's last attempt.
pub const STARTUP_MARGIN_SECONDS: u64 = 30;

/// The helper's flags that set a [`FirstPassBudget`], which `--helper-arg` must not set.
const BUDGET_FLAGS: [&str; 3] = [
    "--wait-seconds",
    "--ec2-retry-seconds",
    "--metadata-retry-seconds",
];

impl FirstPassBudget {
    /// The longest first pass with `backend`. Direct: the address wait, then instance
    /// metadata's budget, then an EC2 call's retry budget. Agent: the address wait, then
    /// questions retried within the EC2 retry budget, the last of which may wait that
    /// budget plus [`budget::AGENT_ANSWER_MARGIN_SECONDS`] for its answer.
    pub fn first_pass_seconds(&self, backend: Backend) -> u64 {
        let ec2 = self.ec2_retry_seconds;
        match backend {
            Backend::Direct => self.wait_seconds + self.metadata_retry_seconds + ec2,
            Backend::Agent => self.wait_seconds + ec2 + ec2 + budget::AGENT_ANSWER_MARGIN_SECONDS,
        }
    }

    /// How long the startup probe lets the helper's first pass take:
    /// [`FirstPassBudget::first_pass_seconds`] plus [`STARTUP_MARGIN_SECONDS`].
    pub fn startup_seconds(&self, backend: Backend) -> u64 {
        self.first_pass_seconds(backend) + STARTUP_MARGIN_SECONDS
    }
}

impl Default for FirstPassBudget {
    /// The helper's own defaults.
    fn default() -> Self {
        FirstPassBudget {
            wait_seconds: budget::WAIT_SECONDS,
            ec2_retry_seconds: budget::EC2_RETRY_SECONDS,
            metadata_retry_seconds: budget::METADATA_RETRY_SECONDS,
        }
    }
}

/// Everything the injector needs to know to build the helper container.
#[derive(Clone, Debug, PartialEq)]
pub struct HelperSettings {
    /// Image of the full helper, injected with the direct backend.
    pub image: String,
    /// `imagePullPolicy` of the injected container, whichever image it runs.
    pub image_pull_policy: String,
    /// Path of the `ipmgr-helper` binary inside [`HelperSettings::image`] (also used by the
    /// startup probe).
    pub command: String,
    /// Image of the thin pod client, injected with the agent backend.
    pub pod_client_image: String,
    /// Path of the `ipmgr-pod` binary inside [`HelperSettings::pod_client_image`] (also used
    /// by the startup probe).
    pub pod_client_command: String,
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
    /// Which service meshes a pod is taken to be in (the helper's UID, and with the agent
    /// backend the agent port in the meshes' outbound exclusions).
    pub mesh_exclusions: MeshExclusions,
    /// The helper's first-pass budgets.
    pub first_pass: FirstPassBudget,
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
    /// The pod client's image is empty or contains whitespace.
    #[error(
        "pod client image {0:?} is not an image reference; set --pod-client-image (IPMGR_POD_CLIENT_IMAGE)"
    )]
    InvalidPodClientImage(String),
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
    /// With the agent backend, a helper argument `ipmgr-pod` does not take.
    #[error(
        "--helper-arg {0:?} is a flag of ipmgr-helper that ipmgr-pod, injected with the agent backend, does not take (every pod would fail to start); remove it, or use the direct backend; ipmgr-pod takes {flags}",
        flags = ipmgr_contract::POD_CLIENT_FLAGS.join(", ")
    )]
    NotAPodClientFlag(String),
    /// A helper argument sets a first-pass budget the startup probe would not know.
    #[error(
        "--helper-arg {0:?} sets a first-pass budget of the helper, from which the webhook derives the startup probe; remove it and use --helper-wait-seconds, --helper-ec2-retry-seconds or --helper-metadata-retry-seconds"
    )]
    BudgetInHelperArgs(String),
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
        if !is_image_reference(&self.pod_client_image) {
            return Err(InvalidSettings::InvalidPodClientImage(
                self.pod_client_image.clone(),
            ));
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
        if let Some(arg) = self.extra_args.iter().find(|arg| {
            BUDGET_FLAGS.iter().any(|flag| {
                arg.strip_prefix(flag)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            })
        }) {
            return Err(InvalidSettings::BudgetInHelperArgs(arg.clone()));
        }
        if self.backend == Backend::Agent
            && let Some(arg) = self.extra_args.iter().find(|arg| {
                let flag = arg.split_once('=').map_or(arg.as_str(), |(flag, _)| flag);
                flag.starts_with("--") && !ipmgr_contract::POD_CLIENT_FLAGS.contains(&flag)
            })
        {
            return Err(InvalidSettings::NotAPodClientFlag(arg.clone()));
        }
        self.resources.validate()
    }

    /// The image the injected container runs unless the pod overrides it: the pod client's
    /// with the agent backend, the helper's with the direct one.
    pub fn backend_image(&self) -> &str {
        match self.backend {
            Backend::Agent => &self.pod_client_image,
            Backend::Direct => &self.image,
        }
    }

    /// The binary the injected container and its startup probe run, in
    /// [`HelperSettings::backend_image`]: `ipmgr-pod` with the agent backend, `ipmgr-helper`
    /// with the direct one.
    pub fn backend_command(&self) -> &str {
        match self.backend {
            Backend::Agent => &self.pod_client_command,
            Backend::Direct => &self.command,
        }
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
            pod_client_image: "registry.example.com/ipmgr-pod:1".to_owned(),
            pod_client_command: "/usr/local/bin/ipmgr-pod".to_owned(),
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
            first_pass: FirstPassBudget::default(),
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
    #[case(HelperSettings { image: " ".to_owned(), ..settings(false, &[]) }, InvalidSettings::InvalidImage(" ".to_owned()))]
    #[case(HelperSettings { pod_client_image: String::new(), ..settings(false, &[]) }, InvalidSettings::InvalidPodClientImage(String::new()))]
    #[case(HelperSettings { agent_port: 0, ..settings(false, &[]) }, InvalidSettings::ZeroAgentPort)]
    #[case(HelperSettings { extra_args: vec!["--wait-seconds=90".to_owned()], ..settings(false, &[]) }, InvalidSettings::BudgetInHelperArgs("--wait-seconds=90".to_owned()))]
    #[case(HelperSettings { extra_args: vec!["--ec2-retry-seconds".to_owned(), "600".to_owned()], ..settings(false, &[]) }, InvalidSettings::BudgetInHelperArgs("--ec2-retry-seconds".to_owned()))]
    fn refuses_settings_that_cannot_work(
        #[case] settings: HelperSettings,
        #[case] error: InvalidSettings,
    ) {
        assert_eq!(settings.validate(), Err(error));
    }

    #[test]
    fn helper_args_that_set_no_budget_are_kept() {
        let settings = HelperSettings {
            extra_args: vec![
                "--wait-seconds-extra=1".to_owned(),
                "--confirm-seconds=5".to_owned(),
            ],
            backend: Backend::Direct,
            ..settings(false, &[])
        };
        assert_eq!(settings.validate(), Ok(()));
    }

    #[rstest]
    #[case::helper_only(&["--confirm-seconds=5"], Some("--confirm-seconds=5"))]
    #[case::helper_only_spaced(&["--allow-primary-eni"], Some("--allow-primary-eni"))]
    #[case::client_flag(&["--allow-cidr=10.0.1.0/24", "--recheck-seconds", "60"], None)]
    fn with_the_agent_backend_only_flags_the_pod_client_takes_pass(
        #[case] args: &[&str],
        #[case] refused: Option<&str>,
    ) {
        let settings = HelperSettings {
            extra_args: args.iter().map(|&arg| arg.to_owned()).collect(),
            ..settings(false, &[])
        };
        let expected = refused.map(|arg| InvalidSettings::NotAPodClientFlag(arg.to_owned()));
        assert_eq!(settings.validate().err(), expected);
    }

    /// The probe outlasts the worst first pass the helper's budgets allow (helper/src: the
    /// address wait, then metadata and one EC2 call's retries, or the agent's questions).
    #[rstest]
    #[case::direct_defaults(Backend::Direct, FirstPassBudget::default(), 390, 420)]
    #[case::agent_defaults(Backend::Agent, FirstPassBudget::default(), 690, 720)]
    #[case::direct_longer_wait(Backend::Direct, FirstPassBudget { wait_seconds: 120, ..FirstPassBudget::default() }, 450, 480)]
    #[case::direct_shorter_ec2(Backend::Direct, FirstPassBudget { ec2_retry_seconds: 60, ..FirstPassBudget::default() }, 150, 180)]
    #[case::agent_ignores_metadata(Backend::Agent, FirstPassBudget { metadata_retry_seconds: 999, ..FirstPassBudget::default() }, 690, 720)]
    #[case::agent_shorter_ec2(Backend::Agent, FirstPassBudget { ec2_retry_seconds: 60, ..FirstPassBudget::default() }, 210, 240)]
    #[case::all_zero(Backend::Direct, FirstPassBudget { wait_seconds: 0, ec2_retry_seconds: 0, metadata_retry_seconds: 0 }, 0, 30)]
    fn the_startup_probe_outlasts_the_first_pass(
        #[case] backend: Backend,
        #[case] budget: FirstPassBudget,
        #[case] first_pass: u64,
        #[case] startup: u64,
    ) {
        assert_eq!(budget.first_pass_seconds(backend), first_pass);
        assert_eq!(budget.startup_seconds(backend), startup);
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
            "mesh exclusions has unknown value \"sometimes\"; valid values are auto, istio, linkerd, never"
        );
    }
}
