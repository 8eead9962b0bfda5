use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Assignment, Eni, EniChange, Holder, NodeFacts, NotMultus, PodAddress};

/// The VPC CNI's own interfaces in a pod: `v4if0` (IPv4 egress on IPv6 clusters, an address
/// of 169.254.172.0/22) and `v6if0` (IPv6 egress on IPv4 clusters, fd00::ac:0/118).
pub const VPC_CNI_INTERFACES: [&str; 2] = ["v4if0", "v6if0"];

/// Which of the pod's interfaces are its Multus interfaces, the ones the helper manages
/// (the primary interface never is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MultusInterfaces {
    /// Unknown (no word from the webhook): every interface but the VPC CNI's `v4if0`/`v6if0`.
    #[default]
    Any,
    /// Only these (every Multus network of the pod names its interface, or Multus recorded
    /// the names).
    Named(Vec<String>),
    /// These, and any other interface that carries the MAC of an ENI of the node the helper
    /// may use (a Multus ENI, or the primary one with
    /// [`allow_primary_eni`](PlanOptions::allow_primary_eni)): an ipvlan child shares its
    /// ENI's MAC. For pods with networks that name no interface, which Multus numbers
    /// `net<idx>` counting the cluster's `defaultNetworks` too, so their names cannot be
    /// known in advance. Another interface (a bridge, a macvlan with a MAC of its own) is
    /// left alone; an interface admitted by its MAC only goes to that MAC's ENI, never to an
    /// ENI found by subnet.
    NamedOrByMac(Vec<String>),
}

/// What the planner may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// The pod's primary interface, the VPC CNI's: never managed.
    pub primary_interface: String,
    /// The pod's Multus interfaces: the only ones managed.
    pub interfaces: MultusInterfaces,
    /// Allow assigning to the primary ENI, which the VPC CNI owns.
    pub allow_primary_eni: bool,
    /// When not empty, only addresses inside one of these networks are ever assigned;
    /// others are reported and skipped.
    pub allowed: Vec<IpNet>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            primary_interface: "eth0".to_owned(),
            interfaces: MultusInterfaces::Any,
            allow_primary_eni: false,
            allowed: Vec::new(),
        }
    }
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
    /// The ENI's delegated prefix that contains the address: routed without an assignment.
    pub prefix: Option<IpNet>,
}

/// Why an address is not assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// On the pod's primary interface, the VPC CNI's: left alone.
    PrimaryInterface,
    /// On `v4if0`/`v6if0`, the VPC CNI's egress interfaces: left alone.
    VpcCniInterface,
    /// On an interface that is not one of the pod's Multus interfaces: left alone.
    NotMultusInterface,
    /// A link-local address (169.254.0.0/16, fe80::/10): never a VPC address.
    LinkLocal,
    /// No ENI has the interface's MAC and no ENI subnet contains the address: not a VPC
    /// address (a bridge or macvlan network of the cluster's own), left alone.
    NotVpc,
    /// Outside the allow-list: skipped on purpose.
    NotAllowed,
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
    /// The address lies in a prefix delegated to another ENI of the node.
    OtherEnisPrefix {
        /// The ENI the prefix is delegated to.
        eni: String,
        /// The prefix.
        prefix: IpNet,
    },
    /// The ENI it belongs on is not a Multus ENI.
    NotMultusEni {
        /// The ENI.
        eni: String,
        /// Why not.
        why: NotMultus,
    },
    /// EC2 has the address on an ENI that is not a Multus ENI: another workload's.
    HeldByOther {
        /// The ENI that holds it.
        holder: Holder,
    },
    /// The pod may not have the address: the node agent assigns only what a pod is
    /// entitled to ([`crate::Claimant::entitled`]).
    Claim(crate::ClaimRefusal),
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
    /// Whether the address is left unroutable against the user's wish; the others are
    /// addresses the helper leaves alone on purpose (not its business, or not allowed).
    pub fn is_failure(&self) -> bool {
        !matches!(
            self.reason,
            RejectReason::PrimaryInterface
                | RejectReason::VpcCniInterface
                | RejectReason::NotMultusInterface
                | RejectReason::LinkLocal
                | RejectReason::NotVpc
                | RejectReason::NotAllowed
        )
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
            RejectReason::PrimaryInterface => {
                f.write_str("the pod's primary interface, the VPC CNI's: left alone")
            }
            RejectReason::VpcCniInterface => {
                f.write_str("an egress interface of the VPC CNI: left alone")
            }
            RejectReason::NotMultusInterface => f.write_str(
                "not one of the pod's Multus interfaces (not named in IPMGR_INTERFACES, nor on the MAC of a Multus ENI with IPMGR_INTERFACES_BY_MAC): left alone",
            ),
            RejectReason::LinkLocal => f.write_str("a link-local address: left alone"),
            RejectReason::NotVpc => f.write_str(
                "no node ENI has this MAC and no ENI subnet contains the address: not a VPC address, left alone",
            ),
            RejectReason::NotAllowed => f.write_str("outside the allowed CIDRs, skipped"),
            RejectReason::Ambiguous { enis } => write!(
                f,
                "no node ENI has this MAC and the subnets of several ENIs contain the address ({}); use ipvlan on the intended ENI so its MAC decides",
                enis.join(", ")
            ),
            RejectReason::PrimaryEni { eni } => write!(
                f,
                "belongs on the primary ENI {eni}, which the VPC CNI owns; use a Multus ENI or --allow-primary-eni"
            ),
            RejectReason::OutsideSubnet { eni } => write!(
                f,
                "the interface is on ENI {eni}, but the address is outside that ENI's subnet, so EC2 would refuse it; fix the IPAM range"
            ),
            RejectReason::OtherEnisPrefix { eni, prefix } => write!(
                f,
                "lies in prefix {prefix}, delegated to ENI {eni}, and an address of a prefix cannot move on its own; keep it out of the IPAM range or use ipvlan on {eni}"
            ),
            RejectReason::NotMultusEni { eni, why } => write!(f, "ENI {eni} {why}"),
            RejectReason::HeldByOther { holder } => write!(f, "{holder}"),
            RejectReason::Claim(refusal) => write!(f, "{refusal}"),
        }
    }
}

