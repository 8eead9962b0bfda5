//! The node's Multus address capacity on the emulated cluster: the real agent on nodes of
//! two instance types advertises each Multus ENI's secondary IPv4 capacity as
//! `multus-ipmgr.io/<interface>` on its Node, under exactly the RBAC of its ClusterRole
//! (manifests/agent/rbac.yaml, enforced by the bed's API server), puts it back after the
//! kubelet registered the node afresh, names an ENI by its link (by its device number when
//! no link carries its MAC), and counts the addresses no request accounts for.
//! And the simulation: pods admitted by the webhook (offline `inject`, given the network's
//! NetworkAttachmentDefinition) placed by a model of kube-scheduler's NodeResourcesFit on
//! the advertised allocatable ([`ipmgr_testbed::scheduler`]) and made routable by the agents:
//! without a resource on the NAD the pods past a full ENI fail; with it none fails and the
//! surplus waits unscheduled. Every test needs root.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::agents::{METRICS, agent_helper, agent_with, built_next_to_helper, bystander};
use ipmgr_testbed::scheduler::{SchedulerNode, schedule};
use ipmgr_testbed::{Background, Interface, Node, PodSpec, TestBed, Topology, finish};
use serde::Deserialize as _;
use serde_json::{Value, json};

/// The user the agent's requests come from, as its ServiceAccount's token names it.
const AGENT_USER: &str = "system:serviceaccount:multus-ipmgr:ipmgr-agent";

/// node1 an m5.large (10 IPv4 addresses an ENI), node2 a c5.4xlarge (30), each with one
/// Multus ENI `eth1`; node2's second Multus ENI `eth2` has one delegated /28 prefix.
fn two_instance_types() -> TestBed {
    TestBed::start(Topology::Inline(json!({
        "description": "An m5.large and a c5.4xlarge, each with a Multus ENI eth1; the c5.4xlarge's eth2 has a prefix.",
        "vpc_cidr": "10.0.0.0/16",
        "subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus": {"cidr": "10.0.1.0/24"}},
        "nodes": {
            "node1": {"instance_type": "m5.large", "enis": [
                {"subnet": "node"}, {"subnet": "multus", "multus": true}]},
            "node2": {"instance_type": "c5.4xlarge", "enis": [
                {"subnet": "node"}, {"subnet": "multus", "multus": true},
                {"subnet": "multus", "multus": true, "ipv4_prefixes": 1}]},
        },
    })))
}

