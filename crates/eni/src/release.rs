//! The node agent's decisions: which secondary addresses of the node's Multus ENIs no pod on
//! the node carries any more, for long enough to give them back, and, just before the call,
//! which of those EC2 still lets it release.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::{
    Assignment, EniChange, EniRecord, ErrorClass, NodeFacts, OwnershipPolicy, RetryPolicy,
};

/// When an unused address may be released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseOptions {
    /// How long it must have been in no pod (long enough for a pod to be recreated).
    pub grace: Duration,
    /// In how many scans in a row it must have been in no pod.
    pub scans: u32,
    /// When not empty, only addresses inside these networks are ever released.
    pub allowed: Vec<IpNet>,
    /// Addresses inside these networks are never released: pods whose addresses the
    /// kernel of their namespace does not show (gVisor, DPDK, SR-IOV VFs, KubeVirt).
    pub kept: Vec<IpNet>,
    /// How an unassign call that EC2 throttled or that failed transiently is tried again;
    /// when the budget is spent, or EC2 refused for good, the grace period starts over.
    pub retry: RetryPolicy,
}

impl ReleaseOptions {
    /// Whether the scope settings (`allowed`, `kept`) let the agent ever give `address` back.
    pub fn may_release(&self, address: IpAddr) -> bool {
        let allowed =
            self.allowed.is_empty() || self.allowed.iter().any(|net| net.contains(&address));
        allowed && !self.kept.iter().any(|net| net.contains(&address))
    }
}

/// One address seen on a Multus ENI and in no pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Absence {
    since: Instant,
    scans: u32,
    /// Set after an unassign attempt failed in a way worth retrying.
    retry: Option<Retry>,
}

/// The retries of one address's unassign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Retry {
    /// When the first attempt failed.
    first: Instant,
    /// Failed attempts in a row.
    failures: u32,
    /// The next attempt is not before this.
    not_before: Instant,
}

/// What becomes of an address whose unassign failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Tried again after this delay, from a fresh decision (new scan, new read of EC2).
    RetryIn(Duration),
    /// EC2 refused for good, or the retry budget is spent: the grace period starts over.
    GraceAgain,
}

/// What the agent remembers between scans: since when, and for how many scans in a row,
/// each secondary address of a Multus ENI has been in no pod, and the retries of the ones
/// whose unassign failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Absences {
    absent: BTreeMap<Assignment, Absence>,
}

/// Every secondary address of the node's Multus ENIs (`multus`, by EC2's tags), as
/// metadata lists them: what the agent could ever release. Primary ENIs and every ENI's
/// primary address are left out.
pub fn secondary_addresses(node: &NodeFacts, multus: &BTreeSet<String>) -> Vec<Assignment> {
    node.enis
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
        .collect()
}

impl Absences {
    /// Takes in one trusted scan (see [`ScanVerdict`]): the node as metadata shows it, the
    /// ids of its Multus ENIs (by EC2's tags), and every address the node's pods (and the
    /// node itself) carry. Returns the addresses due to be released: absent for the grace
    /// period and the scans, and not waiting for a retry.
    pub fn observe(
        &mut self,
        node: &NodeFacts,
        multus: &BTreeSet<String>,
        in_use: &BTreeSet<IpAddr>,
        options: &ReleaseOptions,
        now: Instant,
    ) -> Vec<Assignment> {
        let unused: BTreeSet<Assignment> = secondary_addresses(node, multus)
            .into_iter()
            .filter(|assignment| !in_use.contains(&assignment.address))
            .filter(|assignment| options.may_release(assignment.address))
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
                    retry: None,
                });
        }
        self.absent
            .iter()
            .filter(|(_, absence)| match absence.retry {
                Some(retry) => now >= retry.not_before,
                None => {
                    absence.scans >= options.scans
                        && now.duration_since(absence.since) >= options.grace
                }
            })
            .map(|(assignment, _)| assignment.clone())
            .collect()
    }

    /// Forgets an address (released, kept for a reason, or found to be no longer there).
    pub fn forget(&mut self, assignment: &Assignment) {
        self.absent.remove(assignment);
    }

    /// Takes in a failed unassign attempt of `assignment` (EC2's error `class`, `jitter` in
    /// `[0, 1)`): a throttled or transient failure is tried again within the retry budget,
    /// from a fresh decision; anything else starts the grace period over.
    pub fn failed(
        &mut self,
        assignment: &Assignment,
        class: ErrorClass,
        options: &ReleaseOptions,
        now: Instant,
        jitter: f64,
    ) -> AfterFailure {
        let Some(absence) = self.absent.get_mut(assignment) else {
            return AfterFailure::GraceAgain;
        };
        let (first, failures) = absence
            .retry
            .map_or((now, 1), |retry| (retry.first, retry.failures + 1));
        match options
            .retry
            .next_delay(class, failures, now.duration_since(first), jitter)
        {
            Some(delay) => {
                absence.retry = Some(Retry {
                    first,
                    failures,
                    not_before: now + delay,
                });
                AfterFailure::RetryIn(delay)
            }
            None => {
                absence.since = now;
                absence.retry = None;
                AfterFailure::GraceAgain
            }
        }
    }

    /// When the next address becomes due (its grace period ends, or its retry is due);
    /// `None` when nothing waits.
    pub fn next_due(&self, options: &ReleaseOptions) -> Option<Instant> {
        self.absent
            .values()
            .map(|absence| match absence.retry {
                Some(retry) => retry.not_before,
                None => absence.since + options.grace,
            })
            .min()
    }

    /// How many addresses are waiting out their grace period or a retry.
    pub fn waiting(&self) -> usize {
        self.absent.len()
    }
}

/// Whether one scan of the node's pods is a view the agent may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanVerdict {
    /// Every namespace was read: addresses in none of them are unused.
    Trusted,
    /// Some namespaces could not be read (a sandbox being made or removed, or a runtime
    /// the agent cannot enter): nothing is released.
    Incomplete {
        /// How many.
        unreadable: usize,
    },
    /// No pod namespace at all, while the node's Multus ENIs hold secondary addresses:
    /// the agent looks at the wrong directory (or cannot see the runtime's mounts), not at
    /// a node without pods. Nothing is released.
    Blind {
        /// The secondary addresses of the Multus ENIs.
        held: usize,
    },
}

impl ScanVerdict {
    /// Judges a scan that read `namespaces` pod namespaces and could not read `unreadable`
    /// entries, on a node whose Multus ENIs hold `held` secondary addresses.
    pub fn judge(namespaces: usize, unreadable: usize, held: usize) -> ScanVerdict {
        if unreadable > 0 {
            ScanVerdict::Incomplete { unreadable }
        } else if namespaces == 0 && held > 0 {
            ScanVerdict::Blind { held }
        } else {
            ScanVerdict::Trusted
        }
    }

    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            ScanVerdict::Trusted => "complete",
            ScanVerdict::Incomplete { .. } => "incomplete",
            ScanVerdict::Blind { .. } => "empty",
        }
    }
}

/// Why an address due to be released is not, after all.
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
    /// A live pod of the node claims it (Multus' record of the pod, or its floating-IP
    /// declaration), whether or not its namespace shows it.
    Claimed,
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
            Keep::Claimed => "claimed",
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
            Keep::Claimed => {
                "a live pod of the node claims it (k8s.v1.cni.cncf.io/network-status or multus-ipmgr.io/floating-ips)"
            }
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
                if record.is_primary() || record.is_primary_address(assignment.address) =>
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
