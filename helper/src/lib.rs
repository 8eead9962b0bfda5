//! `ipmgr-helper`: the node agent and the direct backend, over shared adapters.
//!
//! - [`aws`]: the AWS adapters (instance metadata and EC2 through the AWS SDK), and
//!   [`netlink`]: the node's side of netlink; they import neither program.
//! - [`place`]: one pass over a pod's addresses (plan, vet against EC2, assign), which the
//!   direct backend runs in the pod and the agent runs for its pods.
//! - [`release`]: releasing an ENI's addresses (batches, splits, a time bound).
//! - [`direct`]: the direct backend's side of the pod loop's seam ([`ipmgr_pod::Routing`]);
//!   the loop itself (`init`, `sidecar`) and the agent backend's side are `ipmgr_pod`'s.
//! - [`agent`]: the node agent (a DaemonSet): the pod API, and the release of the addresses
//!   of pods that are gone.
//!
//! `direct` and `agent` never import each other; the decisions they share live in
//! [`ipmgr_eni`]. [`config`] holds every flag.

pub mod agent;
pub mod aws;
pub mod config;
pub mod direct;
#[cfg(test)]
pub(crate) mod fakes;
pub mod netlink;
pub mod place;
pub mod release;
#[cfg(test)]
mod scenarios;
