//! The `ipmgr-helper` adapters and run loop: instance metadata and EC2 through the AWS SDK,
//! the pod's addresses through netlink, and the pure planning of [`ipmgr_eni`] in between.

pub mod config;
pub mod ec2;
pub mod metadata;
pub mod netlink;
pub mod run;
