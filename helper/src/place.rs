//! One assignment pass, shared by the pod helper (direct backend) and the node agent (which
//! serves pods): plan a pod's addresses against the node, vet the plan against EC2 (only
//! Multus ENIs, never another workload's address) and carry out the changes; EC2's answer
//! is the truth.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::future::Future;

use ipmgr_eni::{
    Assignment, Eni, EniChange, EniRecord, Move, NodeFacts, OwnershipPolicy, Plan, PlanOptions,
    RejectReason, Rejection, Vetted, vet,
};

use crate::aws::{Ec2Api, Ec2Failure};

/// Why one address (or one EC2 call's addresses) is not routable after a pass.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The planner refused the address (no ENI, ambiguous, primary ENI, outside the subnet).
    #[error("{0}")]
    Rejected(Rejection),
    /// An EC2 call failed.
    #[error(transparent)]
    Ec2(#[from] Ec2Failure),
}

impl Failure {
    /// A stable name of the variant, logged as `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Rejected(_) => "rejected",
            Failure::Ec2(_) => "ec2",
        }
    }

    /// Logs the failure with its kind.
    pub fn log(&self) {
        tracing::error!(kind = self.kind(), failure = %self, "address not routable");
    }
}

/// What a pass needs: how to plan, which ENIs count as Multus ENIs, and EC2 (`E`).
#[derive(Debug, Clone)]
pub struct Placer<E> {
    /// How addresses are planned.
    pub options: PlanOptions,
    /// Which ENIs are Multus ENIs.
    pub ownership: OwnershipPolicy,
    /// The EC2 calls.
    pub ec2: E,
}

/// The node's ENIs as EC2 lists them (tags, attachments): read when a pass first needs
/// them, kept by the sidecar until its periodic full check.
#[derive(Debug, Default)]
pub struct NodeEnis {
    records: Option<Vec<EniRecord>>,
}

impl NodeEnis {
    /// Forgets the list; the next pass that needs it reads it again.
    pub fn forget(&mut self) {
        self.records = None;
    }

    /// The list, read from EC2 when not known or when it lacks one of `enis` (attached
    /// since).
    async fn get(
        &mut self,
        ec2: &impl Ec2Api,
        node: &NodeFacts,
        enis: &[&str],
    ) -> Result<&[EniRecord], Ec2Failure> {
        let complete = |records: &Vec<EniRecord>| {
            enis.iter()
                .all(|id| records.iter().any(|record| record.id == *id))
        };
        if !self.records.as_ref().is_some_and(complete) {
            self.records = Some(ec2.node_enis(&node.instance_id).await?);
        }
        Ok(self.records.as_deref().unwrap_or_default())
    }
}

/// The last look at the addresses a pass would take from other Multus ENIs, before any
/// call: the node agent's check that nothing is taken from another namespace's pod.
pub trait MoveCheck: Sync {
    /// The moves that must not happen, each with the reason it is refused.
    fn refused(
        &self,
        moves: &[Move],
    ) -> impl Future<Output = Vec<(Assignment, RejectReason)>> + Send;
}

/// Lets every move through: the direct backend's helper holds EC2 power itself, so a check
/// in it would protect nothing.
#[derive(Debug, Clone, Copy)]
pub struct TakeAnything;

