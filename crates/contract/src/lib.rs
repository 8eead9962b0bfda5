//! The contract between `ipmgr-webhook`, which injects the helper container, and
//! `ipmgr-helper`, which runs in it: the environment variables the webhook sets and the
//! helper reads, the ready file of native-sidecar mode, the domain of the extended resources
//! the node agent advertises and the webhook requests, and the log settings both binaries
//! take (feature `logging`). Defined once, used by both sides.

#[cfg(feature = "logging")]
mod logging;

#[cfg(feature = "logging")]
pub use logging::{InvalidLogFilter, LogArgs, LogFormat};

/// Environment variables of the injected helper container.
pub mod env {
    /// The node the pod runs on (downward API `spec.nodeName`); in every helper log line.
    pub const NODE_NAME: &str = "NODE_NAME";
    /// The pod's name (downward API `metadata.name`); in every helper log line.
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace (downward API `metadata.namespace`); in every helper log line.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The injection mode (`init`, `sidecar`, `native-sidecar`); in every helper log line.
    pub const MODE: &str = "IPMGR_MODE";
    /// Log filter of the binaries: a level, and `target=level` pairs, comma-separated.
    pub const LOG: &str = "IPMGR_LOG";
    /// Log format of both binaries: `json` or `text`.
    pub const LOG_FORMAT: &str = "IPMGR_LOG_FORMAT";
    /// The file the helper creates after its first pass (native-sidecar readiness).
    pub const READY_FILE: &str = "IPMGR_READY_FILE";
    /// The pod's Multus interfaces, comma-separated, from its networks annotation (the
    /// webhook sets it): the only interfaces the helper manages.
    pub const INTERFACES: &str = "IPMGR_INTERFACES";
    /// `true` when some of the pod's Multus networks name no interface: Multus numbers those
    /// `net<idx>` counting the cluster's default networks too, which the webhook cannot
    /// see, so the helper also manages the interfaces that carry the MAC of one of the
    /// node's Multus ENIs (besides the names in [`INTERFACES`]).
    pub const INTERFACES_BY_MAC: &str = "IPMGR_INTERFACES_BY_MAC";
    /// Seconds the helper waits for the pod's Multus addresses (the webhook sets it; the
    /// native-sidecar startup probe is derived from it).
    pub const WAIT_SECONDS: &str = "IPMGR_WAIT_SECONDS";
    /// Seconds a throttled or transiently failing EC2 call (direct backend), or a question
    /// to the node agent (agent backend), keeps being retried (the webhook sets it; the
    /// startup probe is derived from it).
    pub const EC2_RETRY_SECONDS: &str = "IPMGR_EC2_RETRY_SECONDS";
    /// Seconds instance metadata may be unreachable before the helper gives up (the webhook
    /// sets it with the direct backend; the startup probe is derived from it).
    pub const METADATA_RETRY_SECONDS: &str = "IPMGR_METADATA_RETRY_SECONDS";
    /// The node's IP (downward API `status.hostIP`), set with the agent backend so that
    /// [`AGENT_URL`] can name it.
    pub const HOST_IP: &str = "HOST_IP";
    /// The node agent's pod API, `http://$(HOST_IP):<port>` (the webhook sets it with the
    /// agent backend; without it the helper calls EC2 itself). An IPv6 host IP comes
    /// unbracketed (`http://fd00::1:9472`): the port is after the last colon.
    pub const AGENT_URL: &str = "IPMGR_AGENT_URL";
}

/// The long flags `ipmgr-pod` (the agent backend's injected client) takes with `init` and
/// `sidecar`: the webhook refuses, at start, a `--helper-arg` outside them with the agent
/// backend (the pod crate's tests keep this list equal to its command line).
pub const POD_CLIENT_FLAGS: &[&str] = &[
    "--primary-interface",
    "--interfaces",
    "--interfaces-by-mac",
    "--allow-cidr",
    "--wait-seconds",
    "--expect-addresses",
    "--recheck-seconds",
    "--error-backoff-max-seconds",
    "--ready-file",
    "--agent-url",
    "--ec2-retry-seconds",
    "--log",
    "--log-format",
    "--node-name",
    "--pod-name",
    "--pod-namespace",
    "--mode",
];

/// The helper's first-pass budgets: the defaults of the variables of the same names in
/// [`env`], and how they bound a first pass.
pub mod budget {
    /// Default of [`super::env::WAIT_SECONDS`].
    pub const WAIT_SECONDS: u64 = 60;
    /// Default of [`super::env::EC2_RETRY_SECONDS`].
    pub const EC2_RETRY_SECONDS: u64 = 300;
    /// Default of [`super::env::METADATA_RETRY_SECONDS`].
    pub const METADATA_RETRY_SECONDS: u64 = 30;
    /// How much longer than its EC2 retry budget the helper waits for one answer of the
    /// node agent (whose own EC2 calls take up to that budget).
    pub const AGENT_ANSWER_MARGIN_SECONDS: u64 = 30;
}

/// The TCP port of the node agent's pod API on the node's IP: the agent's default listen
/// port and the webhook's default `--agent-port`.
pub const AGENT_PORT: u16 = 9472;

/// The domain of the extended resources of capacity-aware scheduling: the node agent
/// advertises `multus-ipmgr.io/<interface>` on its Node, the webhook adds requests of them;
/// no other name is either's to write.
pub const RESOURCE_PREFIX: &str = "multus-ipmgr.io/";

/// Directory of the helper's in-memory emptyDir in native-sidecar mode.
pub const RUN_DIR: &str = "/run/ipmgr-helper";
/// The ready file inside [`RUN_DIR`], checked by the startup probe `ipmgr-helper ready`.
pub const READY_FILE: &str = "/run/ipmgr-helper/ready";
