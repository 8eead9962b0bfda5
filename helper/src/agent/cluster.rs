//! The node's pods as the API server has them: a `kube` watcher of the pods with
//! `spec.nodeName` = this node (list, then watch), kept as what the pod API and the reclaim
//! need of each pod: its pod IPs and its [`Claims`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use ipmgr_eni::{Claims, ClaimsError, FLOATING_IPS_ANNOTATION, NETWORK_STATUS_ANNOTATION};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

/// How long to wait before building the Kubernetes client again after it failed.
const CLIENT_RETRY: Duration = Duration::from_secs(10);

/// What the agent keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// `namespace/name`.
    pub key: String,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// What it may claim, or why its annotations do not parse.
    pub claims: Result<Claims, ClaimsError>,
}

impl PodRecord {
    /// The record of `pod`; `None` for a pod that no longer runs (Succeeded, Failed): its
    /// pod IP may already be another pod's; and for a host-network pod, whose pod IP is the
    /// node's and which has no network of its own to claim.
    pub fn of(pod: &Pod) -> Option<PodRecord> {
        if pod.spec.as_ref().and_then(|spec| spec.host_network) == Some(true) {
            return None;
        }
        let status = pod.status.as_ref();
        if status
            .and_then(|status| status.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
        {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .and_then(|status| status.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if let Some(ip) = status
            .and_then(|status| status.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        let annotations = pod.metadata.annotations.as_ref();
        let annotation = |name: &str| {
            annotations
                .and_then(|all| all.get(name))
                .map(String::as_str)
        };
        Some(PodRecord {
            key: key_of(pod),
            ips,
            claims: Claims::from_annotations(
                annotation(NETWORK_STATUS_ANNOTATION),
                annotation(FLOATING_IPS_ANNOTATION),
            ),
        })
    }
}

/// The node's pods, shared by the watcher (which writes) and the pod API and the reclaim
/// (which read). Clones share one view.
#[derive(Debug, Clone)]
pub struct NodePods {
    view: Arc<RwLock<View>>,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct View {
    /// Whether a complete list has been seen.
    synced: bool,
    /// By `namespace/name`.
    pods: BTreeMap<String, PodRecord>,
}

impl Default for NodePods {
    fn default() -> Self {
        NodePods {
            view: Arc::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl NodePods {
    /// Whether the pods have been listed since the agent started.
    pub fn synced(&self) -> bool {
        self.read(|view| view.synced)
    }

    /// The live pod whose pod IP is `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> Option<PodRecord> {
        self.read(|view| {
            view.pods
                .values()
                .find(|pod| pod.ips.contains(&ip))
                .cloned()
        })
    }

    /// The live pod `namespace/name`.
    pub fn by_key(&self, key: &str) -> Option<PodRecord> {
        self.read(|view| view.pods.get(key).cloned())
    }

    /// Every address or CIDR a live pod of the node claims: never given back.
    pub fn claimed(&self) -> Vec<IpNet> {
        self.read(|view| {
            view.pods
                .values()
                .filter_map(|pod| pod.claims.as_ref().ok())
                .flat_map(|claims| {
                    let recorded = claims.recorded.iter().map(|&address| IpNet::from(address));
                    recorded.chain(claims.floating.iter().copied())
                })
                .collect()
        })
    }

    /// A receiver that sees every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes in `pod`, added or changed.
    pub fn apply(&self, pod: &Pod) {
        let key = key_of(pod);
        self.write(|view| match PodRecord::of(pod) {
            Some(record) => {
                view.pods.insert(key, record);
            }
            None => {
                view.pods.remove(&key);
            }
        });
    }

    /// Forgets `pod`, deleted.
    pub fn delete(&self, pod: &Pod) {
        let key = key_of(pod);
        self.write(|view| {
            view.pods.remove(&key);
        });
    }

    /// Replaces every pod with a complete list.
    pub fn replace(&self, pods: &[Pod]) {
        let records: BTreeMap<String, PodRecord> = pods
            .iter()
            .filter_map(PodRecord::of)
            .map(|record| (record.key.clone(), record))
            .collect();
        self.write(|view| {
            view.pods = records;
            view.synced = true;
        });
    }

    fn read<T>(&self, look: impl FnOnce(&View) -> T) -> T {
        look(
            &self
                .view
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn write(&self, change: impl FnOnce(&mut View)) {
        change(
            &mut self
                .view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.changes.send_modify(|version| *version += 1);
    }
}

/// `namespace/name`.
fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Follows the pods of `node_name` into `pods` for the agent's lifetime: the API server found
/// as kube's `Config::infer` finds it (KUBECONFIG, else the in-cluster service account),
/// relisting after errors with kube's default backoff. Never returns.
pub async fn follow(pods: NodePods, node_name: String) {
    let client = loop {
        match kube::Client::try_default().await {
            Ok(client) => break client,
            Err(error) => {
                tracing::error!(%error, "cannot build the Kubernetes client (KUBECONFIG or the in-cluster service account); the pod API answers 503 until it can list the node's pods");
                tokio::time::sleep(CLIENT_RETRY).await;
            }
        }
    };
    let api: kube::Api<Pod> = kube::Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut listing: Vec<Pod> = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => listing.push(pod),
            Ok(Event::InitDone) => {
                pods.replace(&listing);
                tracing::info!(
                    node = node_name,
                    pods = listing.len(),
                    "listed the node's pods"
                );
                listing.clear();
            }
            Ok(Event::Apply(pod)) => pods.apply(&pod),
            Ok(Event::Delete(pod)) => pods.delete(&pod),
            Err(error) => {
                tracing::warn!(%error, "watching the node's pods failed; listing them again (the pod API keeps answering from what it knows)");
            }
        }
    }
}
