//! The multus-ipmgr admission webhook: the HTTPS server, the AdmissionReview handling,
//! offline manifest injection and certificate tooling. The injection decision itself is the
//! pure [`ipmgr_injector::plan`].

pub mod admission;
pub mod certs;
pub mod config;
pub mod managed;
pub mod manifest;
pub mod metrics;
pub mod server;
pub mod tls;
