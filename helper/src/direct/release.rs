//! Releasing, on exit, what this helper assigned and the pod still carries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipmgr_eni::{Assignment, PodAddress, still_assigned};

use super::DirectRouting;
use super::error::DirectError;
use crate::aws::Unassigned;
use crate::aws::{Ec2Api, NodeMetadata};
use crate::release::release;

impl<E: Ec2Api, M: NodeMetadata> DirectRouting<E, M> {
    /// Releases (unassigns) what this helper assigned that the pod still carries
    /// (`carried`) and EC2 still has on its ENI: EC2 is asked, not metadata, which lags and may still show an address that
    /// moved away. A floating IP another pod or node took meanwhile stays with it. When EC2
    /// refuses a batch (an address left the ENI between the lookup and the call), the
    /// addresses go one by one.
    pub(crate) async fn release(&self, carried: &[PodAddress]) -> Result<(), DirectError> {
        let current: BTreeSet<IpAddr> = carried.iter().map(|address| address.address).collect();
        let ours: Vec<Assignment> = self
            .assigned
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
            .map_err(|failure| DirectError::Release(vec![failure]))?;
        let mut failures = Vec::new();
        for change in still_assigned(&ours, &enis) {
            for (_, outcome) in release(&self.placer.ec2, &change, None).await {
                if let Unassigned::Failed(failure) = outcome {
                    failures.push(failure);
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(DirectError::Release(failures))
        }
    }
}
