//! The NetworkAttachmentDefinitions that pods' networks name, for their `multus-ipmgr.io/`
//! resource requests ([`ipmgr_injector::Injection::add_network_requests`]): read through the
//! Kubernetes API and cached by `serve` ([`cache`]), or from files by `inject` ([`files`]).

pub mod cache;
pub mod files;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::{Method, StatusCode};
use ipmgr_injector::{NamedDefinition, RESOURCE_NAME_ANNOTATION};
use serde_json::Value;

use crate::kube_api::{ApiClient, ApiError};

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The definition exists, with this `k8s.v1.cni.cncf.io/resourceName` (or none).
    Definition(Option<String>),
    /// There is no such definition.
    Missing,
}

/// A definition could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The API server was not reached, or did not answer in time.
    #[error(
        "{0}; retry, and check that the webhook reaches the API server (its NetworkPolicy's egress, the API server's health)"
    )]
    Transport(#[from] ApiError),
    /// The webhook may not read it.
    #[error(
        "HTTP {code}: {message}; grant the webhook get on network-attachment-definitions in k8s.cni.cncf.io (the chart does with webhook.networkResources), or turn the requests off with --network-resources=false"
    )]
    Forbidden {
        /// 401 or 403.
        code: u16,
        /// The API server's message.
        message: String,
    },
    /// The API server refused otherwise.
    #[error("HTTP {code}: {message}; retry once the API server answers")]
    Refused {
        /// The HTTP status.
        code: u16,
        /// The API server's message.
        message: String,
    },
    /// The request's time ran out before the read.
    #[error("no time was left of --request-timeout-seconds to read it; retry")]
    NoTimeLeft,
    /// The pod names more definitions than the webhook reads for one pod.
    #[error(
        "the pod names more than {max} NetworkAttachmentDefinitions, the most the webhook reads for one pod; select fewer networks",
        max = cache::MAX_PER_POD
    )]
    TooMany,
}

/// A definition a pod names that could not be read: the pod is denied.
#[derive(Debug, thiserror::Error)]
#[error("{definition}, which the webhook cannot read: {source}")]
pub struct UnreadableDefinition {
    /// The definition and the selection that names it.
    pub definition: NamedDefinition,
    /// Why it could not be read.
    pub source: ReadError,
}

/// The future of one read.
pub type Reading<'a> = Pin<Box<dyn Future<Output = Result<Found, ReadError>> + Send + 'a>>;

/// Where definitions are read from: the API server ([`ApiDefinitions`]), or in tests a map.
pub trait DefinitionSource: Send + Sync + fmt::Debug {
    /// Reads `namespace/name`, giving up after `timeout`.
    fn read<'a>(&'a self, namespace: &'a str, name: &'a str, timeout: Duration) -> Reading<'a>;
}

/// NetworkAttachmentDefinitions read from the API server, one GET each.
#[derive(Clone, Debug)]
pub struct ApiDefinitions {
    api: ApiClient,
}

impl ApiDefinitions {
    /// Reads through `api`.
    pub fn new(api: ApiClient) -> Self {
        ApiDefinitions { api }
    }
}

impl DefinitionSource for ApiDefinitions {
    fn read<'a>(&'a self, namespace: &'a str, name: &'a str, timeout: Duration) -> Reading<'a> {
        Box::pin(async move {
            // A name that cannot be one is not asked for: it would not exist, and it must
            // not become another path.
            if !is_dns_label(namespace) || !is_dns_subdomain(name) {
                return Ok(Found::Missing);
            }
            let path = format!(
                "/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/network-attachment-definitions/{name}"
            );
            let (status, body) = self
                .api
                .call_within(timeout, Method::GET, &path, None)
                .await?;
            let message = || body["message"].as_str().unwrap_or("no message").to_owned();
            match status {
                StatusCode::OK => Ok(Found::Definition(resource_name(&body))),
                StatusCode::NOT_FOUND => Ok(Found::Missing),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ReadError::Forbidden {
                    code: status.as_u16(),
                    message: message(),
                }),
                _ => Err(ReadError::Refused {
                    code: status.as_u16(),
                    message: message(),
                }),
            }
        })
    }
}

/// The `k8s.v1.cni.cncf.io/resourceName` annotation of a NetworkAttachmentDefinition.
fn resource_name(definition: &Value) -> Option<String> {
    definition["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
        .as_str()
        .map(str::to_owned)
}

/// A DNS-1123 label: a namespace.
fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge =
        |byte: Option<&u8>| byte.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    text.len() <= 63
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// A DNS-1123 subdomain: the name of a custom resource.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubernetes_names_are_asked_for() {
        for valid in ["a", "eth1-net", "a.b-c.d", "0x"] {
            assert!(is_dns_subdomain(valid), "{valid}");
        }
        for invalid in ["", "A", "a_b", "../secrets", "a/b", "a?b", "-a", "a.", ".a"] {
            assert!(!is_dns_subdomain(invalid), "{invalid}");
        }
        assert!(is_dns_label("multus"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