impl MoveCheck for TakeAnything {
    async fn refused(&self, _moves: &[Move]) -> Vec<(Assignment, RejectReason)> {
        Vec::new()
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Addresses EC2 accepted in this pass.
    pub assigned: Vec<Assignment>,
    /// Addresses left unroutable, and why.
    pub failures: Vec<Failure>,
}

impl<E: Ec2Api> Placer<E> {
    /// `planned` (the pod's addresses planned on `node`), vetted against EC2 in one pure
    /// step ([`vet`]): changes on ENIs that are not Multus ENIs and addresses another
    /// workload holds are refused, addresses EC2 already has on their ENI need no call, and
    /// the `recent` addresses are checked whatever metadata says. Read-only, and nothing at
    /// all when nothing needs to change. Otherwise one DescribeNetworkInterfaces per address
    /// family finds who holds the addresses; the IPv4 one also asks for the target ENIs'
    /// primary addresses, so that the answer lists those ENIs with their tags. (Only an ENI
    /// without an IPv4 address needs the node's ENI list, `enis`, read once.)
    pub async fn vetted_plan(
        &self,
        node: &NodeFacts,
        planned: Plan,
        recent: &[IpAddr],
        enis: &mut NodeEnis,
    ) -> Result<Vetted, Ec2Failure> {
        for rejection in planned.rejections.iter().filter(|r| !r.is_failure()) {
            tracing::info!(%rejection, "address left alone");
        }
        let records = self
            .records_for(node, &planned.lookups(recent), enis)
            .await?;
        Ok(vet(
            planned,
            &records,
            recent,
            &node.instance_id,
            self.ownership,
        ))
    }

    /// What EC2 says about the ENIs and addresses of `lookups`: the holders of the addresses
    /// and the target ENIs (nothing, and no call, when there is nothing to look up).
    async fn records_for(
        &self,
        node: &NodeFacts,
        lookups: &[EniChange],
        enis: &mut NodeEnis,
    ) -> Result<Vec<EniRecord>, Ec2Failure> {
        let Some(vpc_id) = lookups
            .first()
            .and_then(|change| node.eni(&change.eni_id))
            .map(|eni| eni.vpc_id.clone())
        else {
            return Ok(Vec::new());
        };
        let targets: Vec<&str> = lookups
            .iter()
            .map(|change| change.eni_id.as_str())
            .collect();
        let primaries: Option<Vec<Ipv4Addr>> = targets
            .iter()
            .map(|id| node.eni(id).and_then(Eni::primary_ipv4))
            .collect();
        let mut ipv4: Vec<_> = lookups.iter().flat_map(|c| c.ipv4.clone()).collect();
        let ipv6: Vec<_> = lookups.iter().flat_map(|c| c.ipv6.clone()).collect();
        match primaries {
            Some(primaries) => {
                ipv4.extend(primaries);
                self.ec2.holders(&vpc_id, &ipv4, &ipv6).await
            }
            None => {
                let (node_enis, mut holders) = futures::try_join!(
                    enis.get(&self.ec2, node, &targets),
                    self.ec2.holders(&vpc_id, &ipv4, &ipv6),
                )?;
                holders.extend(node_enis.iter().cloned());
                Ok(holders)
            }
        }
    }

    /// Vets `planned` (the pod's addresses planned on `node`) against EC2 and carries out
    /// the changes. What EC2 accepted is assigned.
    pub async fn pass(
        &self,
        node: &NodeFacts,
        planned: Plan,
        recent: &[IpAddr],
        enis: &mut NodeEnis,
    ) -> PassReport {
        self.checked_pass(node, planned, recent, enis, &TakeAnything)
            .await
    }

    /// [`Placer::pass`], with `moves` judging the addresses the pass would take from other
    /// Multus ENIs before any call is made.
    pub async fn checked_pass(
        &self,
        node: &NodeFacts,
        planned: Plan,
        recent: &[IpAddr],
        enis: &mut NodeEnis,
        moves: &impl MoveCheck,
    ) -> PassReport {
        let addresses = planned.placements.len() + planned.rejections.len();
        let vetted = match self.vetted_plan(node, planned, recent, enis).await {
            Ok(mut vetted) => {
                for (assignment, reason) in moves.refused(&vetted.moves).await {
                    vetted.refuse(&assignment, reason);
                }
                Ok(vetted)
            }
            Err(failure) => Err(failure),
        };
        let (planned, releases, mut failures) = match vetted {
            Ok(Vetted {
                plan,
                ipv6_unassign_first,
                ..
            }) => {
                let rejected = plan.failures().cloned().map(Failure::Rejected).collect();
                (plan, ipv6_unassign_first, rejected)
            }
            Err(failure) => (Plan::default(), Vec::new(), vec![failure.into()]),
        };
        let (assigned, call_failures) = self.apply(&planned, &releases).await;
        failures.extend(call_failures.into_iter().map(Failure::from));
        failures.iter().for_each(Failure::log);
        tracing::info!(
            addresses,
            placed = planned.placements.len(),
            assigned = assigned.len(),
            failures = failures.len(),
            "pass done"
        );
        PassReport { assigned, failures }
    }

