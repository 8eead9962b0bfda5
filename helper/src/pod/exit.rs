//! Giving back, on exit, what this helper assigned and the pod still carries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipmgr_eni::{Assignment, still_assigned};

use super::PodHelper;
use super::error::PodError;
use crate::aws::Unassigned;
use crate::aws::{Ec2Api, NodeMetadata};
use crate::netlink::PodAddresses;

impl<E: Ec2Api, M: NodeMetadata, N: PodAddresses> PodHelper<E, M, N> {
    /// Unassigns what this helper assigned that the pod still carries and EC2 still has on
    /// its ENI: EC2 is asked, not metadata, which lags and may still show an address that
    /// moved away. A floating IP another pod or node took meanwhile stays with it. When EC2
    /// refuses a batch (an address left the ENI between the lookup and the call), the
    /// addresses go one by one.
    pub(crate) async fn give_back_on_exit(
        &self,
        assigned: &BTreeSet<Assignment>,
    ) -> Result<(), PodError> {
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
            .placer
            .ec2
            .enis(&ids.into_iter().collect::<Vec<_>>())
            .await
            .map_err(|failure| PodError::GiveBack(vec![failure]))?;
        let mut failures = Vec::new();
        for change in still_assigned(&ours, &enis) {
            for (_, outcome) in self.placer.ec2.unassign(&change, None).await {
                if let Unassigned::Failed(failure) = outcome {
                    failures.push(failure);
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(PodError::GiveBack(failures))
        }
    }
}
