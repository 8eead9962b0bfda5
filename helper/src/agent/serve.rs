//! The pod API (agent backend): the node's pods ask the agent to make their addresses
//! routable, and the agent alone holds AWS credentials and calls EC2.
//!
//! Who asks is the connection's source address: the live pod of this node whose pod IP it
//! is (the API server's view, [`NodePods`]) and the network namespace the kernel says it
//! comes from ([`Caller`]: the one the node routes the pod IP to, which no pod can fake);
//! both must agree and be unambiguous, else 403 (no such pod) or 503 (not seen yet, or two
//! candidates: the helper asks again). The agent reads the pod's addresses from that
//! namespace itself, keeps only what the pod is entitled to ([`Claimant::entitled`]: its
//! record, and floating addresses inside its namespace's grant, never another namespace's
//! pod's), checks again before taking an address from another node's Multus ENI
//! ([`HolderCheck`]), and carries a pass out through the batched EC2 calls
//! ([`BatchedEc2`]): every address is looked up in EC2 (one DescribeNetworkInterfaces per
//! batch, never metadata, which lags), and only what EC2 does not have in place is
//! assigned. A sidecar's periodic recheck is planned against the agent's view of the
//! node's ENIs, at most [`RECHECK_VIEW_AGE`] old, and costs nothing while nothing drifted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use ipmgr_eni::{Claims, EniRecord, NodeFacts, Plan, Reason, RejectReason};

use super::batch::BatchedEc2;
use super::cluster::{NodePods, PodRecord};
use super::coalesce::Turn;
use super::entitle::HolderCheck;
use super::holders::HolderPods;
use super::metrics::AgentMetrics;
use super::netns::{PodNamespace, PodScanner};
use super::passes::{Asked, PodPasses};
use super::pod_http::refusal_label;
use super::refused::Refused;
use super::share::NodeShare;
use crate::aws::Ec2Api;
use crate::config::ClaimsMode;
use crate::place::{Failure, NodeEnis, Placer};
use ipmgr_pod::api::{Refusal, RoutableAnswer, RoutableRequest, Routed};

/// The oldest view of the node's ENIs a periodic recheck is answered from: one
/// DescribeNetworkInterfaces per node per interval, whatever the pod count.
pub const RECHECK_VIEW_AGE: Duration = Duration::from_secs(30);

/// The pod API over EC2 (`E`, batched), the pod namespaces (`S`) and the pods of other
/// nodes (`H`).
#[derive(Debug)]
pub struct PodService<E, S, H> {
    /// This node's name (for the messages).
    pub node_name: String,
    /// The node's pods and the namespaces' grants, from the API server.
    pub pods: NodePods,
    /// The pod namespaces.
    pub scanner: S,
    /// The pods of the node an instance is, for moves from other nodes.
    pub holders: H,
    /// Which addresses a pod may claim.
    pub claims: ClaimsMode,
    /// The node, shared with the agent's rounds.
    pub share: Arc<NodeShare>,
    /// Passes through the batched EC2 calls; its plan options are the agent's (the pod's
    /// Multus interfaces are set per pod).
    pub placer: Placer<BatchedEc2<E>>,
    /// The agent's metrics: answers are counted.
    pub metrics: Arc<AgentMetrics>,
    /// The passes in flight per pod, and what each pod was last answered.
    pub passes: PodPasses,
}

/// An answer: status and JSON body.
pub(super) type Answer = (StatusCode, String);

