//! What ends the node agent: only what waiting cannot fix.

use crate::agent::netns::ScanError;
use crate::aws::ProxyError;

/// Why the agent stopped; one line for the pod's termination log.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The metrics endpoint could not listen.
    #[error(
        "cannot serve metrics on {address}: {source}; set --metrics-listen (IPMGR_METRICS_LISTEN) to a free address"
    )]
    Metrics {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The pods' network namespaces cannot be read (a missing directory at start-up, or
    /// setns refused).
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The pod API is on, but the agent does not know its node's name.
    #[error(
        "the pod API needs the node's name to list the node's pods: set NODE_NAME (the DaemonSet sets it from spec.nodeName through the downward API), or turn the pod API off with --pod-listen off (IPMGR_POD_LISTEN=off)"
    )]
    NodeName,
    /// The pod API could not listen.
    #[error(
        "cannot serve the pod API on {address}: {source}; set --pod-listen (IPMGR_POD_LISTEN) to a free address"
    )]
    PodListen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A proxy variable is malformed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The termination signal handler could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}
