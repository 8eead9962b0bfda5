//! Whose pods an address on another node's Multus ENI belongs to, for the one case where
//! the pod API would take an address from another node without a grant: an address Multus
//! recorded for the asking pod (a static-IPAM network, a whereabouts address reused after a
//! pod moved) that EC2 still has on another instance's Multus ENI. The move goes ahead only
//! when no live pod of another namespace on that node claims the address.
//!
//! The instance is the Node whose `spec.providerID` is `aws:///<zone>/<instance-id>` (the
//! AWS cloud provider sets it so; Node objects cannot be selected by it), listed in pages
//! and cached; then that node's pods, by the field selector `spec.nodeName`. Both are read
//! only for such a move, never per request. RBAC: `list` on nodes and pods.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;

use super::cluster::PodRecord;
use super::follow::SharedClient;

/// How long a list of the Nodes answers for instances it names; an instance it does not
/// name is looked up again after this long at most.
const NODES_TTL: Duration = Duration::from_secs(60);

/// Nodes per page of the list.
const PAGE: u32 = 100;

/// The live pods of the node an instance is, wherever that comes from ([`KubeHolders`];
/// tests use a map).
pub trait HolderPods: Send + Sync {
    /// The live pods of the node whose instance is `instance_id` (none when no Node is that
    /// instance: then no pod of the cluster runs there), or why they cannot be told.
    fn pods_of_instance(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<PodRecord>, String>> + Send;
}

/// [`HolderPods`] from the API server.
#[derive(Default)]
pub struct KubeHolders {
    client: SharedClient,
    /// Instance id to node name, and when it was listed.
    nodes: Mutex<Option<(Instant, BTreeMap<String, String>)>>,
}

impl std::fmt::Debug for KubeHolders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeHolders").finish_non_exhaustive()
    }
}

impl KubeHolders {
    /// Lookups through `client`, once it is built.
    pub fn new(client: SharedClient) -> Self {
        KubeHolders {
            client,
            nodes: Mutex::default(),
        }
    }

    /// The node name of `instance_id` from the cached list, if it is recent enough.
    fn cached(&self, instance_id: &str) -> Option<Option<String>> {
        let nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, names) = nodes.as_ref()?;
        match names.get(instance_id) {
            Some(name) => Some(Some(name.clone())),
            None if at.elapsed() < NODES_TTL => Some(None),
            None => None,
        }
    }

    /// Lists the Nodes (in pages) and keeps instance id to node name.
    async fn list_nodes(&self, client: &kube::Client) -> Result<(), kube::Error> {
        let api: kube::Api<Node> = kube::Api::all(client.clone());
        let mut names = BTreeMap::new();
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = api.list(&params).await?;
            for node in &page.items {
                let instance = node
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.provider_id.as_deref())
                    .and_then(instance_of_provider_id);
                if let (Some(instance), Some(name)) = (instance, &node.metadata.name) {
                    names.insert(instance.to_owned(), name.clone());
                }
            }
            match page.metadata.continue_.as_deref() {
                Some(token) if !token.is_empty() => params = params.continue_token(token),
                _ => break,
            }
        }
        *self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), names));
        Ok(())
    }
}

impl HolderPods for KubeHolders {
    async fn pods_of_instance(&self, instance_id: &str) -> Result<Vec<PodRecord>, String> {
        let Some(client) = self.client.get().cloned() else {
            return Err("the agent has no Kubernetes client yet".to_owned());
        };
        let node = match self.cached(instance_id) {
            Some(node) => node,
            None => {
                self.list_nodes(&client)
                    .await
                    .map_err(|error| format!("cannot list the cluster's nodes: {error}"))?;
                self.cached(instance_id).flatten()
            }
        };
        let Some(node) = node else {
            return Ok(Vec::new());
        };
        let api: kube::Api<Pod> = kube::Api::all(client);
        let pods = api
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|error| format!("cannot list the pods of node {node}: {error}"))?;
        Ok(pods.items.iter().filter_map(PodRecord::of).collect())
    }
}

/// The instance id of an AWS provider id, `aws:///<zone>/<instance-id>`.
fn instance_of_provider_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws://")?;
    rest.rsplit('/').next().filter(|id| id.starts_with("i-"))
}

#[cfg(test)]
mod tests {
    use super::instance_of_provider_id;

    #[test]
    fn the_instance_is_the_last_part_of_an_aws_provider_id() {
        let table = [
            (
                "aws:///us-west-2a/i-0123456789abcdef0",
                Some("i-0123456789abcdef0"),
            ),
            ("aws://us-west-2a/i-0abc", Some("i-0abc")),
            ("aws:///us-west-2a/fargate-ip-10-0-1-2", None),
            ("gce://project/zone/node-1", None),
            ("", None),
        ];
        for (provider_id, expected) in table {
            assert_eq!(
                instance_of_provider_id(provider_id),
                expected,
                "{provider_id}"
            );
        }
    }
}
