//! Giving back, on exit, what this helper assigned and the pod still carries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipmgr_eni::{Assignment, EniChange, release};

use crate::ec2::Ec2Failure;
use crate::failure::RunError;
use crate::pass::Helper;

impl Helper {
    /// Unassigns what this helper assigned that the pod still carries and EC2 still has on
    /// its ENI: EC2 is asked, not metadata, which lags and may still show an address that
    /// moved away. A floating IP another pod or node took meanwhile stays with it. When EC2
    /// refuses a batch (an address left the ENI between the lookup and the call), the
    /// addresses go one by one.
    pub(crate) async fn release(&self, assigned: &BTreeSet<Assignment>) -> Result<(), RunError> {
        let current: BTreeSet<IpAddr> = self
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
        let ids: BTreeSet<String> = ours.iter().map(|a| a.eni_id.clone()).collect();
        let enis = self
            .ec2
            .enis(&ids.into_iter().collect::<Vec<_>>())
            .await
            .map_err(|failure| RunError::Release(vec![failure]))?;
        let mut failures = Vec::new();
        for change in release(&ours, &enis) {
            failures.extend(self.unassign(&change).await);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RunError::Release(failures))
        }
    }

    /// One ENI's release: a call per family, and per address when EC2 refuses the batch.
    async fn unassign(&self, change: &EniChange) -> Vec<Ec2Failure> {
        let mut failures = Vec::new();
        for call in change.calls() {
            let failure = match self.unassign_call(&call).await {
                Ok(()) => continue,
                Err(failure) if call.len() == 1 => {
                    failures.extend(moved_or(failure));
                    continue;
                }
                Err(failure) => failure,
            };
            tracing::warn!(%failure, "EC2 refused the release batch; releasing the addresses one by one");
            for single in call.singles() {
                if let Err(failure) = self.unassign_call(&single).await {
                    failures.extend(moved_or(failure));
                }
            }
        }
        failures
    }

    /// One unassign call (a change of one family).
    async fn unassign_call(&self, call: &EniChange) -> Result<(), Ec2Failure> {
        if call.ipv6.is_empty() {
            self.ec2.unassign_ipv4(&call.eni_id, &call.ipv4).await?;
        } else {
            self.ec2.unassign_ipv6(&call.eni_id, &call.ipv6).await?;
        }
        tracing::info!(eni = call.eni_id, ipv4 = ?call.ipv4, ipv6 = ?call.ipv6, "released");
        Ok(())
    }
}

/// `None` when EC2 refused because the address is no longer on the ENI (it moved to its
/// new holder, which keeps it); the failure otherwise.
fn moved_or(failure: Ec2Failure) -> Option<Ec2Failure> {
    if failure.code == "InvalidParameterValue" && failure.message.contains("not assigned") {
        tracing::info!(addresses = ?failure.addresses, eni = failure.target, "no longer on the ENI: left with its new holder");
        None
    } else {
        Some(failure)
    }
}
