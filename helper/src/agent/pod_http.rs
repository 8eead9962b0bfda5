//! The pod API over HTTP: one path, one method, a bounded body, answered by
//! [`PodService::answer`] under the transport's limits.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use ipmgr_pod::api::{ROUTABLE_PATH, RoutableRequest};
use tokio::net::TcpListener;

use super::holders::HolderPods;
use super::netns::PodScanner;
use super::refused::Refused;
use super::serve::PodService;
use super::transport::{self, Admitted, Limits};
use crate::aws::Ec2Api;

/// The largest request body taken.
const BODY_LIMIT: usize = 4096;

pub(super) async fn serve<E, S, H>(
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
pub(super) fn refusal_label(status: StatusCode) -> &'static str {
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