impl<E, S, H> PodService<E, S, H>
where
    E: Ec2Api + Clone + Send + Sync + 'static,
    S: PodScanner + 'static,
    H: HolderPods + 'static,
{
    /// The answer to `request` from `peer`.
    pub async fn answer(self: &Arc<Self>, peer: IpAddr, request: RoutableRequest) -> Answer {
        let outcome = match self.caller(peer).await {
            Ok(caller) => self.shared_pass(caller, request.reason).await,
            Err(refused) => Err(refused),
        };
        self.reply(peer, outcome)
    }

    /// The answer of the caller's pass for `reason`, shared with the caller's other
    /// requests while one is in flight ([`PodPasses`]).
    pub(super) async fn shared_pass(
        self: &Arc<Self>,
        caller: (PodRecord, PodNamespace),
        reason: Reason,
    ) -> Result<RoutableAnswer, Refused> {
        let key = (caller.0.key.clone(), caller.1.path.clone());
        let pod = key.0.clone();
        let service = Arc::clone(self);
        let pass =
            move |asked: Asked| async move { service.routable(asked.caller, asked.reason).await };
        let asked = Asked { caller, reason };
        let (answer, turn) = self.passes.in_flight.answer(key, asked, pass).await;
        if turn == Turn::Joined {
            self.metrics.coalesced("in_flight");
        }
        answer.unwrap_or_else(|| {
            Err(Refused::with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "pass_failed",
                format!(
                    "the node agent on {} ended the pass for pod {pod} without an answer (see its log); the helper asks again",
                    self.node_name
                ),
            ))
        })
    }

    /// The answer to `outcome`, counted, and logged when refused.
    pub(super) fn reply(&self, peer: IpAddr, outcome: Result<RoutableAnswer, Refused>) -> Answer {
        match outcome {
            Ok(answer) => {
                let result = if answer.failures.is_empty() {
                    "routable"
                } else {
                    "unroutable"
                };
                self.metrics.answered(result);
                let body = serde_json::to_string(&answer).unwrap_or_default();
                (StatusCode::OK, body)
            }
            Err(refused) => self.refuse(peer, refused),
        }
    }

    /// The answer to a request from `peer` that was refused, counted and logged.
    pub(super) fn refuse(&self, peer: IpAddr, refused: Refused) -> Answer {
        let Refused {
            status,
            reason,
            error,
        } = refused;
        tracing::warn!(
            ?peer,
            status = status.as_u16(),
            reason,
            error,
            "pod API request refused"
        );
        self.metrics.answered(refusal_label(status));
        self.metrics.refused_request(reason);
        let body = serde_json::to_string(&Refusal { error }).unwrap_or_default();
        (status, body)
    }

    async fn routable(
        &self,
        (pod, namespace): (PodRecord, PodNamespace),
        reason: Reason,
    ) -> Result<RoutableAnswer, Refused> {
        let reason = match reason {
            Reason::Change if self.passes.unchanged(&pod, &namespace) => {
                tracing::debug!(
                    pod = pod.key,
                    "nothing changed since its last answer: rechecked"
                );
                self.metrics.coalesced("unchanged");
                Reason::Recheck
            }
            reason => reason,
        };
        let Some((node, multus)) = self.share.node() else {
            return Err(Refused::unavailable(
                "node_unread",
                format!(
                    "the node agent on {} has not read the node from instance metadata yet; the helper tries again",
                    self.node_name
                ),
            ));
        };
        let node = match reason {
            // Every address looked up in EC2 by the pass itself (one Describe per batch).
            Reason::Start | Reason::Change => node.believed(reason, &multus),
            Reason::Recheck => {
                let records = self.recheck_view(&multus).await.map_err(|failure| {
                    Refused::unavailable(
                        "ec2_unread",
                        format!("cannot read the node's ENIs from EC2: {failure}"),
                    )
                })?;
                node.with_ec2(&records)
            }
        };
        let (claims, planned) = self.claimed_plan(&pod, &namespace, &node).await?;
        tracing::debug!(pod = pod.key, %claims, "planned");
        let answer = self.carry_out(&pod, &claims, &node, planned).await;
        let live = |key: &str| self.pods.by_key(key).is_some();
        let routable = answer.failures.is_empty();
        self.passes.answered(&pod, &namespace, routable, live);
        Ok(answer)
    }

    /// The node's Multus ENIs as EC2 has them, for a periodic recheck: the agent's view when
    /// at most [`RECHECK_VIEW_AGE`] old, else read now (one call per batch).
    async fn recheck_view(
        &self,
        multus: &[String],
    ) -> Result<Vec<EniRecord>, crate::aws::Ec2Failure> {
        if let Some(records) = self.share.view(RECHECK_VIEW_AGE) {
            return Ok(records);
        }
        let records = self.placer.ec2.enis(multus).await?;
        self.share.set_view(records.clone());
        Ok(records)
    }

    /// One pass for the pod, and the answer it makes.
    async fn carry_out(
        &self,
        pod: &PodRecord,
        claims: &Claims,
        node: &NodeFacts,
        planned: Plan,
    ) -> RoutableAnswer {
        let managed = planned.multus_addresses();
        let placements = planned.placements.clone();
        let left_alone = planned
            .rejections
            .iter()
            .filter(|rejection| !rejection.is_failure())
            .map(ToString::to_string)
            .collect();
        if managed == 0 {
            return RoutableAnswer {
                pod: pod.key.clone(),
                left_alone,
                failures: vec![format!(
                    "the pod has no address on a Multus interface (Multus recorded {}); check the pod's network attachments",
                    match &pod.claims {
                        Ok(claims) if !claims.interfaces.is_empty() => claims.interfaces.join(", "),
                        _ => "none".to_owned(),
                    }
                )],
                ..RoutableAnswer::default()
            };
        }
        let check = HolderCheck {
            pod,
            claims,
            grants: self.pods.judge(|_, grants| grants.clone()),
            instance_id: &node.instance_id,
            holders: &self.holders,
            enforced: self.claims == ClaimsMode::Recorded,
        };
        let report = self
            .placer
            .checked_pass(node, planned, &[], &mut NodeEnis::default(), &check)
            .await;
        self.share.note_assigned(&report.assigned);
        for failure in &report.failures {
            if let Failure::Rejected(rejection) = failure
                && let RejectReason::Claim(refusal) = &rejection.reason
            {
                self.metrics.claim_refused(refusal.label());
                tracing::warn!(pod = pod.key, %rejection, "claim refused");
            }
        }
        let failed = |address: IpAddr| {
            report.failures.iter().any(|failure| match failure {
                Failure::Rejected(rejection) => rejection.address.address == address,
                Failure::Ec2(failure) => failure.addresses.contains(&address.to_string()),
            })
        };
        let routable: Vec<Routed> = placements
            .into_iter()
            .filter(|placement| !failed(placement.address.address))
            .map(|placement| Routed {
                address: placement.address.address,
                interface: placement.address.interface,
                eni: placement.eni_id,
            })
            .collect();
        tracing::info!(
            pod = pod.key,
            routable = routable.len(),
            failures = report.failures.len(),
            assigned = report.assigned.len(),
            "pod answered"
        );
        RoutableAnswer {
            pod: pod.key.clone(),
            routable,
            left_alone,
            failures: report.failures.iter().map(ToString::to_string).collect(),
        }
    }
}
