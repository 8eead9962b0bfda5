//! Who asks the pod API: the live pod of this node whose pod IP the connection comes from
//! (the API server's view) and the network namespace the kernel says it comes from; both
//! must agree and be unambiguous.

use std::net::IpAddr;
use std::time::Duration;

use super::cluster::{ByIp, PodRecord};
use super::holders::HolderPods;
use super::netns::{Caller, PodNamespace, PodScanner};
use super::refused::Refused;
use super::serve::PodService;
use crate::aws::Ec2Api;

/// How long a request waits for the API server's view of its pod to catch up (a pod just
/// created, or Multus' network-status record not yet seen through the watch).
pub(super) const CATCH_UP: Duration = Duration::from_secs(5);

impl<E, S, H> PodService<E, S, H>
where
    E: Ec2Api + Clone + Send + Sync + 'static,
    S: PodScanner + 'static,
    H: HolderPods + 'static,
{
    /// Who `peer` is: its pod and network namespace ([`Self::identify`]), once the view of
    /// the API server is listed; nothing of the request is needed for it.
    pub(super) async fn caller(&self, peer: IpAddr) -> Result<(PodRecord, PodNamespace), Refused> {
        if !self.pods.synced() {
            return Err(Refused::unavailable(
                "not_listed",
                format!(
                    "the node agent on {} has not listed the node's pods and the namespaces from the API server yet; the helper tries again (check the agent's log and its RBAC: get, list, watch on pods and namespaces)",
                    self.node_name
                ),
            ));
        }
        self.identify(peer).await
    }

    /// The pod `peer` is, by the API server and by the kernel: 403 when it is no pod of
    /// this node, 503 (asked again) while the API server's view has not caught up or the
    /// caller cannot be told from another.
    pub(super) async fn identify(
        &self,
        peer: IpAddr,
    ) -> Result<(PodRecord, PodNamespace), Refused> {
        let listed = self
            .caught_up(|| match self.pods.by_ip(peer) {
                ByIp::None => None,
                found => Some(found),
            })
            .await
            .unwrap_or(ByIp::None);
        let primary = &self.placer.options.primary_interface;
        let kernel = self.scanner.find(peer, primary).await.map_err(|error| {
            Refused::unavailable(
                "namespaces_unread",
                format!("cannot read the pod network namespaces: {error}"),
            )
        })?;
        let node = &self.node_name;
        let conflict = |reason: &'static str, error: String| {
            self.metrics.identity_conflict(reason);
            Refused::unavailable(reason, error)
        };
        match (listed, kernel) {
            (ByIp::Several(pods), _) => Err(conflict(
                "duplicate_pod_ip",
                format!(
                    "the API server lists several live pods of node {node} with pod IP {peer} ({}): a pod IP reused while the agent's view lags; nothing is done until only one is left, and the helper asks again",
                    pods.join(", ")
                ),
            )),
            (_, Caller::Ambiguous(paths)) => Err(conflict(
                "duplicate_on_primary",
                format!(
                    "several pod network namespaces of node {node} carry {peer} on {primary} ({}) and the node's routes do not say which one it is: a pod with NET_ADMIN may have added a neighbour's pod IP to its own {primary}; nothing is done for either until one is left, and the helper asks again",
                    paths
                        .iter()
                        .map(|path| path.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            (ByIp::One(pod), Caller::Found(namespace)) => Ok((pod, namespace)),
            (ByIp::One(pod), Caller::Absent) => Err(Refused::forbidden(
                "not_from_its_namespace",
                format!(
                    "pod {} has pod IP {peer}, but no pod network namespace on node {node} carries it on {primary}: the request did not come from that pod",
                    pod.key
                ),
            )),
            (ByIp::None, Caller::Found(namespace)) => Err(Refused::unavailable(
                "pod_not_seen_yet",
                format!(
                    "a pod network namespace of node {node} ({}) carries {peer}, but the API server's view lists no live pod of the node with that pod IP yet (a pod just created, or a watch that lags); the helper asks again",
                    namespace.path.display()
                ),
            )),
            (ByIp::None, Caller::Absent) => Err(Refused::forbidden(
                "no_pod",
                format!(
                    "{peer} is the pod IP of no live pod on node {node} (the API server lists none, and no pod network namespace of the node carries it): the pod API serves only this node's pods, from their own network namespace"
                ),
            )),
        }
    }

    /// `found()` now, or after the API server's view changed, within [`CATCH_UP`].
    pub(super) async fn caught_up<T>(&self, found: impl Fn() -> Option<T>) -> Option<T> {
        let mut changes = self.pods.subscribe();
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            if let Some(value) = found() {
                return Some(value);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}
