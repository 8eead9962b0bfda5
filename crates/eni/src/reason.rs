//! Why a pass runs ([`Reason`]), and the one rule of which view of the node's address lists
//! a pass may believe ([`NodeFacts::believed`]).

use serde::{Deserialize, Serialize};

use crate::NodeFacts;

/// Why a pass over a pod's addresses runs: the pod loop's reason to ask, which is also
/// what the pod API carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The pod's first pass (`init`, or a sidecar starting): checked against EC2 now.
    Start,
    /// The pod's addresses changed, or the last pass failed: checked against EC2 now.
    Change,
    /// The sidecar's periodic check: the node's address lists are believed (instance
    /// metadata's, or the agent's view at most a recheck interval old), except for the
    /// addresses that changed within the last minute; it costs no call while nothing
    /// drifted.
    Recheck,
}

impl Reason {
    /// The more thorough of the two: a start or a change is checked against EC2 now, a
    /// recheck against the view.
    pub fn most_thorough(self, other: Reason) -> Reason {
        match (self, other) {
            (Reason::Start, _) | (_, Reason::Start) => Reason::Start,
            (Reason::Change, _) | (_, Reason::Change) => Reason::Change,
            (Reason::Recheck, Reason::Recheck) => Reason::Recheck,
        }
    }
}

impl NodeFacts {
    /// The node as a pass for `reason` may believe it, on the ENIs `ids` (the pass's
    /// targets): for a start or a change their secondary addresses are unknown, so that
    /// the pass looks every address on them up in EC2 (one DescribeNetworkInterfaces per
    /// batch) and [`crate::vet`] drops what EC2 has in place already; for a recheck the
    /// lists stand, and only the addresses that changed within the last minute are looked
    /// up ([`crate::Plan::lookups`]). Instance metadata lags EC2 (AWS documents the remap
    /// of an address as asynchronous; the VPC CNI waits up to a minute for it): it may
    /// still list here an address that left this node's ENI.
    pub fn believed(&self, reason: Reason, ids: &[String]) -> NodeFacts {
        match reason {
            Reason::Start | Reason::Change => self.without_secondaries(ids),
            Reason::Recheck => self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn the_most_thorough_reason_wins_either_way_round() {
        let all = [Reason::Start, Reason::Change, Reason::Recheck];
        for a in all {
            for b in all {
                let expected = all[all
                    .iter()
                    .position(|r| *r == a)
                    .min(all.iter().position(|r| *r == b))
                    .expect("listed")];
                assert_eq!(a.most_thorough(b), expected, "{a:?} {b:?}");
            }
        }
    }
}
