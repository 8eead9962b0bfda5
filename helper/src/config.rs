//! Command-line and environment configuration of the helper.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipmgr_contract::{LogArgs, budget, env};
use ipmgr_eni::{Backoff, OwnershipPolicy, PlanOptions, ReleaseOptions, RetryPolicy};
use ipmgr_pod::PodSettings;
use ipmgr_pod::settings::{PodIdentity, ReadyFile};
use ipnet::IpNet;

/// `ipmgr-helper`: makes a Multus pod's secondary IPs routable on the node's ENIs.
#[derive(Parser, Debug)]
#[command(name = "ipmgr-helper", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Log settings, the same as the webhook's.
    #[command(flatten)]
    pub log: LogArgs,

    /// Where the helper runs, as the webhook injects it.
    #[command(flatten)]
    pub pod: PodIdentity,
}

/// The helper's modes.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Assign the pod's addresses once, confirm, and exit (non-zero when any stays unroutable).
    Init(Settings),
    /// Assign, then follow address changes and heal; release what it assigned on SIGTERM.
    Sidecar(Settings),
    /// Print what `init` would do and change nothing.
    Plan(Settings),
    /// The node agent: release the addresses of pods that are gone (a DaemonSet).
    Agent(AgentSettings),
    /// Exit 0 when the ready file exists (the native-sidecar startup probe).
    Ready(ReadyFile),
}

/// Settings of `init`, `sidecar` and `plan`.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// What the pod loop reads, with either backend.
    #[command(flatten)]
    pub pod: PodSettings,

    /// Allow assigning to the primary ENI (the one whose MAC is meta-data/mac).
    #[arg(long, env = "IPMGR_ALLOW_PRIMARY_ENI")]
    pub allow_primary_eni: bool,

    /// Seconds init waits for instance metadata to show what EC2 accepted (advisory: metadata
    /// lags EC2; a warning when it never shows).
    #[arg(long, env = "IPMGR_CONFIRM_SECONDS", default_value_t = 10)]
    pub confirm_seconds: u64,

    /// Sidecar: on SIGTERM, release (unassign) the addresses this helper assigned that are
    /// still on the pod and its ENI.
    #[arg(long, env = "IPMGR_RELEASE_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub release_on_exit: bool,

    /// The node agent's pod API (agent backend, e.g. http://10.0.0.10:9472; the webhook
    /// sets it from status.hostIP): the helper then asks the agent and calls neither
    /// instance metadata nor EC2, as the thinner ipmgr-pod does. Unset: the helper calls
    /// them itself (direct backend).
    #[arg(long, env = env::AGENT_URL)]
    pub agent_url: Option<String>,

    /// How to talk to AWS.
    #[command(flatten)]
    pub aws: AwsSettings,
}

/// How the helper and the agent talk to AWS: which ENIs they may use, and how failed calls
/// are retried.
#[derive(Args, Debug, Clone)]
pub struct AwsSettings {
    /// Also use ENIs without the tag node.k8s.amazonaws.com/no_manage=true (only where the
    /// VPC CNI runs with MANAGE_UNTAGGED_ENI=false); the VPC CNI's own ENIs never.
    #[arg(long, env = "IPMGR_ALLOW_UNTAGGED_ENIS")]
    pub allow_untagged_enis: bool,

    /// Seconds a throttled or transiently failing EC2 call keeps being retried: long enough
    /// for a reschedule of hundreds of pods to get through the account's token buckets.
    #[arg(long, env = env::EC2_RETRY_SECONDS, default_value_t = budget::EC2_RETRY_SECONDS)]
    pub ec2_retry_seconds: u64,

    /// Transient errors: ceiling of the first retry delay in milliseconds (full jitter; the
    /// ceiling doubles per failure).
    #[arg(long, env = "IPMGR_EC2_BACKOFF_INITIAL_MS", default_value_t = 1000)]
    pub ec2_backoff_initial_ms: u64,

    /// Throttling: smallest ceiling of a retry delay in milliseconds; above it, the ceiling
    /// is the time the call has waited so far.
    #[arg(
        long,
        env = "IPMGR_EC2_THROTTLE_BACKOFF_MIN_MS",
        default_value_t = 12000
    )]
    pub ec2_throttle_backoff_min_ms: u64,

    /// Ceiling of any retry delay in seconds.
    #[arg(long, env = "IPMGR_EC2_BACKOFF_MAX_SECONDS", default_value_t = 24)]
    pub ec2_backoff_max_seconds: u64,

    /// Seconds instance metadata may be unreachable before the helper gives up.
    #[arg(long, env = env::METADATA_RETRY_SECONDS, default_value_t = budget::METADATA_RETRY_SECONDS)]
    pub metadata_retry_seconds: u64,
}

