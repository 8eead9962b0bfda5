use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Assignment, Eni, EniChange, NodeFacts, PodAddress};

/// What the planner may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Allow assigning to the primary ENI (device number 0), which the VPC CNI owns.
    pub allow_primary_eni: bool,
    /// When not empty, only addresses inside one of these networks are ever assigned;
    /// others are reported and skipped.
    pub allowed: Vec<IpNet>,
}

/// How an address found its ENI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    /// The pod interface carries the ENI's MAC (ipvlan child of that ENI).
    Mac,
    /// No ENI has the interface's MAC; exactly one ENI's subnet contains the address.
    Subnet,
}

/// An address and the ENI it belongs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The pod's address.
    pub address: PodAddress,
    /// The ENI it belongs on.
    pub eni_id: String,
    /// How the ENI was chosen.
    pub matched_by: MatchedBy,
}

/// Why an address is not assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Outside the allow-list: skipped on purpose, not a failure.
    NotAllowed,
    /// No ENI has the interface's MAC and no ENI subnet contains the address.
    NoEni,
    /// No ENI has the interface's MAC and several ENI subnets contain the address.
    Ambiguous {
        /// The candidate ENIs.
        enis: Vec<String>,
    },
    /// The address belongs on the primary ENI, which is off limits.
    PrimaryEni {
        /// The primary ENI.
        eni: String,
    },
    /// The interface carries the ENI's MAC, but the address is outside that ENI's subnet.
    OutsideSubnet {
        /// The ENI.
        eni: String,
    },
}

/// An address that will not be assigned, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The pod's address.
    pub address: PodAddress,
    /// Why.
    pub reason: RejectReason,
}

impl Rejection {
    /// Whether the address is left unroutable against the user's wish (everything but the
    /// allow-list).
    pub fn is_failure(&self) -> bool {
        self.reason != RejectReason::NotAllowed
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let PodAddress {
            interface,
            mac,
            address,
            ..
        } = &self.address;
        write!(f, "{address} on {interface} ({mac}): ")?;
        match &self.reason {
            RejectReason::NotAllowed => f.write_str("outside the allowed CIDRs, skipped"),
            RejectReason::NoEni => f.write_str(
                "no node ENI has this MAC and no ENI subnet contains the address; attach an ENI in its subnet or exclude it with --allow-cidr",
            ),
            RejectReason::Ambiguous { enis } => write!(
                f,
                "no node ENI has this MAC and the subnets of several ENIs contain the address ({}); use ipvlan on the intended ENI so its MAC decides",
                enis.join(", ")
            ),
            RejectReason::PrimaryEni { eni } => write!(
                f,
                "belongs on the primary ENI {eni} (device 0), which the VPC CNI owns; use a secondary ENI or --allow-primary-eni"
            ),
            RejectReason::OutsideSubnet { eni } => write!(
                f,
                "the interface is on ENI {eni}, but the address is outside that ENI's subnet, so EC2 would refuse it; fix the IPAM range"
            ),
        }
    }
}

/// The decision for every pod address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every accepted address with its ENI.
    pub placements: Vec<Placement>,
    /// The EC2 work: placed addresses their ENI does not hold yet, one entry per ENI in
    /// device order. IPv4 goes out with AllowReassignment; IPv6 is first unassigned from its
    /// current holder.
    pub changes: Vec<EniChange>,
    /// Addresses that will not be assigned.
    pub rejections: Vec<Rejection>,
}

impl Plan {
    /// The rejections that leave an address unroutable.
    pub fn failures(&self) -> impl Iterator<Item = &Rejection> {
        self.rejections
            .iter()
            .filter(|rejection| rejection.is_failure())
    }

    /// Every (ENI, address) pair the plan places.
    pub fn assignments(&self) -> impl Iterator<Item = Assignment> + '_ {
        self.placements.iter().map(|placement| Assignment {
            eni_id: placement.eni_id.clone(),
            address: placement.address.address,
        })
    }
}

/// Decides, for every pod address, the ENI it belongs on and the EC2 calls needed.
///
/// An address goes to the ENI whose MAC its interface carries; failing that, to the one ENI
/// whose subnet contains it. The primary ENI is used only when allowed. Addresses their ENI
/// already holds cost nothing.
pub fn plan(node: &NodeFacts, addresses: &[PodAddress], options: &PlanOptions) -> Plan {
    let mut result = Plan::default();
    let mut seen = Vec::new();
    for address in addresses {
        if seen.contains(&address.address) {
            continue;
        }
        seen.push(address.address);
        match place(node, address, options) {
            Ok(placement) => result.placements.push(placement),
            Err(reason) => result.rejections.push(Rejection {
                address: address.clone(),
                reason,
            }),
        }
    }
    result.changes = EniChange::group(unconfirmed(&result.assignments().collect::<Vec<_>>(), node));
    result
        .changes
        .sort_by_key(|change| node.eni(&change.eni_id).map(|eni| eni.device_number));
    result
}

fn place(
    node: &NodeFacts,
    address: &PodAddress,
    options: &PlanOptions,
) -> Result<Placement, RejectReason> {
    let ip = address.address;
    if !options.allowed.is_empty() && !options.allowed.iter().any(|net| net.contains(&ip)) {
        return Err(RejectReason::NotAllowed);
    }
    let usable = |eni: &Eni| eni.device_number != 0 || options.allow_primary_eni;
    let placed = |eni: &Eni, matched_by| Placement {
        address: address.clone(),
        eni_id: eni.id.clone(),
        matched_by,
    };
    if let Some(eni) = node.enis.iter().find(|eni| eni.mac == address.mac) {
        return if !usable(eni) {
            Err(RejectReason::PrimaryEni {
                eni: eni.id.clone(),
            })
        } else if !eni.subnet_contains(ip) {
            Err(RejectReason::OutsideSubnet {
                eni: eni.id.clone(),
            })
        } else {
            Ok(placed(eni, MatchedBy::Mac))
        };
    }
    let containing: Vec<&Eni> = node
        .enis
        .iter()
        .filter(|eni| eni.subnet_contains(ip))
        .collect();
    let candidates: Vec<&Eni> = containing
        .iter()
        .copied()
        .filter(|eni| usable(eni))
        .collect();
    match (candidates.as_slice(), containing.first()) {
        ([eni], _) => Ok(placed(eni, MatchedBy::Subnet)),
        ([], Some(primary)) => Err(RejectReason::PrimaryEni {
            eni: primary.id.clone(),
        }),
        ([], None) => Err(RejectReason::NoEni),
        (several, _) => Err(RejectReason::Ambiguous {
            enis: several.iter().map(|eni| eni.id.clone()).collect(),
        }),
    }
}

/// Of `expected`, the assignments that `node` (as metadata shows it) does not hold.
pub fn unconfirmed(expected: &[Assignment], node: &NodeFacts) -> Vec<Assignment> {
    expected
        .iter()
        .filter(|assignment| {
            node.eni(&assignment.eni_id)
                .is_none_or(|eni| !eni.holds(assignment.address))
        })
        .cloned()
        .collect()
}

/// Of the addresses this helper assigned, those their ENI still holds, grouped per ENI; an
/// address another node took meanwhile, and an ENI's primary address, are left alone.
pub fn release(assigned: &[Assignment], node: &NodeFacts) -> Vec<EniChange> {
    let ours = assigned.iter().filter(|assignment| {
        node.eni(&assignment.eni_id).is_some_and(|eni| {
            eni.holds(assignment.address)
                && eni.primary_ipv4().map(IpAddr::V4) != Some(assignment.address)
        })
    });
    EniChange::group(ours.cloned())
}
