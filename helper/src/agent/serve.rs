//! The pod API (agent backend): the node's pods ask the agent to make their addresses
//! routable, and the agent alone holds AWS credentials and calls EC2.
//!
//! Who asks is the connection's source address: the live pod of this node whose pod IP it
//! is (the API server's view, [`NodePods`]) and whose network namespace carries it on its
//! primary interface (the kernel's view); both must agree, else 403. The agent reads the
//! pod's addresses from that namespace itself, keeps only what the pod may claim
//! ([`Claims`]), and carries a pass out through the batched EC2 calls ([`BatchedEc2`]):
//! every address is looked up in EC2 (one DescribeNetworkInterfaces per batch, never
//! metadata, which lags), and only what EC2 does not have in place is assigned. A sidecar's
//! periodic recheck is planned against the agent's view of the node's ENIs, at most
//! [`RECHECK_VIEW_AGE`] old, and costs nothing while nothing drifted.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipmgr_eni::{
    Assignment, Claims, EniRecord, MultusInterfaces, NodeFacts, Plan, PlanOptions, plan,
};
use tokio::net::TcpListener;

use super::batch::BatchedEc2;
use super::cluster::{NodePods, PodRecord};
use super::metrics::AgentMetrics;
use super::netns::{PodNamespace, PodScanner};
use crate::aws::Ec2Api;
use crate::config::ClaimsMode;
use crate::place::{Failure, NodeEnis, Placer};
use crate::pod_api::{ROUTABLE_PATH, Reason, Refusal, RoutableAnswer, RoutableRequest, Routed};

/// The oldest view of the node's ENIs a periodic recheck is answered from: one
/// DescribeNetworkInterfaces per node per interval, whatever the pod count.
pub const RECHECK_VIEW_AGE: Duration = Duration::from_secs(30);

/// How long a request waits for the API server's view of its pod to catch up (a pod just
/// created, or Multus' network-status record not yet seen through the watch).
const CATCH_UP: Duration = Duration::from_secs(5);

/// The largest request body taken.
const BODY_LIMIT: usize = 4096;

/// What the agent knows of its node, shared by its rounds (which write) and the pod API.
#[derive(Debug, Default)]
pub struct NodeShare {
    /// The node as instance metadata shows it, and the ids of its Multus ENIs.
    node: RwLock<Option<(NodeFacts, Vec<String>)>>,
    /// The last read of the Multus ENIs from EC2, and when.
    view: Mutex<Option<(Instant, Vec<EniRecord>)>>,
}

impl NodeShare {
    /// Takes in the node as the agent's round read it.
    pub fn set_node(&self, node: NodeFacts, multus: Vec<String>) {
        *self
            .node
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((node, multus));
    }

    fn node(&self) -> Option<(NodeFacts, Vec<String>)> {
        self.node
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn view(&self, max_age: Duration) -> Option<Vec<EniRecord>> {
        let view = self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.as_ref()
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, records)| records.clone())
    }

    /// Notes in the view what EC2 just accepted (an IPv4 assign with AllowReassignment
    /// may have taken an address off another of the node's ENIs).
    fn note_assigned(&self, assigned: &[Assignment]) {
        let mut view = self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((_, records)) = view.as_mut() else {
            return;
        };
        for assignment in assigned {
            for record in records.iter_mut() {
                match assignment.address {
                    IpAddr::V4(v4) => record.ipv4.retain(|held| *held != v4),
                    IpAddr::V6(v6) => record.ipv6.retain(|held| *held != v6),
                }
                if record.id == assignment.eni_id {
                    match assignment.address {
                        IpAddr::V4(v4) => record.ipv4.push(v4),
                        IpAddr::V6(v6) => record.ipv6.push(v6),
                    }
                }
            }
        }
    }

    /// Forgets the view: the next recheck reads the node's ENIs again.
    #[cfg(test)]
    pub fn forget_view(&self) {
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn set_view(&self, records: Vec<EniRecord>) {
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), records));
    }
}

/// The pod API over EC2 (`E`, batched) and the pod namespaces (`S`).
#[derive(Debug)]
pub struct PodService<E, S> {
    /// This node's name (for the messages).
    pub node_name: String,
    /// The node's pods, from the API server.
    pub pods: NodePods,
    /// The pod namespaces.
    pub scanner: S,
    /// Which addresses a pod may claim.
    pub claims: ClaimsMode,
    /// The node, shared with the agent's rounds.
    pub share: Arc<NodeShare>,
    /// Passes through the batched EC2 calls; its plan options are the agent's (the pod's
    /// Multus interfaces are set per pod).
    pub placer: Placer<BatchedEc2<E>>,
    /// The agent's metrics: answers are counted.
    pub metrics: Arc<AgentMetrics>,
}

/// An answer: status and JSON body.
type Answer = (StatusCode, String);