/// Settings of the node agent.
#[derive(Args, Debug, Clone)]
pub struct AgentSettings {
    /// The container runtime's directory of pod network namespaces (containerd and CRI-O
    /// keep them in /var/run/netns).
    #[arg(long, env = "IPMGR_NETNS_DIR", default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,

    /// Seconds between full scans besides the ones the netns directory's changes trigger.
    #[arg(long, env = "IPMGR_RESYNC_SECONDS", default_value_t = 30)]
    pub resync_seconds: u64,

    /// Seconds an address must be in no pod before it is released (long enough for a pod
    /// to be recreated with it).
    #[arg(long, env = "IPMGR_RELEASE_GRACE_SECONDS", default_value_t = 120)]
    pub release_grace_seconds: u64,

    /// Scans in a row an address must be in no pod before it is released.
    #[arg(long, env = "IPMGR_RELEASE_SCANS", default_value_t = 2)]
    pub release_scans: u32,

    /// Only ever release addresses inside these CIDRs (repeatable; comma-separated in the env var).
    #[arg(long = "allow-cidr", env = "IPMGR_ALLOW_CIDRS", value_delimiter = ',')]
    pub allow_cidrs: Vec<IpNet>,

    /// Never release addresses inside these CIDRs (repeatable; comma-separated in the env
    /// var): the Multus addresses of pods whose namespace's kernel does not show them
    /// (gVisor, DPDK or other userspace stacks, SR-IOV VFs, KubeVirt VMs).
    #[arg(long = "keep-cidr", env = "IPMGR_KEEP_CIDRS", value_delimiter = ',')]
    pub keep_cidrs: Vec<IpNet>,

    /// Log what would be released and change nothing.
    #[arg(long, env = "IPMGR_DRY_RUN")]
    pub dry_run: bool,

    /// Where to serve /metrics, /healthz and /readyz (plain HTTP); `[::]` takes IPv4 and
    /// IPv6 (IPv4 only where the kernel has IPv6 off).
    #[arg(long, env = "IPMGR_METRICS_LISTEN", default_value = "[::]:9471")]
    pub metrics_listen: SocketAddr,

    /// Where to serve the node's pods (the agent backend's pod API, plain HTTP on the host
    /// network), or `off`; `[::]` takes IPv4 and IPv6 callers.
    #[arg(long, env = "IPMGR_POD_LISTEN", default_value = "[::]:9472", value_parser = pod_listen)]
    pub pod_listen: PodListen,

    /// Connections the pod API holds open at once, from all pods of the node; one more is
    /// closed unread and counted (ipmgr_agent_connections_rejected_total{reason="connections"}).
    #[arg(long, env = "IPMGR_POD_API_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pod_api_max_connections: u32,

    /// Connections the pod API holds open at once from one source address (a pod's helper
    /// asks one question at a time); one more is closed unread and counted (reason
    /// "per_source").
    #[arg(long, env = "IPMGR_POD_API_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pod_api_max_connections_per_source: u32,

    /// Seconds a pod API connection has, from its acceptance, to deliver its whole request
    /// (head and body); then it is closed. The answer itself may take longer (EC2 retries).
    #[arg(long, env = "IPMGR_POD_API_REQUEST_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub pod_api_request_seconds: u64,

    /// Seconds the API server's view of the node's pods and the namespaces may go without a
    /// confirmation that it is current (a list, an event, or a bookmark, which the API server
    /// sends about every minute): past it /readyz is 503, nothing is released, and the
    /// agent lists again. Each watch asks for a deadline of two thirds of it.
    #[arg(long, env = "IPMGR_POD_WATCH_STALE_SECONDS", default_value_t = 90)]
    pub pod_watch_stale_seconds: u64,

    /// Milliseconds the pod API gathers pods' EC2 calls into one batch (calls that arrive
    /// while a batch is in flight join the next one anyway).
    #[arg(long, env = "IPMGR_BATCH_WINDOW_MS", default_value_t = 20)]
    pub batch_window_ms: u64,

