//! A pod's passes through the pod API: one at a time, shared by the requests that arrive
//! while one is in flight ([`Coalescer`]), and the addresses each pod was last answered
//! routable with, so that a `change` that changed nothing is answered from the agent's
//! view of the node's ENIs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use ipmgr_eni::PodAddress;

use super::cluster::PodRecord;
use super::coalesce::{Absorb, Coalescer};
use super::netns::PodNamespace;
use super::refused::Refused;
use ipmgr_eni::Reason;
use ipmgr_pod::api::RoutableAnswer;

/// A pod's passes are keyed by the pod and its network namespace.
type PassKey = (String, PathBuf);

/// One pass at a time per pod, shared by its requests ([`Coalescer`]), and the addresses
/// each pod was last answered routable with: a `change` that changed nothing since is
/// answered as a recheck, from the agent's view of the node's ENIs.
#[derive(Debug, Default)]
pub struct PodPasses {
    pub(super) in_flight: Arc<Coalescer<PassKey, Asked, Result<RoutableAnswer, Refused>>>,
    routable: Mutex<HashMap<String, (PathBuf, Vec<PodAddress>)>>,
}

impl PodPasses {
    /// Whether the pod in `namespace` was last answered routable with the addresses it
    /// carries now.
    pub(super) fn unchanged(&self, pod: &PodRecord, namespace: &PodNamespace) -> bool {
        let routable = self.routable.lock().unwrap_or_else(PoisonError::into_inner);
        routable.get(&pod.key).is_some_and(|(path, addresses)| {
            *path == namespace.path && *addresses == sorted(&namespace.addresses)
        })
    }

    /// Notes that the pod in `namespace` was answered routable (`true`) or not; forgets
    /// the pods `live` no longer knows.
    pub(super) fn answered(
        &self,
        pod: &PodRecord,
        namespace: &PodNamespace,
        routable: bool,
        live: impl Fn(&str) -> bool,
    ) {
        let mut answered = self.routable.lock().unwrap_or_else(PoisonError::into_inner);
        answered.retain(|key, _| live(key));
        if routable {
            let addresses = sorted(&namespace.addresses);
            answered.insert(pod.key.clone(), (namespace.path.clone(), addresses));
        } else {
            answered.remove(&pod.key);
        }
    }
}

fn sorted(addresses: &[PodAddress]) -> Vec<PodAddress> {
    let mut sorted = addresses.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
}

/// A pod's request as its pass takes it: the caller as the newest request found it (the
/// addresses its namespace carries then), and the most thorough reason of those folded in.
#[derive(Debug)]
pub(super) struct Asked {
    pub(super) caller: (PodRecord, PodNamespace),
    pub(super) reason: Reason,
}

impl Absorb for Asked {
    fn absorb(&mut self, newer: Asked) {
        self.caller = newer.caller;
        self.reason = self.reason.most_thorough(newer.reason);
    }
}
