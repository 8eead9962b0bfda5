//! Whose ENI is it: the tag rule that keeps the helper off the VPC CNI's ENIs and off
//! addresses other workloads hold.
//!
//! The VPC CNI's ipamd manages every attached ENI that is not tagged
//! `node.k8s.amazonaws.com/no_manage=true` (its `MANAGE_UNTAGGED_ENI` defaults to true): it
//! adopts the secondary addresses it finds there, hands them to its pods and frees "surplus"
//! ones. ENIs it creates carry the tag `node.k8s.amazonaws.com/instance_id` and a
//! description starting `aws-K8S-` (amazon-vpc-cni-k8s, pkg/awsutils/awsutils.go). The EKS
//! Multus guide has operators tag Multus ENIs `no_manage=true`; that tag is what makes an
//! ENI the helper's to use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Assignment, EniChange, Plan, RejectReason};

/// The tag that marks a Multus ENI (and tells the VPC CNI to leave it alone).
pub const NO_MANAGE_TAG: &str = "node.k8s.amazonaws.com/no_manage";
/// The tag the VPC CNI puts on ENIs it creates.
pub const VPC_CNI_INSTANCE_TAG: &str = "node.k8s.amazonaws.com/instance_id";
/// The description prefix of ENIs the VPC CNI creates.
pub const VPC_CNI_DESCRIPTION_PREFIX: &str = "aws-K8S-";

/// What EC2 says about one ENI (DescribeNetworkInterfaces): who it belongs to and what it
/// holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EniRecord {
    /// `NetworkInterfaceId`.
    pub id: String,
    /// `Description`.
    pub description: String,
    /// `TagSet`.
    pub tags: BTreeMap<String, String>,
    /// `Attachment.InstanceId`, when attached to an instance.
    pub instance_id: Option<String>,
    /// `Attachment.NetworkCardIndex` and `Attachment.DeviceIndex`, when attached.
    pub attachment: Option<(u32, u32)>,
    /// `PrivateIpAddress`: its primary address.
    pub primary_ipv4: Option<Ipv4Addr>,
    /// `PrivateIpAddresses`.
    pub ipv4: Vec<Ipv4Addr>,
    /// `Ipv6Addresses`.
    pub ipv6: Vec<Ipv6Addr>,
}

/// How strictly ENIs are told apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnershipPolicy {
    /// Treat untagged ENIs as Multus ENIs, for clusters whose VPC CNI runs with
    /// `MANAGE_UNTAGGED_ENI=false`; the VPC CNI's own ENIs and primary ENIs still are not.
    pub allow_untagged: bool,
}

/// Why an ENI is not a Multus ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotMultus {
    /// EC2 does not list it among the node's ENIs (detached meanwhile).
    Missing,
    /// It lacks the `no_manage` tag, so the VPC CNI manages it.
    Untagged,
    /// The VPC CNI created it.
    CreatedByVpcCni,
    /// It is an instance's primary ENI.
    Primary,
}

impl fmt::Display for NotMultus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotMultus::Missing => f.write_str(
                "is not among the ENIs EC2 lists for this instance (detached?); the helper re-reads the node's ENIs on its next check",
            ),
            NotMultus::Untagged => write!(
                f,
                "lacks the tag {NO_MANAGE_TAG}=true, so the VPC CNI manages it and may give this address to its own pods or free it; tag it (aws ec2 create-tags --resources ENI --tags Key={NO_MANAGE_TAG},Value=true), or, if the VPC CNI runs with MANAGE_UNTAGGED_ENI=false, set --allow-untagged-enis (IPMGR_ALLOW_UNTAGGED_ENIS=true)"
            ),
            NotMultus::CreatedByVpcCni => write!(
                f,
                "was created by the VPC CNI (description {VPC_CNI_DESCRIPTION_PREFIX}..., tag {VPC_CNI_INSTANCE_TAG}) for its own pods; use a Multus ENI tagged {NO_MANAGE_TAG}=true"
            ),
            NotMultus::Primary => f.write_str(
                "is an instance's primary ENI, which the VPC CNI manages; use a Multus ENI",
            ),
        }
    }
}

/// The one rule of which ENI is an instance's primary ENI: the one attached at device 0 of
/// network card 0 (EC2's `Attachment.DeviceIndex` and `NetworkCardIndex`, metadata's
/// `device-number` and `network-card`). The VPC CNI attaches its other ENIs at device 0 of
/// cards 1..N on multi-card instances, so the card counts.
pub fn primary_attachment(device_index: u32, network_card: u32) -> bool {
    device_index == 0 && network_card == 0
}

