//! The pod API over in-memory adapters: who may ask, what a pod may claim, and how the
//! node's pods share EC2 calls.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use ipmgr_eni::{Backoff, ErrorClass, MultusInterfaces, PlanOptions, RetryPolicy};
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
use super::tests::{FakeScanner, namespace_object};
use crate::aws::Ec2Api as _;
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
fn pod_a(namespace: PodNamespace) -> Bed {
    let record = recorded(&["10.0.1.50"]);
    bed(
        vec![pod("default/a", "192.168.0.5", Some(&record), None)],
        vec![namespace],
        ClaimsMode::Recorded,
    )
}

/// The error of a 403 answer.
async fn forbidden(bed: &Bed, peer: &str) -> String {
    let (status, body) = ask(bed, peer, Reason::Start).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    body["error"].as_str().expect("error").to_owned()
}

/// The pods of other nodes, by instance (an error: that node's pods cannot be read).
#[derive(Debug, Default)]
struct FakeHolders(Mutex<BTreeMap<String, Result<Vec<PodRecord>, String>>>);

impl HolderPods for FakeHolders {
    async fn pods_of_instance(&self, instance_id: &str) -> Result<Vec<PodRecord>, String> {
        let holders = self.0.lock().expect("holders");
        holders.get(instance_id).cloned().unwrap_or(Ok(Vec::new()))
    }
}

