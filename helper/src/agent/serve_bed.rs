//! The pod API over in-memory adapters: a node's agent with its pods, namespaces and EC2
//! ([`Bed`]), and how its tests ask it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use ipmgr_eni::{Backoff, MultusInterfaces, PlanOptions, RetryPolicy};
use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use serde_json::json;

use super::batch::BatchedEc2;
use super::cluster::{NodePods, PodRecord};
use super::holders::HolderPods;
use super::netns::PodNamespace;
use super::passes::PodPasses;
use super::serve::PodService;
use super::share::NodeShare;
use super::test_fakes::{FakeScanner, namespace_object};
use crate::config::ClaimsMode;
use crate::fakes::{FakeEc2, INSTANCE, eni, node, pod_address, record};
use crate::place::Placer;
use ipmgr_eni::Reason;
use ipmgr_pod::agent_client::{AgentApi, AnswerError, AskError, answer_of};
use ipmgr_pod::api::{RoutableAnswer, RoutableRequest};

/// A running pod `namespace/name` with pod IP `ip` and these annotations.
pub(crate) fn pod(
    key: &str,
    ip: &str,
    network_status: Option<&str>,
    floating: Option<&str>,
) -> Pod {
    let (namespace, name) = key.split_once('/').expect("namespace/name");
    let mut annotations = serde_json::Map::new();
    if let Some(record) = network_status {
        annotations.insert("k8s.v1.cni.cncf.io/network-status".into(), record.into());
    }
    if let Some(floating) = floating {
        annotations.insert("multus-ipmgr.io/floating-ips".into(), floating.into());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"nodeName": "node1", "containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .expect("pod")
}

/// Multus' record of a pod with `addresses` on net1.
pub(crate) fn recorded(addresses: &[&str]) -> String {
    json!([
        {"name": "aws-cni", "interface": "eth0", "ips": ["192.168.0.99"], "default": true},
        {"name": "default/ipvlan-eth1", "interface": "net1", "ips": addresses},
    ])
    .to_string()
}

/// The namespace of a pod with pod IP `ip` on eth0 and `addresses` on net1 (eth1's MAC).
pub(crate) fn namespace(ip: &str, addresses: &[&str]) -> PodNamespace {
    let mut all = vec![pod_address("eth0", 9, ip)];
    all.extend(
        addresses
            .iter()
            .map(|address| pod_address("net1", 1, address)),
    );
    PodNamespace {
        path: format!("/run/netns/cni-{ip}").into(),
        addresses: all,
    }
}

/// Pod default/a, pod IP 192.168.0.5, for which Multus recorded 10.0.1.50, and `namespace`.
pub(crate) fn pod_a(namespace: PodNamespace) -> Bed {
    let record = recorded(&["10.0.1.50"]);
    bed(
        vec![pod("default/a", "192.168.0.5", Some(&record), None)],
        vec![namespace],
        ClaimsMode::Recorded,
    )
}

/// The error of a 403 answer.
pub(crate) async fn forbidden(bed: &Bed, peer: &str) -> String {
    let (status, body) = ask(bed, peer, Reason::Start).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    body["error"].as_str().expect("error").to_owned()
}

/// The pods of other nodes, by instance (an error: that node's pods cannot be read).
#[derive(Debug, Default)]
pub(crate) struct FakeHolders(Mutex<BTreeMap<String, Result<Vec<PodRecord>, String>>>);

impl HolderPods for FakeHolders {
    async fn pods_of_instance(&self, instance_id: &str) -> Result<Vec<PodRecord>, String> {
        let holders = self.0.lock().expect("holders");
        holders.get(instance_id).cloned().unwrap_or(Ok(Vec::new()))
    }
}

/// An agent over in-memory adapters, and the EC2 it calls.
pub(crate) struct Bed {
    pub(crate) service: Arc<PodService<FakeEc2, FakeScanner, FakeHolders>>,
    pub(crate) ec2: FakeEc2,
}

/// The agent of a [`Bed`] as the pod at `peer` reaches it: the pod client's seam, in
/// process.
pub(crate) struct InProcessAgent {
    /// The agent.
    pub(crate) bed: Bed,
    /// The asking pod's IP.
    pub(crate) peer: IpAddr,
}

impl AgentApi for InProcessAgent {
    async fn ask(&self, reason: Reason) -> Result<RoutableAnswer, AskError> {
        let (status, body) = self
            .bed
            .service
            .answer(self.peer, RoutableRequest { reason })
            .await;
        answer_of(status, body.as_bytes()).map_err(|error| match error {
            AnswerError::Ask(error) => error,
            AnswerError::Unparsable(reason) => panic!("{reason}: {body}"),
        })
    }
}

impl Bed {
    /// The pods the API server lists on the node of `instance`.
    pub(crate) fn on_instance(&self, instance: &str, pods: Result<Vec<Pod>, &str>) {
        let records = pods
            .map(|pods| pods.iter().filter_map(PodRecord::of).collect())
            .map_err(str::to_owned);
        self.service
            .holders
            .0
            .lock()
            .expect("holders")
            .insert(instance.to_owned(), records);
    }

    /// The namespaces the API server lists, with their grants.
    pub(crate) fn granting(&self, grants: &[(&str, &str)]) {
        let namespaces: Vec<_> = grants
            .iter()
            .map(|&(name, cidrs)| {
                namespace_object(name, &[(ipmgr_eni::FLOATING_IP_CIDRS_ANNOTATION, cidrs)])
            })
            .collect();
        self.service.pods.replace_namespaces(&namespaces);
    }

    /// The count of claims refused for `reason`.
    pub(crate) fn refused(&self, reason: &'static str) -> u64 {
        self.service
            .metrics
            .claims_refused
            .get_or_create(&super::metrics::ReasonLabel { reason })
            .get()
    }
}

/// The fakes' node with these pods (API server) and namespaces (kernel); every namespace
/// is listed, none has a grant.
pub(crate) fn bed(pods: Vec<Pod>, namespaces: Vec<PodNamespace>, claims: ClaimsMode) -> Bed {
    let node = node();
    // Another node's Multus ENI in the same subnet, holding 10.0.1.70.
    let mut other = eni(1, "multus-node2");
    other.ipv4 = vec![
        "10.0.1.11".parse().expect("ip"),
        "10.0.1.70".parse().expect("ip"),
    ];
    let elsewhere = record(&other, "i-node2", true);
    let ec2 = FakeEc2::with(vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, true),
        elsewhere,
    ]);
    bed_with(ec2, node, pods, namespaces, claims)
}

