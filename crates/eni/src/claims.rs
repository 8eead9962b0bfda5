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

use crate::grants::{FLOATING_IP_CIDRS_ANNOTATION, Grants};
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

    /// Whether the pod's annotations mention `address`: recorded, or declared floating.
    pub fn mentions(&self, address: IpAddr) -> bool {
        self.recorded.contains(&address) || self.declares(address)
    }

    /// Whether the pod declares `address` floating (inside one of its floating CIDRs).
    pub fn declares(&self, address: IpAddr) -> bool {
        self.floating.iter().any(|net| net.contains(&address))
    }
}

/// A live pod whose claims are judged: `namespace/name`, its namespace, and its claims.
#[derive(Clone, Copy, Debug)]
pub struct Claimant<'a> {
    /// `namespace/name`.
    pub pod: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// What its annotations claim.
    pub claims: &'a Claims,
}

/// Why a pod may not have an address: the node agent's rules (invariant I1 of
/// docs/security.md, "Invariants": no pod gets an address a live pod of another namespace
/// holds or claims, unless a cluster admin granted that address to the pod's namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// Neither Multus' record of the pod nor its floating declaration has the address.
    Unclaimed,
    /// The pod declares it floating, but its namespace's grant does not cover it.
    NotGranted {
        /// The pod's namespace.
        namespace: String,
        /// What the namespace is granted, as text.
        grant: String,
    },
    /// Inside the floating addresses an admin granted to other namespaces.
    GrantedElsewhere {
        /// The pod's namespace.
        namespace: String,
        /// The namespaces whose grant covers it.
        namespaces: Vec<String>,
    },
    /// A live pod of another namespace claims it.
    OtherNamespace {
        /// The pod's namespace.
        namespace: String,
        /// That pod, `namespace/name`.
        pod: String,
    },
    /// Another node's Multus ENI holds it, and that node's pods could not be read: whether
    /// a pod of another namespace claims it is unknown, so it is not taken.
    Unverified {
        /// The ENI holding it, and its instance.
        holder: String,
        /// Why the holder's pods could not be read.
        error: String,
    },
}

impl ClaimRefusal {
    /// The metric label: `unclaimed`, `not_granted`, `granted_elsewhere`, `other_namespace`,
    /// `unverified`.
    pub fn label(&self) -> &'static str {
        match self {
            ClaimRefusal::Unclaimed => "unclaimed",
            ClaimRefusal::NotGranted { .. } => "not_granted",
            ClaimRefusal::GrantedElsewhere { .. } => "granted_elsewhere",
            ClaimRefusal::OtherNamespace { .. } => "other_namespace",
            ClaimRefusal::Unverified { .. } => "unverified",
        }
    }
}

impl fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimRefusal::Unclaimed => write!(
                f,
                "not an address Multus recorded for the pod ({NETWORK_STATUS_ANNOTATION}) nor one it declares in {FLOATING_IPS_ANNOTATION}; the node agent assigns only those: if the pod floats it, declare it in the pod's {FLOATING_IPS_ANNOTATION} annotation, inside its namespace's {FLOATING_IP_CIDRS_ANNOTATION} grant"
            ),
            ClaimRefusal::NotGranted { namespace, grant } => write!(
                f,
                "the pod declares it in {FLOATING_IPS_ANNOTATION}, but namespace {namespace} has {grant} in its {FLOATING_IP_CIDRS_ANNOTATION} annotation, which does not cover it; floating addresses are a cluster admin's to grant: kubectl annotate --overwrite namespace {namespace} {FLOATING_IP_CIDRS_ANNOTATION}=CIDR[,CIDR...]"
            ),
            ClaimRefusal::GrantedElsewhere {
                namespace,
                namespaces,
            } => write!(
                f,
                "it lies in the floating addresses a cluster admin granted to namespace {} ({FLOATING_IP_CIDRS_ANNOTATION}), not to {namespace}: keep that range out of this network's IPAM, or have an admin grant it to {namespace}",
                namespaces.join(", ")
            ),
            ClaimRefusal::OtherNamespace { namespace, pod } => write!(
                f,
                "pod {pod}, of another namespace, claims it (Multus recorded it for that pod, or it floats it under its namespace's grant): an address of another namespace's pod is never taken unless a cluster admin grants it to namespace {namespace} ({FLOATING_IP_CIDRS_ANNOTATION}); check the IPAM ranges of both namespaces' networks"
            ),
            ClaimRefusal::Unverified { holder, error } => write!(
                f,
                "{holder} holds it, and the agent cannot tell whether a pod of another namespace claims it ({error}); it is not taken until the agent can read that node's pods (RBAC list on nodes and pods); the next pass tries again"
            ),
        }
    }
}