impl EniRecord {
    /// `Ok` when the helper may put addresses on this ENI, or take them from it: never the
    /// primary ENI, whatever its tags.
    pub fn multus(&self, policy: OwnershipPolicy) -> Result<(), NotMultus> {
        // The primary ENI first: a no_manage tag on it changes nothing (the VPC CNI manages
        // it, and its primary address is the node's).
        if self.is_primary() {
            return Err(NotMultus::Primary);
        }
        if self.tags.get(NO_MANAGE_TAG).map(String::as_str) == Some("true") {
            return Ok(());
        }
        if self.description.starts_with(VPC_CNI_DESCRIPTION_PREFIX)
            || self.tags.contains_key(VPC_CNI_INSTANCE_TAG)
        {
            return Err(NotMultus::CreatedByVpcCni);
        }
        if policy.allow_untagged {
            Ok(())
        } else {
            Err(NotMultus::Untagged)
        }
    }

    /// Whether this is its instance's primary ENI, as EC2 has it attached
    /// ([`primary_attachment`]).
    pub fn is_primary(&self) -> bool {
        self.attachment.is_some_and(|(network_card, device_index)| {
            primary_attachment(device_index, network_card)
        })
    }

    /// Whether `address` is this ENI's primary private address, which never moves.
    pub fn is_primary_address(&self, address: IpAddr) -> bool {
        self.primary_ipv4.map(IpAddr::V4) == Some(address)
    }

    /// Whether EC2 has `address` on this ENI.
    pub fn holds(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => self.ipv4.contains(&v4),
            IpAddr::V6(v6) => self.ipv6.contains(&v6),
        }
    }
}

/// Another workload's ENI that holds an address a pod asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The ENI.
    pub eni_id: String,
    /// Its description.
    pub description: String,
    /// The instance it is attached to.
    pub instance_id: Option<String>,
    /// Why the helper will not take the address from it; `None`: it is that ENI's primary
    /// address.
    pub why: Option<NotMultus>,
}

impl Holder {
    fn of(record: &EniRecord, why: Option<NotMultus>) -> Self {
        Holder {
            eni_id: record.id.clone(),
            description: record.description.clone(),
            instance_id: record.instance_id.clone(),
            why,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EC2 has this address on ENI {}", self.eni_id)?;
        if !self.description.is_empty() {
            write!(f, " ({:?})", self.description)?;
        }
        match &self.instance_id {
            Some(instance) => write!(f, " of instance {instance}")?,
            None => f.write_str(", attached to no instance")?,
        }
        match &self.why {
            None => f.write_str(", as that ENI's primary address, which never moves")?,
            Some(why) => write!(
                f,
                ", which is not a Multus ENI: it {why}. The address belongs to another workload and taking it would cut that workload off"
            )?,
        }
        f.write_str("; keep it out of the pod's IPAM range (a whereabouts exclude, a subnet CIDR reservation)")
    }
}

/// The one vetting step of a pass, over what EC2 says (`records`: the target ENIs and every
/// ENI holding one of the addresses, read for [`Plan::lookups`]): the `recent` addresses are
/// planned as changes whatever metadata says; only changes on ENIs EC2 lists as this
/// instance's (`instance_id`) Multus ENIs stay; an address another workload holds is
/// refused; an address already on its ENI needs no call (unless recent and IPv4); an IPv6
/// address on another Multus ENI is unassigned there first.
pub fn vet(
    plan: Plan,
    records: &[EniRecord],
    recent: &[IpAddr],
    instance_id: &str,
    policy: OwnershipPolicy,
) -> Vetted {
    let plan = on_multus_enis(plan.distrusting(recent), records, instance_id, policy);
    off_other_workloads(plan, records, recent, policy)
}

/// Keeps only the changes whose ENI EC2 lists (`records`) as attached to `instance_id` and
/// as a Multus ENI; the addresses of the others become rejections.
fn on_multus_enis(
    mut plan: Plan,
    records: &[EniRecord],
    instance_id: &str,
    policy: OwnershipPolicy,
) -> Plan {
    let refused: Vec<(Assignment, NotMultus)> = plan
        .changes
        .iter()
        .filter_map(|change| {
            let verdict = records
                .iter()
                .find(|record| {
                    record.id == change.eni_id && record.instance_id.as_deref() == Some(instance_id)
                })
                .map_or(Err(NotMultus::Missing), |record| record.multus(policy));
            verdict.err().map(|why| (change, why))
        })
        .flat_map(|(change, why)| change.assignments().map(move |a| (a, why.clone())))
        .collect();
    for (assignment, why) in refused {
        let eni = assignment.eni_id.clone();
        plan.reject(&assignment, RejectReason::NotMultusEni { eni, why });
    }
    plan
}

/// The plan after looking at who holds its addresses now (`holders`, from EC2), and the
/// IPv6 addresses to unassign from their Multus holders first (IPv6 cannot be reassigned).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vetted {
    /// The plan: addresses held by other workloads rejected, addresses already on their
    /// ENI no longer changes.
    pub plan: Plan,
    /// Per holder ENI, the IPv6 addresses to unassign before assigning them.
    pub ipv6_unassign_first: Vec<EniChange>,
    /// The planned addresses that another Multus ENI holds now: the call takes them from
    /// it (a floating address coming back, or the address of a pod on another node).
    pub moves: Vec<Move>,
}