/// The agent of `node` (as metadata shows it) over `ec2`, with these pods (API server)
/// and namespaces (kernel); every namespace is listed, none has a grant.
pub(crate) fn bed_with(
    ec2: FakeEc2,
    node: ipmgr_eni::NodeFacts,
    pods: Vec<Pod>,
    namespaces: Vec<PodNamespace>,
    claims: ClaimsMode,
) -> Bed {
    let known = NodePods::default();
    known.replace(&pods);
    known.replace_namespaces(&[]);
    let scanner = FakeScanner::default();
    scanner.with_namespaces(namespaces);
    let share = Arc::new(NodeShare::default());
    share.set_node(node, vec!["eni-multus".to_owned()]);
    let service = PodService {
        passes: PodPasses::default(),
        metrics: Arc::default(),
        node_name: "node1".to_owned(),
        pods: known,
        scanner,
        holders: FakeHolders::default(),
        claims,
        share,
        placer: Placer {
            options: PlanOptions {
                primary_interface: "eth0".to_owned(),
                interfaces: MultusInterfaces::Any,
                allow_primary_eni: false,
                allowed: Vec::new(),
            },
            ownership: ipmgr_eni::OwnershipPolicy::default(),
            ec2: BatchedEc2::start(
                ec2.clone(),
                ec2.clone(),
                QUICK_RETRIES,
                Duration::from_millis(10),
            ),
        },
    };
    Bed {
        service: Arc::new(service),
        ec2,
    }
}

/// Retries within a second, a few milliseconds apart.
pub(crate) const QUICK_RETRIES: RetryPolicy = RetryPolicy {
    transient: Backoff {
        initial: Duration::from_millis(5),
        factor: 2,
        max: Duration::from_millis(20),
    },
    throttle_min: Duration::from_millis(5),
    max: Duration::from_millis(20),
    budget: Duration::from_secs(1),
};

pub(crate) async fn ask(bed: &Bed, peer: &str, reason: Reason) -> (StatusCode, serde_json::Value) {
    let peer: IpAddr = peer.parse().expect("ip");
    let (status, body) = bed.service.answer(peer, RoutableRequest { reason }).await;
    (status, serde_json::from_str(&body).expect("JSON"))
}

pub(crate) fn answer(body: serde_json::Value) -> RoutableAnswer {
    serde_json::from_value(body).expect("answer")
}

/// The error of a 503 answer.
pub(crate) async fn unavailable(bed: &Bed, peer: &str) -> String {
    let (status, body) = ask(bed, peer, Reason::Start).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    body["error"].as_str().expect("error").to_owned()
}

/// The one failure of an answer of 200.
pub(crate) async fn the_failure(bed: &Bed, peer: &str) -> String {
    let (status, body) = ask(bed, peer, Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = answer(body);
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    answer.failures[0].clone()
}
