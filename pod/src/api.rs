//! The pod API between the injected pod client and its node's agent (agent backend): one
//! request, "make my addresses routable", answered once the agent knows. The pod says only
//! why it asks; the agent finds the pod by the connection's source address and reads its
//! addresses itself, never from the request.

use std::net::IpAddr;

use ipmgr_eni::Reason;
use serde::{Deserialize, Serialize};

/// The one path of the pod API.
pub const ROUTABLE_PATH: &str = "/v1/routable";

/// What the pod sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutableRequest {
    /// Why it asks (the pod loop's reason).
    pub reason: Reason,
}

/// One address the agent made (or found) routable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    /// The address.
    pub address: IpAddr,
    /// The pod's interface carrying it.
    pub interface: String,
    /// The ENI EC2 has it on.
    pub eni: String,
}

/// The agent's answer to a pod it identified (HTTP 200): routable when `failures` is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutableAnswer {
    /// The pod, `namespace/name`.
    pub pod: String,
    /// Its managed addresses, each on its ENI in EC2.
    pub routable: Vec<Routed>,
    /// Addresses left alone on purpose (not Multus addresses, not VPC addresses), and why.
    pub left_alone: Vec<String>,
    /// Addresses left unroutable, each with why and what to do.
    pub failures: Vec<String>,
}

/// The agent's answer to a request it could not take (4xx, 5xx): why, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why, naming the thing and what to do.
    pub error: String,
}
