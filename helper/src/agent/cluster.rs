//! What the API server says about the node: its pods (a mirror of the pods with
//! `spec.nodeName` = this node) and every namespace's floating-IP grant (a mirror of the
//! namespaces), kept as what the pod API and the releases need: each pod's IPs and
//! [`Claims`], each namespace's grant ([`Grants`]), and when each mirror last confirmed it
//! is current. The API server is followed into it by [`super::follow`].
//!
//! Why not kube's reflector `Store`: it keeps objects by name only, where the pod API looks
//! pods up by pod IP and the releases by namespace grant, and it sits on kube's `watcher`,
//! which swallows the bookmarks that confirm a quiet view is current ([`super::mirror`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipmgr_eni::{
    Claimant, Claims, ClaimsError, FLOATING_IP_CIDRS_ANNOTATION, FLOATING_IPS_ANNOTATION, Grants,
    NETWORK_STATUS_ANNOTATION,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use tokio::sync::watch;

/// What the agent keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// `namespace/name`.
    pub key: String,
    /// `metadata.namespace`.
    pub namespace: String,
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
        let annotation = |name: &str| annotation(&pod.metadata, name);
        Some(PodRecord {
            key: key_of(pod),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            ips,
            claims: Claims::from_annotations(
                annotation(NETWORK_STATUS_ANNOTATION),
                annotation(FLOATING_IPS_ANNOTATION),
            ),
        })
    }

    /// The pod as a claimant, when its annotations parse.
    pub fn claimant(&self) -> Option<Claimant<'_>> {
        Some(Claimant {
            pod: &self.key,
            namespace: &self.namespace,
            claims: self.claims.as_ref().ok()?,
        })
    }
}

/// The pods of the node with a given pod IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByIp {
    /// None (not seen yet, or not a pod of this node).
    None,
    /// One.
    One(PodRecord),
    /// Several live pod records share it (a pod IP reused while the API server's view
    /// lags): whose request it is cannot be told; their `namespace/name`s.
    Several(Vec<String>),
}

