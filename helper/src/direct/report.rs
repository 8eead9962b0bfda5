//! `plan`: what `init` would do, one line per address, changing nothing (it reads EC2 as
//! a pass would).

use ipmgr_eni::{Assignment, EniChange, PodAddress, Reason, Vetted};

use super::DirectRouting;
use super::error::DirectError;
use crate::aws::{Ec2Api, NodeMetadata};
use crate::place::NodeEnis;

impl<E: Ec2Api, M: NodeMetadata> DirectRouting<E, M> {
    /// What `init`'s pass would do with the pod's `addresses`, one line per address.
    pub async fn plan_report(&self, addresses: &[PodAddress]) -> Result<Vec<String>, DirectError> {
        let node = &self.node;
        let planned = self.planned(Reason::Start, addresses);
        let Vetted {
            plan: planned,
            ipv6_unassign_first,
            ..
        } = self
            .placer
            .vetted_plan(node, planned, &[], &mut NodeEnis::default())
            .await?;
        let changing: Vec<Assignment> = planned
            .changes
            .iter()
            .flat_map(EniChange::assignments)
            .collect();
        let placements = planned.placements.iter().map(|placement| {
            let address = placement.address.address;
            let verb = if changing.iter().any(|change| change.address == address) {
                "assign"
            } else {
                "keep  "
            };
            let mut notes = vec![format!("matched by {:?}", placement.matched_by)];
            if let Some(prefix) = placement.prefix {
                notes.push(format!("in its prefix {prefix}"));
            }
            for release in &ipv6_unassign_first {
                if release.assignments().any(|held| held.address == address) {
                    notes.push(format!("unassigned from {} first", release.eni_id));
                }
            }
            format!(
                "{verb} {address} ({}) on {} [{}]",
                placement.address.interface,
                placement.eni_id,
                notes.join(", ")
            )
        });
        let rejections = planned.rejections.iter().map(|rejection| {
            let verb = if rejection.is_failure() {
                "refuse"
            } else {
                "skip  "
            };
            format!("{verb} {rejection}")
        });
        Ok(placements.chain(rejections).collect())
    }
}
