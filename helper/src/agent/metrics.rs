//! The agent's Prometheus metrics and the endpoint that serves them (hyper, bounded as
//! every listener of the agent: [`transport`]),
//! with `/healthz` and `/readyz` (ready while the agent sees the node's pods and EC2: see
//! [`AgentMetrics::set_unready`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::transport::{self, Limits};

/// Label `reason` of the refused-releases counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why an address was kept.
    pub reason: &'static str,
}

/// Label `result` of the scans counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Scans: `complete`, `incomplete`, `empty` or `failed`; pod API answers: `routable`,
    /// `unroutable`, `forbidden`, `invalid` or `unavailable`.
    pub result: &'static str,
}

/// Label `action` of the errors counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// What failed.
    pub action: &'static str,
}

/// Label `resource` of the capacity gauges: an extended resource the agent advertises.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// `multus-ipmgr.io/<interface>`.
    pub resource: String,
}

/// Everything the agent counts.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    /// Addresses the node's pods (and the node) carry, as of the last scan.
    pub in_use: Gauge,
    /// Pod network namespaces read in the last scan.
    pub namespaces: Gauge,
    /// Addresses of Multus ENIs in no pod, waiting out the grace period.
    pub waiting: Gauge,
    /// Addresses released.
    pub released: Counter,
    /// Addresses due to be released but kept, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Failures, by action.
    pub errors: Family<ActionLabel, Counter>,
    /// Scans of the pod namespaces, by result.
    pub scans: Family<ResultLabel, Counter>,
    /// Release decisions dropped before any call, because they could not be made again
    /// from a fresh view (reason `describe`, `scan`) or it aged (`stale`).
    pub dropped: Family<ReasonLabel, Counter>,
    /// 1 while ready, 0 otherwise.
    pub ready: Gauge,
    /// How long scans take.
    pub scan_seconds: Histogram,
    /// Pod API answers, by result.
    pub pod_requests: Family<ResultLabel, Counter>,
    /// Addresses a pod asked for and was not entitled to, by reason.
    pub claims_refused: Family<ReasonLabel, Counter>,
    /// Requests whose caller could not be told from another, by reason.
    pub identity_conflicts: Family<ReasonLabel, Counter>,
    /// Connections to the agent's listeners closed unserved, by reason.
    pub connections_rejected: Family<ReasonLabel, Counter>,
    /// Pod API requests answered without a pass of their own, by reason.
    pub coalesced: Family<ReasonLabel, Counter>,
    /// Pod API requests refused, by reason.
    pub requests_refused: Family<ReasonLabel, Counter>,
    /// The capacity advertised on the Node, by resource.
    pub capacity: Family<ResourceLabel, Gauge>,
    /// Addresses on each Multus ENI that no request of the node's pods accounts for.
    pub unaccounted: Family<ResourceLabel, Gauge>,
    /// Why the agent is not ready; `None` when it is.
    unready: Mutex<Option<String>>,
    /// A further condition of readiness, checked whenever readiness is asked.
    also: OnceLock<Condition>,
}

