//! The request side of the admission server: its routes, and what each request may take
//! (body size and time, the whole request's time, `/mutate` requests in flight, which get a
//! fast 503 beyond the cap), and the reads of the NetworkAttachmentDefinitions an injected
//! pod's networks name. Tested through [`router`] without a socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use ipmgr_injector::{HelperSettings, excerpt};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

use crate::admission::{Outcome, Reviewed, review};
use crate::metrics::{Held, Metrics, Stage};
use crate::network_definitions::DefinitionSource;
use crate::network_definitions::cache::CachedDefinitions;
use crate::tls::ServingCertificate;

/// Limits of one request, applied by the router.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Largest accepted body; larger ones get 413.
    pub max_body_bytes: usize,
    /// `/mutate` requests answered at once; further ones get 503 at once.
    pub max_in_flight: usize,
    /// Time a body may take to arrive once the headers did; slower ones get 408.
    pub body_timeout: Duration,
    /// Time from a request's headers to its answer, body included; 503 past it while the
    /// body is read, and the reads of NetworkAttachmentDefinitions after it end by then.
    pub request_timeout: Duration,
}

/// Shared state of the request handlers.
#[derive(Debug)]
pub struct AppState {
    /// How the helper container is built.
    pub settings: HelperSettings,
    /// Request metrics.
    pub metrics: Metrics,
    /// The serving certificate; readiness needs one loaded.
    pub certificate: Option<Arc<ServingCertificate>>,
    /// Per-request limits.
    pub limits: RequestLimits,
    /// Where injected pods' NetworkAttachmentDefinitions are read; `None`: no network
    /// requests (`--network-resources=false`).
    pub network_definitions: Option<CachedDefinitions>,
    in_flight: Arc<Semaphore>,
}

impl AppState {
    /// State with fresh metrics and `limits.max_in_flight` request slots.
    pub fn new(
        settings: HelperSettings,
        certificate: Option<Arc<ServingCertificate>>,
        limits: RequestLimits,
    ) -> Self {
        AppState {
            settings,
            metrics: Metrics::default(),
            certificate,
            limits,
            network_definitions: None,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
    }

    /// Adds network requests to injected pods, reading the definitions their networks name
    /// from `source`, each kept for `cache_ttl`.
    pub fn with_network_definitions(
        mut self,
        source: Box<dyn DefinitionSource>,
        cache_ttl: Duration,
    ) -> Self {
        self.network_definitions = Some(CachedDefinitions::new(source, cache_ttl, &self.metrics));
        self
    }
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// For HTTP/1, `Connection: close` on a refusal: the connection may hold an unread body.
fn closes_after(version: Version) -> bool {
    version <= Version::HTTP_11
}

fn refusal(status: StatusCode, message: &'static str, close: bool) -> Response {
    let mut response = (status, message).into_response();
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + state.limits.request_timeout;
    let limits = state.limits;
    let close = closes_after(request.version());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        state.metrics.body_too_large.inc();
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than --max-body-bytes",
            close,
        )
    };
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return too_large();
    }
    let Ok(_slot) = state.in_flight.clone().try_acquire_owned() else {
        state.metrics.shed_requests.inc();
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many admission requests in flight (--max-in-flight); retry",
            close,
        );
    };
    let _in_flight = Held::new(&state.metrics.in_flight_requests);
    let capacity = declared.map_or(0, |length| length as usize);
    let body = match read_body(request.into_body(), capacity, &state).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::TimedOut(Stage::Body)) => {
            state.metrics.timed_out(Stage::Body);
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received within --body-timeout-seconds",
                close,
            );
        }
        Err(BodyError::TimedOut(stage)) => {
            state.metrics.timed_out(stage);
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "request not answered within --request-timeout-seconds",
                close,
            );
        }
        Err(BodyError::Broken) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "request body could not be read",
                close,
            );
        }
    };
    let reviewed = review(&body.bytes, &state.settings);
    drop(body);
    let answered = match reviewed {
        Ok(Reviewed::Answered(answer, outcome)) => Ok((answer, outcome)),
        Ok(Reviewed::Pending(pending)) => {
            let read = match &state.network_definitions {
                Some(definitions) => {
                    Some(definitions.look_up(pending.definitions(), deadline).await)
                }
                None => None,
            };
            Ok(pending.finish(read))
        }
        Err(error) => Err(error),
    };
    let (response, outcome) = match answered {
        Ok((answer, outcome)) => {
            log_outcome(&answer.response.uid, &outcome);
            (axum::Json(answer).into_response(), outcome)
        }
        Err(error) => {
            let message = error.to_string();
            tracing::warn!(error = %message, "rejected /mutate request");
            (
                (StatusCode::BAD_REQUEST, message).into_response(),
                Outcome::Error,
            )
        }
    };
    state.metrics.record(&outcome, started.elapsed());
    response
}

/// A request body being read, counted in the buffered-bytes gauge while it lives.
struct Buffered {
    bytes: Vec<u8>,
    gauge: Gauge,
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes.len() as i64);
    }
}

enum BodyError {
    TooLarge,
    /// Past the body timeout ([`Stage::Body`]) or the request timeout ([`Stage::Request`]).
    TimedOut(Stage),
    Broken,
}

/// Reads a body of at most `max_body_bytes` within `body_timeout` and `request_timeout`
/// (reading the body is the only part of a request that waits), into a buffer sized by the
/// declared length (already checked against the cap), so that it is held once.
async fn read_body(
    mut body: Body,
    capacity: usize,
    state: &AppState,
) -> Result<Buffered, BodyError> {
    let limits = state.limits;
    let now = tokio::time::Instant::now();
    let (deadline, stage) = if limits.body_timeout <= limits.request_timeout {
        (now + limits.body_timeout, Stage::Body)
    } else {
        (now + limits.request_timeout, Stage::Request)
    };
    let mut buffered = Buffered {
        bytes: Vec::with_capacity(capacity),
        gauge: state.metrics.buffered_body_bytes.clone(),
    };
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| BodyError::Broken)?.into_data() else {
                continue;
            };
            if buffered.bytes.len() + data.len() > limits.max_body_bytes {
                return Err(BodyError::TooLarge);
            }
            buffered.bytes.extend_from_slice(&data);
            buffered.gauge.inc_by(data.len() as i64);
        }
        Ok(())
    };
    // One timer for the whole body, not one per frame.
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(())) => Ok(buffered),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(BodyError::TimedOut(stage)),
    }
}

fn log_outcome(uid: &str, outcome: &Outcome) {
    let (label, reason, uid) = (outcome.label(), outcome.reason(), excerpt(uid));
    match outcome {
        Outcome::Injected(_) | Outcome::Denied(_) => {
            tracing::info!(%uid, outcome = label, reason, "admission reviewed");
        }
        _ => tracing::debug!(%uid, outcome = label, reason, "admission reviewed"),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if state
        .certificate
        .as_ref()
        .is_some_and(|certificate| certificate.is_loaded())
    {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate loaded",
        )
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if let Some(not_after) = state
        .certificate
        .as_ref()
        .and_then(|certificate| certificate.not_after())
    {
        state.metrics.certificate_expiry.set(not_after);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
