//! `ipmgr-helper agent`: the node agent (a DaemonSet in the node's network namespace). It
//! releases the addresses of pods that are gone, so ENIs never fill up: init-mode pods
//! never release, and a sidecar that was OOM-killed or force-deleted could not.
//!
//! The invariant: no address a live pod on the node carries ever leaves its ENI.
//!
//! Each scan reads every pod network namespace of the runtime's netns directory (on its
//! changes, through inotify, and every `--resync-seconds`) and the node's ENIs from instance
//! metadata; [`ScanVerdict`] says whether the view can be trusted (every namespace read, and
//! not an empty directory while the Multus ENIs hold addresses), and only then [`Absences`]
//! decides what no pod carries for the grace period and in consecutive scans. Every unassign
//! attempt, the first and each retry, is decided afresh: the agent reads the ENIs from EC2,
//! scans the pods again, and [`verify_release`] keeps what a pod carries or what moved; the
//! call goes out only while that view is at most [`VIEW_MAX_AGE`] old, and a decision that cannot
//! be refreshed is dropped and taken again later. EC2 and metadata failures are never fatal:
//! the agent says so in `/readyz` and its metrics and tries again. Nothing is called while
//! nothing changes.

#[cfg(test)]
mod api_round_tests;
mod batch;
#[cfg(test)]
mod batch_tests;
mod capacity;
pub mod cluster;
mod coalesce;
mod entitle;
pub mod error;
mod follow;
pub mod holders;
mod identify;
#[cfg(test)]
mod identify_tests;
mod listen;
pub mod metrics;
mod mirror;
pub mod netns;
pub mod passes;
mod pod_http;
mod refused;
mod release;
mod round;
pub mod serve;
#[cfg(test)]
pub(crate) mod serve_bed;
#[cfg(test)]
mod serve_tests;
pub mod share;
#[cfg(test)]
pub(crate) mod test_fakes;
#[cfg(test)]
mod tests;
pub mod transport;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipmgr_eni::{Absences, Backoff, EniRecord, MultusInterfaces, NodeFacts, PlanOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::aws::{self, Ec2, Metadata};
use crate::config::{AgentSettings, PodListen};
use crate::place::Placer;
use batch::BatchedEc2;
use cluster::NodePods;
pub use error::AgentError;
use holders::KubeHolders;
use metrics::AgentMetrics;
use netns::NetnsDirectory;
use passes::PodPasses;
use serve::PodService;
use share::NodeShare;
use watch::{Changes, watch};

/// The oldest view an unassign call may act on: the read of EC2 and the scan of the pods
/// that decided it are at most this old when the call goes out.
pub const VIEW_MAX_AGE: Duration = Duration::from_secs(2);

/// After a round that could not see the node (a namespace being made, metadata or EC2 not
/// answering) or what its pods claim (the API server's view not current), the next one
/// comes this soon (or on a change of the netns directory). An empty view waits for the
/// resync: it does not pass by itself.
const RETRY_ROUND: Duration = Duration::from_secs(5);

/// Incomplete scans in a row after which the agent says it is not ready: one alone is a
/// sandbox being made or removed.
const INCOMPLETE_UNREADY: u32 = 3;

/// Spacing of the start-up attempts to reach instance metadata (each one retries within
/// `--metadata-retry-seconds` itself).
const CONNECT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    factor: 2,
    max: Duration::from_secs(30),
};

/// The running agent over its adapters: EC2 (`E`), instance metadata (`M`) and the pod
/// namespaces (`S`); the real ones by default, fakes in tests.
#[derive(Debug)]
struct Agent<E = Ec2, M = Metadata, S = NetnsDirectory> {
    settings: AgentSettings,
    metadata: M,
    scanner: S,
    /// Reads of the node's ENIs, retried within the budget.
    ec2: E,
    /// The release path: every call made once, so that each attempt is decided afresh.
    release_ec2: E,
    node: NodeFacts,
    /// The node's ENIs as EC2 lists them; `None` until EC2 answered.
    records: Option<Vec<EniRecord>>,
    /// The ids of the node's Multus ENIs (by `records`), less any EC2 later disowned.
    multus: BTreeSet<String>,
    /// When to read the node's ENIs from EC2 again after one was left alone.
    reread_enis: Option<Instant>,
    absences: Absences,
    /// Whether the last round saw a view the agent could act on.
    trusted: bool,
    /// Whether the last round's view may pass soon (see [`RETRY_ROUND`]).
    retry_soon: bool,
    /// Incomplete scans in a row.
    incomplete: u32,
    metrics: Arc<AgentMetrics>,
    /// The node's pods as the API server has them (empty without the pod API): what they
    /// claim is never released.
    pods: NodePods,
    /// The node as the pod API sees it, kept current by the rounds.
    share: Arc<NodeShare>,
}

