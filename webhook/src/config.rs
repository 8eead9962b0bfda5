//! Command-line and environment configuration shared by `serve` and `inject`.

use std::time::Duration;

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use ipmgr_contract::budget;
use ipmgr_injector::{
    Backend, Choice, FirstPassBudget, HelperSettings, InvalidSettings, MeshExclusions, Mode,
    Quantity, ResourceSettings,
};

/// How the injected helper container looks. Every flag has an environment variable, so the
/// webhook Deployment takes them from a ConfigMap with `envFrom`.
#[derive(Args, Clone, Debug)]
pub struct InjectionArgs {
    /// Image of the injected helper container with the direct backend.
    #[arg(long, env = "IPMGR_HELPER_IMAGE", default_value = concat!("ghcr.io/multus-ipmgr/ipmgr-helper:", env!("CARGO_PKG_VERSION")))]
    pub helper_image: String,

    /// Image of the injected container with the agent backend: the thin pod client.
    #[arg(long, env = "IPMGR_POD_CLIENT_IMAGE", default_value = concat!("ghcr.io/multus-ipmgr/ipmgr-pod:", env!("CARGO_PKG_VERSION")))]
    pub pod_client_image: String,

    /// imagePullPolicy of the injected container, whichever image it runs.
    #[arg(long, env = "IPMGR_HELPER_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub helper_pull_policy: String,

    /// Path of the ipmgr-helper binary in the helper image (direct backend).
    #[arg(
        long,
        env = "IPMGR_HELPER_COMMAND",
        default_value = "/usr/local/bin/ipmgr-helper"
    )]
    pub helper_command: String,

    /// Path of the ipmgr-pod binary in the pod client image (agent backend).
    #[arg(
        long,
        env = "IPMGR_POD_CLIENT_COMMAND",
        default_value = "/usr/local/bin/ipmgr-pod"
    )]
    pub pod_client_command: String,

    /// Extra arguments of the injected binary (ipmgr-pod or ipmgr-helper, as the backend gives
    /// it), appended after the mode's subcommand (comma-separated in the env var).
    #[arg(
        long = "helper-arg",
        env = "IPMGR_HELPER_ARGS",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub helper_args: Vec<String>,

    /// Log filter of the helper (IPMGR_LOG in the helper container).
    #[arg(long, env = "IPMGR_HELPER_LOG", default_value = "info")]
    pub helper_log: String,

    /// Mode for pods without the multus-ipmgr.io/mode annotation.
    #[arg(long, env = "IPMGR_DEFAULT_MODE", default_value = "init", value_parser = parse_mode)]
    pub default_mode: Mode,

    /// CPU request of the helper container.
    #[arg(long, env = "IPMGR_HELPER_CPU_REQUEST", default_value = "10m")]
    pub helper_cpu_request: Quantity,

    /// CPU limit of the helper container.
    #[arg(long, env = "IPMGR_HELPER_CPU_LIMIT", default_value = "200m")]
    pub helper_cpu_limit: Quantity,

    /// Memory request of the helper container.
    #[arg(long, env = "IPMGR_HELPER_MEMORY_REQUEST", default_value = "24Mi")]
    pub helper_memory_request: Quantity,

    /// Memory limit of the helper container.
    #[arg(long, env = "IPMGR_HELPER_MEMORY_LIMIT", default_value = "64Mi")]
    pub helper_memory_limit: Quantity,

    /// UID and GID the helper container runs as (must not be 0).
    #[arg(long, env = "IPMGR_HELPER_RUN_AS_USER", default_value_t = 65532)]
    pub helper_run_as_user: i64,

    /// Let pods choose the injected image (the helper's or the pod client's, as the backend
    /// gives it) with the multus-ipmgr.io/image annotation (off: such pods are denied).
    #[arg(
        long,
        env = "IPMGR_ALLOW_IMAGE_OVERRIDE",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub allow_image_override: bool,

    /// With --allow-image-override, an overriding image must start with one of these
    /// registry or repository prefixes (comma-separated in the env var; none: any image).
    #[arg(
        long = "allowed-image-prefix",
        env = "IPMGR_ALLOWED_IMAGE_PREFIXES",
        value_delimiter = ','
    )]
    pub allowed_image_prefixes: Vec<String>,

    /// How the injected container reaches EC2: agent (the pod client asks the node agent on
    /// its node's IP; no AWS setting or credentials in the pod) or direct (the helper calls
    /// EC2 itself).
    #[arg(long, env = "IPMGR_HELPER_BACKEND", default_value = "agent", value_parser = choice::<Backend>())]
    pub helper_backend: Backend,

    /// TCP port of the node agent's pod API on the node's IP (agent backend).
    #[arg(long, env = "IPMGR_AGENT_PORT", default_value_t = ipmgr_contract::AGENT_PORT)]
    pub agent_port: u16,

    /// Which service mesh a pod is taken to be in, so that the helper's own traffic bypasses
    /// its redirect (the helper runs as the mesh proxy's UID; with the agent backend the
    /// agent port joins the mesh's outbound exclusions): auto (the mesh the pod shows),
    /// istio or linkerd (that mesh for every pod, for namespace-level injection, besides the
    /// one the pod shows), never.
    #[arg(long, env = "IPMGR_MESH_EXCLUSIONS", default_value = "auto", value_parser = choice::<MeshExclusions>())]
    pub mesh_exclusions: MeshExclusions,

    /// Seconds the helper waits for the pod's Multus addresses (its IPMGR_WAIT_SECONDS; part
    /// of the native-sidecar startup probe's budget).
    #[arg(long, env = "IPMGR_HELPER_WAIT_SECONDS", default_value_t = budget::WAIT_SECONDS)]
    pub helper_wait_seconds: u64,

    /// Seconds the helper retries one EC2 call, or its questions to the node agent (its
    /// IPMGR_EC2_RETRY_SECONDS; part of the startup probe's budget).
    #[arg(long, env = "IPMGR_HELPER_EC2_RETRY_SECONDS", default_value_t = budget::EC2_RETRY_SECONDS)]
    pub helper_ec2_retry_seconds: u64,

    /// Direct backend: seconds instance metadata may be unreachable before the helper gives
    /// up (its IPMGR_METADATA_RETRY_SECONDS; part of the startup probe's budget).
    #[arg(long, env = "IPMGR_HELPER_METADATA_RETRY_SECONDS", default_value_t = budget::METADATA_RETRY_SECONDS)]
    pub helper_metadata_retry_seconds: u64,
}

