//! The `ipmgr-helper` adapters and modes: instance metadata and EC2 through the AWS SDK,
//! the pod's addresses through netlink, and the pure planning of [`ipmgr_eni`] in between.
//!
//! [`connect`] builds a [`Helper`] (the adapters); [`pass`] is one assignment pass (plan,
//! EC2, confirmation) and `init`; [`sidecar`] the loop that follows address changes;
//! [`release`] gives back on exit what the helper assigned; [`agent`] is the node agent,
//! which gives back the addresses of pods that are gone.

pub mod agent;
pub mod config;
pub mod connect;
pub mod ec2;
pub mod failure;
pub mod metadata;
pub mod netlink;
pub mod pass;
pub mod release;
pub mod sidecar;

pub use failure::{Failure, RunError};
pub use pass::{Helper, PassReport};
