//! What can go wrong for the pod helper: per address ([`Failure`], a pass's) and for the
//! whole run ([`PodError`]).

use std::time::Duration;

use crate::aws::{Ec2Failure, MetadataError, ProxyError};
use crate::netlink::NetlinkError;
pub use crate::place::Failure;

/// Why a mode ended unsuccessfully; each variant is one line for the pod's termination log.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A proxy variable is malformed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// Instance metadata failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// EC2 could not be read (the plan needs the node's ENIs and who holds the addresses).
    #[error("cannot read EC2: {0}")]
    Ec2(#[from] Ec2Failure),
    /// No address appeared in time.
    #[error(
        "no address on the pod's interfaces besides {primary} after {waited:?} (found {found}, waiting for {expected}); check the Multus network attachment, or raise --wait-seconds"
    )]
    NoAddresses {
        /// The excluded primary interface.
        primary: String,
        /// How long it waited.
        waited: Duration,
        /// How many it found.
        found: usize,
        /// How many it waited for.
        expected: usize,
    },
    /// The agent backend: the agent could not be asked, or refused.
    #[error(transparent)]
    Agent(#[from] super::agent_client::AskError),
    /// The agent backend: the agent's URL does not parse.
    #[error(transparent)]
    AgentUrl(#[from] super::agent_client::InvalidAgentUrl),
    /// The agent backend: the agent says some addresses are not routable.
    #[error("the node agent says {} address(es) are not routable: {}", .0.len(), .0.join("; "))]
    AgentUnroutable(Vec<String>),
    /// `plan` asked of the agent backend.
    #[error(
        "plan reads EC2 itself: run it with the direct backend (unset IPMGR_AGENT_URL, with AWS credentials), or look at the node agent's log"
    )]
    PlanNeedsDirect,
    /// Some addresses could not be made routable.
    #[error("{} address(es) not routable: {}", .0.len(), join(.0))]
    Unroutable(Vec<Failure>),
    /// Giving back addresses on exit failed; they stay assigned to their ENI.
    #[error(
        "release on exit failed, the addresses stay assigned: {}; unassign them by hand, let the node agent give them back, or let the next pod that uses them take them",
        join(.0)
    )]
    GiveBack(Vec<Ec2Failure>),
    /// The termination signal handler could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
    /// The ready file could not be written.
    #[error(
        "cannot write the ready file {path}: {source}; mount a writable emptyDir there (the webhook does in native-sidecar mode)"
    )]
    ReadyFile {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
