//! The sidecar: a first pass, then follow the pod's address changes (netlink events, no
//! polling) and re-check the whole node periodically; on SIGTERM, release.
//!
//! EC2's answer is the truth and instance metadata lags it: until a pass has called the pod
//! routable, every address is looked up in EC2; after that, an address the pod just gained,
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
use super::confirm::confirm;
use super::error::PodError;
use crate::aws::{Ec2Api, NodeMetadata};
use crate::netlink::PodAddresses;
use crate::place::{NodeEnis, PassReport};

/// How long metadata is not trusted about an address after it changed: the VPC CNI waits up
/// to a minute for metadata to show an assignment.
const METADATA_LAG: Duration = Duration::from_secs(60);

/// How long a pass under way may finish after SIGTERM before the release.
const FINISH_ON_STOP: Duration = Duration::from_secs(3);

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
            seen: self.wait_for_addresses(&node).await?.0,
            ..Memory::default()
        };
        let mut enis = NodeEnis::default();
        let mut trigger = Some(Trigger::Event);
        let mut next_check = Instant::now() + self.settings.recheck();
        loop {
            if let Some(why) = trigger.take() {
                let (report, stopping) = {
                    let pass = self.sidecar_pass(why, &mut node, &mut enis, &mut memory);
                    tokio::pin!(pass);
                    // Stopping mid-pass: what EC2 accepts in the next moments is still
                    // noted, so that the release gives it back.
                    let finish = async |pass| tokio::time::timeout(FINISH_ON_STOP, pass).await.ok();
                    tokio::select! {
                        report = &mut pass => (Some(report), false),
                        _ = terminate.recv() => (finish(&mut pass).await, true),
                        _ = tokio::signal::ctrl_c() => (finish(&mut pass).await, true),
                    }
                };
                if let Some(report) = report {
                    next_check = Instant::now() + self.after(report, &node, &mut memory)?;
                }
                if stopping {
                    break;
                }
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
        let planned = match trigger {
            Trigger::FullCheck => {
                enis.forget();
                *node = self.metadata.node_facts().await?;
                plan(node, &memory.seen, &self.placer.options)
            }
            Trigger::Event => {
                // Placements do not depend on the address lists: only the target ENIs' lists
                // are read again, and the plan's changes worked out against them.
                let planned = plan(node, &memory.seen, &self.placer.options);
                let targets: Vec<&str> = planned
                    .placements
                    .iter()
                    .map(|p| p.eni_id.as_str())
                    .collect();
                self.metadata.refresh(node, &targets).await?;
                planned.against(node)
            }
        };
        // Until a pass has called the pod routable, EC2 says what is in place, not metadata.
        let planned = if memory.ready {
            planned
        } else {
            super::checked_in_ec2(planned, node)
        };
        let fresh = memory.fresh();
        Ok(self.placer.pass(node, planned, &fresh, enis).await)
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
                super::write_ready_file(path)?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ipmgr_eni::ErrorClass;

    use super::{Memory, Trigger};
    use crate::aws::{Ec2Api as _, Ec2Failure};
    use crate::fakes::{
        FakeEc2, FakeMetadata, FakeNetwork, INSTANCE, node, pod_address, record, settings,
    };
    use crate::pod::{Failure, PassReport, PodError, PodHelper};

    type Helper = PodHelper<FakeEc2, FakeMetadata, FakeNetwork>;

    fn helper(args: &[&str], ec2: &FakeEc2, metadata: FakeMetadata) -> Helper {
        let addresses = vec![pod_address("net1", 1, "10.0.1.50")];
        PodHelper::new(
            settings(args),
            ec2.clone(),
            metadata,
            FakeNetwork::carrying(addresses),
        )
    }

    fn ec2() -> FakeEc2 {
        let node = node();
        FakeEc2::with(vec![
            record(&node.enis[0], INSTANCE, false),
            record(&node.enis[1], INSTANCE, true),
        ])
    }

    fn failing() -> Result<PassReport, PodError> {
        Ok(PassReport {
            assigned: Vec::new(),
            failures: vec![Failure::Ec2(Ec2Failure {
                action: "AssignPrivateIpAddresses",
                target: "eni-multus".to_owned(),
                addresses: vec!["10.0.1.50".to_owned()],
                code: "RequestLimitExceeded".to_owned(),
                message: "throttled".to_owned(),
                class: ErrorClass::Throttling,
                attempts: 3,
            })],
        })
    }

    #[tokio::test]
    async fn failing_passes_back_off_doubling_up_to_the_cap_and_a_clean_one_resets() {
        let helper = helper(
            &["--error-backoff-max-seconds", "10"],
            &ec2(),
            FakeMetadata::showing(node()),
        );
        let mut memory = Memory::default();
        let delays: Vec<u64> = (0..5)
            .map(|_| {
                helper
                    .after(failing(), &node(), &mut memory)
                    .expect("no ready file")
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, vec![2, 4, 8, 10, 10]);
        let clean = helper.after(Ok(PassReport::default()), &node(), &mut memory);
        assert_eq!(
            clean.expect("clean"),
            Duration::from_secs(30),
            "the recheck"
        );
        assert_eq!(memory.failing, 0);
        let again = helper.after(failing(), &node(), &mut memory);
        assert_eq!(again.expect("failing").as_secs(), 2, "from the start");
    }

    #[tokio::test]
    async fn the_ready_file_comes_after_the_first_clean_pass_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ready");
        let path = file.to_str().expect("UTF-8");
        let helper = helper(
            &["--ready-file", path],
            &ec2(),
            FakeMetadata::showing(node()),
        );
        let mut memory = Memory::default();
        let pass_error = Err(PodError::NoAddresses {
            primary: "eth0".to_owned(),
            waited: Duration::ZERO,
            found: 0,
            expected: 1,
        });
        helper
            .after(pass_error, &node(), &mut memory)
            .expect("not fatal");
        helper
            .after(failing(), &node(), &mut memory)
            .expect("not fatal");
        assert!(!file.exists(), "not after failing passes");
        helper
            .after(Ok(PassReport::default()), &node(), &mut memory)
            .expect("written");
        assert!(file.exists() && memory.ready);
    }

    /// A pod carrying 10.0.1.50, whose helper's metadata still lists it on the Multus ENI
    /// while EC2 no longer has it there: the helper, EC2, the node as metadata shows it, and
    /// the helper's memory of the pod.
    fn lagging_metadata() -> (Helper, FakeEc2, ipmgr_eni::NodeFacts, Memory) {
        let mut lagging = node();
        lagging.enis[1].ipv4.push("10.0.1.50".parse().expect("ip"));
        let ec2 = ec2();
        let helper = helper(&[], &ec2, FakeMetadata::showing(lagging.clone()));
        let memory = Memory {
            seen: vec![pod_address("net1", 1, "10.0.1.50")],
            ..Memory::default()
        };
        (helper, ec2, lagging, memory)
    }

    #[tokio::test]
    async fn a_new_address_is_checked_with_ec2_whatever_lagging_metadata_says() {
        // The pod is routable already; it gains 10.0.1.50 just now.
        let (helper, ec2, lagging, mut memory) = lagging_metadata();
        memory.ready = true;
        memory.changed.insert(
            "10.0.1.50".parse().expect("ip"),
            tokio::time::Instant::now(),
        );
        let mut node = lagging;
        let mut enis = crate::place::NodeEnis::default();
        let report = helper
            .sidecar_pass(Trigger::Event, &mut node, &mut enis, &mut memory)
            .await
            .expect("pass");
        assert!(report.failures.is_empty());
        assert!(ec2.holds("eni-multus", "10.0.1.50"), "assigned again");
    }

    #[tokio::test]
    async fn a_full_check_reads_the_node_again_and_finds_an_attached_eni() {
        // The pod's interface sits on an ENI attached after the helper started.
        let mut attached = node();
        let mut eth2 = crate::fakes::eni(2, "attached");
        eth2.subnet_ipv4 = Some("10.0.1.0/24".parse().expect("subnet"));
        attached.enis.push(eth2.clone());
        let ec2 = FakeEc2::with(vec![
            record(&attached.enis[0], INSTANCE, false),
            record(&attached.enis[1], INSTANCE, true),
            record(&eth2, INSTANCE, true),
        ]);
        let helper = helper(&[], &ec2, FakeMetadata::showing(attached));
        let mut memory = Memory {
            seen: vec![pod_address("net1", 2, "10.0.1.60")],
            ..Memory::default()
        };
        let mut stale = node();
        let mut enis = crate::place::NodeEnis::default();
        let report = helper
            .sidecar_pass(Trigger::FullCheck, &mut stale, &mut enis, &mut memory)
            .await
            .expect("pass");
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(ec2.holds("eni-attached", "10.0.1.60"));
        assert_eq!(stale.enis.len(), 3, "the node as metadata shows it now");
    }

    #[tokio::test]
    async fn a_full_check_of_an_unchanged_pod_changes_nothing() {
        let mut in_place = node();
        in_place.enis[1].ipv4.push("10.0.1.50".parse().expect("ip"));
        let multus = in_place.enis[1].clone();
        let ec2 = FakeEc2::with(vec![
            record(&in_place.enis[0], INSTANCE, false),
            record(&multus, INSTANCE, true),
        ]);
        let helper = helper(&[], &ec2, FakeMetadata::showing(in_place.clone()));
        let mut memory = Memory {
            seen: vec![pod_address("net1", 1, "10.0.1.50")],
            ..Memory::default()
        };
        let mut node = in_place;
        let report = helper
            .sidecar_pass(
                Trigger::FullCheck,
                &mut node,
                &mut crate::place::NodeEnis::default(),
                &mut memory,
            )
            .await
            .expect("pass");
        assert!(report.failures.is_empty() && report.assigned.is_empty());
        assert_eq!(ec2.mutating_calls(), Vec::<&str>::new());
    }

    #[tokio::test]
    async fn until_the_pod_is_routable_every_address_is_checked_with_ec2() {
        // Nothing is fresh: the pod had the address before the helper started.
        let (helper, ec2, lagging, mut memory) = lagging_metadata();
        let (mut node, mut enis) = (lagging, crate::place::NodeEnis::default());
        for trigger in [Trigger::Event, Trigger::FullCheck] {
            let report = helper
                .sidecar_pass(trigger, &mut node, &mut enis, &mut memory)
                .await
                .expect("pass");
            assert!(report.failures.is_empty(), "{:?}", report.failures);
            assert!(
                ec2.holds("eni-multus", "10.0.1.50"),
                "{trigger:?}: assigned"
            );
            ec2.unassign_ipv4("eni-multus", &["10.0.1.50".parse().expect("ip")])
                .await
                .expect("moved away again");
        }
        assert_eq!(
            ec2.mutating_calls()
                .iter()
                .filter(|call| **call == "AssignPrivateIpAddresses")
                .count(),
            2
        );

        // Once routable, a full check believes metadata for what it shows in place.
        memory.ready = true;
        let report = helper
            .sidecar_pass(Trigger::FullCheck, &mut node, &mut enis, &mut memory)
            .await
            .expect("pass");
        assert!(report.assigned.is_empty());
    }
}
