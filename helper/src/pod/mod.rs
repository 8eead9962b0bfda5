//! The pod helper: the container the webhook injects into a Multus pod. It makes the pod's
//! addresses routable once (`init`), or keeps doing so while it runs (`sidecar`, native
//! sidecar: [`sidecar`]), and on exit gives back what it assigned ([`exit`]). Each pass
//! ([`pass`]) plans with `ipmgr_eni` and carries the plan out through the AWS adapters.

pub mod agent_client;
pub mod confirm;
pub mod error;
pub mod exit;
pub mod remote;
#[cfg(test)]
mod remote_tests;
pub mod sidecar;
#[cfg(test)]
mod tests;

use std::time::Duration;

use ipmgr_eni::{Assignment, EniChange, NodeFacts, Plan, PodAddress, Vetted, plan};
use tokio::time::Instant;

use crate::aws::{self, Ec2, Ec2Api, Metadata, NodeMetadata};
use crate::config::Settings;
use crate::netlink::{PodAddresses, PodNetwork};
pub use crate::place::PassReport;
use crate::place::{NodeEnis, Placer};
use confirm::confirm;
pub use error::{Failure, PodError};
pub use remote::RemoteHelper;

/// The settings of one pod helper process and its adapters: EC2 (`E`), instance metadata
/// (`M`) and the pod's addresses (`N`); the real ones by default, fakes in tests.
#[derive(Debug)]
pub struct PodHelper<E = Ec2, M = Metadata, N = PodNetwork> {
    pub(crate) settings: Settings,
    /// Plans and carries out passes through EC2.
    pub(crate) placer: Placer<E>,
    pub(crate) metadata: M,
    pub(crate) network: N,
}

/// Creates the ready file (native-sidecar readiness) after the first successful pass.
pub(crate) fn write_ready_file(path: &std::path::Path) -> Result<(), PodError> {
    std::fs::write(path, b"ready\n").map_err(|source| PodError::ReadyFile {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(file = %path.display(), "first pass done; ready");
    Ok(())
}

/// Waits (bounded by `--wait-seconds`) until `count` finds at least `--expect-addresses`
/// (at least one) Multus addresses among the pod's: the addresses, and what `count` made
/// of them besides the number.
pub(crate) async fn wait_for_multus_addresses<N: PodAddresses, T>(
    network: &mut N,
    settings: &Settings,
    count: impl Fn(&[PodAddress]) -> (usize, T),
) -> Result<(Vec<PodAddress>, T), PodError> {
    let expected = settings.expect_addresses.max(1);
    let deadline = Instant::now() + settings.wait();
    loop {
        let addresses = network.addresses().await?;
        let (found, made) = count(&addresses);
        if found >= expected {
            return Ok((addresses, made));
        }
        if Instant::now() >= deadline {
            return Err(PodError::NoAddresses {
                primary: settings.primary_interface.clone(),
                waited: settings.wait(),
                found,
                expected,
            });
        }
        let recheck = (Instant::now() + Duration::from_secs(1)).min(deadline);
        tokio::select! {
            _ = network.changed() => {}
            () = tokio::time::sleep_until(recheck) => {}
        }
    }
}

impl PodHelper {
    /// Opens netlink and connects to AWS ([`aws::connect`]).
    pub async fn connect(settings: Settings) -> Result<(Self, NodeFacts), PodError> {
        let proxies = aws::Proxies::from_env()?;
        let network = PodNetwork::connect()?;
        let (metadata, ec2, node) = aws::connect(&settings.aws, &proxies).await?;
        Ok((PodHelper::new(settings, ec2, metadata, network), node))
    }
}

impl<E: Ec2Api, M: NodeMetadata, N: PodAddresses> PodHelper<E, M, N> {
    /// A helper over these adapters.
    pub fn new(settings: Settings, ec2: E, metadata: M, network: N) -> Self {
        let options = settings.plan_options();
        PodHelper {
            placer: Placer {
                options,
                ownership: settings.aws.ownership(),
                ec2,
            },
            settings,
            metadata,
            network,
        }
    }

    /// Waits (bounded) until the pod's Multus interfaces carry enough addresses (the VPC
    /// CNI's interfaces and link-local addresses do not count): the addresses, and their
    /// plan on `node`.
    pub async fn wait_for_addresses(
        &mut self,
        node: &NodeFacts,
    ) -> Result<(Vec<PodAddress>, Plan), PodError> {
        let options = &self.placer.options;
        wait_for_multus_addresses(&mut self.network, &self.settings, |addresses| {
            let planned = plan(node, addresses, options);
            (planned.multus_addresses(), planned)
        })
        .await
    }

    /// `plan`: what `init` would do, one line per address, changing nothing (it reads EC2
    /// as a pass would).
    pub async fn plan_report(&mut self, node: &NodeFacts) -> Result<Vec<String>, PodError> {
        let (_, planned) = self.wait_for_addresses(node).await?;
        let Vetted {
            plan: planned,
            ipv6_releases,
            ..
        } = self
            .placer
            .vetted_plan(
                node,
                checked_in_ec2(planned, node),
                &[],
                &mut NodeEnis::default(),
            )
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
            for release in &ipv6_releases {
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

    /// `init`: wait for the addresses, one pass that checks every address in EC2, then wait
    /// (bounded) for metadata to show what EC2 accepted; an error when any address stays
    /// unroutable.
    pub async fn init(&mut self, node: &NodeFacts) -> Result<(), PodError> {
        let (_, planned) = self.wait_for_addresses(node).await?;
        let report = self
            .placer
            .pass(
                node,
                checked_in_ec2(planned, node),
                &[],
                &mut NodeEnis::default(),
            )
            .await;
        if !report.failures.is_empty() {
            return Err(PodError::Unroutable(report.failures));
        }
        confirm(
            &self.metadata,
            node,
            &report.assigned,
            self.settings.confirm(),
        )
        .await;
        Ok(())
    }
}

/// `planned` worked out as if metadata listed no secondary address on its target ENIs, so
/// that the pass looks every address up in EC2 (one DescribeNetworkInterfaces per address
/// family) before the pod is called routable. Metadata lags EC2 (AWS documents the remap of
/// an address as asynchronous): it may still list here an address that left this node's
/// ENI. EC2's answer then drops what is in place already, so an unchanged pod costs no
/// mutating call.
fn checked_in_ec2(planned: Plan, node: &NodeFacts) -> Plan {
    let targets: Vec<String> = planned
        .placements
        .iter()
        .map(|placement| placement.eni_id.clone())
        .collect();
    planned.against(&node.without_secondaries(&targets))
}
