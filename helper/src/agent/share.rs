//! What the agent knows of its node, shared by its rounds (which write it) and the pod API:
//! the node as instance metadata shows it, and the last read of its Multus ENIs from EC2.

use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use ipmgr_eni::{Assignment, EniRecord, NodeFacts};

/// What the agent knows of its node, shared by its rounds (which write) and the pod API.
#[derive(Debug, Default)]
pub struct NodeShare {
    /// The node as instance metadata shows it, and the ids of its Multus ENIs.
    node: RwLock<Option<(NodeFacts, Vec<String>)>>,
    /// The last read of the Multus ENIs from EC2, and when.
    view: Mutex<Option<(Instant, Vec<EniRecord>)>>,
}

impl NodeShare {
    /// Takes in the node as the agent's round read it.
    pub fn set_node(&self, node: NodeFacts, multus: Vec<String>) {
        *self
            .node
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((node, multus));
    }

    /// The node and the ids of its Multus ENIs, once a round read them.
    pub(super) fn node(&self) -> Option<(NodeFacts, Vec<String>)> {
        self.node
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The Multus ENIs as EC2 had them at most `max_age` ago.
    pub(super) fn view(&self, max_age: Duration) -> Option<Vec<EniRecord>> {
        let view = self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        view.as_ref()
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, records)| records.clone())
    }

    /// Notes in the view what EC2 just accepted (an IPv4 assign with AllowReassignment
    /// may have taken an address off another of the node's ENIs).
    pub(super) fn note_assigned(&self, assigned: &[Assignment]) {
        let mut view = self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((_, records)) = view.as_mut() else {
            return;
        };
        for assignment in assigned {
            for record in records.iter_mut() {
                match assignment.address {
                    IpAddr::V4(v4) => record.ipv4.retain(|held| *held != v4),
                    IpAddr::V6(v6) => record.ipv6.retain(|held| *held != v6),
                }
                if record.id == assignment.eni_id {
                    match assignment.address {
                        IpAddr::V4(v4) => record.ipv4.push(v4),
                        IpAddr::V6(v6) => record.ipv6.push(v6),
                    }
                }
            }
        }
    }

    /// Forgets the view: the next recheck reads the node's ENIs again.
    #[cfg(test)]
    pub fn forget_view(&self) {
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Takes in the Multus ENIs as EC2 has them now.
    pub(super) fn set_view(&self, records: Vec<EniRecord>) {
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), records));
    }
}