/// The node's pods and the namespaces' grants, shared by the mirrors (which write) and the
/// pod API and the releases (which read). Clones share one view.
#[derive(Debug, Clone)]
pub struct NodePods {
    view: Arc<RwLock<View>>,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct View {
    /// When the pods were last listed, or their watch delivered (`None`: never listed).
    pods_confirmed: Option<Instant>,
    /// The same for the namespaces.
    namespaces_confirmed: Option<Instant>,
    /// By `namespace/name`.
    pods: BTreeMap<String, PodRecord>,
    grants: Grants,
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
    /// Whether the pods and the namespaces have both been listed since the agent started.
    pub fn synced(&self) -> bool {
        self.read(|view| view.pods_confirmed.is_some() && view.namespaces_confirmed.is_some())
    }

    /// Why the view cannot be taken as current, when it cannot: not listed yet, or a
    /// mirror that has not confirmed it is current within `bound`.
    pub fn staleness(&self, bound: Duration) -> Option<String> {
        self.read(|view| {
            [
                ("the node's pods", view.pods_confirmed),
                ("the namespaces", view.namespaces_confirmed),
            ]
            .into_iter()
            .find_map(|(what, confirmed)| match confirmed {
                None => Some(format!("{what} have not been listed from the API server yet (KUBECONFIG or the in-cluster service account; RBAC get, list, watch on pods and namespaces)")),
                Some(at) if at.elapsed() > bound => Some(format!(
                    "the API server has not confirmed the agent's view of {what} for {}s (no event or bookmark; --pod-watch-stale-seconds {}): relisting",
                    at.elapsed().as_secs(),
                    bound.as_secs()
                )),
                Some(_) => None,
            })
        })
    }

    /// The live pods of the node whose pod IP is `ip`.
    pub fn by_ip(&self, ip: IpAddr) -> ByIp {
        self.read(|view| {
            let mut found: Vec<&PodRecord> = view
                .pods
                .values()
                .filter(|pod| pod.ips.contains(&ip))
                .collect();
            match found.len() {
                0 => ByIp::None,
                1 => ByIp::One(found.remove(0).clone()),
                _ => ByIp::Several(found.iter().map(|pod| pod.key.clone()).collect()),
            }
        })
    }

    /// The live pod `namespace/name`.
    pub fn by_key(&self, key: &str) -> Option<PodRecord> {
        self.read(|view| view.pods.get(key).cloned())
    }

    /// `judge` over the node's live pods (as claimants) and the grants.
    pub fn judge<T>(&self, judge: impl FnOnce(&[Claimant<'_>], &Grants) -> T) -> T {
        self.read(|view| {
            let claimants: Vec<Claimant<'_>> =
                view.pods.values().filter_map(PodRecord::claimant).collect();
            judge(&claimants, &view.grants)
        })
    }

    /// Every address or CIDR a live pod of the node has a claim on that protects it from
    /// being released: its record, and its floating declarations inside its namespace's
    /// grant ([`Claimant::protected`]).
    pub fn protected(&self) -> Vec<IpNet> {
        self.judge(|claimants, grants| {
            claimants
                .iter()
                .flat_map(|claimant| claimant.protected(grants))
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
            view.pods_confirmed = Some(Instant::now());
        });
    }

    /// Takes in the grant of `namespace`, added or changed.
    pub fn apply_namespace(&self, namespace: &Namespace) {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let grant = annotation(&namespace.metadata, FLOATING_IP_CIDRS_ANNOTATION);
        let mut changed = false;
        self.write(|view| changed = view.grants.set(&name, grant));
        if changed {
            self.warn_about_grants();
        }
    }

    /// Forgets the grant of `namespace`, deleted.
    pub fn delete_namespace(&self, namespace: &Namespace) {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        self.write(|view| {
            view.grants.remove(&name);
        });
    }

    /// Replaces every grant with a complete list of the namespaces.
    pub fn replace_namespaces(&self, namespaces: &[Namespace]) {
        let mut grants = Grants::default();
        for namespace in namespaces {
            let name = namespace.metadata.name.as_deref().unwrap_or_default();
            grants.set(
                name,
                annotation(&namespace.metadata, FLOATING_IP_CIDRS_ANNOTATION),
            );
        }
        self.write(|view| {
            view.grants = grants;
            view.namespaces_confirmed = Some(Instant::now());
        });
        self.warn_about_grants();
    }

    /// Notes that the pods' mirror is current as of now.
    pub fn confirm_pods(&self) {
        self.write_quietly(|view| view.pods_confirmed = Some(Instant::now()));
    }

    /// Notes that the namespaces' mirror is current as of now.
    pub fn confirm_namespaces(&self) {
        self.write_quietly(|view| view.namespaces_confirmed = Some(Instant::now()));
    }

    /// Makes both confirmations `by` older, as if the mirrors had been quiet that long.
    #[cfg(test)]
    pub fn age_confirmations(&self, by: Duration) {
        self.write_quietly(|view| {
            for confirmed in [&mut view.pods_confirmed, &mut view.namespaces_confirmed] {
                *confirmed = confirmed.and_then(|at| at.checked_sub(by));
            }
        });
    }

    /// Logs what an admin should fix in the grants: annotations that do not parse, and
    /// namespaces granted overlapping addresses.
    fn warn_about_grants(&self) {
        self.read(|view| {
            for error in view.grants.invalid() {
                tracing::warn!(%error, "invalid floating-IP grant");
            }
            for overlap in view.grants.overlaps() {
                tracing::warn!(%overlap, "overlapping floating-IP grants");
            }
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

    fn write_quietly(&self, change: impl FnOnce(&mut View)) {
        change(
            &mut self
                .view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    fn write(&self, change: impl FnOnce(&mut View)) {
        self.write_quietly(change);
        self.changes.send_modify(|version| *version += 1);
    }
}

/// The value of annotation `name`.
fn annotation<'a>(
    metadata: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    name: &str,
) -> Option<&'a str> {
    metadata
        .annotations
        .as_ref()
        .and_then(|all| all.get(name))
        .map(String::as_str)
}

/// `namespace/name`.
fn key_of(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}
