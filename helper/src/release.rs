//! Giving back, on exit, what this helper assigned and the pod still carries.

use std::collections::BTreeSet;

use ipmgr_eni::{Assignment, release};

use crate::failure::RunError;
use crate::pass::Helper;

impl Helper {
    /// Unassigns what this helper assigned that is still on the pod and on its ENI (a
    /// floating IP another pod or node took meanwhile stays with it).
    pub(crate) async fn release(&self, assigned: &BTreeSet<Assignment>) -> Result<(), RunError> {
        let current: BTreeSet<_> = self
            .network
            .addresses()
            .await?
            .into_iter()
            .map(|address| address.address)
            .collect();
        let ours: Vec<Assignment> = assigned
            .iter()
            .filter(|assignment| current.contains(&assignment.address))
            .cloned()
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        let node = self.metadata.node_facts().await?;
        let mut failures = Vec::new();
        for change in release(&ours, &node) {
            if !change.ipv4.is_empty() {
                match self.ec2.unassign_ipv4(&change.eni_id, &change.ipv4).await {
                    Ok(()) => {
                        tracing::info!(eni = change.eni_id, addresses = ?change.ipv4, "IPv4 released")
                    }
                    Err(failure) => failures.push(failure),
                }
            }
            if !change.ipv6.is_empty() {
                match self.ec2.unassign_ipv6(&change.eni_id, &change.ipv6).await {
                    Ok(()) => {
                        tracing::info!(eni = change.eni_id, addresses = ?change.ipv6, "IPv6 released")
                    }
                    Err(failure) => failures.push(failure),
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RunError::Release(failures))
        }
    }
}
