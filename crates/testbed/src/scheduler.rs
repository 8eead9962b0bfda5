//! A model of kube-scheduler's placement of pods by their resource requests, for the
//! capacity simulations: the filter is NodeResourcesFit (pkg/scheduler/framework/plugins/
//! noderesources/fit.go, `fitsRequest`: a node fits when, for every resource the pod
//! requests, the node's allocatable less what its pods already request covers it; a
//! resource the node does not advertise is allocatable 0; every pod takes one of the
//! node's `pods`), and among the nodes that fit the one with the fewest pods is taken (ties
//! by name): the default scores spread pods with no CPU or memory requests about evenly,
//! and the model spreads them exactly so that a run is repeatable.

use std::collections::BTreeMap;

/// One node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerNode {
    /// The Node's name.
    pub name: String,
    /// Its `status.allocatable`, integer resources only (`pods` among them).
    pub allocatable: BTreeMap<String, u64>,
    /// What the pods placed on it request, summed (`pods` among them).
    pub requested: BTreeMap<String, u64>,
}

impl SchedulerNode {
    /// A node with `allocatable` and no pod.
    pub fn new(name: &str, allocatable: BTreeMap<String, u64>) -> Self {
        SchedulerNode {
            name: name.to_owned(),
            allocatable,
            requested: BTreeMap::new(),
        }
    }

    /// The resources among `requests` (and one pod) that the node cannot give.
    fn insufficient(&self, requests: &BTreeMap<String, u64>) -> Vec<String> {
        let pods = BTreeMap::from([("pods".to_owned(), 1)]);
        requests
            .iter()
            .chain(&pods)
            .filter(|(resource, wanted)| {
                let allocatable = self.allocatable.get(*resource).copied().unwrap_or(0);
                let taken = self.requested.get(*resource).copied().unwrap_or(0);
                allocatable.saturating_sub(taken) < **wanted
            })
            .map(|(resource, _)| resource.clone())
            .collect()
    }

    fn pods(&self) -> u64 {
        self.requested.get("pods").copied().unwrap_or(0)
    }
}

/// Places one pod requesting `requests` on one of `nodes` and counts it there; the node's
/// name, or kube-scheduler's message when none fits (`0/2 nodes are available: 2
/// Insufficient multus-ipmgr.io/eth1.`, as the pod's PodScheduled condition says).
pub fn schedule(
    nodes: &mut [SchedulerNode],
    requests: &BTreeMap<String, u64>,
) -> Result<String, String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<usize> = None;
    for (index, node) in nodes.iter().enumerate() {
        let insufficient = node.insufficient(requests);
        if insufficient.is_empty() {
            let better = best.is_none_or(|chosen| {
                (node.pods(), &node.name) < (nodes[chosen].pods(), &nodes[chosen].name)
            });
            if better {
                best = Some(index);
            }
        }
        for resource in insufficient {
            *reasons.entry(resource).or_insert(0) += 1;
        }
    }
    let Some(chosen) = best else {
        let reasons: Vec<String> = reasons
            .iter()
            .map(|(resource, count)| format!("{count} Insufficient {resource}"))
            .collect();
        return Err(format!(
            "0/{} nodes are available: {}.",
            nodes.len(),
            reasons.join(", ")
        ));
    };
    let node = &mut nodes[chosen];
    for (resource, wanted) in requests
        .iter()
        .chain(&BTreeMap::from([("pods".to_owned(), 1)]))
    {
        *node.requested.entry(resource.clone()).or_insert(0) += wanted;
    }
    Ok(node.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, resources: &[(&str, u64)]) -> SchedulerNode {
        SchedulerNode::new(
            name,
            resources
                .iter()
                .map(|(resource, count)| ((*resource).to_owned(), *count))
                .collect(),
        )
    }

    #[test]
    fn pods_without_requests_spread_evenly_whatever_the_enis_hold() {
        let mut nodes = [
            node("small", &[("pods", 29), ("multus-ipmgr.io/eth1", 9)]),
            node("large", &[("pods", 58), ("multus-ipmgr.io/eth1", 29)]),
        ];
        let placed: Vec<String> = (0..20)
            .map(|_| schedule(&mut nodes, &BTreeMap::new()).expect("room"))
            .collect();
        assert_eq!(placed.iter().filter(|name| *name == "small").count(), 10);
        assert_eq!(placed.iter().filter(|name| *name == "large").count(), 10);
    }

    #[test]
    fn requests_keep_each_node_within_its_capacity_then_pods_wait() {
        let mut nodes = [
            node("small", &[("pods", 29), ("multus-ipmgr.io/eth1", 9)]),
            node("large", &[("pods", 58), ("multus-ipmgr.io/eth1", 29)]),
            node("plain", &[("pods", 29)]),
        ];
        let requests = BTreeMap::from([("multus-ipmgr.io/eth1".to_owned(), 1)]);
        let placed: Vec<Result<String, String>> =
            (0..40).map(|_| schedule(&mut nodes, &requests)).collect();
        let on = |name: &str| placed.iter().filter(|p| p.as_deref() == Ok(name)).count();
        assert_eq!((on("small"), on("large"), on("plain")), (9, 29, 0));
        assert_eq!(
            placed[38],
            Err("0/3 nodes are available: 3 Insufficient multus-ipmgr.io/eth1.".to_owned())
        );
    }

    #[test]
    fn the_pods_allocatable_limits_too() {
        let mut nodes = [node("tiny", &[("pods", 1)])];
        assert_eq!(
            schedule(&mut nodes, &BTreeMap::new()),
            Ok("tiny".to_owned())
        );
        assert_eq!(
            schedule(&mut nodes, &BTreeMap::new()),
            Err("0/1 nodes are available: 1 Insufficient pods.".to_owned())
        );
    }
}
