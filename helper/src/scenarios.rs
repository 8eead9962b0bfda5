//! One table of scenarios, run through the one pod loop ([`ipmgr_pod::run::init`]) against
//! both backends over the in-memory fakes: the direct backend ([`DirectRouting`]) and the
//! agent backend ([`AgentRouting`] asking the node agent's pod API in process). Each
//! scenario says what the pod must end up with, whichever backend carries it out.

use std::time::Duration;

use ipmgr_eni::{EniRecord, NO_MANAGE_TAG, NodeFacts};
use ipmgr_pod::fake::FakeNetwork;
use ipmgr_pod::{AgentRouting, PodSettings, run};
use pretty_assertions::assert_eq;

use crate::agent::serve_bed::{InProcessAgent, bed_with, namespace, pod, recorded};
use crate::config::ClaimsMode;
use crate::direct::DirectRouting;
use crate::fakes::{FakeEc2, FakeMetadata, INSTANCE, eni, node, record, settings};

/// The pod's IP on eth0 (the agent finds the pod by it).
const POD_IP: &str = "192.168.0.5";

/// What the node and EC2 look like, what the pod carries on net1, and what must follow.
struct Scenario {
    name: &'static str,
    /// The node as metadata shows it, and EC2.
    world: fn() -> (NodeFacts, Vec<EniRecord>),
    /// The pod's addresses on net1 (eth1's MAC), all recorded by Multus.
    addresses: &'static [&'static str],
    /// `None`: routable; otherwise a piece of the error.
    error: Option<&'static str>,
    /// (ENI, address) pairs EC2 must hold afterwards.
    holds: &'static [(&'static str, &'static str)],
    /// The mutating EC2 calls made.
    mutating: &'static [&'static str],
}

/// The fakes' node; EC2 with its primary ENI (the VPC CNI's) and its Multus ENI (tagged).
fn plain() -> (NodeFacts, Vec<EniRecord>) {
    let node = node();
    let records = vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, true),
    ];
    (node, records)
}

/// 10.0.1.50 in place on the Multus ENI, in metadata and in EC2.
fn in_place() -> (NodeFacts, Vec<EniRecord>) {
    let mut node = node();
    node.enis[1].ipv4.push("10.0.1.50".parse().expect("ip"));
    let records = vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, true),
    ];
    (node, records)
}

/// Metadata still lists 10.0.1.50 on the Multus ENI; EC2 moved it away.
fn lagging() -> (NodeFacts, Vec<EniRecord>) {
    let (mut node, records) = plain();
    node.enis[1].ipv4.push("10.0.1.50".parse().expect("ip"));
    (node, records)
}

/// Another node's Multus ENI holds 10.0.1.50 (a floating address coming back).
fn held_by_another_node() -> (NodeFacts, Vec<EniRecord>) {
    let (node, mut records) = plain();
    let mut other = eni(7, "other-node");
    other.ipv4.push("10.0.1.50".parse().expect("ip"));
    records.push(record(&other, "i-node2", true));
    (node, records)
}

/// A VPC CNI ENI (untagged) of another node holds 10.0.1.50.
fn held_by_the_vpc_cni() -> (NodeFacts, Vec<EniRecord>) {
    let (node, mut records) = plain();
    let mut vpc_cni = eni(8, "vpc-cni");
    vpc_cni.ipv4.push("10.0.1.50".parse().expect("ip"));
    records.push(record(&vpc_cni, "i-node2", false));
    (node, records)
}

