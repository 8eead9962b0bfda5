//! `ipmgr-pod`: the pod side of multus-ipmgr.
//!
//! - [`run`]: the one pod-side loop (`init`, `sidecar`), over the pod's addresses
//!   ([`netlink`]) and one seam, [`Routing`]: "make the pod routable for this reason".
//! - [`AgentRouting`]: the agent backend's side of that seam, which asks the node agent
//!   over the pod API ([`api`], [`agent_client`]). The direct backend's lives in
//!   `ipmgr-helper`, which runs the same loop.
//! - [`settings`]: the flags; [`process`]: the edge both binaries share; `main.rs`: the
//!   thin client the webhook injects with the agent backend. No AWS SDK, no Kubernetes
//!   client, no TLS.

pub mod agent_client;
pub mod api;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod netlink;
pub mod process;
pub mod routing;
pub mod run;
pub mod settings;
#[cfg(test)]
mod tests;

pub use error::RunError;
pub use routing::{AgentError, AgentRouting, Ask, Routing};
pub use settings::{PodIdentity, PodSettings};
