//! The HTTPS admission server: routes, TLS accept loop and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use ipmgr_injector::HelperSettings;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Outcome, review};
use crate::metrics::Metrics;
use crate::tls::ReloadingCertificate;

/// Shared state of the request handlers.
#[derive(Debug)]
pub struct AppState {
    /// How the helper container is built.
    pub settings: HelperSettings,
    /// Request metrics.
    pub metrics: Metrics,
    /// The serving certificate; readiness needs one loaded.
    pub certificate: Option<Arc<ReloadingCertificate>>,
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
/// Bodies above `max_body_bytes` are answered with 413.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn mutate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let (response, outcome) = match review(&body, &state.settings) {
        Ok((answer, outcome)) => {
            let uid = answer.response.uid.clone();
            let response = axum::Json(answer).into_response();
            log_outcome(&uid, &outcome);
            (response, outcome)
        }
        Err(error) => {
            tracing::warn!(%error, "rejected /mutate request");
            (
                (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
                Outcome::Error,
            )
        }
    };
    state.metrics.record(&outcome, started.elapsed());
    response
}

fn log_outcome(uid: &str, outcome: &Outcome) {
    let (label, reason) = (outcome.label(), outcome.reason());
    match outcome {
        Outcome::Injected(_) | Outcome::Denied => {
            tracing::info!(uid, outcome = label, reason, "admission reviewed");
        }
        _ => tracing::debug!(uid, outcome = label, reason, "admission reviewed"),
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
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown begins.
    pub drain_timeout: Duration,
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish (bounded by `limits.drain_timeout`).
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServerConfig,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
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
        // Admission answers are small writes: do not let Nagle hold them for an ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?limits.drain_timeout, "drain timed out; closing remaining connections");
    }
}
