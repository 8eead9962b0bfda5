//! What can go wrong for the direct backend: per address ([`Failure`], a pass's) and for
//! an ask ([`DirectError`]).

use ipmgr_pod::netlink::NetlinkError;

use crate::aws::{Ec2Failure, MetadataError, ProxyError};
pub use crate::place::Failure;

/// Why an ask of the direct backend failed; each variant is one line for the pod's
/// termination log.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
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
    /// `plan` asked of the agent backend.
    #[error(
        "plan reads EC2 itself: run it with the direct backend (unset IPMGR_AGENT_URL, with AWS credentials), or look at the node agent's log"
    )]
    PlanNeedsDirect,
    /// Some addresses could not be made routable.
    #[error("{} address(es) not routable: {}", .0.len(), join(.0))]
    Unroutable(Vec<Failure>),
    /// Releasing addresses on exit failed; they stay assigned to their ENI.
    #[error(
        "release on exit failed, the addresses stay assigned: {}; unassign them by hand, let the node agent release them, or let the next pod that uses them take them",
        join(.0)
    )]
    Release(Vec<Ec2Failure>),
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
