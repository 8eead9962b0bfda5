//! The sidecar: a first pass, then follow the pod's address changes (netlink events, no
//! polling) and re-check the whole node periodically; on SIGTERM, release.
//!
//! EC2's answer is the truth and instance metadata lags it: an address the pod just gained,
//! or one that changed within the last minute, is planned as a change whatever metadata
//! says, and the holder lookup (EC2) decides. A pass that leaves an address unroutable is
//! tried again after 2 s, then twice as long each time, up to `--error-backoff-max-seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipmgr_eni::{Assignment, NodeFacts, PodAddress, plan};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::PodHelper;
use super::error::PodError;
use super::pass::{NodeEnis, PassReport, confirm};
use crate::aws::{Ec2Api, NodeMetadata};
use crate::netlink::PodAddresses;

/// How long metadata is not trusted about an address after it changed: the VPC CNI waits up
/// to a minute for metadata to show an assignment.
const METADATA_LAG: Duration = Duration::from_secs(60);

/// What starts a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The pod gained an address: only the target ENIs' address lists are read again.
    Event,
    /// The periodic check, or the retry after a failing pass: the whole node is read again
    /// (and the ENI list from EC2), which notices attached ENIs and changed tags.
    FullCheck,
}

/// What the sidecar remembers between passes.
#[derive(Debug, Default)]
struct Memory {
    /// The pod's addresses as of the last look.
    seen: Vec<PodAddress>,
    /// What this helper assigned (EC2 accepted), for the release on exit.
    assigned: BTreeSet<Assignment>,
    /// When each address last changed (gained by the pod, or assigned).
    changed: BTreeMap<IpAddr, Instant>,
    /// Passes in a row that left an address unroutable.
    failing: u32,
    /// Whether the ready file is written.
    ready: bool,
}

impl Memory {
    /// The addresses metadata is not trusted about (changed within [`METADATA_LAG`]).
    fn fresh(&mut self) -> Vec<IpAddr> {
        let now = Instant::now();
        self.changed
            .retain(|_, at| now.duration_since(*at) < METADATA_LAG);
        self.changed.keys().copied().collect()
    }
}

impl<E: Ec2Api, M: NodeMetadata, N: PodAddresses> PodHelper<E, M, N> {
    /// `sidecar`: wait for the addresses, then pass after pass until SIGTERM or SIGINT;
    /// then release what it assigned (if enabled) and return.
    pub async fn sidecar(&mut self, mut node: NodeFacts) -> Result<(), PodError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(PodError::Signal)?;
        let mut memory = Memory {
            seen: self.wait_for_addresses(&node).await?,
            ..Memory::default()
        };
        let mut enis = NodeEnis::default();
        let mut trigger = Some(Trigger::Event);
        let mut next_check = Instant::now() + self.settings.recheck();
        loop {
            if let Some(why) = trigger.take() {
                let pass = self.sidecar_pass(why, &mut node, &mut enis, &mut memory);
                let report = tokio::select! {
                    report = pass => report,
                    _ = terminate.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                };
                next_check = Instant::now() + self.after(report, &node, &mut memory)?;
            }
            tokio::select! {
                change = self.network.changed() => {
                    let Some(added) = change else {
                        break;
                    };
                    let current = self.network.addresses().await?;
                    let now = Instant::now();
                    memory.changed.extend(added.iter().map(|&address| (address, now)));
                    let new = !added.is_empty()
                        || current.iter().any(|address| !memory.seen.contains(address));
                    memory.seen = current;
                    if new {
                        trigger = Some(Trigger::Event);
                    }
                }
                () = tokio::time::sleep_until(next_check) => trigger = Some(Trigger::FullCheck),
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        if self.settings.release_on_exit {
            self.give_back_on_exit(&memory.assigned).await?;
        }
        Ok(())
    }

    /// One pass of the sidecar: refresh what the trigger calls for, then pass.
    async fn sidecar_pass(
        &self,
        trigger: Trigger,
        node: &mut NodeFacts,
        enis: &mut NodeEnis,
        memory: &mut Memory,
    ) -> Result<PassReport, PodError> {
        match trigger {
            Trigger::FullCheck => {
                enis.forget();
                *node = self.metadata.node_facts().await?;
            }
            Trigger::Event => {
                let targets = plan(node, &memory.seen, &self.options).placements;
                let targets: Vec<&str> = targets.iter().map(|p| p.eni_id.as_str()).collect();
                self.metadata.refresh(node, &targets).await?;
            }
        }
        let fresh = memory.fresh();
        Ok(self.pass(node, &memory.seen, &fresh, enis).await)
    }

    /// Takes in a pass's outcome: remembers what EC2 accepted, confirms it in the background,
    /// writes the ready file after the first clean pass; the time until the next full check.
    fn after(
        &self,
        outcome: Result<PassReport, PodError>,
        node: &NodeFacts,
        memory: &mut Memory,
    ) -> Result<Duration, PodError> {
        let clean = match outcome {
            Ok(report) => {
                let now = Instant::now();
                for assignment in &report.assigned {
                    memory.changed.insert(assignment.address, now);
                }
                memory.assigned.extend(report.assigned.iter().cloned());
                if !report.assigned.is_empty() {
                    let (metadata, node) = (self.metadata.clone(), node.clone());
                    let (accepted, window) = (report.assigned, self.settings.confirm());
                    tokio::spawn(async move { confirm(&metadata, &node, &accepted, window).await });
                }
                report.failures.is_empty()
            }
            Err(error) => {
                tracing::error!(%error, "pass failed");
                false
            }
        };
        if clean {
            memory.failing = 0;
            if !memory.ready
                && let Some(path) = &self.settings.ready_file
            {
                std::fs::write(path, b"ready\n").map_err(|source| PodError::ReadyFile {
                    path: path.display().to_string(),
                    source,
                })?;
                tracing::info!(file = %path.display(), "first pass done; ready");
            }
            memory.ready = true;
            return Ok(self.settings.recheck());
        }
        memory.failing += 1;
        let delay = self.settings.error_backoff().ceiling(memory.failing);
        tracing::warn!(
            failing_passes = memory.failing,
            retry_in_s = delay.as_secs(),
            "a pass left addresses unroutable; backing off before the next full check"
        );
        Ok(delay)
    }
}