/// A planned address that EC2 has on another Multus ENI, which the assignment takes it from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// The assignment that takes it.
    pub assignment: Assignment,
    /// The Multus ENI that holds it now.
    pub from_eni: String,
    /// That ENI's instance, when attached.
    pub from_instance: Option<String>,
}

impl Vetted {
    /// Withdraws a planned assignment after vetting: a rejection for `reason`, and neither
    /// its IPv6 release nor its move go ahead.
    pub fn refuse(&mut self, assignment: &Assignment, reason: RejectReason) {
        self.plan.reject(assignment, reason);
        for release in &mut self.ipv6_unassign_first {
            if let IpAddr::V6(v6) = assignment.address {
                release.ipv6.retain(|&held| held != v6);
            }
        }
        self.ipv6_unassign_first
            .retain(|release| !release.ipv6.is_empty());
        self.moves.retain(|taken| &taken.assignment != assignment);
    }
}

/// Decides, for every planned change, whether the address may move: nobody holds it, or a
/// Multus ENI does (a floating address coming back from another node); one another workload
/// holds is refused. An address already on its ENI needs no call, unless it is a `recent`
/// IPv4 address: that one is assigned again, which AllowReassignment makes harmless, in case
/// EC2's answer lags too.
fn off_other_workloads(
    mut plan: Plan,
    holders: &[EniRecord],
    recent: &[IpAddr],
    policy: OwnershipPolicy,
) -> Vetted {
    let planned: Vec<Assignment> = plan
        .changes
        .iter()
        .flat_map(EniChange::assignments)
        .collect();
    let mut releases = Vec::new();
    let mut moves = Vec::new();
    for assignment in planned {
        let mut verdict = Ok(());
        for record in holders
            .iter()
            .filter(|record| record.holds(assignment.address))
        {
            if record.id == assignment.eni_id {
                if !(assignment.address.is_ipv4() && recent.contains(&assignment.address)) {
                    plan.unchange(&assignment);
                }
                verdict = Ok(());
                break;
            }
            if record.is_primary_address(assignment.address) {
                verdict = Err(Holder::of(record, None));
            } else if let Err(why) = record.multus(policy) {
                verdict = Err(Holder::of(record, Some(why)));
            } else {
                moves.push(Move {
                    assignment: assignment.clone(),
                    from_eni: record.id.clone(),
                    from_instance: record.instance_id.clone(),
                });
                if assignment.address.is_ipv6() {
                    releases.push(Assignment {
                        eni_id: record.id.clone(),
                        address: assignment.address,
                    });
                }
            }
        }
        if let Err(holder) = verdict {
            releases.retain(|release| release.address != assignment.address);
            moves.retain(|taken| taken.assignment != assignment);
            plan.reject(&assignment, RejectReason::HeldByOther { holder });
        }
    }
    let still_planned: Vec<IpAddr> = plan
        .changes
        .iter()
        .flat_map(EniChange::assignments)
        .map(|assignment| assignment.address)
        .collect();
    releases.retain(|release| still_planned.contains(&release.address));
    moves.retain(|taken| still_planned.contains(&taken.assignment.address));
    Vetted {
        plan,
        ipv6_unassign_first: EniChange::group(releases),
        moves,
    }
}

/// Of the addresses this helper assigned, those EC2 says their ENI still holds (`enis`, read
/// just now: metadata lags and may still show an address that moved away), grouped per ENI
/// for the unassign calls; an ENI's primary address never.
pub fn still_assigned(assigned: &[Assignment], enis: &[EniRecord]) -> Vec<EniChange> {
    let ours = assigned.iter().filter(|assignment| {
        enis.iter().any(|record| {
            record.id == assignment.eni_id
                && record.holds(assignment.address)
                && !record.is_primary_address(assignment.address)
        })
    });
    EniChange::group(ours.cloned())
}