/// The node's Multus ENI lacks the no_manage tag.
fn untagged() -> (NodeFacts, Vec<EniRecord>) {
    let node = node();
    let records = vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, false),
    ];
    (node, records)
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "an address goes to the ENI whose MAC its interface carries",
        world: plain,
        addresses: &["10.0.1.50"],
        error: None,
        holds: &[("eni-multus", "10.0.1.50")],
        mutating: &["AssignPrivateIpAddresses"],
    },
    Scenario {
        name: "an address in place costs no change",
        world: in_place,
        addresses: &["10.0.1.50"],
        error: None,
        holds: &[("eni-multus", "10.0.1.50")],
        mutating: &[],
    },
    Scenario {
        name: "lagging metadata does not hide that EC2 moved the address away",
        world: lagging,
        addresses: &["10.0.1.50"],
        error: None,
        holds: &[("eni-multus", "10.0.1.50")],
        mutating: &["AssignPrivateIpAddresses"],
    },
    Scenario {
        name: "a floating address comes back from another node's Multus ENI",
        world: held_by_another_node,
        addresses: &["10.0.1.50"],
        error: None,
        holds: &[("eni-multus", "10.0.1.50")],
        mutating: &["AssignPrivateIpAddresses"],
    },
    Scenario {
        name: "an address the VPC CNI's ENI holds is never taken",
        world: held_by_the_vpc_cni,
        addresses: &["10.0.1.50"],
        error: Some("10.0.1.50"),
        holds: &[("eni-vpc-cni", "10.0.1.50")],
        mutating: &[],
    },
    Scenario {
        name: "an untagged ENI is refused, naming the tag to set",
        world: untagged,
        addresses: &["10.0.1.50"],
        error: Some(NO_MANAGE_TAG),
        holds: &[],
        mutating: &[],
    },
];

/// The pod loop's settings for these scenarios.
fn pod_settings() -> PodSettings {
    settings(&["--wait-seconds", "0", "--confirm-seconds", "0"]).pod
}

/// The pod: its pod IP on eth0, `addresses` on net1.
fn pod_network(addresses: &[&str]) -> FakeNetwork {
    FakeNetwork::carrying(namespace(POD_IP, addresses).addresses)
}

/// `init` with the direct backend: the outcome and EC2.
async fn direct(scenario: &Scenario) -> (Result<(), String>, FakeEc2) {
    let (node, records) = (scenario.world)();
    let ec2 = FakeEc2::with(records);
    let settings = settings(&["--wait-seconds", "0", "--confirm-seconds", "0"]);
    let metadata = FakeMetadata::showing(node.clone());
    let mut routing = DirectRouting::new(settings, ec2.clone(), metadata, node);
    let mut network = pod_network(scenario.addresses);
    let outcome = run::init(&pod_settings(), &mut network, &mut routing).await;
    (outcome.map_err(|error| error.to_string()), ec2)
}

/// `init` with the agent backend: the outcome and EC2.
async fn agent(scenario: &Scenario) -> (Result<(), String>, FakeEc2) {
    let (node, records) = (scenario.world)();
    let ec2 = FakeEc2::with(records);
    let record = recorded(scenario.addresses);
    let pods = vec![pod("default/a", POD_IP, Some(&record), None)];
    let namespaces = vec![namespace(POD_IP, scenario.addresses)];
    let bed = bed_with(ec2.clone(), node, pods, namespaces, ClaimsMode::Recorded);
    let agent = InProcessAgent {
        bed,
        peer: POD_IP.parse().expect("ip"),
    };
    let settings = pod_settings();
    let retry = Duration::from_secs(1);
    let mut routing = AgentRouting::new(agent, retry, settings.plan_options());
    let mut network = pod_network(scenario.addresses);
    let outcome = run::init(&settings, &mut network, &mut routing).await;
    (outcome.map_err(|error| error.to_string()), ec2)
}

/// What a scenario must end with, checked for one backend.
fn check(scenario: &Scenario, backend: &str, outcome: &Result<(), String>, ec2: &FakeEc2) {
    let name = format!("{backend}: {}", scenario.name);
    match (scenario.error, outcome) {
        (None, Ok(())) => {}
        (Some(piece), Err(error)) => assert!(error.contains(piece), "{name}: {error}"),
        (expected, got) => panic!("{name}: expected {expected:?}, got {got:?}"),
    }
    for (eni, address) in scenario.holds {
        assert!(ec2.holds(eni, address), "{name}: {eni} holds {address}");
    }
    assert_eq!(ec2.mutating_calls(), scenario.mutating.to_vec(), "{name}");
}

#[tokio::test]
async fn every_scenario_ends_the_same_with_either_backend() {
    for scenario in SCENARIOS {
        let (outcome, ec2) = direct(scenario).await;
        check(scenario, "direct", &outcome, &ec2);
        let (outcome, ec2) = agent(scenario).await;
        check(scenario, "agent", &outcome, &ec2);
    }
}
