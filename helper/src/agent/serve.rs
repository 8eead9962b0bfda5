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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use ipmgr_eni::{
    Assignment, Claimant, Claims, EniRecord, Grants, Move, MultusInterfaces, NodeFacts, Plan,
    PlanOptions, Reason, RejectReason, plan,
};
use tokio::net::TcpListener;

use super::batch::BatchedEc2;
use super::cluster::{ByIp, NodePods, PodRecord};
use super::coalesce::Turn;
use super::holders::HolderPods;
use super::metrics::AgentMetrics;
use super::netns::{Caller, PodNamespace, PodScanner};
use super::passes::{Asked, PodPasses};
use super::share::NodeShare;
use super::transport::{self, Admitted, Limits};
use crate::aws::Ec2Api;
use crate::config::ClaimsMode;
use crate::place::{Failure, MoveCheck, NodeEnis, Placer};
use ipmgr_pod::api::{ROUTABLE_PATH, Refusal, RoutableAnswer, RoutableRequest, Routed};

/// The oldest view of the node's ENIs a periodic recheck is answered from: one
/// DescribeNetworkInterfaces per node per interval, whatever the pod count.
pub const RECHECK_VIEW_AGE: Duration = Duration::from_secs(30);

/// How long a request waits for the API server's view of its pod to catch up (a pod just
/// created, or Multus' network-status record not yet seen through the watch).
const CATCH_UP: Duration = Duration::from_secs(5);

/// The largest request body taken.
const BODY_LIMIT: usize = 4096;

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
type Answer = (StatusCode, String);

/// A request refused: its status, the reason it is counted under
/// (`ipmgr_agent_pod_requests_refused_total{reason}`) and the error the pod is told.
#[derive(Clone, Debug)]
pub(super) struct Refused {
    status: StatusCode,
    reason: &'static str,
    error: String,
}

