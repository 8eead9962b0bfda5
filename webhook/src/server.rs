//! The HTTPS admission server: routes, per-request limits, the TLS accept loop with its
//! per-connection limits, and graceful shutdown.
//!
//! Every resource a client can hold is bounded: connections (`max_connections`, then the
//! listen backlog), the time to finish the TLS handshake and each HTTP/1.1 request's headers,
//! the time a body may take and its size (a declared Content-Length over the cap is refused
//! before anything is read), the time of a whole request, `/mutate` requests in flight
//! (further ones get a fast 503), HTTP/2 streams per connection, and idle connections.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ipmgr_injector::{HelperSettings, excerpt};
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Outcome, review};
use crate::metrics::{Held, Metrics, Stage};
use crate::tls::ReloadingCertificate;

/// Limits of one request, applied by the router.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Largest accepted body; larger ones get 413.
    pub max_body_bytes: usize,
    /// `/mutate` requests answered at once; further ones get 503 at once.
    pub max_in_flight: usize,
    /// Time a body may take to arrive once the headers did; slower ones get 408.
    pub body_timeout: Duration,
    /// Time from a request's headers to its answer, body included; 503 past it. Reading the
    /// body is the only part of a request that waits, so this bounds it with `body_timeout`.
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
    pub certificate: Option<Arc<ReloadingCertificate>>,
    /// Per-request limits.
    pub limits: RequestLimits,
    in_flight: Arc<Semaphore>,
}

impl AppState {
    /// State with fresh metrics and `limits.max_in_flight` request slots.
    pub fn new(
        settings: HelperSettings,
        certificate: Option<Arc<ReloadingCertificate>>,
        limits: RequestLimits,
    ) -> Self {
        AppState {
            settings,
            metrics: Metrics::default(),
            certificate,
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
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
    let (response, outcome) = match review(&body.bytes, &state.settings) {
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
        Outcome::Injected(_) | Outcome::Denied => {
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

/// Limits of the accept loop and of each connection.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Time a client has to finish the TLS handshake, and then each HTTP/1.1 request's
    /// headers (including the wait for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection without a request in flight for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings, and how long an answer may take.
    pub h2_keep_alive: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Open connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time in-flight requests get to finish after shutdown begins.
    pub drain_timeout: Duration,
}

/// Largest HTTP/1.1 read buffer, which bounds request headers (the API server sends a few
/// hundred bytes) and the size of each body chunk.
const H1_MAX_BUF_BYTES: usize = 64 * 1024;

/// Where the server is in its life; connections watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

/// Serves the webhook over TLS on `listener` until `shutdown` resolves, then stops accepting
/// and lets in-flight requests finish (bounded by `limits.drain_timeout`).
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServerConfig,
    state: Arc<AppState>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let app = router(state.clone());
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(H1_MAX_BUF_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive)
        .keep_alive_timeout(limits.h2_keep_alive)
        .max_concurrent_streams(limits.h2_max_concurrent_streams);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (phase, _) = watch::channel(Phase::Serving);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            peer,
            _slot: slot,
            acceptor: acceptor.clone(),
            builder: builder.clone(),
            app: app.clone(),
            state: state.clone(),
            limits,
            phase: phase.subscribe(),
        };
        tokio::spawn(connection.serve(tcp));
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    phase.send_replace(Phase::Draining);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?limits.drain_timeout, "drain timed out; closing remaining connections");
        phase.send_replace(Phase::Closing);
    }
}

/// One accepted client connection.
struct Connection {
    peer: std::net::SocketAddr,
    /// Held while the connection lives: `max_connections` bounds them.
    _slot: OwnedSemaphorePermit,
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    state: Arc<AppState>,
    limits: ServeLimits,
    phase: watch::Receiver<Phase>,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream) {
        let (peer, metrics) = (self.peer, &self.state.metrics);
        let _open = Held::new(&metrics.open_connections);
        // Admission answers are small writes: do not let Nagle hold them for an ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let stream =
            match tokio::time::timeout(self.limits.header_timeout, self.acceptor.accept(tcp)).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.timed_out(Stage::Handshake);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
        let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: TowerToHyperService::new(self.app.clone()),
            activity: activity.clone(),
        };
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let limits = self.limits;
        let phase = &mut self.phase;
        let finished = tokio::select! {
            result = connection.as_mut() => Some(result),
            () = activity.idle(limits.idle_timeout) => {
                metrics.timed_out(Stage::Idle);
                None
            }
            _ = phase.wait_for(|phase| *phase != Phase::Serving) => None,
        };
        let result = match finished {
            Some(result) => result,
            None => {
                // Idle, or shutting down: let in-flight requests finish, refuse new ones.
                connection.as_mut().graceful_shutdown();
                let grace = if *phase.borrow() == Phase::Serving {
                    limits.h2_keep_alive
                } else {
                    Duration::MAX
                };
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = phase.wait_for(|phase| *phase == Phase::Closing) => return,
                    () = sleep(grace) => return,
                }
            }
        };
        if let Err(error) = result {
            let timed_out = error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            if timed_out {
                metrics.timed_out(if http2 {
                    Stage::KeepAlive
                } else {
                    Stage::Headers
                });
            }
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
}

async fn sleep(duration: Duration) {
    match tokio::time::Instant::now().checked_add(duration) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a connection's requests are doing, for its idle timeout: kept with two atomics, so
/// that a request costs no wake-up and no timer; the watchdog looks every idle timeout.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request was answered, in milliseconds since `opened`.
    last_answered_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_answered_ms: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Answered {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Answered(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let since_answer = Duration::from_millis(self.last_answered_ms.load(Ordering::Acquire));
            let idle_for = self.opened.elapsed().saturating_sub(since_answer);
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(timeout).await;
            } else if idle_for >= timeout {
                return;
            } else {
                tokio::time::sleep(timeout - idle_for).await;
            }
        }
    }
}

/// The connection's service, counting its requests in flight for the idle timeout.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

/// Marks the connection's request answered (or dropped) when it goes.
struct Answered(Arc<Activity>);

impl Drop for Answered {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_answered_ms.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
type TrackedFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let answered = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(answered);
            response
        })
    }
}
