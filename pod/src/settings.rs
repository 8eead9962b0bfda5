//! The pod side's flags and environment variables: what both backends' pod loops read
//! ([`PodSettings`]), where the process runs ([`PodIdentity`]), and the pod client's
//! command line ([`Cli`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipmgr_contract::{LogArgs, budget, env};
use ipmgr_eni::{Backoff, MultusInterfaces, PlanOptions};
use ipnet::IpNet;

/// `ipmgr-pod`: asks the node agent to make a Multus pod's secondary IPs routable (the
/// agent backend's injected container).
#[derive(Parser, Debug)]
#[command(name = "ipmgr-pod", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Log settings, the same as the other binaries'.
    #[command(flatten)]
    pub log: LogArgs,

    /// Where the client runs, as the webhook injects it.
    #[command(flatten)]
    pub pod: PodIdentity,
}

/// The pod client's modes.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ask the agent once, and exit (non-zero when any address stays unroutable).
    Init(ClientSettings),
    /// Ask at start, on every address change and periodically, until SIGTERM.
    Sidecar(ClientSettings),
    /// Exit 0 when the ready file exists (the native-sidecar startup probe).
    Ready(ReadyFile),
}

/// The native-sidecar startup probe's file.
#[derive(Args, Debug, Clone)]
pub struct ReadyFile {
    /// File written after the first successful pass.
    #[arg(long, env = env::READY_FILE, default_value = ipmgr_contract::READY_FILE)]
    pub ready_file: PathBuf,
}

/// The pod client's settings: the pod loop's, and how to reach the node agent.
#[derive(Args, Debug, Clone)]
pub struct ClientSettings {
    /// What the pod loop reads.
    #[command(flatten)]
    pub pod: PodSettings,

    /// The node agent's pod API (e.g. http://10.0.0.10:9472; the webhook sets it from
    /// status.hostIP). Required: without it, see [`ClientSettings::agent_url`].
    #[arg(long, env = env::AGENT_URL)]
    pub agent_url: Option<String>,

    /// Seconds a question to the node agent keeps being asked again while the agent cannot
    /// be reached or cannot answer yet (the agent's own EC2 retry budget; the webhook sets
    /// it).
    #[arg(long = "ec2-retry-seconds", env = env::EC2_RETRY_SECONDS, default_value_t = budget::EC2_RETRY_SECONDS)]
    pub retry_seconds: u64,
}

impl ClientSettings {
    /// The agent's URL, or why there is none and what to do.
    pub fn agent_url(&self) -> Result<&str, &'static str> {
        self.agent_url.as_deref().ok_or(
            "IPMGR_AGENT_URL (--agent-url) is not set: ipmgr-pod asks its node's agent, whose pod API the webhook names as http://$(HOST_IP):9472 with the agent backend; with the direct backend inject ipmgr-helper instead",
        )
    }
}

/// The pod and node the process works for, from the variables the webhook injects
/// (downward API). Only for the logs: every line carries them.
#[derive(Args, Debug, Clone, Default)]
pub struct PodIdentity {
    /// The node the pod runs on.
    #[arg(long, global = true, env = env::NODE_NAME)]
    pub node_name: Option<String>,

    /// The pod's name.
    #[arg(long, global = true, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// The pod's namespace.
    #[arg(long, global = true, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,

    /// The injection mode (init, sidecar, native-sidecar).
    #[arg(long, global = true, env = env::MODE)]
    pub mode: Option<String>,
}

impl PodIdentity {
    /// The span every log line of this process is in: pod (`namespace/name`), node, mode.
    pub fn span(&self) -> tracing::Span {
        let unknown = || "-".to_owned();
        let pod = match (&self.pod_namespace, &self.pod_name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            (None, Some(name)) => name.clone(),
            _ => unknown(),
        };
        tracing::info_span!(
            "helper",
            pod,
            node = self.node_name.clone().unwrap_or_else(unknown),
            mode = self.mode.clone().unwrap_or_else(unknown),
        )
    }
}

/// What the pod loop reads, with either backend.
#[derive(Args, Debug, Clone)]
pub struct PodSettings {
    /// The pod's primary interface, owned by the VPC CNI: never touched.
    #[arg(long, env = "IPMGR_PRIMARY_INTERFACE", default_value = "eth0")]
    pub primary_interface: String,

