//! What a pod may have the node agent assign: the addresses Multus recorded for it when it
//! attached the pod's networks (the `k8s.v1.cni.cncf.io/network-status` annotation, written
//! by Multus during CNI ADD, before any init container runs), and the addresses or CIDRs the
//! pod's spec declares as floating (`multus-ipmgr.io/floating-ips`: keepalived/VRRP virtual
//! addresses, which appear on an interface only later). Anything else a pod configures is
//! not its to claim: a compromised container must not pull another workload's address onto
//! this node.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::{Assignment, Plan, RejectReason};

/// The annotation in which Multus records each attachment's interface and addresses.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// The annotation in which a pod declares the addresses or CIDRs it may float (comma list).
pub const FLOATING_IPS_ANNOTATION: &str = "multus-ipmgr.io/floating-ips";

/// The addresses a pod may claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The addresses of the pod's non-default networks in its network-status record.
    pub recorded: Vec<IpAddr>,
    /// The floating addresses and CIDRs it declares.
    pub floating: Vec<IpNet>,
    /// The interfaces of the pod's non-default networks, as Multus named them.
    pub interfaces: Vec<String>,
}

/// A pod annotation that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// The network-status record is not Multus' JSON list.
    #[error(
        "the pod's {NETWORK_STATUS_ANNOTATION} annotation does not parse ({reason}); it is Multus' record of the pod's attachments and should not be edited by hand"
    )]
    NetworkStatus {
        /// Why.
        reason: String,
    },
    /// An entry of the floating list is neither an address nor a CIDR.
    #[error(
        "the pod's {FLOATING_IPS_ANNOTATION} annotation has {entry:?}, which is neither an IP address nor a CIDR; list addresses or CIDRs separated by commas, e.g. \"10.0.1.100,2600:1f14::100/128\""
    )]
    FloatingIps {
        /// The entry.
        entry: String,
    },
}

/// One attachment in Multus' network-status record (multus-cni `NetworkStatus`); only the
/// fields the claims need.
#[derive(Deserialize)]
struct NetworkStatus {
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    default: bool,
}

impl Claims {
    /// The claims of a pod with these annotation values (absent annotations claim nothing).
    /// The cluster default network's addresses (the VPC CNI's) are never claims.
    pub fn from_annotations(
        network_status: Option<&str>,
        floating_ips: Option<&str>,
    ) -> Result<Claims, ClaimsError> {
        let mut claims = Claims::default();
        if let Some(record) = network_status {
            let attachments: Vec<NetworkStatus> =
                serde_json::from_str(record).map_err(|error| ClaimsError::NetworkStatus {
                    reason: error.to_string(),
                })?;
            for attachment in attachments.iter().filter(|a| !a.default) {
                claims.interfaces.extend(attachment.interface.clone());
                for ip in &attachment.ips {
                    // Multus writes bare addresses; a CIDR form names its address too.
                    let address = ip
                        .parse::<IpAddr>()
                        .or_else(|_| ip.parse::<IpNet>().map(|net| net.addr()))
                        .map_err(|_| ClaimsError::NetworkStatus {
                            reason: format!("{ip:?} is not an IP address"),
                        })?;
                    claims.recorded.push(address);
                }
            }
        }
        for entry in floating_ips
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| ClaimsError::FloatingIps {
                    entry: entry.to_owned(),
                })?;
            claims.floating.push(net);
        }
        Ok(claims)
    }

    /// Whether the pod may claim `address`.
    pub fn allows(&self, address: IpAddr) -> bool {
        self.recorded.contains(&address) || self.floating.iter().any(|net| net.contains(&address))
    }

    /// The plan without the placements the pod may not claim: each becomes a rejection
    /// naming the annotations.
    pub fn restrict(&self, mut plan: Plan) -> Plan {
        let unclaimed: Vec<Assignment> = plan
            .assignments()
            .filter(|assignment| !self.allows(assignment.address))
            .collect();
        for assignment in &unclaimed {
            plan.reject(assignment, RejectReason::Unclaimed);
        }
        plan
    }
}

impl fmt::Display for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recorded {:?}, floating {:?}",
            self.recorded, self.floating
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use pretty_assertions::assert_eq;
    use rstest::rstest;

    use super::*;

    const RECORD: &str = r#"[
      {"name": "aws-cni", "interface": "eth0", "ips": ["192.168.5.10"], "default": true, "dns": {}},
      {"name": "default/ipvlan-eth1", "interface": "net1", "ips": ["10.0.1.50", "2600:1f14::50"], "mac": "02:00:00:00:01:01", "dns": {}}
    ]"#;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[rstest]
    #[case::recorded_ipv4("10.0.1.50", true)]
    #[case::recorded_ipv6("2600:1f14::50", true)]
    #[case::the_default_networks_address("192.168.5.10", false)]
    #[case::inside_a_floating_cidr("10.0.9.7", true)]
    #[case::a_floating_address("10.0.1.100", true)]
    #[case::anything_else("10.0.1.51", false)]
    fn a_pod_claims_what_multus_recorded_and_what_it_declares_floating(
        #[case] address: &str,
        #[case] allowed: bool,
    ) {
        let claims = Claims::from_annotations(Some(RECORD), Some("10.0.1.100, 10.0.9.0/24"))
            .expect("claims");
        assert_eq!(claims.allows(ip(address)), allowed, "{claims}");
        assert_eq!(claims.interfaces, vec!["net1".to_owned()]);
    }

    #[test]
    fn without_annotations_a_pod_claims_nothing() {
        let claims = Claims::from_annotations(None, None).expect("claims");
        assert_eq!(claims, Claims::default());
        assert!(!claims.allows(ip("10.0.1.50")));
    }

    #[rstest]
    #[case::not_json(Some("net1"), None, "k8s.v1.cni.cncf.io/network-status")]
    #[case::not_an_address(Some(r#"[{"ips": ["ten"]}]"#), None, "\"ten\"")]
    #[case::bad_floating_entry(
        None,
        Some("10.0.1.100,eth1"),
        "multus-ipmgr.io/floating-ips annotation has \"eth1\""
    )]
    fn an_annotation_that_does_not_parse_is_an_error_naming_it(
        #[case] record: Option<&str>,
        #[case] floating: Option<&str>,
        #[case] named: &str,
    ) {
        let error = Claims::from_annotations(record, floating).expect_err("invalid");
        assert!(error.to_string().contains(named), "{error}");
    }
}
