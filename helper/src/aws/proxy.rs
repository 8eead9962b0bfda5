//! The proxies AWS calls go through: `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY`, each also in
//! lower case, as the other AWS SDKs honour them (aws-smithy-http-client leaves its proxy
//! support off unless given a configuration). Instance metadata and the container credentials
//! endpoint (EKS Pod Identity's agent) are the node's own: they never go through a proxy,
//! whatever `NO_PROXY` says, since a proxy would reach its own node's instead.

use std::fmt;

use aws_sdk_ec2::config::http::HttpRequest;
use aws_sdk_ec2::config::{HttpClient, SharedHttpClient};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, Connector};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use hyper::Uri;

/// A proxy variable holds something that is not an HTTP proxy URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "{variable} is not an HTTP proxy URL ({reason}); set it to http://HOST:PORT (http://USER:PASSWORD@HOST:PORT for a proxy that asks for credentials), or unset it"
)]
pub struct ProxyError {
    /// The variable, as spelt in the environment.
    pub variable: &'static str,
    /// Why the value was refused (never the value: it may hold a password).
    reason: String,
}

/// A proxy, and the variable that named it.
#[derive(Debug, Clone)]
struct Proxy {
    variable: &'static str,
    /// Where requests go (aws-smithy-http-client's validation of the URL).
    config: ProxyConfig,
    /// The URL without credentials, for the log.
    shown: String,
}

impl Proxy {
    /// Reads `value` of `variable`: a URL without a scheme means `http://` (Go's
    /// golang.org/x/net/http/httpproxy, parseProxy); the proxy is spoken to in HTTP (CONNECT
    /// for HTTPS endpoints) or over TLS (`https://`), nothing else.
    fn parse(variable: &'static str, value: &str) -> Result<Proxy, ProxyError> {
        let url = if value.contains("://") {
            value.to_owned()
        } else {
            format!("http://{value}")
        };
        let refused = |reason: String| ProxyError { variable, reason };
        let config = ProxyConfig::all(url.as_str()).map_err(|error| refused(error.to_string()))?;
        let uri: Uri = url.parse().map_err(|_| refused("not a URL".to_owned()))?;
        let (scheme, host) = (
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or_default(),
        );
        let shown = match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        Ok(Proxy {
            variable,
            config,
            shown,
        })
    }
}

impl fmt::Display for Proxy {
    /// The proxy without its credentials, and where it came from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.shown, self.variable)
    }
}

/// Where a request's connection is made: host (lower case, IPv6 without brackets) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    fn of(url: &str) -> Option<Endpoint> {
        let uri: Uri = url.parse().ok()?;
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        Some(Endpoint {
            host: host.to_ascii_lowercase(),
            port: uri.port_u16().unwrap_or(default_port),
        })
    }
}

/// Instance metadata's endpoints, IPv4 and IPv6 (AWS: "Access instance metadata for an EC2
/// instance"), besides those the environment names.
const METADATA: [&str; 2] = ["http://169.254.169.254", "http://[fd00:ec2::254]"];

/// The variables naming the node's own endpoints: instance metadata (aws-config and our
/// client honour it) and the container credentials endpoint (EKS Pod Identity sets it).
const NODE_LOCAL_VARIABLES: [&str; 2] = [
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// The proxy settings of the environment, for AWS calls.
#[derive(Debug, Clone)]
pub struct Proxies {
    /// For `https://` endpoints (EC2, STS).
    https: Option<Proxy>,
    /// For `http://` endpoints.
    http: Option<Proxy>,
    /// The hosts that bypass either proxy (curl's rules, applied by hyper-util).
    no_proxy: String,
    /// The node's own endpoints, never proxied.
    node_local: Vec<Endpoint>,
}

/// Which client a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The node's own endpoints: no proxy, whatever `NO_PROXY` says.
    Direct,
    /// `https://`: the HTTPS proxy unless `NO_PROXY` names the host.
    Https,
    /// `http://`: the HTTP proxy unless `NO_PROXY` names the host.
    Http,
}