    /// The EC2 calls of a vetted plan: IPv6 addresses leave their Multus holders first, then
    /// one IPv4 and one IPv6 assign per ENI; an IPv6 assign that fails puts the addresses it
    /// moved back where they were ([`Placer::put_back`]). What EC2 accepted, and the calls
    /// that failed.
    async fn apply(
        &self,
        planned: &Plan,
        releases: &[EniChange],
    ) -> (Vec<Assignment>, Vec<Ec2Failure>) {
        let (mut accepted, mut failures) = (Vec::new(), Vec::new());
        let (mut stuck, mut moved) = (Vec::new(), Vec::new());
        for release in releases {
            match self.ec2.unassign_ipv6(&release.eni_id, &release.ipv6).await {
                Ok(()) => {
                    tracing::info!(
                        from = release.eni_id,
                        addresses = ?release.ipv6,
                        "IPv6 unassigned from its previous holder"
                    );
                    moved.push(release);
                }
                Err(failure) => {
                    stuck.extend(release.ipv6.iter().copied());
                    failures.push(failure);
                }
            }
        }
        for change in &planned.changes {
            let ipv6: Vec<_> = change
                .ipv6
                .iter()
                .copied()
                .filter(|address| !stuck.contains(address))
                .collect();
            if !change.ipv4.is_empty() {
                match self.ec2.assign_ipv4(&change.eni_id, &change.ipv4).await {
                    Ok(()) => {
                        tracing::info!(eni = change.eni_id, addresses = ?change.ipv4, "IPv4 assigned");
                        accepted.extend(change.assignments().filter(|a| a.address.is_ipv4()));
                    }
                    Err(failure) => failures.push(failure),
                }
            }
            if !ipv6.is_empty() {
                match self.ec2.assign_ipv6(&change.eni_id, &ipv6).await {
                    Ok(()) => {
                        tracing::info!(eni = change.eni_id, addresses = ?ipv6, "IPv6 assigned");
                        accepted.extend(ipv6.iter().map(|&address| Assignment {
                            eni_id: change.eni_id.clone(),
                            address: address.into(),
                        }));
                    }
                    Err(failure) => {
                        failures.push(failure);
                        failures.extend(self.put_back(&moved, &change.eni_id, &ipv6).await);
                    }
                }
            }
        }
        (accepted, failures)
    }

    /// After a failed IPv6 assign to `target`: the addresses of `failed` that left a holder
    /// in this pass (`moved`) are assigned back to it (one call per holder), so a move either
    /// completes or leaves the address where it was. IPv6 has no AllowReassignment, so the
    /// move cannot be one call. A way back that fails too is logged as an address on no ENI.
    async fn put_back(
        &self,
        moved: &[&EniChange],
        target: &str,
        failed: &[Ipv6Addr],
    ) -> Vec<Ec2Failure> {
        let mut failures = Vec::new();
        for release in moved {
            let back: Vec<Ipv6Addr> = release
                .ipv6
                .iter()
                .copied()
                .filter(|address| failed.contains(address))
                .collect();
            if back.is_empty() {
                continue;
            }
            match self.ec2.assign_ipv6(&release.eni_id, &back).await {
                Ok(()) => tracing::warn!(
                    eni = release.eni_id,
                    failed_target = target,
                    addresses = ?back,
                    "the IPv6 move failed: the addresses are back on their previous ENI"
                ),
                Err(failure) => {
                    tracing::error!(
                        previous = release.eni_id,
                        failed_target = target,
                        addresses = ?back,
                        %failure,
                        "the IPv6 move failed and so did the way back: the addresses are on no ENI until the next pass assigns them"
                    );
                    failures.push(failure);
                }
            }
        }
        failures
    }
}
