//! The pod client's side of the pod API (agent backend): one HTTP/1.1 POST to its node's
//! agent per question, over plain TCP on the node's address. No AWS, no instance metadata.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use ipmgr_eni::Reason;

use crate::api::{ROUTABLE_PATH, Refusal, RoutableAnswer, RoutableRequest};

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest answer taken.
const ANSWER_LIMIT: usize = 1 << 20;

/// Why the agent did not answer "routable".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The agent could not be reached, or did not answer in time: tried again.
    #[error(
        "cannot reach the node agent at {url}: {reason}; check that the multus-ipmgr agent DaemonSet runs on this node, that NetworkPolicies let the pod reach its node on the agent's port, and, in a service mesh that redirects from the pod's start (Istio CNI, Linkerd CNI), that the helper runs as the proxy's UID (the webhook sets it when it sees the mesh on the pod; IPMGR_MESH_EXCLUSIONS=istio|linkerd for namespace-level injection)"
    )]
    Unreachable {
        /// The agent's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The agent cannot answer yet (HTTP 503): tried again.
    #[error("the node agent cannot answer yet: {0}")]
    Unavailable(String),
    /// The agent refused the request for good (403, 422, ...).
    #[error("the node agent refused (HTTP {status}): {error}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The agent's reason.
        error: String,
    },
}

impl AskError {
    /// Whether asking again may help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AskError::Unreachable { .. } | AskError::Unavailable(_)
        )
    }
}

/// The agent, as the pod helper asks it: the seam between the helper and HTTP
/// ([`AgentClient`]; tests answer in memory).
pub trait AgentApi: Send + Sync {
    /// Asks the agent to make the pod's addresses routable, for `reason`.
    fn ask(&self, reason: Reason) -> impl Future<Output = Result<RoutableAnswer, AskError>> + Send;
}

/// The node agent's pod API at one address.
#[derive(Debug, Clone)]
pub struct AgentClient {
    url: String,
    address: SocketAddr,
    /// How long one question may wait for its answer.
    timeout: Duration,
}

/// An agent URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "IPMGR_AGENT_URL {url:?} is not http://ADDRESS:PORT ({reason}); the webhook sets it to http://$(HOST_IP):9472 from the downward API status.hostIP"
)]
pub struct InvalidAgentUrl {
    /// The URL given.
    pub url: String,
    /// Why.
    pub reason: &'static str,
}

/// The socket address of `http://HOST:PORT[/]`, where HOST is an IP address: bracketed or
/// not for IPv6 (`$(HOST_IP)` expands to a bare IPv6 address; the last colon is the port's).
pub fn agent_address(url: &str) -> Result<SocketAddr, InvalidAgentUrl> {
    let invalid = |reason| InvalidAgentUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("it must start with http://"))?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| invalid("it has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host
        .parse()
        .map_err(|_| invalid("the host is not an IP address"))?;
    let port = port
        .parse()
        .map_err(|_| invalid("the port is not a number"))?;
    Ok(SocketAddr::new(ip, port))
}

impl AgentClient {
    /// The agent at `url`; each question waits at most `timeout` for its answer.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, InvalidAgentUrl> {
        Ok(AgentClient {
            url: url.to_owned(),
            address: agent_address(url)?,
            timeout,
        })
    }

    async fn post(&self, reason: Reason) -> Result<(StatusCode, Bytes), String> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.address))
            .await
            .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|error| error.to_string())?;
        stream
            .set_nodelay(true)
            .map_err(|error| error.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
        tokio::spawn(connection);
        let body =
            serde_json::to_vec(&RoutableRequest { reason }).map_err(|error| error.to_string())?;
        let request = Request::post(ROUTABLE_PATH)
            .header(hyper::header::HOST, self.address.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

impl AgentApi for AgentClient {
    async fn ask(&self, reason: Reason) -> Result<RoutableAnswer, AskError> {
        let unreachable = |reason: String| AskError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let (status, body) = tokio::time::timeout(self.timeout, self.post(reason))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(unreachable)?;
        answer_of(status, &body).map_err(|error| match error {
            AnswerError::Unparsable(reason) => unreachable(reason),
            AnswerError::Ask(error) => error,
        })
    }
}

/// Why an agent's HTTP answer is no [`RoutableAnswer`].
#[derive(Debug)]
pub enum AnswerError {
    /// A 200 whose body does not parse.
    Unparsable(String),
    /// The agent could not answer yet (503), or refused.
    Ask(AskError),
}

/// What the agent's HTTP answer (`status`, `body`) says.
pub fn answer_of(status: StatusCode, body: &[u8]) -> Result<RoutableAnswer, AnswerError> {
    if status == StatusCode::OK {
        return serde_json::from_slice(body).map_err(|error| {
            AnswerError::Unparsable(format!("the answer does not parse: {error}"))
        });
    }
    let error = serde_json::from_slice::<Refusal>(body)
        .map(|refusal| refusal.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    Err(AnswerError::Ask(
        if status == StatusCode::SERVICE_UNAVAILABLE {
            AskError::Unavailable(error)
        } else {
            AskError::Refused {
                status: status.as_u16(),
                error,
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_url_names_an_ip_and_port_bracketed_or_not() {
        let address = |url| agent_address(url).map(|address| address.to_string());
        assert_eq!(
            address("http://10.0.0.10:9472"),
            Ok("10.0.0.10:9472".to_owned())
        );
        assert_eq!(
            address("http://10.0.0.10:9472/"),
            Ok("10.0.0.10:9472".to_owned())
        );
        assert_eq!(
            address("http://[fd00::a]:9472"),
            Ok("[fd00::a]:9472".to_owned())
        );
        assert_eq!(
            address("http://fd00::a:9472"),
            Ok("[fd00::a]:9472".to_owned())
        );
        for bad in [
            "https://10.0.0.10:9472",
            "http://10.0.0.10",
            "http://node1:9472",
            "http://10.0.0.10:port",
        ] {
            let error = agent_address(bad).expect_err(bad).to_string();
            assert!(
                error.contains("IPMGR_AGENT_URL") && error.contains(bad),
                "{error}"
            );
        }
    }
}
