//! Advertising the node's Multus address capacity on its Node: one extended resource per
//! Multus ENI (`multus-ipmgr.io/<interface>`, [`ipmgr_eni::advertised`]), written into
//! `status.capacity` with a JSON Patch of `nodes/NAME/status` (RBAC `patch` on
//! `nodes/status`; the Node is read with the `list` the agent already has, by field
//! selector). It is checked at start and every `--capacity-seconds`, and written only when
//! it differs: the kubelet drops extended resources when it registers the node afresh (a
//! Node object deleted and made again), so the agent puts them back. Alongside, it sets the
//! gauges of the capacity and of the addresses no scheduled request accounts for.
//!
//! Why not a device plugin: its resources are per device and allocated by the kubelet to
//! containers, where an address is taken by the pod's IPAM; a plain extended resource is
//! what the scheduler needs (Kubernetes "Advertise Extended Resources for a Node"), as the
//! VPC resource controller advertises `vpc.amazonaws.com/pod-eni`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::header::CONTENT_TYPE;
use ipmgr_eni::{EniCapacity, advertised, capacity_patch, unaccounted};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use serde_json::Value;

use super::cluster::NodePods;
use super::follow::{SharedClient, client};
use super::metrics::{AgentMetrics, ResourceLabel};
use super::share::NodeShare;
use crate::aws::{Ec2, Metadata};
use crate::netlink;

/// How soon to try again when something the capacity depends on is not known yet (the
/// first round, the instance type's limit, the Node).
const RETRY: Duration = Duration::from_secs(5);

/// How often to look whether the agent's first round has read the node's ENIs.
const FIRST_ROUND_POLL: Duration = Duration::from_millis(200);

/// Failed checks in a row tried again after [`RETRY`]; later ones wait the whole period
/// (a missing permission does not fix itself within seconds).
const QUICK_RETRIES: u32 = 3;

/// What the advertiser works from.
pub(super) struct Advertiser {
    /// The Node to write.
    pub node_name: String,
    /// The Kubernetes client, built once.
    pub client: SharedClient,
    /// Reads the instance type.
    pub metadata: Metadata,
    /// Reads the instance type's per-interface limit.
    pub ec2: Ec2,
    /// The node's ENIs and which are Multus ENIs, as the rounds saw them.
    pub share: Arc<NodeShare>,
    /// The node's pods, for their requests.
    pub pods: NodePods,
    /// Where the gauges go.
    pub metrics: Arc<AgentMetrics>,
    /// `--capacity-seconds`.
    pub period: Duration,
}

impl Advertiser {
    /// Keeps the Node's capacity current for the agent's lifetime.
    pub(super) async fn run(self) {
        let client = client(&self.client).await;
        // The first round reads the node's ENIs; until then there is nothing to advertise.
        while self.share.node().is_none() {
            tokio::time::sleep(FIRST_ROUND_POLL).await;
        }
        let mut per_interface = None;
        let mut last_unadvertised = BTreeSet::new();
        let mut failures = 0;
        loop {
            let next = match self
                .check(&client, &mut per_interface, &mut last_unadvertised)
                .await
            {
                Ok(()) => {
                    failures = 0;
                    self.period
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(node = self.node_name, %error, "cannot advertise the node's Multus address capacity; trying again");
                    self.metrics.error("capacity");
                    if failures <= QUICK_RETRIES {
                        RETRY.min(self.period)
                    } else {
                        self.period
                    }
                }
            };
            tokio::time::sleep(next).await;
        }
    }

    /// One check: the capacity as it should be, against the Node as it is.
    async fn check(
        &self,
        client: &kube::Client,
        per_interface: &mut Option<u32>,
        last_unadvertised: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let Some((node, multus)) = self.share.node() else {
            return Err("the agent has not read the node's ENIs yet".to_owned());
        };
        let limit = match *per_interface {
            Some(limit) => limit,
            None => {
                let limit = self.per_interface_limit().await?;
                *per_interface = Some(limit);
                limit
            }
        };
        let interfaces = netlink::interfaces_by_mac()
            .await
            .map_err(|error| format!("cannot list the node's interfaces: {error}"))?;
        let (capacities, unadvertised) = advertised(&node, &multus, &interfaces, limit);
        let reasons: BTreeSet<String> = unadvertised.iter().map(ToString::to_string).collect();
        for reason in reasons.difference(last_unadvertised) {
            tracing::warn!(node = self.node_name, "{reason}");
        }
        *last_unadvertised = reasons;
        self.set_gauges(&capacities);
        let current = self.current_capacity(client).await?;
        let patch = capacity_patch(current.as_ref(), &capacities);
        if patch.is_empty() {
            return Ok(());
        }
        self.write(client, &patch).await?;
        for eni in &capacities {
            tracing::info!(
                node = self.node_name,
                resource = eni.resource,
                eni = eni.eni_id,
                capacity = eni.capacity,
                "advertised the Multus ENI's address capacity"
            );
        }
        Ok(())
    }