/// Runs the agent until SIGTERM or SIGINT. Only what the agent cannot get past by waiting
/// ends it: a malformed proxy variable, a netns directory that is missing or unreadable at
/// start-up, a metrics address it cannot listen on, and namespaces it may not enter.
pub async fn run(settings: AgentSettings, node_name: Option<String>) -> Result<(), AgentError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let proxies = aws::Proxies::from_env()?;
    netns::check_directory(&settings.netns_dir)?;
    let pod_api = match settings.pod_listen {
        PodListen::Off => None,
        PodListen::On(address) => {
            let node_name = node_name.clone().ok_or(AgentError::NodeName)?;
            let listener = listen::bind(address)
                .map_err(|source| AgentError::PodListen { address, source })?;
            Some((listener, node_name))
        }
    };
    let metrics = Arc::new(AgentMetrics::default());
    let listener = listen::bind(settings.metrics_listen).map_err(|source| AgentError::Metrics {
        address: settings.metrics_listen,
        source,
    })?;
    tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
    let mut events = watch(&settings.netns_dir)?;
    let connected = tokio::select! {
        connected = connect(&settings, &proxies, &metrics) => connected,
        _ = terminate.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    let (metadata, ec2, node) = connected;
    let scanner = NetnsDirectory::new(settings.netns_dir.clone());
    let release_ec2 = ec2.single_attempt();
    let pods = NodePods::default();
    let share = Arc::new(NodeShare::default());
    let client = follow::SharedClient::default();
    if let Some((listener, node_name)) = pod_api {
        tokio::spawn(follow::follow(
            pods.clone(),
            node_name.clone(),
            settings.pod_watch_stale(),
            Arc::clone(&client),
        ));
        let pod_api_ec2 = ec2.throttle_min(Duration::from_millis(
            settings.pod_api_throttle_backoff_min_ms.max(1),
        ));
        let service = PodService {
            passes: PodPasses::default(),
            metrics: Arc::clone(&metrics),
            node_name,
            pods: pods.clone(),
            scanner: scanner.clone(),
            holders: KubeHolders::new(Arc::clone(&client)),
            claims: settings.claims,
            share: Arc::clone(&share),
            placer: Placer {
                options: PlanOptions {
                    primary_interface: settings.primary_interface.clone(),
                    interfaces: MultusInterfaces::Any,
                    allow_primary_eni: false,
                    allowed: settings.allow_cidrs.clone(),
                },
                ownership: settings.aws.ownership(),
                ec2: BatchedEc2::start(
                    pod_api_ec2.single_attempt(),
                    pod_api_ec2.clone(),
                    pod_api_ec2.retry_policy(),
                    settings.batch_window(),
                ),
            },
        };
        tokio::spawn(pod_http::serve(
            listener,
            pod_api_limits(&settings),
            Arc::new(service),
        ));
    }
    match (settings.capacity_seconds, node_name) {
        (0, _) => {
            tracing::info!("not advertising the Multus address capacity (--capacity-seconds 0)")
        }
        (seconds, Some(node_name)) => {
            tokio::spawn(
                capacity::Advertiser {
                    node_name,
                    client,
                    metadata: metadata.clone(),
                    ec2: ec2.clone(),
                    share: Arc::clone(&share),
                    pods: pods.clone(),
                    metrics: Arc::clone(&metrics),
                    period: Duration::from_secs(seconds),
                }
                .run(),
            );
        }
        (_, None) => tracing::warn!(
            "not advertising the Multus address capacity: NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)"
        ),
    }
    let mut agent = Agent::new(
        settings,
        (ec2, release_ec2),
        metadata,
        scanner,
        node,
        metrics,
    );
    agent.pods = pods;
    agent.share = share;
    agent.require_current_view();
    tracing::info!(
        instance = agent.node.instance_id,
        netns_dir = %agent.settings.netns_dir.display(),
        grace_s = agent.settings.release_grace_seconds,
        keep = ?agent.settings.keep_cidrs,
        dry_run = agent.settings.dry_run,
        "node agent started"
    );
    loop {
        let round = agent.round();
        tokio::select! {
            finished = round => finished?,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let next = agent.next_scan();
        tokio::select! {
            changed = events.next_change() => {
                if !changed {
                    tracing::warn!("the netns directory watch ended; scanning every --resync-seconds only");
                    events = Changes::Closed;
                }
                events.settle().await;
            }
            () = tokio::time::sleep_until(next) => {}
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("node agent stopped");
    Ok(())
}

/// What the pod API's listener admits (`--pod-api-max-connections*`,
/// `--pod-api-request-seconds`).
fn pod_api_limits(settings: &AgentSettings) -> transport::Limits {
    transport::Limits {
        connections: settings.pod_api_max_connections as usize,
        per_source: settings.pod_api_max_connections_per_source as usize,
        deadline: Duration::from_secs(settings.pod_api_request_seconds),
    }
}

/// Reaches instance metadata and builds the EC2 client, trying again until it works: an
/// agent that cannot reach metadata yet waits, not ready, rather than restart.
async fn connect(
    settings: &AgentSettings,
    proxies: &aws::Proxies,
    metrics: &AgentMetrics,
) -> (Metadata, Ec2, NodeFacts) {
    let mut failures = 0;
    loop {
        match aws::connect(&settings.aws, proxies).await {
            Ok(connected) => return connected,
            Err(error) => {
                failures += 1;
                tracing::error!(%error, "cannot start: instance metadata unreachable; trying again");
                metrics.error("metadata");
                metrics.set_unready(format!("instance metadata unreachable: {error}"));
                tokio::time::sleep(CONNECT_BACKOFF.jittered(failures, fastrand::f64())).await;
            }
        }
    }
}
