//! The transport side of the admission server: the TLS accept loop, each connection's
//! lifetime (handshake and header timeouts, idle connections, HTTP/2 keep-alive and
//! streams, `max_connections` then the listen backlog), and the drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::requests::{AppState, router};
use crate::metrics::{Held, Stage};

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
