//! The node agent's decisions: which secondary addresses of the node's Multus ENIs no pod on
//! the node carries any more, for long enough to give them back, and, just before the call,
//! which of those EC2 still lets it give back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::{Assignment, EniChange, EniRecord, NodeFacts, OwnershipPolicy};

/// When an unused address may be given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimOptions {
    /// How long it must have been in no pod (long enough for a pod to be recreated).
    pub grace: Duration,
    /// In how many scans in a row it must have been in no pod.
    pub scans: u32,
    /// When not empty, only addresses inside these networks are ever given back.
    pub allowed: Vec<IpNet>,
}

/// One address seen on a Multus ENI and in no pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Absence {
    since: Instant,
    scans: u32,
}

/// What the agent remembers between scans: since when, and for how many scans in a row,
/// each secondary address of a Multus ENI has been in no pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Absences {
    absent: BTreeMap<Assignment, Absence>,
}

impl Absences {
    /// Takes in one scan: the node as metadata shows it, the ids of its Multus ENIs (by
    /// EC2's tags), and every address the node's pods (and the node itself) carry. Returns
    /// the addresses due to be given back: absent for the grace period and the scans.
    pub fn observe(
        &mut self,
        node: &NodeFacts,
        multus: &BTreeSet<String>,
        in_use: &BTreeSet<IpAddr>,
        options: &ReclaimOptions,
        now: Instant,
    ) -> Vec<Assignment> {
        let unused: BTreeSet<Assignment> = node
            .enis
            .iter()
            .filter(|eni| multus.contains(&eni.id) && !node.is_primary(eni))
            .flat_map(|eni| {
                let primary = eni.primary_ipv4().map(IpAddr::V4);
                let secondary_ipv4 = eni.ipv4.iter().map(|&v4| IpAddr::V4(v4));
                let ipv6 = eni.ipv6.iter().map(|&v6| IpAddr::V6(v6));
                secondary_ipv4
                    .chain(ipv6)
                    .filter(move |&address| Some(address) != primary)
                    .map(|address| Assignment {
                        eni_id: eni.id.clone(),
                        address,
                    })
            })
            .filter(|assignment| !in_use.contains(&assignment.address))
            .filter(|assignment| {
                options.allowed.is_empty()
                    || options
                        .allowed
                        .iter()
                        .any(|net| net.contains(&assignment.address))
            })
            .collect();
        self.absent
            .retain(|assignment, _| unused.contains(assignment));
        for assignment in unused {
            self.absent
                .entry(assignment)
                .and_modify(|absence| absence.scans += 1)
                .or_insert(Absence {
                    since: now,
                    scans: 1,
                });
        }
        self.absent
            .iter()
            .filter(|(_, absence)| {
                absence.scans >= options.scans && now.duration_since(absence.since) >= options.grace
            })
            .map(|(assignment, _)| assignment.clone())
            .collect()
    }

    /// Forgets an address (given back, or found to be no longer there).
    pub fn forget(&mut self, assignment: &Assignment) {
        self.absent.remove(assignment);
    }

    /// Starts an address's grace period over (giving it back failed: it is tried again when
    /// the period ends, not at once).
    pub fn postpone(&mut self, assignment: &Assignment, now: Instant) {
        if let Some(absence) = self.absent.get_mut(assignment) {
            absence.since = now;
        }
    }

    /// When the first waiting address's grace period ends (a scan then can give it back);
    /// `None` when nothing waits.
    pub fn next_due(&self, options: &ReclaimOptions) -> Option<Instant> {
        self.absent
            .values()
            .map(|absence| absence.since + options.grace)
            .min()
    }

    /// How many addresses are waiting out their grace period.
    pub fn waiting(&self) -> usize {
        self.absent.len()
    }
}

/// Why an address due to be given back is not, after all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    /// A pod carries it again (found in the scan just before the call).
    InUse,
    /// EC2 no longer has it on the ENI: it moved to another holder, which keeps it.
    Moved,
    /// EC2 does not list the ENI as attached to this instance.
    OtherInstance,
    /// The ENI is not (or no longer) a Multus ENI.
    NotMultus,
    /// The ENI's primary address, or an address of a primary ENI.
    Primary,
}

impl Keep {
    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            Keep::InUse => "in_use",
            Keep::Moved => "moved",
            Keep::OtherInstance => "other_instance",
            Keep::NotMultus => "not_multus",
            Keep::Primary => "primary",
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Keep::InUse => "a pod on the node carries it again",
            Keep::Moved => "EC2 no longer has it on this ENI; it stays with its new holder",
            Keep::OtherInstance => "EC2 lists the ENI as attached to another instance",
            Keep::NotMultus => {
                "the ENI is not a Multus ENI (tag node.k8s.amazonaws.com/no_manage=true)"
            }
            Keep::Primary => "a primary address, or an address of the primary ENI",
        })
    }
}

/// The last check before giving addresses back, against what EC2 says right now (`enis`,
/// read just before the call) and a fresh scan of the pods (`in_use`): what to unassign,
/// grouped per ENI, and what to keep, with why.
pub fn verify_release(
    due: &[Assignment],
    instance_id: &str,
    enis: &[EniRecord],
    in_use: &BTreeSet<IpAddr>,
    policy: OwnershipPolicy,
) -> (Vec<EniChange>, Vec<(Assignment, Keep)>) {
    let mut kept = Vec::new();
    let mut released = Vec::new();
    for assignment in due {
        let record = enis.iter().find(|record| record.id == assignment.eni_id);
        let verdict = match record {
            _ if in_use.contains(&assignment.address) => Err(Keep::InUse),
            None => Err(Keep::OtherInstance),
            Some(record) if record.instance_id.as_deref() != Some(instance_id) => {
                Err(Keep::OtherInstance)
            }
            Some(record)
                if record.attachment == Some((0, 0))
                    || record.primary_ipv4.map(IpAddr::V4) == Some(assignment.address) =>
            {
                Err(Keep::Primary)
            }
            Some(record) if record.multus(policy).is_err() => Err(Keep::NotMultus),
            Some(record) if !record.holds(assignment.address) => Err(Keep::Moved),
            Some(_) => Ok(()),
        };
        match verdict {
            Ok(()) => released.push(assignment.clone()),
            Err(keep) => kept.push((assignment.clone(), keep)),
        }
    }
    (EniChange::group(released), kept)
}