impl<E: Ec2Api + Clone + Send + 'static, S: PodScanner> PodService<E, S> {
    /// The answer to `request` from `peer`.
    pub async fn answer(&self, peer: IpAddr, request: RoutableRequest) -> Answer {
        match self.routable(peer, request.reason).await {
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
            Err((status, error)) => {
                tracing::warn!(%peer, status = status.as_u16(), error, "pod API request refused");
                self.metrics.answered(refusal_label(status));
                let body = serde_json::to_string(&Refusal { error }).unwrap_or_default();
                (status, body)
            }
        }
    }

    async fn routable(
        &self,
        peer: IpAddr,
        reason: Reason,
    ) -> Result<RoutableAnswer, (StatusCode, String)> {
        let unavailable = |error: String| (StatusCode::SERVICE_UNAVAILABLE, error);
        if !self.pods.synced() {
            return Err(unavailable(format!(
                "the node agent on {} has not listed the node's pods from the API server yet; the helper tries again (check the agent's log and its RBAC: get, list, watch pods)",
                self.node_name
            )));
        }
        let (pod, namespace) = self.identify(peer).await?;
        let Some((node, multus)) = self.share.node() else {
            return Err(unavailable(format!(
                "the node agent on {} has not read the node from instance metadata yet; the helper tries again",
                self.node_name
            )));
        };
        let node = match reason {
            // Every address looked up in EC2 by the pass itself (one Describe per batch).
            Reason::Start | Reason::Change => node.without_secondaries(&multus),
            Reason::Recheck => {
                let records = self.recheck_view(&multus).await.map_err(|failure| {
                    unavailable(format!("cannot read the node's ENIs from EC2: {failure}"))
                })?;
                node.with_ec2(&records)
            }
        };
        let (claims, planned) = self.claimed_plan(&pod, &namespace, &node).await?;
        tracing::debug!(pod = pod.key, %claims, "planned");
        Ok(self.carry_out(&pod, &node, planned).await)
    }

    /// The pod `peer` is, by the API server and by the kernel; 403 unless both agree.
    async fn identify(
        &self,
        peer: IpAddr,
    ) -> Result<(PodRecord, PodNamespace), (StatusCode, String)> {
        let Some(pod) = self.caught_up(|| self.pods.by_ip(peer)).await else {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "{peer} is the pod IP of no live pod on node {} (the API server lists none): the pod API serves only this node's pods, from their own network namespace",
                    self.node_name
                ),
            ));
        };
        let primary = &self.placer.options.primary_interface;
        match self.scanner.find(peer, primary).await {
            Ok(Some(namespace)) => Ok((pod, namespace)),
            Ok(None) => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "pod {} has pod IP {peer}, but no pod network namespace on node {} carries it on {primary}: the request did not come from that pod",
                    pod.key, self.node_name
                ),
            )),
            Err(error) => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the pod network namespaces: {error}"),
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

    /// The pod's addresses planned on `node`, less what it may not claim. When Multus'
    /// record does not cover the namespace's addresses yet (the watch lags the API server),
    /// a newer record is waited for, within [`CATCH_UP`].
    async fn claimed_plan(
        &self,
        pod: &PodRecord,
        namespace: &PodNamespace,
        node: &NodeFacts,
    ) -> Result<(Claims, Plan), (StatusCode, String)> {
        let claims = match self.claims {
            ClaimsMode::Any => Claims::default(),
            ClaimsMode::Recorded => {
                let covers = |claims: &Claims| {
                    !claims.interfaces.is_empty()
                        && namespace
                            .addresses
                            .iter()
                            .filter(|address| claims.interfaces.contains(&address.interface))
                            .all(|address| claims.allows(address.address))
                };
                let newer = || {
                    let record = self.pods.by_key(&pod.key)?;
                    record.claims.ok().filter(covers)
                };
                match pod.claims.clone() {
                    Ok(claims) if covers(&claims) => claims,
                    _ => match self.caught_up(newer).await {
                        Some(claims) => claims,
                        None => self
                            .pods
                            .by_key(&pod.key)
                            .map_or_else(|| pod.claims.clone(), |record| record.claims)
                            .map_err(|error| {
                                (
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    format!("pod {}: {error}", pod.key),
                                )
                            })?,
                    },
                }
            }
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
            ClaimsMode::Recorded => claims.restrict(planned),
            ClaimsMode::Any => planned,
        };
        Ok((claims, planned))
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
    async fn carry_out(&self, pod: &PodRecord, node: &NodeFacts, planned: Plan) -> RoutableAnswer {
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
        let report = self
            .placer
            .pass(node, planned, &[], &mut NodeEnis::default())
            .await;
        self.share.note_assigned(&report.assigned);
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

/// Serves the pod API on `listener` until the agent stops.
pub async fn serve<E, S>(listener: TcpListener, service: Arc<PodService<E, S>>)
where
    E: Ec2Api + Clone + Send + Sync + 'static,
    S: PodScanner + 'static,
{
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(route(&service, peer, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), handler);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "pod API connection ended");
            }
        });
    }
}

async fn route<E, S>(
    service: &PodService<E, S>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>>
where
    E: Ec2Api + Clone + Send + 'static,
    S: PodScanner,
{
    let refuse = |status: StatusCode, error: String| {
        service.metrics.answered(refusal_label(status));
        respond(
            status,
            serde_json::to_string(&Refusal { error }).unwrap_or_default(),
        )
    };
    if request.uri().path() != ROUTABLE_PATH {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no such path; the pod API serves POST {ROUTABLE_PATH}"),
        );
    }
    if request.method() != Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{ROUTABLE_PATH} takes POST"),
        );
    }
    let body = match Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request: {error}"),
            );
        }
    };
    let asked: RoutableRequest = match serde_json::from_slice(&body) {
        Ok(asked) => asked,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the request is not {{\"reason\": \"start\" | \"change\" | \"recheck\"}}: {error}"
                ),
            );
        }
    };
    let (status, body) = service.answer(peer.ip().to_canonical(), asked).await;
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