    /// The pod API's batches after a throttle: smallest ceiling of a retry delay in
    /// milliseconds (full jitter). One agent's batch stands for all its node's pods, so it
    /// need not spread out like a crowd of helpers (--ec2-throttle-backoff-min-ms).
    #[arg(
        long,
        env = "IPMGR_POD_API_THROTTLE_BACKOFF_MIN_MS",
        default_value_t = 1000
    )]
    pub pod_api_throttle_backoff_min_ms: u64,

    /// Which addresses a pod may have the agent assign: `recorded` (those Multus recorded in
    /// the pod's k8s.v1.cni.cncf.io/network-status annotation, and those it declares in
    /// multus-ipmgr.io/floating-ips) or `any` (whatever the pod configures: any container
    /// of any Multus pod can then pull any address of the VPC onto this node).
    #[arg(long, env = "IPMGR_CLAIMS", value_enum, default_value_t = ClaimsMode::Recorded)]
    pub claims: ClaimsMode,

    /// The pods' primary interface (the VPC CNI's): the pod API finds a pod's namespace by
    /// its pod IP on it, and never touches it.
    #[arg(long, env = "IPMGR_PRIMARY_INTERFACE", default_value = "eth0")]
    pub primary_interface: String,

    /// Seconds between checks of the Node's extended resources `multus-ipmgr.io/<interface>`
    /// (each Multus ENI's secondary IPv4 capacity, written into status.capacity when it
    /// differs, and again after the kubelet re-registered the node); 0 advertises nothing
    /// (and leaves what was advertised).
    #[arg(long, env = "IPMGR_CAPACITY_SECONDS", default_value_t = 30)]
    pub capacity_seconds: u64,

    /// How to talk to AWS.
    #[command(flatten)]
    pub aws: AwsSettings,
}

/// Where the pod API listens, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodListen {
    /// On this address.
    On(SocketAddr),
    /// Not at all: no pod of the node uses the agent backend.
    Off,
}

fn pod_listen(value: &str) -> Result<PodListen, String> {
    if value == "off" {
        return Ok(PodListen::Off);
    }
    value.parse().map(PodListen::On).map_err(|error| {
        format!("{error}: expected ADDRESS:PORT (e.g. [::]:9472 or 0.0.0.0:9472) or off")
    })
}

/// Which addresses a pod may claim through the pod API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClaimsMode {
    /// What Multus recorded for the pod, and the floating addresses it declares.
    Recorded,
    /// Whatever the pod configures (documented risk).
    Any,
}

impl Settings {
    /// What the planner may do for this pod.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            allow_primary_eni: self.allow_primary_eni,
            ..self.pod.plan_options()
        }
    }

    /// Bounded wait for metadata to confirm a change.
    pub fn confirm(&self) -> Duration {
        Duration::from_secs(self.confirm_seconds)
    }
}

impl AwsSettings {
    /// How throttled and transiently failing EC2 calls are retried.
    pub fn ec2_retry(&self) -> RetryPolicy {
        let max = Duration::from_secs(self.ec2_backoff_max_seconds.max(1));
        RetryPolicy {
            transient: Backoff {
                initial: Duration::from_millis(self.ec2_backoff_initial_ms.max(1)),
                factor: 2,
                max,
            },
            throttle_min: Duration::from_millis(self.ec2_throttle_backoff_min_ms.max(1)),
            max,
            budget: Duration::from_secs(self.ec2_retry_seconds),
        }
    }

    /// How long metadata may be unreachable.
    pub fn metadata_retry(&self) -> Duration {
        Duration::from_secs(self.metadata_retry_seconds)
    }

    /// Which ENIs count as Multus ENIs.
    pub fn ownership(&self) -> OwnershipPolicy {
        OwnershipPolicy {
            allow_untagged: self.allow_untagged_enis,
        }
    }
}

impl AgentSettings {
    /// When an unused address may be released, and how a failed unassign is retried.
    pub fn release_options(&self) -> ReleaseOptions {
        ReleaseOptions {
            grace: Duration::from_secs(self.release_grace_seconds),
            scans: self.release_scans.max(1),
            allowed: self.allow_cidrs.clone(),
            kept: self.keep_cidrs.clone(),
            retry: self.aws.ec2_retry(),
        }
    }

    /// Interval of the full scans.
    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_seconds.max(1))
    }

    /// How long the API server's view may go unconfirmed.
    pub fn pod_watch_stale(&self) -> Duration {
        Duration::from_secs(self.pod_watch_stale_seconds.max(2))
    }

    /// How long the pod API gathers a batch.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }
}

#[cfg(test)]
mod tests {
    use ipmgr_eni::MultusInterfaces;
    use pretty_assertions::assert_eq;

    use crate::fakes::settings;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|&name| name.to_owned()).collect()
    }

    #[test]
    fn the_interface_flags_make_the_multus_interfaces() {
        let table = [
            (&[][..], MultusInterfaces::Any),
            (
                &["--interfaces", "net1,data0"][..],
                MultusInterfaces::Named(names(&["net1", "data0"])),
            ),
            (
                &["--interfaces-by-mac"][..],
                MultusInterfaces::NamedOrByMac(Vec::new()),
            ),
            (
                &["--interfaces", "data0", "--interfaces-by-mac"][..],
                MultusInterfaces::NamedOrByMac(names(&["data0"])),
            ),
        ];
        for (args, expected) in table {
            assert_eq!(
                settings(args).plan_options().interfaces,
                expected,
                "{args:?}"
            );
        }
    }
}