impl Proxies {
    /// Reads the process environment.
    pub fn from_env() -> Result<Proxies, ProxyError> {
        Proxies::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`. Of a pair, the upper-case one wins and an empty
    /// value counts as unset, as in Go's net/http (golang.org/x/net/http/httpproxy,
    /// FromEnvironment), which the AWS SDK for Go, the kubelet and containerd use.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Proxies, ProxyError> {
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                lookup(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (name, value.trim().to_owned()))
            })
        };
        let proxy = |names| {
            first(names)
                .map(|(variable, value)| Proxy::parse(variable, &value))
                .transpose()
        };
        let node_local = METADATA
            .iter()
            .map(|&url| url.to_owned())
            .chain(NODE_LOCAL_VARIABLES.iter().filter_map(|&name| lookup(name)))
            .filter_map(|url| Endpoint::of(&url))
            .collect();
        Ok(Proxies {
            https: proxy(["HTTPS_PROXY", "https_proxy"])?,
            http: proxy(["HTTP_PROXY", "http_proxy"])?,
            no_proxy: first(["NO_PROXY", "no_proxy"])
                .map(|(_, value)| value)
                .unwrap_or_default(),
            node_local,
        })
    }

    fn route(&self, url: &str) -> Route {
        match Endpoint::of(url) {
            Some(endpoint) if self.node_local.contains(&endpoint) => Route::Direct,
            _ if url.starts_with("https:") => Route::Https,
            _ => Route::Http,
        }
    }

    /// Logs the proxies AWS calls take, without credentials; nothing when there are none.
    pub fn log(&self) {
        if self.https.is_none() && self.http.is_none() {
            return;
        }
        let shown = |proxy: &Option<Proxy>| {
            proxy
                .as_ref()
                .map_or_else(|| "none".to_owned(), Proxy::to_string)
        };
        tracing::info!(
            https = shown(&self.https),
            http = shown(&self.http),
            no_proxy = self.no_proxy,
            "AWS calls go through a proxy (instance metadata never does)"
        );
    }

    /// The HTTP client of the AWS SDK: `direct` for the node's own endpoints and where no
    /// proxy is set, else through the proxy of the request's scheme.
    pub fn client(&self, direct: &SharedHttpClient) -> SharedHttpClient {
        if self.https.is_none() && self.http.is_none() {
            return direct.clone();
        }
        // Each client gets only its scheme's requests: `all` is that scheme's proxy.
        let through = |proxy: &Option<Proxy>| {
            proxy.as_ref().map_or_else(
                || direct.clone(),
                |proxy| proxied(proxy.config.clone().no_proxy(&self.no_proxy)),
            )
        };
        let (https, http) = (through(&self.https), through(&self.http));
        let (proxies, direct) = (self.clone(), direct.clone());
        http_client_fn(move |settings, components| {
            SharedHttpConnector::new(Routed {
                proxies: proxies.clone(),
                direct: direct.http_connector(settings, components),
                https: https.http_connector(settings, components),
                http: http.http_connector(settings, components),
            })
        })
    }
}

/// The HTTPS client with no proxy: instance metadata's, and the SDK's without a proxy.
pub fn direct() -> SharedHttpClient {
    Builder::new().tls_provider(tls()).build_https()
}

/// The HTTPS client that goes through the proxy `config` names.
fn proxied(config: ProxyConfig) -> SharedHttpClient {
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = Connector::builder().proxy_config(config.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(sleep) = components.and_then(|components| components.sleep_impl()) {
            connector.set_sleep_impl(Some(sleep));
        }
        connector.tls_provider(tls()).build()
    })
}

fn tls() -> Provider {
    Provider::Rustls(CryptoMode::Ring)
}

/// One connector per route, each request sent on its route's.
#[derive(Debug)]
struct Routed {
    proxies: Proxies,
    direct: SharedHttpConnector,
    https: SharedHttpConnector,
    http: SharedHttpConnector,
}

impl HttpConnector for Routed {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        match self.proxies.route(request.uri()) {
            Route::Direct => self.direct.call(request),
            Route::Https => self.https.call(request),
            Route::Http => self.http.call(request),
        }
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