    /// The instance type's `Ipv4AddressesPerInterface` (instance metadata, then
    /// DescribeInstanceTypes: IAM `ec2:DescribeInstanceTypes`).
    async fn per_interface_limit(&self) -> Result<u32, String> {
        let instance_type = self
            .metadata
            .instance_type()
            .await
            .map_err(|error| error.to_string())?;
        self.ec2
            .ipv4_addresses_per_interface(&instance_type)
            .await
            .map_err(|error| format!("{error} (IAM: the agent's role needs ec2:DescribeInstanceTypes: manifests/samples/iam-policy-agent.json)"))?
            .ok_or_else(|| format!("DescribeInstanceTypes gives no Ipv4AddressesPerInterface for instance type {instance_type}"))
    }

    /// The Node's `status.capacity` (a list by field selector: the agent's RBAC has `list`
    /// on nodes, not `get`; from the API server's watch cache, `resourceVersion=0`, as a
    /// check every period of every node should be: a stale answer costs one idempotent
    /// patch, or one period).
    async fn current_capacity(
        &self,
        client: &kube::Client,
    ) -> Result<Option<serde_json::Map<String, Value>>, String> {
        let nodes = kube::Api::<Node>::all(client.clone())
            .list(
                &ListParams::default()
                    .fields(&format!("metadata.name={}", self.node_name))
                    .match_any(),
            )
            .await
            .map_err(|error| format!("cannot read Node {}: {error}", self.node_name))?;
        // By name, not the first item: a server that ignored the selector would answer
        // every Node.
        let node = nodes
            .items
            .into_iter()
            .find(|node| node.metadata.name.as_deref() == Some(self.node_name.as_str()))
            .ok_or_else(|| {
                format!(
                    "Node {} does not exist (NODE_NAME must be the node's name)",
                    self.node_name
                )
            })?;
        let capacity = node
            .status
            .and_then(|status| status.capacity)
            .map(|capacity| serde_json::to_value(capacity).unwrap_or_default());
        Ok(capacity.and_then(|value| match value {
            Value::Object(map) => Some(map),
            _ => None,
        }))
    }

    /// Sends the JSON Patch to `nodes/NAME/status`.
    async fn write(&self, client: &kube::Client, patch: &[Value]) -> Result<(), String> {
        let body = serde_json::to_vec(patch).unwrap_or_default();
        let request = Request::patch(format!("/api/v1/nodes/{}/status", self.node_name))
            .header(CONTENT_TYPE, "application/json-patch+json")
            .body(body)
            .map_err(|error| error.to_string())?;
        client
            .request::<Node>(request)
            .await
            .map(drop)
            .map_err(|error| {
                format!(
                    "cannot patch nodes/{}/status (RBAC: patch on nodes/status): {error}",
                    self.node_name
                )
            })
    }

    /// The capacity and unaccounted-address gauges, by resource.
    fn set_gauges(&self, capacities: &[EniCapacity]) {
        let requested = self.pods.multus_requests();
        self.metrics.capacity.clear();
        self.metrics.unaccounted.clear();
        for eni in capacities {
            let label = ResourceLabel {
                resource: eni.resource.clone(),
            };
            self.metrics
                .capacity
                .get_or_create(&label)
                .set(i64::from(eni.capacity));
            let requested = requested.get(&eni.resource).copied().unwrap_or(0);
            self.metrics
                .unaccounted
                .get_or_create(&label)
                .set(i64::try_from(unaccounted(eni.held, requested)).unwrap_or(i64::MAX));
        }
    }
}
