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

mod batch;
pub mod cluster;
mod coalesce;
pub mod error;
pub mod holders;
mod listen;
pub mod metrics;
mod mirror;
pub mod netns;
pub mod passes;
mod release;
pub mod serve;
#[cfg(test)]
pub(crate) mod serve_tests;
pub mod share;
#[cfg(test)]
mod tests;
pub mod transport;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipmgr_eni::{
    Absences, Backoff, EniRecord, MultusInterfaces, NodeFacts, PlanOptions, ReleaseOptions,
    ScanVerdict, secondary_addresses,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::aws::{self, Ec2, Ec2Api, Metadata, NodeMetadata};
use crate::config::{AgentSettings, PodListen};
use crate::place::Placer;
use batch::BatchedEc2;
use cluster::NodePods;
pub use error::AgentError;
use holders::KubeHolders;
use metrics::AgentMetrics;
use netns::{NetnsDirectory, PodScanner, Scan, ScanError};
use passes::PodPasses;
use serve::PodService;
use share::NodeShare;
use watch::{Changes, SETTLE, watch};

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
            let node_name = node_name.ok_or(AgentError::NodeName)?;
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
    if let Some((listener, node_name)) = pod_api {
        let client = cluster::SharedClient::default();
        tokio::spawn(cluster::follow(
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
            holders: KubeHolders::new(client),
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
        tokio::spawn(serve::serve(
            listener,
            pod_api_limits(&settings),
            Arc::new(service),
        ));
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

impl<E: Ec2Api, M: NodeMetadata, S: PodScanner> Agent<E, M, S> {
    /// An agent over these adapters (`ec2`: the client for reads, and the one for the
    /// release path), seeing `node` at first.
    fn new(
        settings: AgentSettings,
        (ec2, release_ec2): (E, E),
        metadata: M,
        scanner: S,
        node: NodeFacts,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        Agent {
            metadata,
            scanner,
            release_ec2,
            ec2,
            node,
            records: None,
            multus: BTreeSet::new(),
            reread_enis: None,
            absences: Absences::default(),
            trusted: false,
            retry_soon: false,
            incomplete: 0,
            metrics,
            settings,
            pods: NodePods::default(),
            share: Arc::default(),
        }
    }

    /// One round: scan, read the node, and release what is due, if the view allows.
    async fn round(&mut self) -> Result<(), AgentError> {
        self.trusted = false;
        self.retry_soon = true;
        let Some(scan) = self.scan_pods().await? else {
            return Ok(());
        };
        match self.metadata.node_facts().await {
            Ok(node) => self.node = node,
            Err(error) => {
                tracing::error!(%error, "cannot read instance metadata; nothing is released this scan");
                self.metrics.error("metadata");
                self.metrics
                    .set_unready(format!("instance metadata unreadable: {error}"));
                return Ok(());
            }
        }
        if !self.enis_current() && !self.read_enis().await {
            return Ok(());
        }
        self.share
            .set_node(self.node.clone(), self.multus.iter().cloned().collect());
        let verdict = self.judge(&scan);
        self.retry_soon = matches!(verdict, ScanVerdict::Incomplete { .. });
        if verdict == ScanVerdict::Trusted {
            self.trusted = true;
            self.metrics.set_ready();
            if let Some(reason) = self.blind_to_claims() {
                tracing::info!(
                    reason,
                    "nothing is released while the agent cannot see what the node's pods claim"
                );
                // Looked at again soon: what waited is released once the view is current.
                self.retry_soon = true;
                return Ok(());
            }
            let due = self.absences.observe(
                &self.node,
                &self.multus,
                &scan.in_use,
                &self.release_options(),
                Instant::now(),
            );
            if !due.is_empty() {
                self.release(&due).await?;
            }
        }
        self.metrics.waiting.set(self.absences.waiting() as i64);
        Ok(())
    }

    /// With the pod API on, readiness also requires the API server's view to be listed and
    /// confirmed current (`--pod-watch-stale-seconds`), checked whenever it is asked.
    fn require_current_view(&self) {
        if self.settings.pod_listen != PodListen::Off {
            let (view, bound) = (self.pods.clone(), self.settings.pod_watch_stale());
            self.metrics.also_require(move || view.staleness(bound));
        }
    }

    /// Why the agent cannot see what the node's pods claim, when the pod API is on and the
    /// API server's view is not listed yet or not confirmed current: nothing is released
    /// then (a floating address a pod claims may be on no interface for a while).
    fn blind_to_claims(&self) -> Option<String> {
        if self.settings.pod_listen == PodListen::Off {
            return None;
        }
        self.pods.staleness(self.settings.pod_watch_stale())
    }

    /// When an unused address may be released: the settings, and never what a live pod
    /// of the node has a claim on (the API server's view: its record, and its floating
    /// addresses inside its namespace's grant), whether or not its namespace shows it.
    fn release_options(&self) -> ReleaseOptions {
        let mut options = self.settings.release_options();
        options.kept.extend(self.pods.protected());
        options
    }

    /// Whether the ENI records cover every ENI metadata shows and no re-read is due.
    fn enis_current(&self) -> bool {
        let Some(records) = &self.records else {
            return false;
        };
        let known = |id: &String| records.iter().any(|record| &record.id == id);
        self.node.enis.iter().all(|eni| known(&eni.id))
            && self.reread_enis.is_none_or(|at| Instant::now() < at)
    }

    /// Reads the node's ENIs from EC2 and which of them are Multus ENIs; false (logged,
    /// counted, not ready) when EC2 did not answer within the retry budget.
    async fn read_enis(&mut self) -> bool {
        let records = match self.ec2.node_enis(&self.node.instance_id).await {
            Ok(records) => records,
            Err(failure) => {
                tracing::error!(%failure, "cannot read the node's ENIs from EC2; nothing is released until it answers");
                self.metrics.error("describe");
                self.metrics
                    .set_unready(format!("cannot read the node's ENIs from EC2: {failure}"));
                return false;
            }
        };
        let policy = self.settings.aws.ownership();
        self.multus = records
            .iter()
            .filter(|record| record.multus(policy).is_ok())
            .map(|record| record.id.clone())
            .collect();
        tracing::info!(multus_enis = ?self.multus, "read the node's ENIs");
        self.records = Some(records);
        self.reread_enis = None;
        true
    }

    /// Scans the pod namespaces; `None` (logged, counted) when the scan failed in a way the
    /// next one may not. Only a refused setns ends the agent.
    async fn scan_pods(&self) -> Result<Option<Scan>, AgentError> {
        let started = Instant::now();
        match self.scanner.scan().await {
            Ok(scan) => {
                self.metrics
                    .scan_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.in_use.set(scan.in_use.len() as i64);
                self.metrics.namespaces.set(scan.namespaces as i64);
                Ok(Some(scan))
            }
            Err(error @ ScanError::Permission { .. }) => Err(error.into()),
            Err(error) => {
                tracing::error!(%error, "scan failed; nothing is released until one succeeds");
                self.metrics.scanned("failed");
                self.metrics.error("scan");
                self.metrics.set_unready(format!("scan failed: {error}"));
                Ok(None)
            }
        }
    }

    /// Whether `scan` is a view to act on; counts it, and says what is wrong when not.
    fn judge(&mut self, scan: &Scan) -> ScanVerdict {
        let held = secondary_addresses(&self.node, &self.multus).len();
        let verdict = ScanVerdict::judge(scan.namespaces, scan.unreadable.len(), held);
        self.metrics.scanned(verdict.label());
        match verdict {
            ScanVerdict::Trusted => self.incomplete = 0,
            ScanVerdict::Incomplete { unreadable } => {
                self.incomplete += 1;
                tracing::info!(unreadable = ?scan.unreadable, "some namespaces could not be read; nothing is released this scan");
                if self.incomplete >= INCOMPLETE_UNREADY {
                    self.metrics.set_unready(format!(
                        "{} scans in a row could not read every pod namespace ({unreadable} unreadable, e.g. {}); nothing is released",
                        self.incomplete,
                        scan.unreadable.first().map(|path| path.display().to_string()).unwrap_or_default()
                    ));
                }
            }
            ScanVerdict::Blind { held } => {
                let reason = format!(
                    "no pod network namespace in {}, while the node's Multus ENIs hold {held} secondary address(es): nothing is released; the directory is probably not where the container runtime mounts pod namespaces (see --netns-dir)",
                    self.settings.netns_dir.display()
                );
                tracing::warn!("{reason}");
                self.metrics.set_unready(reason);
            }
        }
        verdict
    }

    /// When to scan next without a change of the netns directory: at the resync interval, or
    /// sooner, when a waiting address becomes due, when a view that may pass should be
    /// looked at again, or when the ENIs are to be read again.
    fn next_scan(&self) -> tokio::time::Instant {
        let now = Instant::now();
        let resync = now + self.settings.resync();
        let release_due = self
            .trusted
            .then(|| self.absences.next_due(&self.release_options()))
            .flatten();
        let retry = self.retry_soon.then_some(now + RETRY_ROUND);
        let due = [release_due, retry, self.reread_enis]
            .into_iter()
            .flatten()
            .min()
            .map_or(resync, |due| due.max(now + SETTLE));
        tokio::time::Instant::from_std(due.min(resync))
    }
}