/// The rules of the agent's ClusterRole as the repository ships it.
fn agent_rules() -> Value {
    let path = ipmgr_testbed::repo_root().join("manifests/agent/rbac.yaml");
    let text = std::fs::read_to_string(&path).expect("manifests/agent/rbac.yaml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("YAML"))
        .find(|document| document["kind"] == "ClusterRole")
        .map(|role| role["rules"].clone())
        .expect("the agent's ClusterRole")
}

/// The agent on `node` as the DaemonSet runs it, but with the API server reached as its
/// ServiceAccount with only its ClusterRole's rules, and checking the Node every second.
fn agent_under_rbac(bed: &mut TestBed, node: &str) -> (Background, Node, PathBuf) {
    agent_under_rbac_with(bed, node, &[])
}

/// [`agent_under_rbac`] with these variables too.
fn agent_under_rbac_with(
    bed: &mut TestBed,
    node: &str,
    env: &[(&str, &str)],
) -> (Background, Node, PathBuf) {
    let kubeconfig = bed.kubeconfig_with_rules(AGENT_USER, &agent_rules());
    let kubeconfig = kubeconfig.to_str().expect("UTF-8 path").to_owned();
    bystander(bed, node);
    let mut env = env.to_vec();
    env.extend([
        ("KUBECONFIG", kubeconfig.as_str()),
        ("IPMGR_CAPACITY_SECONDS", "1"),
    ]);
    agent_with(bed, node, &env)
}

/// The Node's `status.<field>` as strings.
fn resources(node: &Value, field: &str) -> BTreeMap<String, String> {
    node["status"][field]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's resources among `resources`.
fn ours(resources: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    resources
        .iter()
        .filter(|(name, _)| name.starts_with("multus-ipmgr.io/"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Waits until Node `name` advertises `expected` in both capacity and allocatable.
fn wait_advertised(
    bed: &mut TestBed,
    name: &str,
    expected: &[(&str, &str)],
    log: &PathBuf,
) -> Value {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(resource, value)| ((*resource).to_owned(), (*value).to_owned()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let node = bed.node_object(name);
        let capacity = ours(&resources(&node, "capacity"));
        if capacity == expected && ours(&resources(&node, "allocatable")) == expected {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "Node {name} advertises {capacity:?}, not {expected:?}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the agent's gauge `name` for `resource`, if it has one.
fn gauge(node: &Node, name: &str, resource: &str) -> Option<f64> {
    let metrics = ipmgr_testbed::http_get(node, &format!("http://{METRICS}/metrics"));
    let series = format!("{name}{{resource=\"{resource}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().expect("a number"))
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn each_multus_eni_is_advertised_by_its_instance_types_limit_and_put_back_when_cleared() {
    let mut bed = two_instance_types();
    let before: Vec<Value> = ["node1", "node2"].map(|name| bed.node_object(name)).into();
    let (_agent1, node1, log1) = agent_under_rbac(&mut bed, "node1");
    let (_agent2, _node2, log2) = agent_under_rbac(&mut bed, "node2");

    // m5.large: 10 less the primary. c5.4xlarge: 30 less the primary, and one less for the
    // prefix on eth2.
    let small = wait_advertised(&mut bed, "node1", &[("multus-ipmgr.io/eth1", "9")], &log1);
    let large = wait_advertised(
        &mut bed,
        "node2",
        &[
            ("multus-ipmgr.io/eth1", "29"),
            ("multus-ipmgr.io/eth2", "28"),
        ],
        &log2,
    );
    // Nothing else of the Node changed: the kubelet's own resources are as they were.
    for (node, before) in [(&small, &before[0]), (&large, &before[1])] {
        for field in ["capacity", "allocatable"] {
            let mut now = resources(node, field);
            now.retain(|name, _| !name.starts_with("multus-ipmgr.io/"));
            assert_eq!(now, resources(before, field), "{field}");
        }
    }
    assert_eq!(
        gauge(
            &node1,
            "ipmgr_agent_multus_capacity",
            "multus-ipmgr.io/eth1"
        ),
        Some(9.0)
    );

    // The kubelet registers node1 afresh: no extended resource; the agent puts it back.
    let fresh = bed.reregister_node("node1");
    assert!(ours(&resources(&fresh, "capacity")).is_empty(), "{fresh}");
    let started = Instant::now();
    wait_advertised(&mut bed, "node1", &[("multus-ipmgr.io/eth1", "9")], &log1);
    eprintln!(
        "advertised again {:?} after the node registered afresh",
        started.elapsed()
    );
    // An admin (or another tool) removes it: put back as well.
    let (status, answer) = bed.kube_request(
        "PATCH",
        "/api/v1/nodes/node1/status",
        "application/json-patch+json",
        Some(&json!([{"op": "remove", "path": "/status/capacity/multus-ipmgr.io~1eth1"}])),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(ours(&resources(&answer, "capacity")).is_empty(), "{answer}");
    wait_advertised(&mut bed, "node1", &[("multus-ipmgr.io/eth1", "9")], &log1);

    // Everything the agents asked was within their ClusterRole; their only writes were
    // patches of their own Node's status.
    assert_eq!(bed.kube_denied(), Vec::<Value>::new());
    let writes = bed.control("GET", "kube/writes", Value::Null);
    let agents: Vec<&Value> = writes["writes"]
        .as_array()
        .expect("writes")
        .iter()
        .filter(|write| write["user"] == AGENT_USER)
        .collect();
    assert!(!agents.is_empty());
    for write in agents {
        assert_eq!(
            (&write["verb"], &write["kind"], &write["subresource"]),
            (&json!("patch"), &json!("Node"), &json!("status")),
            "{write}"
        );
    }
}

/// `ip ...` in `node`'s namespace, which must succeed.
fn ip_on(bed: &TestBed, node: &Node, args: &[&str]) {
    let (output, stderr, _) = finish(bed.command(node, "ip".as_ref(), args));
    assert!(output.status.success(), "ip {args:?}: {stderr}");
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn an_eni_is_named_by_its_link_else_by_its_device_number() {
    let mut bed = two_instance_types();
    let (_agent, node, log) = agent_under_rbac(&mut bed, "node2");
    let both = |second: &'static str| [("multus-ipmgr.io/eth1", "29"), (second, "28")];
    wait_advertised(&mut bed, "node2", &both("multus-ipmgr.io/eth2"), &log);

    // The link carrying the second ENI's MAC is renamed: its name is the resource's.
    ip_on(&bed, &node, &["link", "set", "eth2", "down"]);
    ip_on(&bed, &node, &["link", "set", "eth2", "name", "multus0"]);
    ip_on(&bed, &node, &["link", "set", "multus0", "up"]);
    wait_advertised(&mut bed, "node2", &both("multus-ipmgr.io/multus0"), &log);

    // No link carries it any more: the device's name, eth<device-number> (2).
    ip_on(&bed, &node, &["link", "del", "multus0"]);
    wait_advertised(&mut bed, "node2", &both("multus-ipmgr.io/eth2"), &log);
    assert_eq!(bed.kube_denied(), Vec::<Value>::new());
}

/// An operator replaces the ENI at device 2: the new ENI, attached where the old one was,
/// is the same resource (Amazon Linux names its link eth2 again), worth what it holds.
#[test]
#[ignore = "needs root: pods are network namespaces"]
fn an_eni_attached_again_at_its_device_keeps_its_resource() {
    let mut bed = two_instance_types();
    // The agent reads the node's ENIs again every second.
    let (_agent, _node, log) =
        agent_under_rbac_with(&mut bed, "node2", &[("IPMGR_RESYNC_SECONDS", "1")]);
    let eth1 = ("multus-ipmgr.io/eth1", "29");
    wait_advertised(
        &mut bed,
        "node2",
        &[eth1, ("multus-ipmgr.io/eth2", "28")],
        &log,
    );
    let old = bed.eni_id("node2", "eth2");

    let started = Instant::now();
    bed.detach_eni("node2", "eth2");
    wait_advertised(&mut bed, "node2", &[eth1], &log);
    eprintln!("eth2 withdrawn {:?} after the detach", started.elapsed());

    // A new ENI, without the old one's prefix, at the same device.
    let started = Instant::now();
    let new = bed.attach_eni(
        "node2",
        json!({"subnet": "multus", "multus": true, "device": 2}),
    );
    assert_eq!(new["name"], "eth2", "{new}");
    assert_ne!(new["id"], json!(old));
    wait_advertised(
        &mut bed,
        "node2",
        &[eth1, ("multus-ipmgr.io/eth2", "29")],
        &log,
    );
    eprintln!("eth2 advertised {:?} after the attach", started.elapsed());
    assert_eq!(bed.kube_denied(), Vec::<Value>::new());
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn addresses_no_request_accounts_for_are_counted() {
    let mut bed = two_instance_types();
    let (_agent, node, log) = agent_under_rbac(&mut bed, "node1");
    wait_advertised(&mut bed, "node1", &[("multus-ipmgr.io/eth1", "9")], &log);
    let one = json!([{"name": "app", "image": "app", "resources": {
        "requests": {"multus-ipmgr.io/eth1": "1"}, "limits": {"multus-ipmgr.io/eth1": "1"}}}]);
    // Two pods the webhook gave a request, one on a network whose NAD names no resource.
    let pods = [
        ("requested-a", "10.0.1.50", Some(&one)),
        ("requested-b", "10.0.1.51", Some(&one)),
        ("unrequested", "10.0.1.52", None),
    ];
    for (name, address, containers) in pods {
        let mut spec = PodSpec::new("node1", name).interfaces(&[Interface::on_eni(
            "net1",
            "eth1",
            &[&format!("{address}/24")],
        )]);
        if let Some(containers) = containers {
            spec = spec.containers(containers.clone());
        }
        let pod = bed.create_pod(&spec);
        let (output, stderr, _) = finish(agent_helper(&bed, &pod, &node, &["init"]));
        assert!(output.status.success(), "{stderr}");
    }
    // Instance metadata shows the three addresses, the pods' requests account for two.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let unaccounted = gauge(
            &node,
            "ipmgr_agent_multus_addresses_unaccounted",
            "multus-ipmgr.io/eth1",
        );
        if unaccounted == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unaccounted {unaccounted:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The containers of a pod on Multus network `macvlan-eth1` as the webhook admits it
/// (`ipmgr-webhook inject`, offline, given the NetworkAttachmentDefinition), its NAD
/// naming `resource` (or no resource).
fn admitted_containers(resource: Option<&str>) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let annotations = resource.map_or_else(
        || json!({}),
        |resource| json!({"k8s.v1.cni.cncf.io/resourceName": resource}),
    );
    let nad = json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "macvlan-eth1", "namespace": "default", "annotations": annotations},
        "spec": {"config": r#"{"cniVersion":"0.3.1","type":"ipvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.0.1.0/24"}}"#},
    });
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "default",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "macvlan-eth1"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    });
    let nad_file = dir.path().join("nad.json");
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&nad_file, nad.to_string()).expect("NAD file");
    std::fs::write(&pod_file, pod.to_string()).expect("pod file");
    let output =
        std::process::Command::new(built_next_to_helper("ipmgr-webhook", "IPMGR_WEBHOOK_BIN"))
            .arg("inject")
            .arg("-f")
            .arg(&pod_file)
            .arg("--network-attachment-definitions")
            .arg(&nad_file)
            .output()
            .expect("ipmgr-webhook inject runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let admitted: Value = serde_yaml::from_str(&stdout).expect("the admitted pod");
    admitted["spec"]["containers"].clone()
}

/// What the first container requests of `resource`.
fn requested(containers: &Value, resource: &str) -> Option<u64> {
    containers[0]["resources"]["requests"][resource]
        .as_str()
        .map(|count| count.parse().expect("an integer"))
}

/// The nodes as the scheduler sees them: each Node's integer allocatable resources (CPU
/// and memory are left out: the pods request none).
fn scheduler_nodes(bed: &mut TestBed) -> Vec<SchedulerNode> {
    ["node1", "node2"]
        .map(|name| {
            let node = bed.node_object(name);
            let allocatable = resources(&node, "allocatable")
                .into_iter()
                .filter_map(|(resource, value)| Some((resource, value.parse().ok()?)))
                .collect();
            SchedulerNode::new(name, allocatable)
        })
        .into()
}

/// What became of `count` pods on network `macvlan-eth1` with `containers`, each with its
/// own address on the Multus ENI eth1 of the node the scheduler model placed it on: per
/// node, the pods whose `init` (the agent backend's client) made them routable and the
/// errors of those it could not; and the pods the scheduler could not place.
struct Outcome {
    routable: BTreeMap<String, usize>,
    failed: BTreeMap<String, Vec<String>>,
    unschedulable: Vec<String>,
}

fn schedule_and_start(
    bed: &mut TestBed,
    agents: &BTreeMap<String, Node>,
    containers: &Value,
    count: usize,
) -> Outcome {
    let mut nodes = scheduler_nodes(bed);
    let requests: BTreeMap<String, u64> = containers[0]["resources"]["requests"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.parse().ok()?)))
        .collect();
    let addresses = free_addresses(bed, count);
    let mut outcome = Outcome {
        routable: BTreeMap::new(),
        failed: BTreeMap::new(),
        unschedulable: Vec::new(),
    };
    for (index, address) in addresses.iter().enumerate() {
        let node_name = match schedule(&mut nodes, &requests) {
            Ok(node) => node,
            Err(reason) => {
                outcome.unschedulable.push(reason);
                continue;
            }
        };
        let address = format!("{address}/24");
        let spec = PodSpec::new(&node_name, &format!("app-{index}"))
            .interfaces(&[Interface::on_eni("net1", "eth1", &[&address])])
            .containers(containers.clone());
        let pod = bed.create_pod(&spec);
        let (output, stderr, _) = finish(agent_helper(bed, &pod, &agents[&node_name], &["init"]));
        if output.status.success() {
            *outcome.routable.entry(node_name).or_insert(0) += 1;
        } else {
            outcome.failed.entry(node_name).or_default().push(stderr);
        }
    }
    outcome
}

/// `count` addresses of subnet `multus` (10.0.1.0/24) past its reserved ones that are no
/// ENI's primary address and in no delegated prefix of the topology.
fn free_addresses(bed: &TestBed, count: usize) -> Vec<String> {
    let enis: Vec<&Value> = bed.topology["nodes"]
        .as_object()
        .expect("nodes")
        .values()
        .flat_map(|node| node["enis"].as_array().expect("ENIs"))
        .collect();
    let taken = |host: u8| {
        enis.iter().any(|eni| {
            eni["primary_ip"] == format!("10.0.1.{host}")
                || eni["ipv4_prefixes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|prefix| prefix.strip_prefix("10.0.1.")?.split_once('/'))
                    .filter_map(|(start, _)| start.parse::<u8>().ok())
                    .any(|start| (start..start.saturating_add(16)).contains(&host))
        })
    };
    let free: Vec<String> = (4..=254)
        .filter(|host| !taken(*host))
        .take(count)
        .map(|host| format!("10.0.1.{host}"))
        .collect();
    assert_eq!(free.len(), count, "subnet multus has room");
    free
}

/// A bed of two instance types with the agents advertising their capacity.
fn advertising_bed() -> (TestBed, Vec<Background>, BTreeMap<String, Node>) {
    let mut bed = two_instance_types();
    let (agent1, node1, log1) = agent_under_rbac(&mut bed, "node1");
    let (agent2, node2, log2) = agent_under_rbac(&mut bed, "node2");
    wait_advertised(&mut bed, "node1", &[("multus-ipmgr.io/eth1", "9")], &log1);
    wait_advertised(
        &mut bed,
        "node2",
        &[
            ("multus-ipmgr.io/eth1", "29"),
            ("multus-ipmgr.io/eth2", "28"),
        ],
        &log2,
    );
    let agents = BTreeMap::from([("node1".to_owned(), node1), ("node2".to_owned(), node2)]);
    (bed, vec![agent1, agent2], agents)
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn without_requests_the_pods_past_a_full_eni_fail() {
    let (mut bed, _agents, nodes) = advertising_bed();
    // Today: the network's NAD names no resource, so the pods request nothing of it.
    let containers = admitted_containers(None);
    assert_eq!(requested(&containers, "multus-ipmgr.io/eth1"), None);
    let outcome = schedule_and_start(&mut bed, &nodes, &containers, 24);
    // The scheduler spreads them 12 and 12; node1's ENI takes 9: its 10th to 12th fail.
    assert!(outcome.unschedulable.is_empty());
    assert_eq!(outcome.routable.get("node1"), Some(&9));
    assert_eq!(outcome.routable.get("node2"), Some(&12));
    let failed = &outcome.failed["node1"];
    assert_eq!(failed.len(), 3, "{failed:?}");
    for stderr in failed {
        assert!(stderr.contains("PrivateIpAddressLimitExceeded"), "{stderr}");
    }
    assert!(!outcome.failed.contains_key("node2"));
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn with_requests_no_node_is_asked_for_more_addresses_than_its_eni_holds() {
    let (mut bed, _agents, nodes) = advertising_bed();
    let containers = admitted_containers(Some("multus-ipmgr.io/eth1"));
    assert_eq!(requested(&containers, "multus-ipmgr.io/eth1"), Some(1));
    let outcome = schedule_and_start(&mut bed, &nodes, &containers, 40);
    // node1 gets as many as its ENI holds, node2 the rest up to its own; the last two wait
    // (Pending) for room, and no pod fails.
    assert_eq!(outcome.routable.get("node1"), Some(&9));
    assert_eq!(outcome.routable.get("node2"), Some(&29));
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(
        outcome.unschedulable,
        vec!["0/2 nodes are available: 2 Insufficient multus-ipmgr.io/eth1.".to_owned(); 2]
    );
    let eni = bed.eni_id("node1", "eth1");
    let held = free_addresses(&bed, 40)
        .iter()
        .filter(|address| bed.holds(&eni, address))
        .count();
    assert_eq!(held, 9, "node1's eth1 holds what its pods requested");
}
