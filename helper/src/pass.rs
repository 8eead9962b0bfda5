//! One assignment pass: plan the pod's addresses against the node, carry out the EC2
//! changes, confirm them in instance metadata; and `init`, which waits for the addresses
//! first.

use std::collections::BTreeSet;
use std::time::Duration;

use ipmgr_eni::{
    Assignment, EniChange, NodeFacts, Plan, PlanOptions, PodAddress, plan, unconfirmed,
};
use tokio::time::Instant;

use crate::config::Settings;
use crate::ec2::{Ec2, Ec2Failure};
use crate::failure::{Failure, RunError};
use crate::metadata::Metadata;
use crate::netlink::PodNetwork;

/// The adapters and settings of one helper process.
#[derive(Debug)]
pub struct Helper {
    pub(crate) settings: Settings,
    pub(crate) options: PlanOptions,
    pub(crate) metadata: Metadata,
    pub(crate) ec2: Ec2,
    pub(crate) network: PodNetwork,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Addresses this pass assigned (and metadata confirmed).
    pub assigned: Vec<Assignment>,
    /// Addresses left unroutable, and why.
    pub failures: Vec<Failure>,
}

impl Helper {
    /// Waits (bounded) until the pod's secondary interfaces carry enough addresses.
    pub async fn wait_for_addresses(&mut self) -> Result<Vec<PodAddress>, RunError> {
        let expected = self.settings.expect_addresses.max(1);
        let deadline = Instant::now() + self.settings.wait();
        loop {
            let addresses = self.network.addresses().await?;
            if addresses.len() >= expected {
                return Ok(addresses);
            }
            if Instant::now() >= deadline {
                return Err(RunError::NoAddresses {
                    primary: self.settings.primary_interface.clone(),
                    waited: self.settings.wait(),
                    found: addresses.len(),
                    expected,
                });
            }
            let recheck = (Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = self.network.changed() => {}
                () = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// The plan for `addresses` on `node`; addresses skipped on purpose are logged.
    pub fn plan(&self, node: &NodeFacts, addresses: &[PodAddress]) -> Plan {
        let planned = plan(node, addresses, &self.options);
        for rejection in planned.rejections.iter().filter(|r| !r.is_failure()) {
            tracing::info!(%rejection, "address skipped");
        }
        planned
    }

    /// `plan`: what `init` would do, one line per address, changing nothing.
    pub async fn plan_report(&mut self, node: &NodeFacts) -> Result<Vec<String>, RunError> {
        let addresses = self.wait_for_addresses().await?;
        let planned = self.plan(node, &addresses);
        let placements = planned.placements.iter().map(|placement| {
            let held = node
                .eni(&placement.eni_id)
                .is_some_and(|eni| eni.holds(placement.address.address));
            format!(
                "{} {} ({}) on {} [matched by {:?}]",
                if held { "keep  " } else { "assign" },
                placement.address.address,
                placement.address.interface,
                placement.eni_id,
                placement.matched_by
            )
        });
        let rejections = planned
            .rejections
            .iter()
            .map(|rejection| format!("skip   {rejection}"));
        Ok(placements.chain(rejections).collect())
    }

    /// Plans against `node`, carries out the changes and confirms them.
    pub async fn pass(
        &self,
        node: &NodeFacts,
        addresses: &[PodAddress],
    ) -> Result<PassReport, RunError> {
        let planned = self.plan(node, addresses);
        let mut failures: Vec<Failure> =
            planned.failures().cloned().map(Failure::Rejected).collect();
        let mut expected = Vec::new();
        for change in &planned.changes {
            match self.apply(node, change).await {
                Ok(()) => expected.extend(change.assignments()),
                Err(failure) => failures.push(failure.into()),
            }
        }
        let mut assigned = Vec::new();
        if !expected.is_empty() {
            let missing = self.confirm(node, &expected).await?;
            let waited = self.settings.confirm();
            failures.extend(missing.iter().map(|assignment| Failure::Unconfirmed {
                assignment: assignment.clone(),
                waited,
            }));
            assigned = expected
                .into_iter()
                .filter(|assignment| !missing.contains(assignment))
                .collect();
        }
        failures.iter().for_each(Failure::log);
        tracing::info!(
            addresses = addresses.len(),
            placed = planned.placements.len(),
            assigned = assigned.len(),
            failures = failures.len(),
            "pass done"
        );
        Ok(PassReport { assigned, failures })
    }

    /// One ENI's change: one IPv4 call; for IPv6, unassign from the current holders first.
    async fn apply(&self, node: &NodeFacts, change: &EniChange) -> Result<(), Ec2Failure> {
        if !change.ipv4.is_empty() {
            self.ec2.assign_ipv4(&change.eni_id, &change.ipv4).await?;
            tracing::info!(eni = change.eni_id, addresses = ?change.ipv4, "IPv4 assigned");
        }
        if !change.ipv6.is_empty() {
            let vpc_id = node
                .eni(&change.eni_id)
                .map(|eni| eni.vpc_id.as_str())
                .unwrap_or_default();
            let mut missing = change.ipv6.clone();
            for holder in self.ec2.ipv6_holders(vpc_id, &change.ipv6).await? {
                if holder.eni_id == change.eni_id {
                    missing.retain(|address| !holder.addresses.contains(address));
                    continue;
                }
                self.ec2
                    .unassign_ipv6(&holder.eni_id, &holder.addresses)
                    .await?;
                tracing::info!(from = holder.eni_id, addresses = ?holder.addresses, "IPv6 unassigned from its previous holder");
            }
            if !missing.is_empty() {
                self.ec2.assign_ipv6(&change.eni_id, &missing).await?;
                tracing::info!(eni = change.eni_id, addresses = ?missing, "IPv6 assigned");
            }
        }
        Ok(())
    }

    /// Polls the changed ENIs' metadata until it shows `expected`, within the confirm bound;
    /// returns what it never showed.
    async fn confirm(
        &self,
        node: &NodeFacts,
        expected: &[Assignment],
    ) -> Result<Vec<Assignment>, RunError> {
        let deadline = Instant::now() + self.settings.confirm();
        let enis: BTreeSet<&str> = expected
            .iter()
            .map(|assignment| assignment.eni_id.as_str())
            .collect();
        let mut delay = Duration::from_millis(20);
        let mut current = node.clone();
        loop {
            self.refresh_addresses(&mut current, &enis).await?;
            let missing = unconfirmed(expected, &current);
            if missing.is_empty() || Instant::now() + delay > deadline {
                return Ok(missing);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Re-reads the address lists of the ENIs `enis` of `node` from metadata.
    pub(crate) async fn refresh_addresses(
        &self,
        node: &mut NodeFacts,
        enis: &BTreeSet<&str>,
    ) -> Result<(), RunError> {
        for eni in node
            .enis
            .iter_mut()
            .filter(|eni| enis.contains(eni.id.as_str()))
        {
            (eni.ipv4, eni.ipv6) = self.metadata.addresses(eni.mac).await?;
        }
        Ok(())
    }

    /// `init`: wait, assign, confirm; an error when any address stays unroutable. Returns
    /// what it assigned and the addresses it worked on.
    pub async fn init(
        &mut self,
        node: &NodeFacts,
    ) -> Result<(PassReport, Vec<PodAddress>), RunError> {
        let addresses = self.wait_for_addresses().await?;
        let report = self.pass(node, &addresses).await?;
        if report.failures.is_empty() {
            Ok((report, addresses))
        } else {
            Err(RunError::Unroutable(report.failures))
        }
    }
}