impl Claimant<'_> {
    /// Whether the agent honours this pod's claim on `address`: Multus recorded it, or the
    /// pod declares it floating inside its namespace's grant.
    pub fn claims(&self, address: IpAddr, grants: &Grants) -> bool {
        self.claims.recorded.contains(&address)
            || (self.claims.declares(address) && grants.of(self.namespace).covers(address))
    }

    /// What this pod's claims keep from being released: its record, and its floating
    /// declarations inside its namespace's grant (`0.0.0.0/0` in a pod annotation protects
    /// nothing of its own).
    pub fn protected(&self, grants: &Grants) -> Vec<IpNet> {
        let grant = grants.of(self.namespace);
        let recorded = self
            .claims
            .recorded
            .iter()
            .map(|&address| IpNet::from(address));
        recorded
            .chain(
                self.claims
                    .floating
                    .iter()
                    .flat_map(|&declared| grant.within(declared)),
            )
            .collect()
    }

    /// Whether the pod may have `address`, given the grants and the `neighbours` whose
    /// claims count (the live pods of its node, or of the node whose ENI holds the address;
    /// the pod itself among them is ignored): claimed by the pod, and either inside its
    /// namespace's grant or recorded for it and neither granted to nor claimed by another
    /// namespace.
    pub fn entitled(
        &self,
        address: IpAddr,
        grants: &Grants,
        neighbours: &[Claimant<'_>],
    ) -> Result<(), ClaimRefusal> {
        let recorded = self.claims.recorded.contains(&address);
        if !recorded && !self.claims.declares(address) {
            return Err(ClaimRefusal::Unclaimed);
        }
        let grant = grants.of(self.namespace);
        if grant.covers(address) {
            return Ok(());
        }
        if !recorded {
            return Err(ClaimRefusal::NotGranted {
                namespace: self.namespace.to_owned(),
                grant: grant.to_string(),
            });
        }
        let elsewhere = grants.others_covering(self.namespace, address);
        if !elsewhere.is_empty() {
            return Err(ClaimRefusal::GrantedElsewhere {
                namespace: self.namespace.to_owned(),
                namespaces: elsewhere.into_iter().map(str::to_owned).collect(),
            });
        }
        match neighbours.iter().find(|neighbour| {
            neighbour.namespace != self.namespace && neighbour.claims(address, grants)
        }) {
            Some(other) => Err(ClaimRefusal::OtherNamespace {
                namespace: self.namespace.to_owned(),
                pod: other.pod.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The plan without the placements the pod is not entitled to ([`Claimant::entitled`]):
    /// each becomes a rejection saying why.
    pub fn restrict(&self, mut plan: Plan, grants: &Grants, neighbours: &[Claimant<'_>]) -> Plan {
        let refused: Vec<(Assignment, ClaimRefusal)> = plan
            .assignments()
            .filter_map(|assignment| {
                let refusal = self
                    .entitled(assignment.address, grants, neighbours)
                    .err()?;
                Some((assignment, refusal))
            })
            .collect();
        for (assignment, refusal) in refused {
            plan.reject(&assignment, RejectReason::Claim(refusal));
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
    fn a_pod_mentions_what_multus_recorded_and_what_it_declares_floating(
        #[case] address: &str,
        #[case] allowed: bool,
    ) {
        let claims = Claims::from_annotations(Some(RECORD), Some("10.0.1.100, 10.0.9.0/24"))
            .expect("claims");
        assert_eq!(claims.mentions(ip(address)), allowed, "{claims}");
        assert_eq!(claims.interfaces, vec!["net1".to_owned()]);
    }

    #[test]
    fn without_annotations_a_pod_claims_nothing() {
        let claims = Claims::from_annotations(None, None).expect("claims");
        assert_eq!(claims, Claims::default());
        assert!(!claims.mentions(ip("10.0.1.50")));
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

    /// A tenant-b pod on the node whose record has 10.0.1.60 and which floats 10.0.2.0/24
    /// (granted to tenant-b).
    fn neighbour_claims() -> Claims {
        Claims::from_annotations(
            Some(r#"[{"interface": "net1", "ips": ["10.0.1.60"]}]"#),
            Some("10.0.2.0/24"),
        )
        .expect("claims")
    }

    fn grants() -> Grants {
        let mut grants = Grants::default();
        grants.set("tenant-a", Some("10.0.9.0/24"));
        grants.set("tenant-b", Some("10.0.2.0/24"));
        grants
    }

    #[rstest]
    #[case::recorded("10.0.1.50", None)]
    #[case::floating_inside_the_grant("10.0.9.7", None)]
    #[case::recorded_and_granted("10.0.1.100", None)]
    #[case::not_claimed_at_all("10.0.1.51", Some("unclaimed"))]
    #[case::declared_outside_the_grant("10.0.8.1", Some("not_granted"))]
    #[case::declared_inside_another_namespaces_grant("10.0.2.5", Some("not_granted"))]
    #[case::recorded_but_claimed_by_another_namespaces_pod("10.0.1.60", Some("other_namespace"))]
    fn a_pod_is_entitled_to_its_record_and_its_granted_floating_addresses(
        #[case] address: &str,
        #[case] refused: Option<&str>,
    ) {
        let ours = Claims::from_annotations(
            Some(r#"[{"interface": "net1", "ips": ["10.0.1.50", "10.0.1.60", "10.0.1.100"]}]"#),
            // A pod author may declare anything: only the grant counts.
            Some("10.0.8.0/24,10.0.2.0/24,10.0.9.0/24"),
        )
        .expect("claims");
        let mut grants = grants();
        grants.set("tenant-a", Some("10.0.9.0/24,10.0.1.100/32"));
        let pod = Claimant {
            pod: "tenant-a/a",
            namespace: "tenant-a",
            claims: &ours,
        };
        let theirs = neighbour_claims();
        let neighbours = [
            pod,
            Claimant {
                pod: "tenant-b/b",
                namespace: "tenant-b",
                claims: &theirs,
            },
        ];
        let verdict = pod.entitled(ip(address), &grants, &neighbours);
        assert_eq!(
            verdict.as_ref().err().map(ClaimRefusal::label),
            refused,
            "{verdict:?}"
        );
    }

    #[test]
    fn an_address_granted_to_another_namespace_is_refused_even_when_recorded() {
        let ours = Claims::from_annotations(
            Some(r#"[{"interface": "net1", "ips": ["10.0.2.5"]}]"#),
            None,
        )
        .expect("claims");
        let pod = Claimant {
            pod: "tenant-a/a",
            namespace: "tenant-a",
            claims: &ours,
        };
        let refusal = pod
            .entitled(ip("10.0.2.5"), &grants(), &[])
            .expect_err("refused");
        assert_eq!(refusal.label(), "granted_elsewhere");
        let message = refusal.to_string();
        assert!(
            message.contains("tenant-b") && message.contains(FLOATING_IP_CIDRS_ANNOTATION),
            "{message}"
        );
    }

    #[test]
    fn a_pod_of_the_same_namespace_does_not_block_a_recorded_address() {
        let ours = neighbour_claims();
        let theirs = neighbour_claims();
        let pod = Claimant {
            pod: "tenant-b/new",
            namespace: "tenant-b",
            claims: &ours,
        };
        let same = Claimant {
            pod: "tenant-b/old",
            namespace: "tenant-b",
            claims: &theirs,
        };
        assert_eq!(pod.entitled(ip("10.0.1.60"), &grants(), &[same]), Ok(()));
    }

    #[test]
    fn a_refusal_for_an_ungranted_floating_address_names_both_annotations_and_the_fix() {
        let ours = Claims::from_annotations(None, Some("10.0.1.60")).expect("claims");
        let pod = Claimant {
            pod: "tenant-c/a",
            namespace: "tenant-c",
            claims: &ours,
        };
        let message = pod
            .entitled(ip("10.0.1.60"), &grants(), &[])
            .expect_err("no grant")
            .to_string();
        for named in [
            FLOATING_IPS_ANNOTATION,
            FLOATING_IP_CIDRS_ANNOTATION,
            "no grant",
            "kubectl annotate --overwrite namespace tenant-c",
        ] {
            assert!(message.contains(named), "{message} names {named}");
        }
    }

    #[rstest]
    #[case::the_record_and_the_grant("tenant-b", &["10.0.1.60/32", "10.0.2.0/24"])]
    #[case::the_record_only_without_a_grant("tenant-c", &["10.0.1.60/32"])]
    fn a_pod_protects_its_record_and_its_declarations_inside_the_grant(
        #[case] namespace: &str,
        #[case] protected: &[&str],
    ) {
        let claims = Claims::from_annotations(
            Some(r#"[{"interface": "net1", "ips": ["10.0.1.60"]}]"#),
            Some("0.0.0.0/0,::/0"),
        )
        .expect("claims");
        let pod = Claimant {
            pod: "x/p",
            namespace,
            claims: &claims,
        };
        let expected: Vec<IpNet> = protected
            .iter()
            .map(|text| text.parse().expect("CIDR"))
            .collect();
        assert_eq!(pod.protected(&grants()), expected);
    }

    #[test]
    fn restrict_rejects_each_placement_the_pod_is_not_entitled_to() {
        use crate::{MacAddr, MatchedBy, Placement, PodAddress, Rejection};
        let placement = |address: &str| Placement {
            address: PodAddress {
                interface: "net1".to_owned(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                address: ip(address),
                prefix_len: 24,
            },
            eni_id: "eni-1".to_owned(),
            matched_by: MatchedBy::Mac,
            prefix: None,
        };
        let planned = Plan {
            placements: vec![placement("10.0.1.50"), placement("10.0.1.51")],
            ..Plan::default()
        };
        let claims = Claims::from_annotations(
            Some(r#"[{"interface": "net1", "ips": ["10.0.1.50"]}]"#),
            None,
        )
        .expect("claims");
        let pod = Claimant {
            pod: "tenant-a/a",
            namespace: "tenant-a",
            claims: &claims,
        };
        let restricted = pod.restrict(planned, &grants(), &[]);
        assert_eq!(restricted.placements, vec![placement("10.0.1.50")]);
        assert_eq!(
            restricted.rejections,
            vec![Rejection {
                address: placement("10.0.1.51").address,
                reason: RejectReason::Claim(ClaimRefusal::Unclaimed),
            }]
        );
    }
}