/// A condition of readiness: why the agent is not ready, or `None`.
struct Condition(Box<dyn Fn() -> Option<String> + Send + Sync>);

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Condition")
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut metrics = AgentMetrics {
            registry: Registry::with_prefix("ipmgr_agent"),
            in_use: Gauge::default(),
            namespaces: Gauge::default(),
            waiting: Gauge::default(),
            released: Counter::default(),
            refused: Family::default(),
            errors: Family::default(),
            scans: Family::default(),
            dropped: Family::default(),
            ready: Gauge::default(),
            scan_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            pod_requests: Family::default(),
            claims_refused: Family::default(),
            identity_conflicts: Family::default(),
            connections_rejected: Family::default(),
            coalesced: Family::default(),
            requests_refused: Family::default(),
            capacity: Family::default(),
            unaccounted: Family::default(),
            unready: Mutex::new(Some("the first scan is not done".to_owned())),
            also: OnceLock::new(),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "addresses_in_use",
            "Addresses the node's pods and the node carry",
            metrics.in_use.clone(),
        );
        registry.register(
            "pod_namespaces",
            "Pod network namespaces read in the last scan",
            metrics.namespaces.clone(),
        );
        registry.register(
            "addresses_waiting",
            "Addresses of Multus ENIs in no pod, waiting out the grace period",
            metrics.waiting.clone(),
        );
        registry.register(
            "addresses_released",
            "Addresses released to EC2",
            metrics.released.clone(),
        );
        registry.register(
            "releases_refused",
            "Addresses due to be released but kept, by reason",
            metrics.refused.clone(),
        );
        registry.register("errors", "Failures, by action", metrics.errors.clone());
        registry.register(
            "scans",
            "Scans of the pod namespaces, by result (complete, incomplete, empty: no pod namespace while the Multus ENIs hold addresses, failed)",
            metrics.scans.clone(),
        );
        registry.register(
            "decisions_dropped",
            "Release decisions dropped because they could not be taken again from a fresh view, by reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "ready",
            "1 while the agent sees the node's pods, instance metadata and EC2",
            metrics.ready.clone(),
        );
        registry.register(
            "scan_duration_seconds",
            "How long a scan of the pod namespaces takes",
            metrics.scan_seconds.clone(),
        );
        registry.register(
            "pod_requests",
            "Pod API answers, by result (routable, unroutable, forbidden: no pod of the node, invalid: a pod annotation that does not parse or a bad request, unavailable: not ready yet or EC2 unreadable)",
            metrics.pod_requests.clone(),
        );
        registry.register(
            "claims_refused",
            "Addresses a pod asked for and may not have, by reason (unclaimed, not_granted: a floating address outside its namespace's grant, granted_elsewhere, other_namespace: claimed by a pod of another namespace, unverified: another node's pods unreadable)",
            metrics.claims_refused.clone(),
        );
        registry.register(
            "identity_conflicts",
            "Pod API requests refused because their caller could not be told from another (duplicate_pod_ip: several live pod records with the pod IP, duplicate_on_primary: several namespaces carry it on the primary interface)",
            metrics.identity_conflicts.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections to the pod API and the metrics endpoint closed unserved, by reason (connections: the listener's limit open, per_source: its limit from one address open, accept_failed: accepting failed, e.g. descriptors spent)",
            metrics.connections_rejected.clone(),
        );
        registry.register(
            "pod_requests_coalesced",
            "Pod API requests answered without a pass of their own, by reason (in_flight: shared the pass of the pod's other requests, unchanged: a change with the addresses of the pod's last routable answer, answered from the agent's view of the node's ENIs)",
            metrics.coalesced.clone(),
        );
        registry.register(
            "pod_requests_refused",
            "Pod API requests refused, by reason (503, asked again: not_listed, node_unread, ec2_unread, namespaces_unread, pod_not_seen_yet, duplicate_pod_ip, duplicate_on_primary; 403: no_pod, not_from_its_namespace; 4xx: unreadable_claims, no_such_path, not_post, unreadable_body, body_timeout, not_a_request; 500: pass_failed)",
            metrics.requests_refused.clone(),
        );
        registry.register(
            "multus_capacity",
            "Secondary IPv4 addresses each Multus ENI can hold, as advertised on the Node, by resource (multus-ipmgr.io/<interface>)",
            metrics.capacity.clone(),
        );
        registry.register(
            "multus_addresses_unaccounted",
            "Secondary IPv4 addresses on each Multus ENI that no request of the node's pods accounts for (pods on networks whose NetworkAttachmentDefinition names no resource, floating IPs, other tools), by resource",
            metrics.unaccounted.clone(),
        );
        metrics
    }
}

impl AgentMetrics {
    /// Marks the round's view good: the agent is ready unless a condition of
    /// [`AgentMetrics::also_require`] says otherwise.
    pub fn set_ready(&self) {
        *self
            .unready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.unready_reason();
    }

    /// Marks the agent not ready, saying why (the `/readyz` body).
    pub fn set_unready(&self, reason: String) {
        *self
            .unready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
        self.ready.set(0);
    }

    /// Makes readiness also depend on `condition` (why the agent is not ready, or `None`),
    /// checked whenever readiness is asked; only the first call counts.
    pub fn also_require(&self, condition: impl Fn() -> Option<String> + Send + Sync + 'static) {
        let _ = self.also.set(Condition(Box::new(condition)));
    }

    /// Why the agent is not ready; `None` when it is.
    pub fn unready_reason(&self) -> Option<String> {
        let reason = self
            .unready
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let reason = reason.or_else(|| self.also.get().and_then(|condition| (condition.0)()));
        self.ready.set(i64::from(reason.is_none()));
        reason
    }

    /// Counts one failure of `action`.
    pub fn error(&self, action: &'static str) {
        self.errors.get_or_create(&ActionLabel { action }).inc();
    }

    /// Counts one scan with `result`.
    pub fn scanned(&self, result: &'static str) {
        self.scans.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a pod API answer.
    pub fn answered(&self, result: &'static str) {
        self.pod_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts an address a pod was refused, for `reason`.
    pub fn claim_refused(&self, reason: &'static str) {
        self.claims_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a request whose caller was ambiguous, for `reason`.
    pub fn identity_conflict(&self, reason: &'static str) {
        self.identity_conflicts
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a pod API request answered without a pass of its own, for `reason`.
    pub fn coalesced(&self, reason: &'static str) {
        self.coalesced.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a pod API request refused for `reason`.
    pub fn refused_request(&self, reason: &'static str) {
        self.requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts release decisions dropped for `reason`.
    pub fn drop_decisions(&self, reason: &'static str, count: usize) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(count as u64);
    }

    pub(super) fn text(&self) -> String {
        self.unready_reason();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .unwrap_or_else(|error| text = format!("# cannot encode the metrics: {error}\n"));
        text
    }
}

/// What the metrics listener admits: Prometheus and the kubelet's probes need a few
/// connections; any pod of the node can reach it (hostNetwork), so it is bounded too.
const METRICS_LIMITS: Limits = Limits {
    connections: 32,
    per_source: 8,
    deadline: Duration::from_secs(5),
};

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<AgentMetrics>) {
    let rejected = metrics.connections_rejected.clone();
    transport::serve(listener, METRICS_LIMITS, rejected, move |_, _, request| {
        let answer = answer(&metrics, &request);
        async move { answer }
    })
    .await;
}

/// The answer to one request of the metrics endpoint.
fn answer(metrics: &AgentMetrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.text(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") => match metrics.unready_reason() {
            None => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
