use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::{Eni, NodeFacts, PodAddress};

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

/// An address on an ENI: what was assigned, or what to confirm or release.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Assignment {
    /// The ENI.
    pub eni_id: String,
    /// The address.
    pub address: IpAddr,
}

/// The EC2 work for one ENI: at most one IPv4 and one IPv6 assign call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EniChange {
    /// The ENI.
    pub eni_id: String,
    /// IPv4 addresses to assign (AssignPrivateIpAddresses with AllowReassignment).
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 addresses to assign (after unassigning them from their current holder).
    pub ipv6: Vec<Ipv6Addr>,
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
    /// The EC2 work: placed addresses their ENI does not hold yet, one entry per ENI.
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
    let mut changes: BTreeMap<(u32, &str), EniChange> = BTreeMap::new();
    for placement in &result.placements {
        let Some(eni) = node.eni(&placement.eni_id) else {
            continue;
        };
        if eni.holds(placement.address.address) {
            continue;
        }
        let change = changes
            .entry((eni.device_number, eni.id.as_str()))
            .or_insert_with(|| EniChange {
                eni_id: eni.id.clone(),
                ..EniChange::default()
            });
        match placement.address.address {
            IpAddr::V4(v4) => change.ipv4.push(v4),
            IpAddr::V6(v6) => change.ipv6.push(v6),
        }
    }
    result.changes = changes
        .into_values()
        .map(|mut change| {
            change.ipv4.sort_unstable();
            change.ipv6.sort_unstable();
            change
        })
        .collect();
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

/// The planned assignments that `node` (read again from metadata) does not show yet.
pub fn unconfirmed(plan: &Plan, node: &NodeFacts) -> Vec<Assignment> {
    plan.assignments()
        .filter(|assignment| {
            node.eni(&assignment.eni_id)
                .is_none_or(|eni| !eni.holds(assignment.address))
        })
        .collect()
}

/// What to unassign from one ENI on shutdown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// The ENI.
    pub eni_id: String,
    /// IPv4 addresses to unassign.
    pub ipv4: Vec<Ipv4Addr>,
    /// IPv6 addresses to unassign.
    pub ipv6: Vec<Ipv6Addr>,
}

/// Of the addresses this helper assigned, those their ENI still holds, grouped per ENI; an
/// address another node took meanwhile, and an ENI's primary address, are left alone.
pub fn release(assigned: &[Assignment], node: &NodeFacts) -> Vec<Release> {
    let mut releases: BTreeMap<&str, Release> = BTreeMap::new();
    for assignment in assigned {
        let Some(eni) = node.eni(&assignment.eni_id) else {
            continue;
        };
        if !eni.holds(assignment.address)
            || IpAddr::from(eni.primary_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED))
                == assignment.address
        {
            continue;
        }
        let entry = releases.entry(eni.id.as_str()).or_insert_with(|| Release {
            eni_id: eni.id.clone(),
            ..Release::default()
        });
        match assignment.address {
            IpAddr::V4(v4) if !entry.ipv4.contains(&v4) => entry.ipv4.push(v4),
            IpAddr::V6(v6) if !entry.ipv6.contains(&v6) => entry.ipv6.push(v6),
            _ => {}
        }
    }
    releases.into_values().collect()
}
