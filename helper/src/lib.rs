//! `ipmgr-helper`: two programs over shared adapters.
//!
//! - [`aws`]: the AWS adapters (instance metadata and EC2 through the AWS SDK), and
//!   [`netlink`]: the pod's addresses; they import neither program.
//! - [`place`]: one pass over a pod's addresses (plan, vet against EC2, assign), which the
//!   pod helper runs itself with the direct backend and the agent runs for its pods.
//! - [`pod`]: the pod helper the webhook injects (`init`, `sidecar`, `plan`).
//! - [`agent`]: the node agent (a DaemonSet), which gives back the addresses of pods that
//!   are gone.
//!
//! `pod` and `agent` never import each other; the decisions they share live in
//! [`ipmgr_eni`]. [`config`] holds every flag.

pub mod agent;
pub mod aws;
pub mod config;
#[cfg(test)]
pub(crate) mod fakes;
pub mod netlink;
pub mod place;
pub mod pod;
pub mod pod_api;