/// The decision for every pod address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every accepted address with its ENI.
    pub placements: Vec<Placement>,
    /// The EC2 work: placed addresses their ENI does not route yet, one entry per ENI in
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

    /// How many of the addresses are on the pod's Multus interfaces (placed or not): the
    /// VPC CNI's interfaces, interfaces that are not Multus's and link-local addresses do
    /// not count.
    pub fn multus_addresses(&self) -> usize {
        let on_multus_interface = |rejection: &&Rejection| {
            !matches!(
                rejection.reason,
                RejectReason::PrimaryInterface
                    | RejectReason::VpcCniInterface
                    | RejectReason::NotMultusInterface
                    | RejectReason::LinkLocal
            )
        };
        self.placements.len() + self.rejections.iter().filter(on_multus_interface).count()
    }

    /// Every (ENI, address) pair the plan places.
    pub fn assignments(&self) -> impl Iterator<Item = Assignment> + '_ {
        self.placements.iter().map(|placement| Assignment {
            eni_id: placement.eni_id.clone(),
            address: placement.address.address,
        })
    }

    /// The changes EC2 must be asked about before [`crate::vet`]: the plan's, and the
    /// `recent` addresses' (planned as changes whatever metadata says).
    pub fn lookups(&self, recent: &[IpAddr]) -> Vec<EniChange> {
        self.clone().distrusting(recent).changes
    }

    /// The plan with the `recent` addresses (just added to the pod, or changed within the
    /// last minute) as changes even where metadata shows them in place: metadata lags EC2,
    /// so only EC2's answer (the holder lookup) may say they need no call. Addresses routed
    /// by their ENI's prefix stay without a call.
    pub(crate) fn distrusting(mut self, recent: &[IpAddr]) -> Plan {
        let stale: Vec<Assignment> = self
            .placements
            .iter()
            .filter(|placement| {
                placement.prefix.is_none() && recent.contains(&placement.address.address)
            })
            .map(|placement| Assignment {
                eni_id: placement.eni_id.clone(),
                address: placement.address.address,
            })
            .collect();
        if stale.is_empty() {
            return self;
        }
        let planned = self.changes.iter().flat_map(EniChange::assignments);
        let mut changes = EniChange::group(planned.chain(stale.iter().cloned()));
        let order = |change: &EniChange| {
            self.changes
                .iter()
                .position(|planned| planned.eni_id == change.eni_id)
        };
        changes.sort_by_key(|change| order(change).unwrap_or(usize::MAX));
        self.changes = changes;
        self
    }

    /// The plan with its EC2 work worked out against `node`'s address lists as they are
    /// now (the placements stay): the addresses their ENI does not route yet, one change
    /// per ENI in device order.
    pub fn against(mut self, node: &NodeFacts) -> Plan {
        let routed = |assignment: &Assignment| {
            node.eni(&assignment.eni_id)
                .is_some_and(|eni| eni.routes(assignment.address))
        };
        self.changes = EniChange::group(self.assignments().filter(|a| !routed(a)));
        self.changes
            .sort_by_key(|change| node.eni(&change.eni_id).map(Eni::device_order));
        self
    }

    /// Withdraws a planned assignment: its placement becomes a rejection for `reason`.
    pub fn reject(&mut self, assignment: &Assignment, reason: RejectReason) {
        self.unchange(assignment);
        let Some(index) = self.placements.iter().position(|placement| {
            placement.eni_id == assignment.eni_id && placement.address.address == assignment.address
        }) else {
            return;
        };
        let placement = self.placements.remove(index);
        self.rejections.push(Rejection {
            address: placement.address,
            reason,
        });
    }

    /// Drops an address from the EC2 work (it is placed, and needs no call).
    pub fn unchange(&mut self, assignment: &Assignment) {
        for change in &mut self.changes {
            if change.eni_id == assignment.eni_id {
                match assignment.address {
                    IpAddr::V4(v4) => change.ipv4.retain(|&held| held != v4),
                    IpAddr::V6(v6) => change.ipv6.retain(|&held| held != v6),
                }
            }
        }
        self.changes
            .retain(|change| !change.ipv4.is_empty() || !change.ipv6.is_empty());
    }
}

