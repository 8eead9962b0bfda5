//! The direct backend: the pod's container calls instance metadata and EC2 itself (the
//! full `ipmgr-helper`). It runs the one pod-side loop of [`ipmgr_pod::run`] over
//! [`DirectRouting`], its side of the loop's seam: each ask is one pass ([`Placer`]) that
//! plans with `ipmgr_eni` and carries the plan out through the AWS adapters. On exit it
//! releases what it assigned ([`release`]); `plan` says what `init` would do ([`report`]).

pub mod confirm;
pub mod error;
pub mod release;
pub mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipmgr_eni::{Assignment, NodeFacts, Plan, PodAddress, Reason, plan};
use ipmgr_pod::netlink::PodAddresses;
use ipmgr_pod::{Ask, Routing};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::aws::{self, Ec2, Ec2Api, Metadata, NodeMetadata};
use crate::config::Settings;
pub use crate::place::PassReport;
use crate::place::{NodeEnis, Placer};
use confirm::confirm;
pub use error::{DirectError, Failure};

/// How long metadata is not trusted about an address after it changed: the VPC CNI waits up
/// to a minute for metadata to show an assignment.
const METADATA_LAG: Duration = Duration::from_secs(60);

/// How long a pass under way may finish after SIGTERM before the release.
const FINISH_ON_STOP: Duration = Duration::from_secs(3);

/// The direct backend over its adapters: EC2 (`E`) and instance metadata (`M`); the real
/// ones by default, fakes in tests.
#[derive(Debug)]
pub struct DirectRouting<E = Ec2, M = Metadata> {
    pub(crate) settings: Settings,
    /// Plans and carries out passes through EC2.
    pub(crate) placer: Placer<E>,
    pub(crate) metadata: M,
    /// The node as instance metadata showed it last.
    pub(crate) node: NodeFacts,
    /// The node's ENIs as EC2 listed them, until a full check forgets them.
    enis: NodeEnis,
    /// What this helper assigned (EC2 accepted), for the release on exit.
    pub(crate) assigned: BTreeSet<Assignment>,
    /// When each address last changed (gained by the pod, or assigned).
    changed: BTreeMap<IpAddr, Instant>,
    /// Whether the last pass left an address unroutable.
    failing: bool,
    /// The background wait for metadata to show the last pass's assignments.
    confirming: Option<JoinHandle<()>>,
}

impl DirectRouting {
    /// Connects to AWS ([`aws::connect`]) and reads the node from instance metadata.
    pub async fn connect(settings: Settings) -> Result<Self, DirectError> {
        let proxies = aws::Proxies::from_env()?;
        let (metadata, ec2, node) = aws::connect(&settings.aws, &proxies).await?;
        Ok(DirectRouting::new(settings, ec2, metadata, node))
    }
}

impl<E: Ec2Api, M: NodeMetadata> DirectRouting<E, M> {
    /// The backend over these adapters, on `node` as metadata shows it.
    pub fn new(settings: Settings, ec2: E, metadata: M, node: NodeFacts) -> Self {
        DirectRouting {
            placer: Placer {
                options: settings.plan_options(),
                ownership: settings.aws.ownership(),
                ec2,
            },
            settings,
            metadata,
            node,
            enis: NodeEnis::default(),
            assigned: BTreeSet::new(),
            changed: BTreeMap::new(),
            failing: false,
            confirming: None,
        }
    }

    /// The addresses metadata is not trusted about (changed within [`METADATA_LAG`]).
    fn recently_changed(&mut self) -> Vec<IpAddr> {
        let now = Instant::now();
        self.changed
            .retain(|_, at| now.duration_since(*at) < METADATA_LAG);
        self.changed.keys().copied().collect()
    }

    /// One pass for `reason` over the pod's `addresses`. A recheck, and any pass after one
    /// that failed, reads the node from metadata again (and the ENI list from EC2), which
    /// notices attached ENIs and changed tags.
    async fn pass(
        &mut self,
        reason: Reason,
        addresses: &[PodAddress],
    ) -> Result<PassReport, DirectError> {
        if reason == Reason::Recheck || self.failing {
            self.enis.forget();
            self.node = self.metadata.node_facts().await?;
        }
        let planned = self.planned(reason, addresses);
        let recent = self.recently_changed();
        Ok(self
            .placer
            .pass(&self.node, planned, &recent, &mut self.enis)
            .await)
    }

    /// The pod's `addresses` planned on the node as a pass for `reason` may believe it
    /// ([`NodeFacts::believed`], on the plan's target ENIs).
    fn planned(&self, reason: Reason, addresses: &[PodAddress]) -> Plan {
        let planned = plan(&self.node, addresses, &self.placer.options);
        let targets: Vec<String> = planned
            .placements
            .iter()
            .map(|placement| placement.eni_id.clone())
            .collect();
        planned.against(&self.node.believed(reason, &targets))
    }

    /// Takes in what a pass did: remembers what EC2 accepted, confirms it in the background.
    fn took(&mut self, report: &PassReport) {
        let now = Instant::now();
        for assignment in &report.assigned {
            self.changed.insert(assignment.address, now);
        }
        self.assigned.extend(report.assigned.iter().cloned());
        if !report.assigned.is_empty() {
            let (metadata, node) = (self.metadata.clone(), self.node.clone());
            let (accepted, window) = (report.assigned.clone(), self.settings.confirm());
            // In the pass's span, so that its lines name the pod like every other.
            let confirming = async move { confirm(&metadata, &node, &accepted, window).await };
            self.confirming = Some(tokio::spawn(confirming.in_current_span()));
        }
    }
}

impl<E: Ec2Api, M: NodeMetadata> Routing for DirectRouting<E, M> {
    type Error = DirectError;

    fn multus_addresses(&self, addresses: &[PodAddress]) -> usize {
        plan(&self.node, addresses, &self.placer.options).multus_addresses()
    }

    async fn make_routable(&mut self, ask: Ask<'_>) -> Result<(), DirectError> {
        let now = Instant::now();
        self.changed
            .extend(ask.gained.iter().map(|&address| (address, now)));
        let report = self.pass(ask.reason, ask.addresses).await;
        let report = report.inspect_err(|_| self.failing = true)?;
        self.took(&report);
        self.failing = !report.failures.is_empty();
        if self.failing {
            return Err(DirectError::Unroutable(report.failures));
        }
        Ok(())
    }

    fn finish_on_stop(&self) -> Duration {
        FINISH_ON_STOP
    }

    /// `init`: waits (bounded, advisory) for metadata to show what EC2 accepted.
    async fn settle(&mut self) {
        if let Some(confirming) = self.confirming.take() {
            // A confirmation that panicked only said less.
            let _ = confirming.await;
        }
    }

    async fn stop<N: PodAddresses>(&mut self, network: &N) -> Result<(), DirectError> {
        if !self.settings.release_on_exit {
            return Ok(());
        }
        let carried = network.addresses().await?;
        self.release(&carried).await
    }
}
