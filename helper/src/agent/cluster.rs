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
    NETWORK_STATUS_ANNOTATION, RESOURCE_PREFIX,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
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
    /// What it requests of each of the agent's extended resources (`multus-ipmgr.io/...`).
    pub multus_requests: BTreeMap<String, u64>,
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
            multus_requests: pod.spec.as_ref().map(multus_requests).unwrap_or_default(),
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

/// What `spec` requests of each of the agent's extended resources, as the scheduler counts
/// a pod's request (the larger of the app containers' sum and the largest init container's;
/// an extended resource's request equals its limit, and a limit alone is the request).
fn multus_requests(spec: &PodSpec) -> BTreeMap<String, u64> {
    let of = |container: &Container| -> BTreeMap<String, u64> {
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        requests
            .into_iter()
            .chain(limits)
            .flatten()
            .filter(|(name, _)| name.starts_with(RESOURCE_PREFIX))
            .filter_map(|(name, quantity)| Some((name.clone(), quantity.0.parse::<u64>().ok()?)))
            .fold(BTreeMap::new(), |mut taken, (name, count)| {
                let entry = taken.entry(name).or_insert(0);
                *entry = (*entry).max(count);
                taken
            })
    };
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for container in &spec.containers {
        for (name, count) in of(container) {
            *total.entry(name).or_insert(0) += count;
        }
    }
    for init in spec.init_containers.iter().flatten() {
        for (name, count) in of(init) {
            let entry = total.entry(name).or_insert(0);
            *entry = (*entry).max(count);
        }
    }
    total
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

    /// What the node's live pods request of each of the agent's extended resources, summed.
    pub fn multus_requests(&self) -> BTreeMap<String, u64> {
        self.read(|view| {
            let mut total = BTreeMap::new();
            for (name, count) in view.pods.values().flat_map(|pod| &pod.multus_requests) {
                *total.entry(name.clone()).or_insert(0) += count;
            }
            total
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// One resource of a container: name, request, limit (`None`: not set).
    type Entry = (&'static str, Option<&'static str>, Option<&'static str>);

    fn container(resources: &[Entry]) -> Value {
        let side = |pick: fn(&Entry) -> Option<&'static str>| -> Value {
            Value::Object(
                resources
                    .iter()
                    .filter_map(|entry| Some((entry.0.to_owned(), pick(entry)?.into())))
                    .collect(),
            )
        };
        json!({"name": "c", "resources": {"requests": side(|entry| entry.1), "limits": side(|entry| entry.2)}})
    }

    /// A running pod `name` with these containers and init containers.
    fn pod(name: &str, containers: &[&[Entry]], init: &[&[Entry]]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {
                "containers": containers.iter().map(|c| container(c)).collect::<Vec<_>>(),
                "initContainers": init.iter().map(|c| container(c)).collect::<Vec<_>>(),
            },
            "status": {"phase": "Running", "podIP": "198.19.0.9"},
        }))
        .expect("a pod")
    }

    const ETH1: &str = "multus-ipmgr.io/eth1";
    const ETH2: &str = "multus-ipmgr.io/eth2";

    #[test]
    fn requests_of_the_agents_resources_are_counted_as_the_scheduler_counts_them() {
        let pods = NodePods::default();
        pods.replace(&[
            // Two app containers add up; a limit alone is the request; others are not ours.
            pod(
                "a",
                &[
                    &[(ETH1, Some("1"), Some("1")), ("cpu", Some("100m"), None)],
                    &[
                        (ETH1, None, Some("2")),
                        ("example.com/dongle", Some("1"), Some("1")),
                    ],
                ],
                &[],
            ),
            // An init container's larger request is the pod's.
            pod(
                "b",
                &[&[(ETH2, Some("1"), Some("1"))]],
                &[&[(ETH2, Some("3"), Some("3"))]],
            ),
        ]);
        assert_eq!(
            pods.multus_requests(),
            BTreeMap::from([(ETH1.to_owned(), 3), (ETH2.to_owned(), 3)])
        );
        let mut finished = pod("c", &[&[(ETH1, Some("5"), Some("5"))]], &[]);
        finished.status.as_mut().expect("a status").phase = Some("Succeeded".to_owned());
        pods.apply(&finished);
        assert_eq!(
            pods.multus_requests()[ETH1],
            3,
            "a finished pod requests nothing"
        );
    }
}