/// Decides, for every pod address, whether it is the helper's to manage, the ENI it
/// belongs on, and the EC2 calls needed.
///
/// Left alone: the primary interface, interfaces that are not the pod's Multus interfaces
/// ([`MultusInterfaces`]; when unknown, the VPC CNI's `v4if0`/`v6if0`), link-local
/// addresses, and addresses that are not VPC addresses. An address goes to the ENI whose MAC
/// its interface carries; failing that, to the one ENI whose subnet contains it. The
/// primary ENI is used only when allowed. Addresses their ENI already routes (held, or
/// inside its delegated prefix) cost nothing.
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
    result.against(node)
}

/// How many of `addresses` are on the pod's Multus interfaces (not the primary one, not the
/// VPC CNI's, not link-local): what a helper that has no view of the node (the agent
/// backend's) waits for before it asks. Without the node's ENIs it cannot tell which MACs
/// are Multus ENIs', so with [`MultusInterfaces::NamedOrByMac`] every interface but the
/// primary one and the VPC CNI's `v4if0`/`v6if0` counts.
pub fn multus_candidates(addresses: &[PodAddress], options: &PlanOptions) -> usize {
    addresses
        .iter()
        .filter(|address| unmanaged(address, options, None).is_none())
        .count()
}

/// Whether the helper leaves `address` alone: `Some(reason)`. Without `node` (no view of
/// the node's ENIs), an interface that only its MAC could admit counts as managed.
fn unmanaged(
    address: &PodAddress,
    options: &PlanOptions,
    node: Option<&NodeFacts>,
) -> Option<RejectReason> {
    let interface = address.interface.as_str();
    if interface == options.primary_interface {
        return Some(RejectReason::PrimaryInterface);
    }
    let vpc_cni = || {
        VPC_CNI_INTERFACES
            .contains(&interface)
            .then_some(RejectReason::VpcCniInterface)
    };
    let named = |names: &[String]| names.iter().any(|name| name == interface);
    let on_multus_eni = |node: &NodeFacts| {
        node.enis.iter().any(|eni| {
            eni.mac == address.mac && (options.allow_primary_eni || !node.is_primary(eni))
        })
    };
    let outside = match &options.interfaces {
        MultusInterfaces::Any => vpc_cni(),
        MultusInterfaces::Named(names) => {
            (!named(names)).then_some(RejectReason::NotMultusInterface)
        }
        MultusInterfaces::NamedOrByMac(names) if named(names) => None,
        MultusInterfaces::NamedOrByMac(_) => vpc_cni().or_else(|| {
            (!node.is_none_or(on_multus_eni)).then_some(RejectReason::NotMultusInterface)
        }),
    };
    outside.or_else(|| {
        let link_local = match address.address {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        link_local.then_some(RejectReason::LinkLocal)
    })
}

fn place(
    node: &NodeFacts,
    address: &PodAddress,
    options: &PlanOptions,
) -> Result<Placement, RejectReason> {
    if let Some(reason) = unmanaged(address, options, Some(node)) {
        return Err(reason);
    }
    let ip = address.address;
    if !options.allowed.is_empty() && !options.allowed.iter().any(|net| net.contains(&ip)) {
        return Err(RejectReason::NotAllowed);
    }
    let usable = |eni: &Eni| !node.is_primary(eni) || options.allow_primary_eni;
    let placed = |eni: &Eni, matched_by| {
        let other_prefix = node.enis.iter().find_map(|other| {
            (other.id != eni.id)
                .then(|| other.prefix_containing(ip))
                .flatten()
                .map(|prefix| (other, prefix))
        });
        if let Some((other, prefix)) = other_prefix {
            return Err(RejectReason::OtherEnisPrefix {
                eni: other.id.clone(),
                prefix,
            });
        }
        Ok(Placement {
            address: address.clone(),
            eni_id: eni.id.clone(),
            matched_by,
            prefix: eni.prefix_containing(ip),
        })
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
            placed(eni, MatchedBy::Mac)
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
        ([eni], _) => placed(eni, MatchedBy::Subnet),
        ([], Some(primary)) => Err(RejectReason::PrimaryEni {
            eni: primary.id.clone(),
        }),
        ([], None) => Err(RejectReason::NotVpc),
        (several, _) => Err(RejectReason::Ambiguous {
            enis: several.iter().map(|eni| eni.id.clone()).collect(),
        }),
    }
}

/// Of `expected`, the assignments that `node` (as metadata shows it) does not route.
pub fn unconfirmed(expected: &[Assignment], node: &NodeFacts) -> Vec<Assignment> {
    expected
        .iter()
        .filter(|assignment| {
            node.eni(&assignment.eni_id)
                .is_none_or(|eni| !eni.routes(assignment.address))
        })
        .cloned()
        .collect()
}
