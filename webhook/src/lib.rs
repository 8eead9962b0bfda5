//! The multus-ipmgr admission webhook: the HTTPS server, the AdmissionReview handling,
//! offline manifest injection, certificate tooling and the reads of the
//! NetworkAttachmentDefinitions pods name. The injection decision itself is the pure
//! [`ipmgr_injector::plan`].

pub mod admission;
pub mod certs;
pub mod config;
pub mod kube_api;
pub mod managed;
pub mod manifest;
pub mod metrics;
pub mod network_definitions;
pub mod server;
pub mod tls;
