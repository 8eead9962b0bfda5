//! A minimal client of the Kubernetes API, for the few calls the webhook makes: the managed
//! certificates' (a get or a write per check) and the reads of NetworkAttachmentDefinitions
//! (a get per definition not cached): in the cluster with the pod's service account (its
//! token re-read for every call, as bound tokens rotate), or from a kubeconfig
//! (`KUBECONFIG`) with a token or none. One HTTP/1.1 connection per call; JSON in and out.
//! kube-rs would do it too, but made the webhook's static binary 8.45 MB; with this client
//! it is 5.06 MB (4.71 MB without managed certificates; dist profile, 2026-12-07).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where a pod finds its service account (the kubelet mounts it there).
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Each call's limit, connection included, unless the caller gives another.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a Secret is at most 1 MiB).
const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// The API server could not be configured or called.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Neither a kubeconfig nor the in-cluster service account is usable.
    #[error("no Kubernetes API configuration: {0}")]
    Config(String),
    /// A file of the configuration could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The call did not reach an answer.
    #[error("{method} {path}: {reason}")]
    Transport {
        /// The verb.
        method: Method,
        /// The path.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Who the client is.
#[derive(Clone, Debug)]
enum Token {
    None,
    Inline(String),
    File(PathBuf),
}

/// The API server at one address.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    /// The server URL's path, before every request's (a proxy in front of the API server).
    base_path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    token: Token,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ApiClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ApiClient {
    /// From `KUBECONFIG` when it is set (the first file of a list), else from the pod's
    /// service account.
    pub fn from_environment() -> Result<Self, ApiError> {
        match std::env::var_os("KUBECONFIG") {
            Some(paths) => match std::env::split_paths(&paths).next() {
                Some(path) => Self::from_kubeconfig(&path),
                None => Self::in_cluster(),
            },
            None => Self::in_cluster(),
        }
    }

    fn in_cluster() -> Result<Self, ApiError> {
        let variable = |name: &str| {
            std::env::var(name).map_err(|_| {
                ApiError::Config(format!(
                    "{name} is not set and KUBECONFIG neither: run in a pod (the chart mounts \
                     the service account token when the webhook calls the API) or set KUBECONFIG"
                ))
            })
        };
        let host = variable("KUBERNETES_SERVICE_HOST")?;
        let port = variable("KUBERNETES_SERVICE_PORT")?;
        let port = port.parse().map_err(|_| {
            ApiError::Config(format!("KUBERNETES_SERVICE_PORT {port:?} is not a port"))
        })?;
        let ca_path = Path::new(SERVICE_ACCOUNT).join("ca.crt");
        let ca = read(&ca_path)?;
        Ok(ApiClient {
            tls: Some(tls(&ca, &host, &ca_path.display().to_string())?),
            host,
            port,
            base_path: String::new(),
            token: Token::File(Path::new(SERVICE_ACCOUNT).join("token")),
        })
    }

    /// The current context of the kubeconfig at `path`: its cluster's `server` (http or
    /// https, with `certificate-authority-data` or `certificate-authority`, and
    /// `tls-server-name`) and its user's `token` or `tokenFile`, or no credentials.
    pub fn from_kubeconfig(path: &Path) -> Result<Self, ApiError> {
        let text = String::from_utf8_lossy(&read(path)?).into_owned();
        let config: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|error| ApiError::Config(format!("{}: {error}", path.display())))?;
        let invalid = |what: &str| ApiError::Config(format!("{}: {what}", path.display()));
        let named = |list: &str, name: &str, field: &str| {
            config[list]
                .as_sequence()
                .and_then(|items| {
                    items
                        .iter()
                        .find(|item| item["name"].as_str() == Some(name))
                })
                .map(|item| item[field].clone())
                .ok_or_else(|| invalid(&format!("no {list} entry named {name:?}")))
        };
        let context_name = config["current-context"]
            .as_str()
            .ok_or_else(|| invalid("no current-context"))?;
        let context = named("contexts", context_name, "context")?;
        let cluster = named(
            "clusters",
            context["cluster"].as_str().unwrap_or_default(),
            "cluster",
        )?;
        let user = match context["user"].as_str() {
            Some(user) => named("users", user, "user")?,
            None => serde_yaml::Value::Null,
        };
        let server = cluster["server"]
            .as_str()
            .ok_or_else(|| invalid("the cluster has no server"))?;
        let (https, authority) = match server.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => {
                return Err(invalid(&format!(
                    "server {server:?} is not an http or https URL"
                )));
            }
        };
        let (authority, base_path) = match authority.find('/') {
            Some(slash) => (
                &authority[..slash],
                authority[slash..].trim_end_matches('/'),
            ),
            None => (authority, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse()
                    .map_err(|_| invalid(&format!("server {server:?} has no valid port")))?,
            ),
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = if https {
            let ca = match (
                cluster["certificate-authority-data"].as_str(),
                cluster["certificate-authority"].as_str(),
            ) {
                (Some(data), _) => BASE64
                    .decode(data)
                    .map_err(|_| invalid("certificate-authority-data is not base64"))?,
                (None, Some(file)) => read(Path::new(file))?,
                (None, None) => {
                    return Err(invalid(
                        "an https server needs certificate-authority(-data)",
                    ));
                }
            };
            // kubeconfig's tls-server-name: the name to check the certificate for.
            let name = cluster["tls-server-name"].as_str().unwrap_or(&host);
            Some(tls(&ca, name, &path.display().to_string())?)
        } else {
            None
        };
        let token = match (user["token"].as_str(), user["tokenFile"].as_str()) {
            (Some(token), _) => Token::Inline(token.to_owned()),
            (None, Some(file)) => Token::File(PathBuf::from(file)),
            (None, None)
                if user["client-certificate-data"].is_null()
                    && user["client-certificate"].is_null()
                    && user["exec"].is_null() =>
            {
                Token::None
            }
            _ => {
                return Err(invalid(
                    "the user authenticates with a client certificate or exec plugin, which the \
                     webhook does not support: use a token or run it in the cluster",
                ));
            }
        };
        Ok(ApiClient {
            host,
            port,
            base_path: base_path.to_owned(),
            tls,
            token,
        })
    }

    /// One call: `body` (JSON, of `content_type`) to `path`; the status and the JSON answer
    /// (`Null` when it is empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Result<(StatusCode, Value), ApiError> {
        self.call_within(CALL_TIMEOUT, method, path, body).await
    }

    /// [`ApiClient::call`], given up after `timeout`.
    pub async fn call_within(
        &self,
        timeout: Duration,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Result<(StatusCode, Value), ApiError> {
        let failed = |reason: String| ApiError::Transport {
            method: method.clone(),
            path: path.to_owned(),
            reason,
        };
        tokio::time::timeout(timeout, self.exchange(method.clone(), path, body))
            .await
            .map_err(|_| failed(format!("no answer within {timeout:?}")))?
            .map_err(failed)
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Result<(StatusCode, Value), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(hyper::header::HOST, self.authority())
            .header(hyper::header::ACCEPT, "application/json")
            // The API server names the field manager and the audit log's client after it.
            .header(
                hyper::header::USER_AGENT,
                concat!("ipmgr-webhook/", env!("CARGO_PKG_VERSION")),
            );
        match &self.token {
            Token::None => {}
            Token::Inline(token) => {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            Token::File(file) => {
                let token = std::fs::read_to_string(file).map_err(|error| {
                    format!("cannot read the token {}: {error}", file.display())
                })?;
                request = request.header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", token.trim()),
                );
            }
        }
        let payload = match body {
            Some((content_type, value)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                Bytes::from(serde_json::to_vec(value).map_err(|error| error.to_string())?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|error| error.to_string())?;
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| format!("cannot connect to {}: {error}", self.authority()))?;
        let response = match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|error| format!("TLS with {}: {error}", self.authority()))?;
                send(stream, request).await?
            }
            None => send(stream, request).await?,
        };
        Ok(response)
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(StatusCode, Value), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
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
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn read(path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path).map_err(|source| ApiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A TLS client trusting the CAs of `ca` (PEM), for `host` (a name or an address).
fn tls(
    ca: &[u8],
    host: &str,
    origin: &str,
) -> Result<(TlsConnector, ServerName<'static>), ApiError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca) {
        let certificate = certificate
            .map_err(|error| ApiError::Config(format!("the CA of {origin}: {error}")))?;
        roots
            .add(certificate)
            .map_err(|error| ApiError::Config(format!("the CA of {origin}: {error}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| ApiError::Config(error.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| ApiError::Config(format!("{host:?} is not a host name or address")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
