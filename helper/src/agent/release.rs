//! Giving addresses back: every unassign decided afresh from a new read of EC2 and a new
//! scan of the pods, and what becomes of each call's addresses.

use std::collections::BTreeSet;
use std::time::Instant;

use ipmgr_eni::{
    AfterFailure, Assignment, ErrorClass, Keep, ReleaseOptions, ScanVerdict, verify_release,
};

use super::metrics::ReasonLabel;
use super::netns::PodScanner;
use super::{Agent, AgentError, VIEW_MAX_AGE};
use crate::aws::{Ec2Api, NodeMetadata, Unassigned};
use crate::release::release;

impl<E: Ec2Api, M: NodeMetadata, S: PodScanner> Agent<E, M, S> {
    /// Releases `due`, decided afresh: the ENIs are read from EC2 and the pods scanned
    /// again just before the calls, which go out only while that view is fresh. A decision
    /// that cannot be refreshed is dropped, to be taken again by a later scan.
    pub(super) async fn release(&mut self, due: &[Assignment]) -> Result<(), AgentError> {
        let options = self.release_options();
        let claimed: Vec<Assignment> = due
            .iter()
            .filter(|assignment| {
                options
                    .kept
                    .iter()
                    .any(|net| net.contains(&assignment.address))
            })
            .cloned()
            .collect();
        for assignment in &claimed {
            self.keep(assignment, Keep::Claimed);
        }
        let due: Vec<Assignment> = due
            .iter()
            .filter(|assignment| !claimed.contains(assignment))
            .cloned()
            .collect();
        let due = due.as_slice();
        if due.is_empty() {
            return Ok(());
        }
        let ids: BTreeSet<String> = due.iter().map(|a| a.eni_id.clone()).collect();
        let enis = match self
            .release_ec2
            .enis(&ids.into_iter().collect::<Vec<_>>())
            .await
        {
            Ok(enis) => enis,
            Err(failure) => {
                tracing::warn!(%failure, "cannot read the ENIs before giving addresses back; the decision is dropped and taken again later");
                self.metrics.error("describe");
                self.metrics.drop_decisions("describe", due.len());
                for assignment in due {
                    self.absences.failed(
                        assignment,
                        failure.class,
                        &options,
                        Instant::now(),
                        fastrand::f64(),
                    );
                }
                return Ok(());
            }
        };
        let view = Instant::now();
        let trusted = match self.scan_pods().await? {
            Some(scan) if self.judge(&scan) == ScanVerdict::Trusted => Some(scan),
            _ => None,
        };
        let Some(scan) = trusted else {
            tracing::info!(
                addresses = due.len(),
                "the pods could not be scanned again just before giving addresses back; the decision is dropped and taken again later"
            );
            self.metrics.drop_decisions("scan", due.len());
            (self.trusted, self.retry_soon) = (false, true);
            return Ok(());
        };
        let (changes, kept) = verify_release(
            due,
            &self.node.instance_id,
            &enis,
            &scan.in_use,
            self.settings.aws.ownership(),
        );
        for (assignment, keep) in kept {
            self.keep(&assignment, keep);
        }
        for change in changes {
            if self.settings.dry_run {
                for assignment in change.assignments() {
                    self.absences.forget(&assignment);
                    tracing::info!(address = %assignment.address, eni = assignment.eni_id, reason = "in no pod on the node for the grace period", "dry run: would release");
                }
                continue;
            }
            for (call, outcome) in
                release(&self.release_ec2, &change, Some(view + VIEW_MAX_AGE)).await
            {
                self.took_back(&call.assignments().collect::<Vec<_>>(), outcome, &options);
            }
        }
        Ok(())
    }

    /// Takes in what became of one unassign call's addresses.
    fn took_back(
        &mut self,
        assignments: &[Assignment],
        outcome: Unassigned,
        options: &ReleaseOptions,
    ) {
        match outcome {
            Unassigned::Released => {
                for assignment in assignments {
                    self.absences.forget(assignment);
                    self.metrics.released.inc();
                    tracing::info!(address = %assignment.address, eni = assignment.eni_id, reason = "in no pod on the node for the grace period", "address released");
                }
            }
            Unassigned::NotOnEni => {
                for assignment in assignments {
                    self.keep(assignment, Keep::Moved);
                }
            }
            Unassigned::Stale => {
                tracing::info!(
                    addresses = assignments.len(),
                    "the view that decided the release is too old; the decision is dropped and taken again later"
                );
                self.metrics.drop_decisions("stale", assignments.len());
                // Spaced like a transient failure, so that a node whose scans are slow
                // does not decide again and again at once.
                for assignment in assignments {
                    self.absences.failed(
                        assignment,
                        ErrorClass::Transient,
                        options,
                        Instant::now(),
                        fastrand::f64(),
                    );
                }
            }
            Unassigned::Failed(failure) => {
                self.metrics.error("unassign");
                for assignment in assignments {
                    match self.absences.failed(
                        assignment,
                        failure.class,
                        options,
                        Instant::now(),
                        fastrand::f64(),
                    ) {
                        AfterFailure::RetryIn(delay) => tracing::warn!(
                            %failure,
                            address = %assignment.address,
                            retry_in_ms = delay.as_millis() as u64,
                            "cannot release the address yet; the next attempt is decided afresh"
                        ),
                        AfterFailure::GraceAgain => tracing::error!(
                            %failure,
                            address = %assignment.address,
                            "cannot release the address; it is tried again after another grace period"
                        ),
                    }
                }
            }
        }
    }

    /// An address due to be released that EC2 or a fresh scan says to keep. An ENI that is
    /// not (or no longer) this node's Multus ENI is left alone until the ENIs are read again
    /// at the next resync.
    fn keep(&mut self, assignment: &Assignment, keep: Keep) {
        self.absences.forget(assignment);
        self.metrics
            .refused
            .get_or_create(&ReasonLabel {
                reason: keep.label(),
            })
            .inc();
        match keep {
            Keep::InUse | Keep::Moved | Keep::Claimed => {
                tracing::info!(address = %assignment.address, eni = assignment.eni_id, reason = %keep, "kept");
            }
            Keep::OtherInstance | Keep::NotMultus | Keep::Primary => {
                self.multus.remove(&assignment.eni_id);
                self.reread_enis = Some(Instant::now() + self.settings.resync());
                tracing::warn!(address = %assignment.address, eni = assignment.eni_id, reason = %keep, "kept; the agent leaves this ENI alone until it reads the node's ENIs again");
            }
        }
    }
}
