//! Prometheus metrics of the webhook.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admission::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    reason: &'static str,
}

/// Where a client ran out of time.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    /// The TLS handshake.
    Handshake,
    /// HTTP/1.1 request headers (also the wait for the next request on a kept-alive
    /// connection).
    Headers,
    /// A request body.
    Body,
    /// A whole request, from its headers to its answer.
    Request,
    /// A connection without a request in flight, closed after the idle timeout.
    Idle,
    /// An HTTP/2 connection whose peer stopped answering keep-alive pings.
    KeepAlive,
}

impl Stage {
    /// Metric label `stage`.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Handshake => "handshake",
            Stage::Headers => "headers",
            Stage::Body => "body",
            Stage::Request => "request",
            Stage::Idle => "idle",
            Stage::KeepAlive => "keep_alive",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// The label of a NetworkAttachmentDefinition read: `found`, `missing` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// What the read found.
    pub result: &'static str,
}

/// Request counters by outcome, a latency histogram of `/mutate`, and what the server holds
/// (connections, requests, body bytes) and refuses (bodies too large, timeouts, shed load).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    latency: Histogram,
    /// Open client connections (TLS handshake included).
    pub open_connections: Gauge,
    /// `/mutate` requests holding an in-flight slot.
    pub in_flight_requests: Gauge,
    /// Bytes of request bodies being read or answered.
    pub buffered_body_bytes: Gauge,
    /// Requests refused with 413 because their body is over `--max-body-bytes`.
    pub body_too_large: Counter,
    /// Requests refused with 503 because every in-flight slot was taken.
    pub shed_requests: Counter,
    timeouts: Family<StageLabels, Counter>,
    /// `notAfter` of the serving certificate, in seconds since the epoch.
    pub certificate_expiry: Gauge,
    /// NetworkAttachmentDefinitions read from the API server, by result.
    pub network_definition_reads: Family<ReadLabels, Counter>,
    /// NetworkAttachmentDefinitions found in the cache.
    pub network_definition_cache_hits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ipmgr_webhook");
        let mut add = |name: &str, help: &str, metric: &dyn RegisteredMetric| {
            metric.register_in(&mut registry, name, help);
        };
        let requests = Family::<OutcomeLabels, Counter>::default();
        add(
            "admission_requests",
            "Admission requests by outcome (injected, skipped, ignored, denied, error) and reason",
            &requests,
        );
        // 50 µs .. ~0.8 s
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 15));
        add(
            "admission_duration_seconds",
            "Time to answer one /mutate request, from body read to response",
            &latency,
        );
        let open_connections = Gauge::default();
        add(
            "open_connections",
            "Open client connections",
            &open_connections,
        );
        let in_flight_requests = Gauge::default();
        add(
            "in_flight_requests",
            "/mutate requests being read or answered (at most --max-in-flight)",
            &in_flight_requests,
        );
        let buffered_body_bytes = Gauge::default();
        add(
            "buffered_body_bytes",
            "Bytes of request bodies held by the server",
            &buffered_body_bytes,
        );
        let body_too_large = Counter::default();
        add(
            "body_too_large",
            "Requests refused with 413: body over --max-body-bytes",
            &body_too_large,
        );
        let shed_requests = Counter::default();
        add(
            "shed_requests",
            "Requests refused with 503: every in-flight slot taken (--max-in-flight)",
            &shed_requests,
        );
        let timeouts = Family::<StageLabels, Counter>::default();
        add(
            "timeouts",
            "Clients dropped for running out of time, by stage",
            &timeouts,
        );
        let certificate_expiry = Gauge::default();
        add(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate (seconds since the epoch)",
            &certificate_expiry,
        );
        let network_definition_reads = Family::<ReadLabels, Counter>::default();
        add(
            "network_definition_reads",
            "NetworkAttachmentDefinitions read from the API server, by result (found, missing, error)",
            &network_definition_reads,
        );
        let network_definition_cache_hits = Counter::default();
        add(
            "network_definition_cache_hits",
            "NetworkAttachmentDefinitions found in the cache (--nad-cache-seconds), not read",
            &network_definition_cache_hits,
        );
        Metrics {
            registry,
            requests,
            latency,
            open_connections,
            in_flight_requests,
            buffered_body_bytes,
            body_too_large,
            shed_requests,
            timeouts,
            certificate_expiry,
            network_definition_reads,
            network_definition_cache_hits,
        }
    }
}

/// A metric registered by a clone of itself (metrics share their value between clones).
trait RegisteredMetric {
    fn register_in(&self, registry: &mut Registry, name: &str, help: &str);
}

impl<M: prometheus_client::registry::Metric + Clone> RegisteredMetric for M {
    fn register_in(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.clone());
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, outcome: &Outcome, elapsed: Duration) {
        self.requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
                reason: outcome.reason(),
            })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts one client dropped at `stage`.
    pub fn timed_out(&self, stage: Stage) {
        self.timeouts
            .get_or_create(&StageLabels {
                stage: stage.label(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Adds one to a gauge for as long as it lives.
#[derive(Debug)]
pub struct Held(Gauge);

impl Held {
    /// Increments `gauge` until the returned value is dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}