/// Whether injected pods request the `multus-ipmgr.io/` resources their networks need.
#[derive(Args, Clone, Debug)]
pub struct NetworkResourceArgs {
    /// Give the first app container of an injected pod requests and equal limits of the
    /// multus-ipmgr.io/<interface> resources its networks' NetworkAttachmentDefinitions name
    /// (k8s.v1.cni.cncf.io/resourceName), for capacity-aware scheduling: `true` (`serve`
    /// refuses to start without a Kubernetes API configuration), `auto` (`true` when `serve`
    /// has one, else off with a warning at start), `false`.
    #[arg(
        long,
        env = "IPMGR_NETWORK_RESOURCES",
        value_enum,
        default_value_t = NetworkResources::Auto,
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub network_resources: NetworkResources,
}

/// Whether the webhook adds the networks' resource requests.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkResources {
    /// Yes; `serve` needs a Kubernetes API configuration to read the definitions.
    #[value(name = "true", alias = "on")]
    On,
    /// When `serve` has a Kubernetes API configuration (a service account token, or
    /// KUBECONFIG); `inject` when given definition files.
    Auto,
    /// No reads, no requests.
    #[value(name = "false", alias = "off")]
    Off,
}

/// Parses the names of a [`Choice`], listing them in `--help`.
fn choice<T: Choice + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|value| value.name()))
        .try_map(|name| T::from_name(&name))
}

fn parse_mode(value: &str) -> Result<Mode, String> {
    value.parse().map_err(|error: ipmgr_injector::UnknownMode| {
        format!(
            "unknown mode {:?}; valid modes are init, sidecar, native-sidecar, disabled",
            error.value
        )
    })
}

impl InjectionArgs {
    /// The validated injector settings.
    pub fn settings(&self) -> Result<HelperSettings, InvalidSettings> {
        let settings = HelperSettings {
            image: self.helper_image.clone(),
            image_pull_policy: self.helper_pull_policy.clone(),
            command: self.helper_command.clone(),
            pod_client_image: self.pod_client_image.clone(),
            pod_client_command: self.pod_client_command.clone(),
            extra_args: self.helper_args.clone(),
            log_filter: self.helper_log.clone(),
            default_mode: self.default_mode,
            resources: ResourceSettings {
                cpu_request: self.helper_cpu_request.clone(),
                cpu_limit: self.helper_cpu_limit.clone(),
                memory_request: self.helper_memory_request.clone(),
                memory_limit: self.helper_memory_limit.clone(),
            },
            run_as_user: self.helper_run_as_user,
            allow_image_override: self.allow_image_override,
            allowed_image_prefixes: self.allowed_image_prefixes.clone(),
            backend: self.helper_backend,
            agent_port: self.agent_port,
            mesh_exclusions: self.mesh_exclusions,
            first_pass: FirstPassBudget {
                wait_seconds: self.helper_wait_seconds,
                ec2_retry_seconds: self.helper_ec2_retry_seconds,
                metadata_retry_seconds: self.helper_metadata_retry_seconds,
            },
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// A number of seconds, zero or more, fractions allowed (`0.5`).
pub fn seconds_or_zero(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|seconds| *seconds >= 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds (examples: 30, 0.5, 0)"))
}

/// A positive number of seconds, fractions allowed (`0.5`).
pub fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|seconds| *seconds > 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds (examples: 2, 0.5)"))
}