    /// The pod's Multus interfaces (comma-separated in the env var; the webhook sets it to
    /// the names the pod's networks annotation gives): only these are managed, and with
    /// --interfaces-by-mac also the interfaces on a Multus ENI's MAC. Without either, every
    /// interface but the primary one and the VPC CNI's v4if0/v6if0.
    #[arg(long, env = env::INTERFACES, value_delimiter = ',')]
    pub interfaces: Option<Vec<String>>,

    /// Also manage every interface that carries the MAC of one of the node's Multus ENIs
    /// (an ipvlan child of it); other interfaces not named in --interfaces are left alone.
    /// The webhook sets it when some of the pod's networks name no interface: Multus numbers
    /// those net<idx> counting the cluster's defaultNetworks, which the webhook cannot see.
    /// With the agent backend the pod cannot see the node's ENIs and waits for an address
    /// on any interface but the primary one and v4if0/v6if0.
    #[arg(long, env = env::INTERFACES_BY_MAC)]
    pub interfaces_by_mac: bool,

    /// Only ever assign addresses inside these CIDRs (repeatable; comma-separated in the env var).
    #[arg(long = "allow-cidr", env = "IPMGR_ALLOW_CIDRS", value_delimiter = ',')]
    pub allow_cidrs: Vec<IpNet>,

    /// Seconds to wait for the pod's secondary interfaces to have addresses.
    #[arg(long, env = env::WAIT_SECONDS, default_value_t = budget::WAIT_SECONDS)]
    pub wait_seconds: u64,

    /// Number of addresses to wait for (0: any one).
    #[arg(long, env = "IPMGR_EXPECT_ADDRESSES", default_value_t = 0)]
    pub expect_addresses: usize,

    /// Sidecar: seconds between re-checks.
    #[arg(long, env = "IPMGR_RECHECK_SECONDS", default_value_t = 30)]
    pub recheck_seconds: u64,

    /// Sidecar: after a pass that left an address unroutable, the next try waits 2 s, then
    /// twice as long each time, up to this many seconds.
    #[arg(long, env = "IPMGR_ERROR_BACKOFF_MAX_SECONDS", default_value_t = 300)]
    pub error_backoff_max_seconds: u64,

    /// Sidecar: file to create once the first pass succeeded (native-sidecar readiness).
    #[arg(long, env = env::READY_FILE)]
    pub ready_file: Option<PathBuf>,
}

impl PodSettings {
    /// Which of the pod's addresses are managed (never on the primary ENI: that is the
    /// direct backend's `--allow-primary-eni`).
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            primary_interface: self.primary_interface.clone(),
            interfaces: match (&self.interfaces, self.interfaces_by_mac) {
                (names, true) => MultusInterfaces::NamedOrByMac(names.clone().unwrap_or_default()),
                (Some(names), false) => MultusInterfaces::Named(names.clone()),
                (None, false) => MultusInterfaces::Any,
            },
            allow_primary_eni: false,
            allowed: self.allow_cidrs.clone(),
        }
    }

    /// Bounded wait for the pod's addresses.
    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.wait_seconds)
    }

    /// Interval of the sidecar's re-check.
    pub fn recheck(&self) -> Duration {
        Duration::from_secs(self.recheck_seconds.max(1))
    }

    /// How the sidecar spaces passes that keep failing.
    pub fn error_backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_secs(2),
            factor: 2,
            max: Duration::from_secs(self.error_backoff_max_seconds.max(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn the_contract_lists_exactly_the_flags_init_and_sidecar_take() {
        let cli = Cli::command();
        for mode in ["init", "sidecar"] {
            let subcommand = cli.find_subcommand(mode).expect("a mode");
            let taken: BTreeSet<String> = subcommand
                .get_arguments()
                .chain(cli.get_arguments())
                .filter_map(|arg| arg.get_long())
                .filter(|long| !["help", "version"].contains(long))
                .map(|long| format!("--{long}"))
                .collect();
            let listed: BTreeSet<String> = ipmgr_contract::POD_CLIENT_FLAGS
                .iter()
                .map(|&flag| flag.to_owned())
                .collect();
            assert_eq!(taken, listed, "{mode}");
        }
    }
}