/// An agent over in-memory adapters, and the EC2 it calls.
pub(crate) struct Bed {
    service: Arc<PodService<FakeEc2, FakeScanner, FakeHolders>>,
    ec2: FakeEc2,
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
    fn on_instance(&self, instance: &str, pods: Result<Vec<Pod>, &str>) {
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
    fn granting(&self, grants: &[(&str, &str)]) {
        let namespaces: Vec<_> = grants
            .iter()
            .map(|&(name, cidrs)| {
                namespace_object(name, &[(ipmgr_eni::FLOATING_IP_CIDRS_ANNOTATION, cidrs)])
            })
            .collect();
        self.service.pods.replace_namespaces(&namespaces);
    }

    /// The count of claims refused for `reason`.
    fn refused(&self, reason: &'static str) -> u64 {
        self.service
            .metrics
            .claims_refused
            .get_or_create(&super::metrics::ReasonLabel { reason })
            .get()
    }
}

/// The fakes' node with these pods (API server) and namespaces (kernel); every namespace
/// is listed, none has a grant.
fn bed(pods: Vec<Pod>, namespaces: Vec<PodNamespace>, claims: ClaimsMode) -> Bed {
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
const QUICK_RETRIES: RetryPolicy = RetryPolicy {
    transient: Backoff {
        initial: Duration::from_millis(5),
        factor: 2,
        max: Duration::from_millis(20),
    },
    throttle_min: Duration::from_millis(5),
    max: Duration::from_millis(20),
    budget: Duration::from_secs(1),
};

async fn ask(bed: &Bed, peer: &str, reason: Reason) -> (StatusCode, serde_json::Value) {
    let peer: IpAddr = peer.parse().expect("ip");
    let (status, body) = bed.service.answer(peer, RoutableRequest { reason }).await;
    (status, serde_json::from_str(&body).expect("JSON"))
}

fn answer(body: serde_json::Value) -> RoutableAnswer {
    serde_json::from_value(body).expect("answer")
}

#[tokio::test]
async fn a_pod_gets_the_addresses_multus_recorded_for_it_assigned() {
    let bed = pod_a(namespace("192.168.0.5", &["10.0.1.50"]));
    let (status, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = answer(body);
    assert_eq!(answer.pod, "default/a");
    assert_eq!(answer.failures, Vec::<String>::new());
    let routed: Vec<_> = answer
        .routable
        .iter()
        .map(|r| (r.address.to_string(), r.eni.clone()))
        .collect();
    assert_eq!(
        routed,
        vec![("10.0.1.50".to_owned(), "eni-multus".to_owned())]
    );
    assert!(bed.ec2.holds("eni-multus", "10.0.1.50"));
}

#[tokio::test(start_paused = true)]
async fn an_address_the_pod_did_not_claim_is_refused_naming_the_annotation() {
    let bed = pod_a(namespace("192.168.0.5", &["10.0.1.50", "10.0.1.60"]));
    let (status, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = answer(body);
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    let failure = &answer.failures[0];
    assert!(
        failure.contains("10.0.1.60") && failure.contains("multus-ipmgr.io/floating-ips"),
        "{failure}"
    );
    assert!(
        bed.ec2.holds("eni-multus", "10.0.1.50"),
        "the claimed one is assigned"
    );
    assert!(
        !bed.ec2.holds("eni-multus", "10.0.1.60"),
        "the unclaimed one is not"
    );
}

#[tokio::test]
async fn a_floating_address_the_pod_declares_inside_its_grant_is_assigned_and_claims_any_takes_anything()
 {
    let pods = vec![pod(
        "default/a",
        "192.168.0.5",
        Some(&recorded(&["10.0.1.50"])),
        Some("10.0.1.96/28"),
    )];
    let bed = bed(
        pods,
        vec![namespace("192.168.0.5", &["10.0.1.50", "10.0.1.100"])],
        ClaimsMode::Recorded,
    );
    bed.granting(&[("default", "10.0.1.96/27")]);
    let (_, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    assert!(bed.ec2.holds("eni-multus", "10.0.1.100"));

    let unrecorded = vec![pod("default/b", "192.168.0.6", None, None)];
    let bed = self::bed(
        unrecorded,
        vec![namespace("192.168.0.6", &["10.0.1.70"])],
        ClaimsMode::Any,
    );
    let (_, body) = ask(&bed, "192.168.0.6", Reason::Start).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    assert!(bed.ec2.holds("eni-multus", "10.0.1.70"));
}

#[tokio::test(start_paused = true)]
async fn a_connection_from_no_pod_of_the_node_is_forbidden() {
    let bed = pod_a(namespace("192.168.0.5", &["10.0.1.50"]));
    let error = forbidden(&bed, "192.168.0.77").await;
    let metrics = bed.service.metrics.text();
    assert!(
        metrics.contains(r#"ipmgr_agent_pod_requests_total{result="forbidden"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ipmgr_agent_pod_requests_refused_total{reason="no_pod"} 1"#),
        "{metrics}"
    );
    assert!(
        error.contains("192.168.0.77") && error.contains("no live pod on node node1"),
        "{error}"
    );
    assert_eq!(bed.ec2.calls(), Vec::<&str>::new());
}

#[tokio::test]
async fn a_pod_ip_no_namespace_carries_is_forbidden() {
    // The API server lists the pod, but no namespace on the node has its IP on eth0: the
    // connection comes from somewhere else (a host-network process, a spoofing neighbour).
    let bed = pod_a(namespace("192.168.0.8", &["10.0.1.50"]));
    let error = forbidden(&bed, "192.168.0.5").await;
    assert!(
        error.contains("default/a") && error.contains("no pod network namespace"),
        "{error}"
    );
    assert!(!bed.ec2.holds("eni-multus", "10.0.1.50"));
}

#[tokio::test]
async fn an_unparsable_network_status_is_unprocessable_naming_the_annotation() {
    let bed = bed(
        vec![pod("default/a", "192.168.0.5", Some("net1"), None)],
        vec![namespace("192.168.0.5", &["10.0.1.50"])],
        ClaimsMode::Recorded,
    );
    let (status, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("k8s.v1.cni.cncf.io/network-status")
    );
}

/// Three pods of the node, each with one address.
fn three_pods() -> Bed {
    let pods = (1..=3)
        .map(|n| {
            pod(
                &format!("default/p{n}"),
                &format!("192.168.0.{n}"),
                Some(&recorded(&[&format!("10.0.1.{}", 50 + n)])),
                None,
            )
        })
        .collect();
    let namespaces = (1..=3)
        .map(|n| namespace(&format!("192.168.0.{n}"), &[&format!("10.0.1.{}", 50 + n)]))
        .collect();
    bed(pods, namespaces, ClaimsMode::Recorded)
}

/// The three pods of [`three_pods`] ask together; their answers.
async fn ask_all(bed: &Bed, reason: Reason) -> Vec<RoutableAnswer> {
    let asks = (1..=3).map(|n| async move {
        let (status, body) = ask(bed, &format!("192.168.0.{n}"), reason).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        answer(body)
    });
    futures::future::join_all(asks).await
}

#[tokio::test]
async fn pods_asking_together_share_one_describe_and_one_assign() {
    let bed = three_pods();
    for answer in ask_all(&bed, Reason::Start).await {
        assert_eq!(answer.failures, Vec::<String>::new());
    }
    assert_eq!(
        bed.ec2.calls(),
        vec!["DescribeNetworkInterfaces", "AssignPrivateIpAddresses"],
        "one lookup of every address, one assign, for the three pods"
    );
    for n in 1..=3 {
        assert!(bed.ec2.holds("eni-multus", &format!("10.0.1.{}", 50 + n)));
    }
}

#[tokio::test]
async fn a_batch_ec2_refuses_is_split_so_that_each_pod_gets_its_own_answer() {
    let bed = three_pods();
    bed.ec2.fail_next(
        "AssignPrivateIpAddresses",
        "InvalidParameterValue",
        ErrorClass::Persistent,
    );
    let answers = futures::future::join_all((1..=3).map(|n| {
        let peer = format!("192.168.0.{n}");
        let bed = &bed;
        async move { ask(bed, &peer, Reason::Start).await }
    }))
    .await;
    for (_, body) in answers {
        assert_eq!(answer(body).failures, Vec::<String>::new());
    }
    let assigns = assign_calls(&bed);
    assert_eq!(assigns, 4, "the refused batch, then one per pod");
}

/// The assign calls EC2 got.
fn assign_calls(bed: &Bed) -> usize {
    bed.ec2
        .calls()
        .into_iter()
        .filter(|call| call.starts_with("Assign"))
        .count()
}

/// The count of requests answered without a pass of their own, for `reason`.
fn coalesced(bed: &Bed, reason: &'static str) -> u64 {
    bed.service
        .metrics
        .coalesced
        .get_or_create(&super::metrics::ReasonLabel { reason })
        .get()
}

#[tokio::test]
async fn two_hundred_changes_that_changed_nothing_cost_at_most_two_ec2_calls() {
    let bed = pod_a(namespace("192.168.0.5", &["10.0.1.50"]));
    let (_, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    let before = bed.ec2.calls().len();
    let together = (0..100).map(|_| ask(&bed, "192.168.0.5", Reason::Change));
    let mut answers = futures::future::join_all(together).await;
    for _ in 0..100 {
        answers.push(ask(&bed, "192.168.0.5", Reason::Change).await);
    }
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer = answer(body);
        assert_eq!(answer.failures, Vec::<String>::new());
        assert_eq!(answer.routable.len(), 1, "{answer:?}");
    }
    let calls = bed.ec2.calls()[before..].to_vec();
    assert!(calls.len() <= 2, "{} EC2 calls: {calls:?}", calls.len());
    assert!(
        coalesced(&bed, "in_flight") >= 98,
        "the 100 asked together share two passes: {}",
        coalesced(&bed, "in_flight")
    );
    assert!(coalesced(&bed, "unchanged") >= 100);
}

#[tokio::test]
async fn a_change_that_changed_the_addresses_is_checked_against_ec2() {
    let record = recorded(&["10.0.1.50", "10.0.1.51"]);
    let bed = bed(
        vec![pod("default/a", "192.168.0.5", Some(&record), None)],
        vec![namespace("192.168.0.5", &["10.0.1.50"])],
        ClaimsMode::Recorded,
    );
    ask(&bed, "192.168.0.5", Reason::Start).await;
    ask(&bed, "192.168.0.5", Reason::Change).await;
    assert_eq!(coalesced(&bed, "unchanged"), 1);
    let both = namespace("192.168.0.5", &["10.0.1.50", "10.0.1.51"]);
    bed.service.scanner.with_namespaces(vec![both]);
    let before = bed.ec2.calls().len();
    let (_, body) = ask(&bed, "192.168.0.5", Reason::Change).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    assert_eq!(
        bed.ec2.calls()[before..].to_vec(),
        vec!["DescribeNetworkInterfaces", "AssignPrivateIpAddresses"]
    );
    assert!(bed.ec2.holds("eni-multus", "10.0.1.51"));
    assert_eq!(coalesced(&bed, "unchanged"), 1);
}

#[tokio::test]
async fn a_throttled_batch_is_retried_by_each_pod_on_its_own() {
    let bed = three_pods();
    bed.ec2.fail_next(
        "AssignPrivateIpAddresses",
        "RequestLimitExceeded",
        ErrorClass::Throttling,
    );
    for answer in ask_all(&bed, Reason::Start).await {
        assert_eq!(answer.failures, Vec::<String>::new());
    }
    let assigns = assign_calls(&bed);
    assert_eq!(
        assigns, 4,
        "the throttled batch, then each pod's retry alone"
    );
    for n in 1..=3 {
        assert!(bed.ec2.holds("eni-multus", &format!("10.0.1.{}", 50 + n)));
    }
}

#[tokio::test]
async fn rechecks_of_every_pod_cost_one_describe_of_the_node_and_nothing_more() {
    let bed = three_pods();
    for answer in ask_all(&bed, Reason::Start).await {
        assert_eq!(answer.failures, Vec::<String>::new());
    }
    let before = bed.ec2.calls().len();
    for _ in 0..3 {
        for answer in ask_all(&bed, Reason::Recheck).await {
            assert_eq!(answer.failures, Vec::<String>::new());
        }
    }
    assert_eq!(
        bed.ec2.calls()[before..].to_vec(),
        vec!["DescribeNetworkInterfaces"],
        "three rounds of rechecks of three pods: one read of the node's ENIs"
    );
}

#[tokio::test]
async fn a_recheck_puts_back_an_address_that_left_its_eni() {
    let bed = three_pods();
    ask(&bed, "192.168.0.1", Reason::Start).await;
    ask(&bed, "192.168.0.1", Reason::Recheck).await;
    // Something else took it off the ENI; the view is refreshed at the next interval.
    bed.ec2
        .unassign_ipv4("eni-multus", &["10.0.1.51".parse().expect("ip")])
        .await
        .expect("unassign");
    bed.service.share.forget_view();
    let (_, body) = ask(&bed, "192.168.0.1", Reason::Recheck).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    assert!(bed.ec2.holds("eni-multus", "10.0.1.51"), "assigned again");
}

#[tokio::test]
async fn a_pod_ec2_refuses_on_its_own_fails_alone() {
    let bed = three_pods();
    for _ in 0..2 {
        bed.ec2.fail_next(
            "AssignPrivateIpAddresses",
            "InvalidParameterValue",
            ErrorClass::Persistent,
        );
    }
    let answers = ask_all(&bed, Reason::Start).await;
    let failed: Vec<&str> = answers
        .iter()
        .filter(|a| !a.failures.is_empty())
        .map(|a| a.pod.as_str())
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "the batch, then one pod's own call refused: {answers:?}"
    );
    let refused = answers
        .iter()
        .find(|a| !a.failures.is_empty())
        .expect("one");
    assert!(
        refused.routable.is_empty() && refused.failures[0].contains("InvalidParameterValue"),
        "{refused:?}"
    );
}

/// The error of a 503 answer.
async fn unavailable(bed: &Bed, peer: &str) -> String {
    let (status, body) = ask(bed, peer, Reason::Start).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    body["error"].as_str().expect("error").to_owned()
}

/// The one failure of an answer of 200.
async fn the_failure(bed: &Bed, peer: &str) -> String {
    let (status, body) = ask(bed, peer, Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = answer(body);
    assert_eq!(answer.failures.len(), 1, "{answer:?}");
    answer.failures[0].clone()
}

#[tokio::test(start_paused = true)]
async fn a_floating_address_outside_the_namespaces_grant_is_refused_naming_both_annotations() {
    // A tenant declares the whole IPv4 space and carries a victim's address (NET_ADMIN).
    let pods = vec![pod(
        "tenant-a/thief",
        "192.168.0.5",
        Some(&recorded(&["10.0.1.50"])),
        Some("0.0.0.0/0,::/0"),
    )];
    let bed = bed(
        pods,
        vec![namespace("192.168.0.5", &["10.0.1.50", "10.0.1.70"])],
        ClaimsMode::Recorded,
    );
    bed.granting(&[("tenant-b", "10.0.1.64/27")]);
    let failure = the_failure(&bed, "192.168.0.5").await;
    for named in [
        "10.0.1.70",
        "multus-ipmgr.io/floating-ips",
        "multus-ipmgr.io/floating-ip-cidrs",
        "namespace tenant-a has no grant",
    ] {
        assert!(failure.contains(named), "{failure} names {named}");
    }
    assert!(
        bed.ec2.holds("eni-multus-node2", "10.0.1.70"),
        "not taken from node2"
    );
    assert!(
        bed.ec2.holds("eni-multus", "10.0.1.50"),
        "its own address is assigned"
    );
    assert_eq!(bed.refused("not_granted"), 1);
}

/// A pod `name` of this node (192.168.0.5) for which Multus recorded 10.0.1.70, which its
/// namespace carries and which EC2 has on node2's Multus ENI, whose pods are `node2_pods`.
fn recording_node2s_address(name: &str, node2_pods: Result<Vec<Pod>, &str>) -> Bed {
    let pods = vec![pod(
        name,
        "192.168.0.5",
        Some(&recorded(&["10.0.1.70"])),
        None,
    )];
    let bed = bed(
        pods,
        vec![namespace("192.168.0.5", &["10.0.1.70"])],
        ClaimsMode::Recorded,
    );
    bed.on_instance("i-node2", node2_pods);
    bed
}

#[tokio::test(start_paused = true)]
async fn an_address_a_pod_of_another_namespace_on_another_node_claims_is_not_taken() {
    // Multus recorded the victim's address for the thief (a static-IPAM network of its own).
    let victim = pod(
        "tenant-b/victim",
        "192.168.7.7",
        Some(&recorded(&["10.0.1.70"])),
        None,
    );
    let bed = recording_node2s_address("tenant-a/thief", Ok(vec![victim]));
    let failure = the_failure(&bed, "192.168.0.5").await;
    assert!(
        failure.contains("tenant-b/victim") && failure.contains("another namespace"),
        "{failure}"
    );
    assert!(
        bed.ec2.holds("eni-multus-node2", "10.0.1.70"),
        "left with its holder"
    );
    assert_eq!(bed.ec2.mutating_calls(), Vec::<&str>::new());
    assert_eq!(bed.refused("other_namespace"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_address_left_on_another_node_by_a_pod_that_is_gone_follows_its_new_pod() {
    // node2's pods: only one of the same namespace, and one of another that claims nothing.
    let same = pod(
        "tenant-a/old",
        "192.168.7.6",
        Some(&recorded(&["10.0.1.70"])),
        None,
    );
    let other = pod(
        "tenant-b/other",
        "192.168.7.7",
        Some(&recorded(&["10.0.1.71"])),
        None,
    );
    let bed = recording_node2s_address("tenant-a/moved", Ok(vec![same, other]));
    let (_, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    assert!(
        bed.ec2.holds("eni-multus", "10.0.1.70"),
        "moved to this node"
    );
}

#[tokio::test(start_paused = true)]
async fn an_address_on_another_node_whose_pods_cannot_be_read_is_not_taken() {
    let bed = recording_node2s_address("tenant-a/a", Err("the API server answered 503"));
    let failure = the_failure(&bed, "192.168.0.5").await;
    assert!(
        failure.contains("eni-multus-node2") && failure.contains("503"),
        "{failure}"
    );
    assert!(bed.ec2.holds("eni-multus-node2", "10.0.1.70"));
    assert_eq!(bed.refused("unverified"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_granted_floating_address_moves_from_another_node_and_a_grant_takes_effect_when_edited() {
    let pods = vec![pod(
        "tenant-b/b",
        "192.168.0.5",
        Some(&recorded(&["10.0.1.50"])),
        Some("10.0.1.70"),
    )];
    let bed = bed(
        pods,
        vec![namespace("192.168.0.5", &["10.0.1.50", "10.0.1.70"])],
        ClaimsMode::Recorded,
    );
    // Not granted yet: refused, and node2 is never even asked about.
    let failure = the_failure(&bed, "192.168.0.5").await;
    assert!(failure.contains("no grant"), "{failure}");
    assert!(bed.ec2.holds("eni-multus-node2", "10.0.1.70"));
    // An admin grants it: the next request moves it, whoever node2 runs.
    bed.on_instance("i-node2", Err("not asked"));
    bed.granting(&[("tenant-b", "10.0.1.64/27")]);
    let (_, body) = ask(&bed, "192.168.0.5", Reason::Change).await;
    assert_eq!(answer(body).failures, Vec::<String>::new());
    assert!(bed.ec2.holds("eni-multus", "10.0.1.70"));
}

#[tokio::test(start_paused = true)]
async fn a_recorded_address_a_pod_of_another_namespace_on_this_node_claims_is_refused() {
    let record = recorded(&["10.0.1.60"]);
    let pods = vec![
        pod("tenant-a/thief", "192.168.0.5", Some(&record), None),
        pod("tenant-b/victim", "192.168.0.6", Some(&record), None),
    ];
    let bed = bed(
        pods,
        vec![namespace("192.168.0.5", &["10.0.1.60"])],
        ClaimsMode::Recorded,
    );
    let failure = the_failure(&bed, "192.168.0.5").await;
    assert!(failure.contains("tenant-b/victim"), "{failure}");
    assert_eq!(bed.ec2.mutating_calls(), Vec::<&str>::new());
}

#[tokio::test(start_paused = true)]
async fn two_live_pod_records_with_one_pod_ip_are_refused_for_now_naming_both() {
    let record = recorded(&["10.0.1.50"]);
    let pods = vec![
        pod(
            "tenant-a/old",
            "192.168.0.5",
            Some(&record),
            Some("10.0.1.96/28"),
        ),
        pod("tenant-b/new", "192.168.0.5", Some(&record), None),
    ];
    let bed = bed(
        pods,
        vec![namespace("192.168.0.5", &["10.0.1.50"])],
        ClaimsMode::Recorded,
    );
    let error = unavailable(&bed, "192.168.0.5").await;
    assert!(
        error.contains("tenant-a/old") && error.contains("tenant-b/new"),
        "{error}"
    );
    assert_eq!(bed.ec2.calls(), Vec::<&str>::new());
    let conflicts = bed
        .service
        .metrics
        .identity_conflicts
        .get_or_create(&super::metrics::ReasonLabel {
            reason: "duplicate_pod_ip",
        })
        .get();
    assert_eq!(conflicts, 1);
    // The old record goes: the new pod is served.
    bed.service
        .pods
        .delete(&pod("tenant-a/old", "192.168.0.5", None, None));
    let (status, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(answer(body).pod, "tenant-b/new");
}

#[tokio::test(start_paused = true)]
async fn a_neighbour_carrying_the_pod_ip_on_eth0_makes_it_ambiguous_unless_the_node_routes_it() {
    let mut victim = namespace("192.168.0.5", &["10.0.1.50"]);
    victim.path = "/run/netns/cni-victim".into();
    // The attacker (NET_ADMIN) added the victim's pod IP to its own eth0.
    let mut attacker = namespace("192.168.0.5", &["10.0.1.99"]);
    attacker.path = "/run/netns/cni-attacker".into();
    let bed = pod_a(victim.clone());
    bed.service.scanner.with_namespaces(vec![victim, attacker]);
    let error = unavailable(&bed, "192.168.0.5").await;
    assert!(
        error.contains("cni-victim") && error.contains("cni-attacker"),
        "{error}"
    );
    assert_eq!(
        bed.ec2.calls(),
        Vec::<&str>::new(),
        "nothing planned against either"
    );
    // The node's route to the pod IP leads to the victim's veth: no pod can fake that.
    bed.service
        .scanner
        .routing("192.168.0.5", "/run/netns/cni-victim");
    let (status, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = answer(body);
    assert_eq!(answer.failures, Vec::<String>::new());
    assert!(bed.ec2.holds("eni-multus", "10.0.1.50"));
    assert!(
        !bed.ec2.holds("eni-multus", "10.0.1.99"),
        "nothing of the attacker's"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_the_api_server_has_not_shown_yet_is_asked_to_try_again_not_refused() {
    let bed = bed(
        Vec::new(),
        vec![namespace("192.168.0.5", &["10.0.1.50"])],
        ClaimsMode::Recorded,
    );
    let error = unavailable(&bed, "192.168.0.5").await;
    assert!(
        error.contains("lists no live pod") && error.contains("asks again"),
        "{error}"
    );
    // Then the watch delivers it.
    bed.service.pods.apply(&pod(
        "default/a",
        "192.168.0.5",
        Some(&recorded(&["10.0.1.50"])),
        None,
    ));
    let (status, body) = ask(&bed, "192.168.0.5", Reason::Start).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn before_the_namespaces_are_listed_the_pod_api_answers_503() {
    let bed = pod_a(namespace("192.168.0.5", &["10.0.1.50"]));
    let fresh = NodePods::default();
    fresh.replace(&[pod(
        "default/a",
        "192.168.0.5",
        Some(&recorded(&["10.0.1.50"])),
        None,
    )]);
    let service = Arc::new(PodService {
        pods: fresh,
        ..Arc::into_inner(bed.service).expect("the only reference")
    });
    let (status, _) = service
        .answer(
            "192.168.0.5".parse().expect("ip"),
            RoutableRequest {
                reason: Reason::Start,
            },
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_source_that_is_no_pod_is_answered_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let bed = pod_a(namespace("192.168.0.5", &["10.0.1.50"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let limits = super::transport::Limits {
        connections: 8,
        per_source: 2,
        deadline: Duration::from_secs(60),
    };
    tokio::spawn(super::pod_http::serve(listener, limits, bed.service));
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    // A body announced and never sent: the agent must not wait for it.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n",
        ipmgr_pod::api::ROUTABLE_PATH
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer));
    assert!(
        read.await.is_ok(),
        "answered and closed well before the deadline"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("127.0.0.1"),
        "{answer}"
    );
}
