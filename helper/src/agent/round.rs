//! The agent's rounds: scan the pod namespaces, read the node's ENIs, judge the view, and
//! release what no pod carried for the grace period, only when the view can be trusted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use ipmgr_eni::{Absences, NodeFacts, ReleaseOptions, ScanVerdict, secondary_addresses};

use super::cluster::NodePods;
use super::metrics::AgentMetrics;
use super::netns::{PodScanner, Scan, ScanError};
use super::watch::SETTLE;
use super::{Agent, AgentError, INCOMPLETE_UNREADY, RETRY_ROUND};
use crate::aws::{Ec2Api, NodeMetadata};
use crate::config::{AgentSettings, PodListen};

impl<E: Ec2Api, M: NodeMetadata, S: PodScanner> Agent<E, M, S> {
    /// An agent over these adapters (`ec2`: the client for reads, and the one for the
    /// release path), seeing `node` at first.
    pub(super) fn new(
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
    pub(super) async fn round(&mut self) -> Result<(), AgentError> {
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
    pub(super) fn require_current_view(&self) {
        if self.settings.pod_listen != PodListen::Off {
            let (view, bound) = (self.pods.clone(), self.settings.pod_watch_stale());
            self.metrics.also_require(move || view.staleness(bound));
        }
    }

    /// Why the agent cannot see what the node's pods claim, when the pod API is on and the
    /// API server's view is not listed yet or not confirmed current: nothing is released
    /// then (a floating address a pod claims may be on no interface for a while).
    pub(super) fn blind_to_claims(&self) -> Option<String> {
        if self.settings.pod_listen == PodListen::Off {
            return None;
        }
        self.pods.staleness(self.settings.pod_watch_stale())
    }

    /// When an unused address may be released: the settings, and never what a live pod
    /// of the node has a claim on (the API server's view: its record, and its floating
    /// addresses inside its namespace's grant), whether or not its namespace shows it.
    pub(super) fn release_options(&self) -> ReleaseOptions {
        let mut options = self.settings.release_options();
        options.kept.extend(self.pods.protected());
        options
    }

    /// Whether the ENI records cover every ENI metadata shows and no re-read is due.
    pub(super) fn enis_current(&self) -> bool {
        let Some(records) = &self.records else {
            return false;
        };
        let known = |id: &String| records.iter().any(|record| &record.id == id);
        self.node.enis.iter().all(|eni| known(&eni.id))
            && self.reread_enis.is_none_or(|at| Instant::now() < at)
    }

    /// Reads the node's ENIs from EC2 and which of them are Multus ENIs; false (logged,
    /// counted, not ready) when EC2 did not answer within the retry budget.
    pub(super) async fn read_enis(&mut self) -> bool {
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
    pub(super) async fn scan_pods(&self) -> Result<Option<Scan>, AgentError> {
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
    pub(super) fn judge(&mut self, scan: &Scan) -> ScanVerdict {
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
    pub(super) fn next_scan(&self) -> tokio::time::Instant {
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
