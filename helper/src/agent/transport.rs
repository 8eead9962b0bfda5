//! The agent's HTTP listeners (the pod API and the metrics endpoint), served by hyper with
//! bounds that no pod can get past: connections at once, in all and per source address
//! ([`Limits`]); one request per connection (no keep-alive), whose head must arrive within
//! the request deadline; and an accept loop that backs off when accepting fails (EMFILE:
//! the descriptors are spent) instead of spinning. A connection over a limit is closed at
//! once, before anything of it is read, and counted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipmgr_eni::Backoff;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;

use super::metrics::ReasonLabel;

/// How long the accept loop waits after a failed accept: from 10 ms, doubling, up to 1 s
/// while accepting keeps failing (a descriptor frees when a connection ends).
const ACCEPT_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(10),
    factor: 2,
    max: Duration::from_secs(1),
};

/// What one listener admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, from all sources.
    pub connections: usize,
    /// Connections open at once from one source address.
    pub per_source: usize,
    /// How long a connection may take to deliver its request, head and body, from its
    /// admission (the head by hyper, the body by the caller: [`Admitted::remaining`]).
    pub deadline: Duration,
}

/// Why a connection was not served: the label of the rejected-connections counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// [`Limits::connections`] were open.
    Total,
    /// [`Limits::per_source`] were open from its address.
    PerSource,
}

impl Rejection {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Total => "connections",
            Rejection::PerSource => "per_source",
        }
    }
}

/// The connections open, in all and per source.
#[derive(Debug)]
struct Open {
    limits: Limits,
    by_source: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection admitted: it counts as open until dropped.
#[derive(Debug)]
pub struct Admitted {
    open: Arc<Open>,
    source: IpAddr,
    accepted: Instant,
}

impl Admitted {
    /// The listener's request deadline.
    pub fn deadline(&self) -> Duration {
        self.open.limits.deadline
    }

    /// What is left of the request deadline, counted from the connection's admission.
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_sub(self.accepted.elapsed())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .open
            .by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.1.remove(&self.source);
            }
        }
    }
}

/// The admission of one listener's connections.
#[derive(Clone, Debug)]
pub struct Admission(Arc<Open>);

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission(Arc::new(Open {
            limits,
            by_source: Mutex::new((0, HashMap::new())),
        }))
    }

    /// Admits a connection from `source`, or says which limit it is over.
    pub fn admit(&self, source: IpAddr) -> Result<Admitted, Rejection> {
        let limits = self.0.limits;
        let mut open = self.0.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= limits.connections {
            return Err(Rejection::Total);
        }
        let from_source = open.1.entry(source).or_insert(0);
        if *from_source >= limits.per_source {
            return Err(Rejection::PerSource);
        }
        *from_source += 1;
        open.0 += 1;
        Ok(Admitted {
            open: Arc::clone(&self.0),
            source,
            accepted: Instant::now(),
        })
    }
}

/// Serves `listener` until the process ends: each admitted connection gets one request,
/// answered by `handle(peer, admitted, request)`; rejected ones are counted in `rejected`
/// by [`Rejection::label`], failed accepts as `accept_failed`.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    rejected: Family<ReasonLabel, Counter>,
    handle: H,
) where
    H: Fn(SocketAddr, Arc<Admitted>, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let admission = Admission::new(limits);
    let mut failures = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                failures = 0;
                accepted
            }
            Err(error) => {
                failures += 1;
                count(&rejected, "accept_failed");
                let pause = ACCEPT_BACKOFF.ceiling(failures);
                if failures == 1 {
                    tracing::warn!(%error, "cannot accept a connection; waiting before the next (descriptors spent?)");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let admitted = match admission.admit(peer.ip().to_canonical()) {
            Ok(admitted) => Arc::new(admitted),
            Err(rejection) => {
                count(&rejected, rejection.label());
                tracing::debug!(%peer, reason = rejection.label(), "connection refused: over a limit");
                drop(stream);
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let deadline = admitted.deadline();
            let service = hyper::service::service_fn(move |request| {
                let answer = handle(peer, Arc::clone(&admitted), request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(false)
                .header_read_timeout(deadline)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended");
            }
        });
    }
}

fn count(rejected: &Family<ReasonLabel, Counter>, reason: &'static str) {
    rejected.get_or_create(&ReasonLabel { reason }).inc();
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    /// Serves "ok" under `limits` on a loopback port; its address and rejection counts.
    async fn ok_server(limits: Limits) -> (SocketAddr, Family<ReasonLabel, Counter>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let rejected = Family::<ReasonLabel, Counter>::default();
        tokio::spawn(serve(listener, limits, rejected.clone(), |_, _, _| async {
            Response::new(Full::new(Bytes::from("ok")))
        }));
        (address, rejected)
    }

    /// What the server sends `stream` until it closes it, if it does within `limit`.
    async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
        let mut text = Vec::new();
        match tokio::time::timeout(limit, stream.read_to_end(&mut text)).await {
            Ok(_) => Some(String::from_utf8_lossy(&text).into_owned()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn held_connections_cost_one_source_its_share_and_are_closed_at_the_deadline() {
        let deadline = Duration::from_millis(300);
        let (address, rejected) = ok_server(Limits {
            connections: 8,
            per_source: 2,
            deadline,
        })
        .await;
        let mut idle = TcpStream::connect(address).await.expect("connect");
        let mut head_only = TcpStream::connect(address).await.expect("connect");
        head_only
            .write_all(b"POST / HTTP/1.1\r\nHost: agent\r\n")
            .await
            .expect("write");
        // Accepted in order: the third from the same source is over its share.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(address).await.expect("connect");
        assert_eq!(
            until_closed(&mut third, Duration::from_secs(2)).await,
            Some(String::new()),
            "closed unread"
        );
        let per_source = ReasonLabel {
            reason: "per_source",
        };
        assert_eq!(rejected.get_or_create(&per_source).get(), 1);
        for held in [&mut idle, &mut head_only] {
            let closed = until_closed(held, deadline * 5).await;
            assert!(
                closed.is_some_and(|answer| !answer.contains("200")),
                "closed at the deadline, unanswered"
            );
        }
        let mut asking = TcpStream::connect(address).await.expect("connect");
        asking
            .write_all(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
            .await
            .expect("write");
        let answer = until_closed(&mut asking, Duration::from_secs(2)).await;
        assert!(
            answer
                .is_some_and(|answer| answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok")),
            "a whole request is answered, and the connection closed after it"
        );
    }

    fn limits() -> Limits {
        Limits {
            connections: 3,
            per_source: 2,
            deadline: Duration::from_secs(1),
        }
    }

    #[test]
    fn one_source_gets_its_share_and_the_node_the_rest() {
        let admission = Admission::new(limits());
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = admission.admit(a).expect("a 1");
        let _second = admission.admit(a).expect("a 2");
        assert_eq!(admission.admit(a).err(), Some(Rejection::PerSource));
        let _third = admission.admit(b).expect("b 1");
        assert_eq!(admission.admit(b).err(), Some(Rejection::Total));
        drop(first);
        assert!(
            admission.admit(a).is_ok(),
            "a closed connection frees its place"
        );
    }
}
