//! `ipmgr-helper agent`: the node agent (a DaemonSet in the node's network namespace). It
//! gives back the addresses of pods that are gone, so ENIs never fill up: init-mode pods
//! never release, and a sidecar that was OOM-killed or force-deleted could not.
//!
//! Each scan reads every pod network namespace of the runtime's netns directory (on its
//! changes, through inotify, and every `--resync-seconds`) and the node's ENIs from instance
//! metadata; [`Absences`] decides what no pod carries for the grace period and in
//! consecutive scans. Just before giving an address back the agent reads the ENIs from EC2
//! and [`verify_release`] keeps what it must not touch. Nothing is called while nothing
//! changes.

pub mod metrics;
pub mod netns;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchMask};
use ipmgr_eni::{Absences, Assignment, EniRecord, Keep, NodeFacts, verify_release};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::AgentSettings;
use crate::connect::aws;
use crate::ec2::Ec2;
use crate::failure::RunError;
use crate::metadata::Metadata;
use metrics::{AgentMetrics, ReasonLabel};
use netns::{Scan, ScanError};

/// How long the netns directory must be quiet before a scan: a sandbox is created and
/// mounted in a few steps.
const SETTLE: Duration = Duration::from_millis(200);

/// The running agent.
#[derive(Debug)]
struct Agent {
    settings: AgentSettings,
    metadata: Metadata,
    ec2: Ec2,
    node: NodeFacts,
    /// The node's ENIs as EC2 lists them; re-read when metadata shows another set of ENIs.
    records: Vec<EniRecord>,
    /// The ids of the node's Multus ENIs (by `records`), less any EC2 later disowned.
    multus: BTreeSet<String>,
    absences: Absences,
    metrics: Arc<AgentMetrics>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(settings: AgentSettings) -> Result<(), RunError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let metrics = Arc::new(AgentMetrics::default());
    let listener = TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(|source| RunError::Metrics {
            address: settings.metrics_listen,
            source,
        })?;
    tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
    let mut events = watch(&settings.netns_dir)?;
    let (metadata, ec2, node) = aws(&settings.aws).await?;
    let mut agent = Agent {
        metadata,
        ec2,
        node,
        records: Vec::new(),
        multus: BTreeSet::new(),
        absences: Absences::default(),
        metrics,
        settings,
    };
    agent.read_enis().await?;
    tracing::info!(
        instance = agent.node.instance_id,
        multus_enis = ?agent.multus,
        netns_dir = %agent.settings.netns_dir.display(),
        grace_s = agent.settings.release_grace_seconds,
        dry_run = agent.settings.dry_run,
        "node agent started"
    );
    loop {
        agent.scan().await?;
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

impl Agent {
    /// Reads the node's ENIs from EC2 and which of them are Multus ENIs.
    async fn read_enis(&mut self) -> Result<(), RunError> {
        self.records = self.ec2.node_enis(&self.node.instance_id).await?;
        let policy = self.settings.aws.ownership();
        self.multus = self
            .records
            .iter()
            .filter(|record| record.multus(policy).is_ok() && record.attachment != Some((0, 0)))
            .map(|record| record.id.clone())
            .collect();
        Ok(())
    }

    /// When to scan next without a change of the netns directory: at the resync interval, or
    /// sooner, when a waiting address's grace period ends.
    fn next_scan(&self) -> tokio::time::Instant {
        let now = Instant::now();
        let resync = now + self.settings.resync();
        let due = self
            .absences
            .next_due(&self.settings.reclaim())
            .map_or(resync, |due| due.max(now + SETTLE));
        tokio::time::Instant::from_std(due.min(resync))
    }

    /// One scan, and the release round it may call for.
    async fn scan(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        let dir = self.settings.netns_dir.clone();
        let scanned = tokio::task::spawn_blocking(move || netns::scan(&dir))
            .await
            .map_err(|error| ScanError::Thread(std::io::Error::other(error)))?;
        let scan = match scanned {
            Ok(scan) => scan,
            Err(error @ ScanError::Permission { .. }) => return Err(error.into()),
            Err(error) => {
                tracing::error!(%error, "scan failed; nothing is given back until one succeeds");
                self.metrics.error("scan");
                return Ok(());
            }
        };
        self.metrics
            .scan_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.in_use.set(scan.in_use.len() as i64);
        self.metrics.namespaces.set(scan.namespaces as i64);
        match self.metadata.node_facts().await {
            Ok(node) => self.node = node,
            Err(error) => {
                tracing::error!(%error, "cannot read instance metadata; nothing is given back this scan");
                self.metrics.error("metadata");
                return Ok(());
            }
        }
        let known = |id: &String| self.records.iter().any(|record| &record.id == id);
        if !self.node.enis.iter().all(|eni| known(&eni.id)) {
            self.read_enis().await?;
        }
        if !scan.complete() {
            tracing::info!(unreadable = ?scan.unreadable, "some namespaces could not be read; nothing is given back this scan");
        } else {
            let due = self.absences.observe(
                &self.node,
                &self.multus,
                &scan.in_use,
                &self.settings.reclaim(),
                Instant::now(),
            );
            if !due.is_empty() {
                self.release(&due, &scan).await;
            }
        }
        self.metrics.waiting.set(self.absences.waiting() as i64);
        self.metrics.set_ready();
        tracing::debug!(
            namespaces = scan.namespaces,
            in_use = scan.in_use.len(),
            waiting = self.absences.waiting(),
            took_ms = started.elapsed().as_millis() as u64,
            "scan done"
        );
        Ok(())
    }

    /// A release round: EC2 has the last word (one DescribeNetworkInterfaces for the ENIs
    /// concerned), then one unassign call per ENI and family.
    async fn release(&mut self, due: &[Assignment], scan: &Scan) {
        let ids: BTreeSet<String> = due.iter().map(|a| a.eni_id.clone()).collect();
        let enis = match self.ec2.enis(&ids.into_iter().collect::<Vec<_>>()).await {
            Ok(enis) => enis,
            Err(failure) => {
                tracing::error!(%failure, "cannot read the ENIs before giving addresses back; next scan");
                self.metrics.error("describe");
                return;
            }
        };
        let policy = self.settings.aws.ownership();
        let (changes, kept) =
            verify_release(due, &self.node.instance_id, &enis, &scan.in_use, policy);
        for (assignment, keep) in kept {
            self.keep(&assignment, keep);
        }
        for change in changes {
            if self.settings.dry_run {
                for assignment in change.assignments() {
                    self.absences.forget(&assignment);
                    tracing::info!(address = %assignment.address, eni = assignment.eni_id, reason = "in no pod on the node for the grace period", "dry run: would give back");
                }
                continue;
            }
            let failures = self.ec2.release(&change).await;
            let failed: Vec<String> = failures
                .iter()
                .flat_map(|failure| failure.addresses.iter().cloned())
                .collect();
            for failure in &failures {
                tracing::error!(%failure, "cannot give the address back; it is tried again after another grace period");
                self.metrics.error("unassign");
            }
            for assignment in change.assignments() {
                if failed.contains(&assignment.address.to_string()) {
                    self.absences.postpone(&assignment, Instant::now());
                } else {
                    self.absences.forget(&assignment);
                    self.metrics.released.inc();
                    tracing::info!(address = %assignment.address, eni = assignment.eni_id, reason = "in no pod on the node for the grace period", "address given back");
                }
            }
        }
    }

    /// An address due to be given back that EC2 or a fresh scan says to keep.
    fn keep(&mut self, assignment: &Assignment, keep: Keep) {
        self.absences.forget(assignment);
        self.metrics
            .refused
            .get_or_create(&ReasonLabel {
                reason: keep.label(),
            })
            .inc();
        match keep {
            Keep::InUse | Keep::Moved => {
                tracing::info!(address = %assignment.address, eni = assignment.eni_id, reason = %keep, "kept");
            }
            Keep::OtherInstance | Keep::NotMultus | Keep::Primary => {
                self.multus.remove(&assignment.eni_id);
                tracing::warn!(address = %assignment.address, eni = assignment.eni_id, reason = %keep, "kept; the agent leaves this ENI alone from now on");
            }
        }
    }
}

/// Changes of the netns directory, or none when it cannot be watched.
enum Changes {
    /// inotify on the directory.
    Watching(inotify::EventStream<Vec<u8>>),
    /// No watch: only the periodic scans.
    Closed,
}

fn watch(dir: &std::path::Path) -> Result<Changes, RunError> {
    let watch_error = |source| ScanError::Directory {
        dir: PathBuf::from(dir),
        source,
    };
    let inotify = Inotify::init().map_err(watch_error)?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO,
        )
        .map_err(watch_error)?;
    let stream = inotify
        .into_event_stream(vec![0u8; 1024])
        .map_err(watch_error)?;
    Ok(Changes::Watching(stream))
}

impl Changes {
    /// Waits for the next change; false when the watch ended.
    async fn next_change(&mut self) -> bool {
        use futures::StreamExt as _;
        match self {
            Changes::Watching(stream) => matches!(stream.next().await, Some(Ok(_))),
            Changes::Closed => std::future::pending().await,
        }
    }

    /// Waits until the directory has been quiet for [`SETTLE`], draining the burst.
    async fn settle(&mut self) {
        loop {
            let quiet = tokio::time::timeout(SETTLE, self.next_change()).await;
            if !matches!(quiet, Ok(true)) {
                return;
            }
        }
    }
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Changes::Watching(_) => "Changes::Watching",
            Changes::Closed => "Changes::Closed",
        })
    }
}