impl Refused {
    /// 503: the helper asks again.
    fn unavailable(reason: &'static str, error: String) -> Refused {
        Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason,
            error,
        }
    }

    /// 403: the source is no pod of the node, for good.
    fn forbidden(reason: &'static str, error: String) -> Refused {
        Refused {
            status: StatusCode::FORBIDDEN,
            reason,
            error,
        }
    }

    /// Any other status.
    fn with(status: StatusCode, reason: &'static str, error: String) -> Refused {
        Refused {
            status,
            reason,
            error,
        }
    }
}

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
    async fn shared_pass(
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
    fn reply(&self, peer: IpAddr, outcome: Result<RoutableAnswer, Refused>) -> Answer {
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
    fn refuse(&self, peer: IpAddr, refused: Refused) -> Answer {
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

    /// Who `peer` is: its pod and network namespace ([`Self::identify`]), once the view of
    /// the API server is listed; nothing of the request is needed for it.
    async fn caller(&self, peer: IpAddr) -> Result<(PodRecord, PodNamespace), Refused> {
        if !self.pods.synced() {
            return Err(Refused::unavailable(
                "not_listed",
                format!(
                    "the node agent on {} has not listed the node's pods and the namespaces from the API server yet; the helper tries again (check the agent's log and its RBAC: get, list, watch on pods and namespaces)",
                    self.node_name
                ),
            ));
        }
        self.identify(peer).await
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

    /// The pod `peer` is, by the API server and by the kernel: 403 when it is no pod of
    /// this node, 503 (asked again) while the API server's view has not caught up or the
    /// caller cannot be told from another.
    async fn identify(&self, peer: IpAddr) -> Result<(PodRecord, PodNamespace), Refused> {
        let listed = self
            .caught_up(|| match self.pods.by_ip(peer) {
                ByIp::None => None,
                found => Some(found),
            })
            .await
            .unwrap_or(ByIp::None);
        let primary = &self.placer.options.primary_interface;
        let kernel = self.scanner.find(peer, primary).await.map_err(|error| {
            Refused::unavailable(
                "namespaces_unread",
                format!("cannot read the pod network namespaces: {error}"),
            )
        })?;
        let node = &self.node_name;
        let conflict = |reason: &'static str, error: String| {
            self.metrics.identity_conflict(reason);
            Refused::unavailable(reason, error)
        };
        match (listed, kernel) {
            (ByIp::Several(pods), _) => Err(conflict(
                "duplicate_pod_ip",
                format!(
                    "the API server lists several live pods of node {node} with pod IP {peer} ({}): a pod IP reused while the agent's view lags; nothing is done until only one is left, and the helper asks again",
                    pods.join(", ")
                ),
            )),
            (_, Caller::Ambiguous(paths)) => Err(conflict(
                "duplicate_on_primary",
                format!(
                    "several pod network namespaces of node {node} carry {peer} on {primary} ({}) and the node's routes do not say which one it is: a pod with NET_ADMIN may have added a neighbour's pod IP to its own {primary}; nothing is done for either until one is left, and the helper asks again",
                    paths
                        .iter()
                        .map(|path| path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            (ByIp::One(pod), Caller::Found(namespace)) => Ok((pod, namespace)),
            (ByIp::One(pod), Caller::Absent) => Err(Refused::forbidden(
                "not_from_its_namespace",
                format!(
                    "pod {} has pod IP {peer}, but no pod network namespace on node {node} carries it on {primary}: the request did not come from that pod",
                    pod.key
                ),
            )),
            (ByIp::None, Caller::Found(namespace)) => Err(Refused::unavailable(
                "pod_not_seen_yet",
                format!(
                    "a pod network namespace of node {node} ({}) carries {peer}, but the API server's view lists no live pod of the node with that pod IP yet (a pod just created, or a watch that lags); the helper asks again",
                    namespace.path.display()
                ),
            )),
            (ByIp::None, Caller::Absent) => Err(Refused::forbidden(
                "no_pod",
                format!(
                    "{peer} is the pod IP of no live pod on node {node} (the API server lists none, and no pod network namespace of the node carries it): the pod API serves only this node's pods, from their own network namespace"
                ),
            )),
        }
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

    /// The pod's addresses planned on `node`, less what it is not entitled to. When Multus'
    /// record does not cover the namespace's addresses yet (the watch lags the API server),
    /// a newer record is waited for, within [`CATCH_UP`].
    async fn claimed_plan(
        &self,
        pod: &PodRecord,
        namespace: &PodNamespace,
        node: &NodeFacts,
    ) -> Result<(Claims, Plan), Refused> {
        let claims = match self.claims {
            ClaimsMode::Any => Claims::default(),
            ClaimsMode::Recorded => self.current_claims(pod, namespace).await?,
        };
        let options = PlanOptions {
            interfaces: match self.claims {
                ClaimsMode::Recorded => MultusInterfaces::Named(claims.interfaces.clone()),
                ClaimsMode::Any => MultusInterfaces::Any,
            },
            ..self.placer.options.clone()
        };
        let planned = plan(node, &namespace.addresses, &options);
        let planned = match self.claims {
            ClaimsMode::Recorded => self.pods.judge(|neighbours, grants| {
                claimant(pod, &claims).restrict(planned, grants, neighbours)
            }),
            ClaimsMode::Any => planned,
        };
        Ok((claims, planned))
    }

    /// The pod's claims, once its record covers what its namespace shows (or
    /// [`CATCH_UP`] has passed); 422 when its annotations do not parse.
    async fn current_claims(
        &self,
        pod: &PodRecord,
        namespace: &PodNamespace,
    ) -> Result<Claims, Refused> {
        let covers = |claims: &Claims| {
            !claims.interfaces.is_empty()
                && namespace
                    .addresses
                    .iter()
                    .filter(|address| claims.interfaces.contains(&address.interface))
                    .all(|address| claims.mentions(address.address))
        };
        if let Ok(claims) = &pod.claims
            && covers(claims)
        {
            return Ok(claims.clone());
        }
        let newer = || {
            let record = self.pods.by_key(&pod.key)?;
            record.claims.ok().filter(covers)
        };
        if let Some(claims) = self.caught_up(newer).await {
            return Ok(claims);
        }
        self.pods
            .by_key(&pod.key)
            .map_or_else(|| pod.claims.clone(), |record| record.claims)
            .map_err(|error| {
                Refused::with(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unreadable_claims",
                    format!("pod {}: {error}", pod.key),
                )
            })
    }

    /// `found()` now, or after the API server's view changed, within [`CATCH_UP`].
    async fn caught_up<T>(&self, found: impl Fn() -> Option<T>) -> Option<T> {
        let mut changes = self.pods.subscribe();
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            if let Some(value) = found() {
                return Some(value);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
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

/// `pod` as a claimant with `claims` (its current ones).
fn claimant<'a>(pod: &'a PodRecord, claims: &'a Claims) -> Claimant<'a> {
    Claimant {
        pod: &pod.key,
        namespace: &pod.namespace,
        claims,
    }
}

/// The check of a pass's moves from other nodes' Multus ENIs: an address the pod's
/// namespace is not granted moves only when no live pod of another namespace on the
/// holder's node claims it (invariant I1). Moves between this node's own ENIs were judged
/// against this node's pods already.
struct HolderCheck<'a, H> {
    pod: &'a PodRecord,
    claims: &'a Claims,
    grants: Grants,
    instance_id: &'a str,
    holders: &'a H,
    /// Off with `--claims any`: then every pod is trusted.
    enforced: bool,
}

impl<H: HolderPods> MoveCheck for HolderCheck<'_, H> {
    async fn refused(&self, moves: &[Move]) -> Vec<(Assignment, RejectReason)> {
        let mut refused = Vec::new();
        if !self.enforced {
            return refused;
        }
        let claimant = claimant(self.pod, self.claims);
        for taken in moves {
            let Some(instance) = taken.from_instance.as_deref() else {
                continue;
            };
            let address = taken.assignment.address;
            if instance == self.instance_id || self.grants.of(&self.pod.namespace).covers(address) {
                continue;
            }
            let verdict = match self.holders.pods_of_instance(instance).await {
                Ok(pods) => {
                    let neighbours: Vec<Claimant<'_>> =
                        pods.iter().filter_map(PodRecord::claimant).collect();
                    claimant
                        .entitled(address, &self.grants, &neighbours)
                        .map_err(RejectReason::Claim)
                }
                Err(error) => Err(RejectReason::Claim(ipmgr_eni::ClaimRefusal::Unverified {
                    holder: format!("ENI {} of instance {instance}", taken.from_eni),
                    error,
                })),
            };
            if let Err(reason) = verdict {
                refused.push((taken.assignment.clone(), reason));
            }
        }
        refused
    }
}

/// Serves the pod API on `listener` under `limits` until the agent stops.
pub async fn serve<E, S, H>(
    listener: TcpListener,
    limits: Limits,
    service: Arc<PodService<E, S, H>>,
) where
    E: Ec2Api + Clone + Send + Sync + 'static,
    S: PodScanner + 'static,
    H: HolderPods + 'static,
{
    let rejected = service.metrics.connections_rejected.clone();
    transport::serve(
        listener,
        limits,
        rejected,
        move |peer, admitted, request| {
            let service = Arc::clone(&service);
            async move { route(&service, peer, &admitted, request).await }
        },
    )
    .await;
}

/// One request: the path and method, then who asks (from the source address alone: an
/// unknown source is answered before anything more is read), then the body, within what
/// is left of the request deadline.
async fn route<E, S, H>(
    service: &Arc<PodService<E, S, H>>,
    peer: SocketAddr,
    admitted: &Admitted,
    request: Request<Incoming>,
) -> Response<Full<Bytes>>
where
    E: Ec2Api + Clone + Send + Sync + 'static,
    S: PodScanner + 'static,
    H: HolderPods + 'static,
{
    let ip = peer.ip().to_canonical();
    let refuse = |status: StatusCode, reason: &'static str, error: String| {
        let (status, body) = service.refuse(ip, Refused::with(status, reason, error));
        respond(status, body)
    };
    if request.uri().path() != ROUTABLE_PATH {
        return refuse(
            StatusCode::NOT_FOUND,
            "no_such_path",
            format!("no such path; the pod API serves POST {ROUTABLE_PATH}"),
        );
    }
    if request.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "not_post",
            format!("{ROUTABLE_PATH} takes POST"),
        );
    }
    let caller = match service.caller(ip).await {
        Ok(caller) => caller,
        Err(refused) => {
            let (status, body) = service.refuse(ip, refused);
            return respond(status, body);
        }
    };
    let reading = Limited::new(request.into_body(), BODY_LIMIT).collect();
    let body = match tokio::time::timeout(admitted.remaining(), reading).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(error)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("cannot read the request: {error}"),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {:?} of the connection",
                    admitted.deadline()
                ),
            );
        }
    };
    let asked: RoutableRequest = match serde_json::from_slice(&body) {
        Ok(asked) => asked,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "not_a_request",
                format!(
                    "the request is not {{\"reason\": \"start\" | \"change\" | \"recheck\"}}: {error}"
                ),
            );
        }
    };
    let (status, body) = service.reply(ip, service.shared_pass(caller, asked.reason).await);
    respond(status, body)
}

/// The metric label of a refusal.
fn refusal_label(status: StatusCode) -> &'static str {
    match status {
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "invalid",
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
