//! What ends the node agent: only what waiting cannot fix.

use crate::agent::netns::ScanError;

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
    /// The termination signal handler could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}
