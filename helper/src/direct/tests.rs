//! The direct backend over in-memory adapters ([`crate::fakes`]), run by the pod loop:
//! passes, refusals, IPv6 moves, `plan` and the release on exit, without root, namespaces
//! or EC2.

use ipmgr_eni::{Assignment, EniRecord, ErrorClass, NO_MANAGE_TAG, NodeFacts, PodAddress};
use pretty_assertions::assert_eq;

use ipmgr_pod::netlink::PodAddresses as _;
use ipmgr_pod::{RunError, run};

use super::{DirectError, DirectRouting};
use crate::aws::Ec2Api as _;
use crate::config::Settings;
use crate::fakes::{
    FakeEc2, FakeMetadata, FakeNetwork, INSTANCE, eni, node, pod_address, record, settings,
};

/// The direct backend, the pod it runs in, and its settings.
struct Helper {
    routing: DirectRouting<FakeEc2, FakeMetadata>,
    network: FakeNetwork,
    settings: Settings,
}

type PodError = RunError<DirectError>;

impl Helper {
    /// `init` on `node` as metadata shows it.
    async fn init(&mut self, node: &NodeFacts) -> Result<(), PodError> {
        self.routing.node = node.clone();
        run::init(&self.settings.pod, &mut self.network, &mut self.routing).await
    }

    /// `plan` on `node` as metadata shows it.
    async fn plan_report(&mut self, node: &NodeFacts) -> Result<Vec<String>, PodError> {
        self.routing.node = node.clone();
        let addresses =
            run::wait_for_addresses(&self.settings.pod, &mut self.network, &self.routing).await?;
        self.routing
            .plan_report(&addresses)
            .await
            .map_err(RunError::Routing)
    }
}

/// EC2 with the node's primary ENI (untagged, the VPC CNI's) and its Multus ENI (tagged),
/// plus `others`.
fn ec2_with(others: Vec<EniRecord>) -> FakeEc2 {
    let node = node();
    let mut enis = vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, true),
    ];
    enis.extend(others);
    FakeEc2::with(enis)
}

fn helper(ec2: &FakeEc2, metadata: NodeFacts, addresses: Vec<PodAddress>) -> Helper {
    let settings = settings(&["--wait-seconds", "0", "--confirm-seconds", "0"]);
    let node = metadata.clone();
    Helper {
        routing: DirectRouting::new(
            settings.clone(),
            ec2.clone(),
            FakeMetadata::showing(metadata),
            node,
        ),
        network: FakeNetwork::carrying(addresses),
        settings,
    }
}

/// Another node's Multus ENI holding `ipv4` and `ipv6`.
fn other_nodes_multus_eni(ipv4: &[&str], ipv6: &[&str]) -> EniRecord {
    let mut other = eni(7, "other-node");
    other.ipv4.extend(
        ipv4.iter()
            .map(|a| a.parse::<std::net::Ipv4Addr>().expect("ip")),
    );
    other.ipv6 = ipv6.iter().map(|a| a.parse().expect("ip")).collect();
    record(&other, "i-node2", true)
}

#[tokio::test]
async fn init_assigns_an_address_to_the_eni_whose_mac_its_interface_carries() {
    let ec2 = ec2_with(Vec::new());
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "10.0.1.50")]);
    helper.init(&node()).await.expect("routable");
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
    assert_eq!(ec2.mutating_calls(), vec!["AssignPrivateIpAddresses"]);
}

#[tokio::test]
async fn an_address_metadata_and_ec2_show_in_place_costs_one_describe_and_no_change() {
    let mut shown = node();
    shown.enis[1].ipv4.push("10.0.1.50".parse().expect("ip"));
    let ec2 = FakeEc2::with(vec![
        record(&shown.enis[0], INSTANCE, false),
        record(&shown.enis[1], INSTANCE, true),
    ]);
    let mut helper = helper(
        &ec2,
        shown.clone(),
        vec![pod_address("net1", 1, "10.0.1.50")],
    );
    helper.init(&shown).await.expect("routable");
    assert_eq!(ec2.calls(), vec!["DescribeNetworkInterfaces"]);
}

#[tokio::test]
async fn init_assigns_an_address_lagging_metadata_still_lists_but_ec2_moved_away() {
    // Another node took 10.0.1.50 in EC2; this node's metadata still lists it here.
    let ec2 = ec2_with(vec![other_nodes_multus_eni(&["10.0.1.50"], &[])]);
    let mut lagging = node();
    lagging.enis[1].ipv4.push("10.0.1.50".parse().expect("ip"));
    let mut helper = helper(
        &ec2,
        lagging.clone(),
        vec![pod_address("net1", 1, "10.0.1.50")],
    );
    helper.init(&lagging).await.expect("routable");
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
    assert!(!ec2.holds("eni-other-node", "10.0.1.50"));
}

#[tokio::test]
async fn an_untagged_eni_is_refused_naming_the_tag_to_set() {
    let node = node();
    let ec2 = FakeEc2::with(vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, false),
    ]);
    let mut helper = helper(
        &ec2,
        node.clone(),
        vec![pod_address("net1", 1, "10.0.1.50")],
    );
    let error = helper.init(&node).await.expect_err("refused");
    assert!(
        matches!(error, RunError::Routing(DirectError::Unroutable(_))),
        "{error}"
    );
    assert!(error.to_string().contains(NO_MANAGE_TAG), "{error}");
    assert_eq!(ec2.mutating_calls(), Vec::<&str>::new());
}

#[tokio::test]
async fn an_address_a_vpc_cni_eni_holds_is_never_taken() {
    let mut vpc_cni = eni(5, "vpc-cni");
    vpc_cni.ipv4.push("10.0.1.50".parse().expect("ip"));
    let mut vpc_cni = record(&vpc_cni, "i-node2", false);
    vpc_cni.description = "aws-K8S-i-node2".to_owned();
    let ec2 = ec2_with(vec![vpc_cni]);
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "10.0.1.50")]);
    let error = helper.init(&node()).await.expect_err("refused");
    assert!(error.to_string().contains("eni-vpc-cni"), "{error}");
    assert!(
        ec2.holds("eni-vpc-cni", "10.0.1.50"),
        "left with its workload"
    );
    assert_eq!(ec2.mutating_calls(), Vec::<&str>::new());
}

#[tokio::test]
async fn a_floating_ipv4_moves_from_another_nodes_multus_eni() {
    let ec2 = ec2_with(vec![other_nodes_multus_eni(&["10.0.1.50"], &[])]);
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "10.0.1.50")]);
    helper.init(&node()).await.expect("routable");
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
    assert!(!ec2.holds("eni-other-node", "10.0.1.50"));
}

#[tokio::test]
async fn a_floating_ipv6_leaves_its_previous_multus_holder_first() {
    let ec2 = ec2_with(vec![other_nodes_multus_eni(&[], &["2600:1::50"])]);
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "2600:1::50")]);
    helper.init(&node()).await.expect("routable");
    assert_eq!(
        ec2.mutating_calls(),
        vec!["UnassignIpv6Addresses", "AssignIpv6Addresses"]
    );
    assert!(ec2.holds("eni-multus", "2600:1::50"));
}

/// A floating IPv6 on another node's Multus ENI, moved here by `init` while the next
/// `failing_assigns` AssignIpv6Addresses fail: EC2 afterwards, and the error.
async fn failed_ipv6_move(failing_assigns: usize) -> (FakeEc2, PodError) {
    let ec2 = ec2_with(vec![other_nodes_multus_eni(&[], &["2600:1::50"])]);
    for _ in 0..failing_assigns {
        ec2.fail_next(
            "AssignIpv6Addresses",
            "InvalidParameterValue",
            ErrorClass::Persistent,
        );
    }
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "2600:1::50")]);
    let error = helper.init(&node()).await.expect_err("unroutable");
    assert!(error.to_string().contains("2600:1::50"), "{error}");
    assert_eq!(
        ec2.mutating_calls(),
        vec![
            "UnassignIpv6Addresses",
            "AssignIpv6Addresses",
            "AssignIpv6Addresses"
        ],
        "the move, then the way back"
    );
    assert!(!ec2.holds("eni-multus", "2600:1::50"));
    (ec2, error)
}

#[tokio::test]
async fn a_failed_ipv6_move_puts_the_address_back_where_it_was() {
    let (ec2, error) = failed_ipv6_move(1).await;
    assert!(ec2.holds("eni-other-node", "2600:1::50"), "{error}");
}

#[tokio::test]
async fn a_failed_ipv6_move_whose_way_back_fails_too_names_both_enis() {
    let (ec2, error) = failed_ipv6_move(2).await;
    assert!(!ec2.holds("eni-other-node", "2600:1::50"));
    let RunError::Routing(DirectError::Unroutable(failures)) = &error else {
        panic!("{error}");
    };
    assert_eq!(failures.len(), 2, "{error}");
    for eni in ["eni-multus", "eni-other-node"] {
        assert!(error.to_string().contains(eni), "{eni}: {error}");
    }
}

#[tokio::test]
async fn an_ipv6_that_cannot_leave_its_holder_is_not_assigned_and_stays_there() {
    let ec2 = ec2_with(vec![other_nodes_multus_eni(&[], &["2600:1::50"])]);
    ec2.fail_next(
        "UnassignIpv6Addresses",
        "UnauthorizedOperation",
        ErrorClass::Persistent,
    );
    let mut helper = helper(
        &ec2,
        node(),
        vec![
            pod_address("net1", 1, "2600:1::50"),
            pod_address("net1", 1, "10.0.1.50"),
        ],
    );
    let error = helper.init(&node()).await.expect_err("unroutable");
    let RunError::Routing(DirectError::Unroutable(failures)) = &error else {
        panic!("{error}");
    };
    assert_eq!(failures.len(), 1, "{error}");
    assert!(error.to_string().contains("2600:1::50"), "{error}");
    assert!(
        ec2.holds("eni-other-node", "2600:1::50"),
        "on its old ENI, not on none"
    );
    assert!(
        !ec2.calls().contains(&"AssignIpv6Addresses"),
        "no assign of a stuck address"
    );
    assert!(
        ec2.holds("eni-multus", "10.0.1.50"),
        "the other address still goes"
    );
}

#[tokio::test]
async fn an_ec2_refusal_fails_init_naming_the_address_and_what_to_do() {
    let ec2 = ec2_with(Vec::new());
    ec2.fail_next(
        "AssignPrivateIpAddresses",
        "UnauthorizedOperation",
        ErrorClass::Persistent,
    );
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "10.0.1.50")]);
    let error = helper
        .init(&node())
        .await
        .expect_err("unroutable")
        .to_string();
    for part in [
        "10.0.1.50",
        "eni-multus",
        "UnauthorizedOperation",
        "iam-policy.json",
    ] {
        assert!(error.contains(part), "{part}: {error}");
    }
}

#[tokio::test]
async fn the_vpc_cni_interfaces_and_foreign_macs_are_left_alone() {
    let ec2 = ec2_with(Vec::new());
    let mut foreign = pod_address("net2", 9, "10.0.9.5");
    foreign.mac.0[0] = 6;
    let addresses = vec![
        pod_address("net1", 1, "10.0.1.50"),
        foreign,
        pod_address("v4if0", 9, "169.254.172.5"),
    ];
    let mut helper = helper(&ec2, node(), addresses);
    helper.init(&node()).await.expect("routable");
    assert_eq!(ec2.mutating_calls(), vec!["AssignPrivateIpAddresses"]);
}

#[tokio::test]
async fn no_address_within_the_wait_is_an_error_naming_the_setting() {
    let ec2 = ec2_with(Vec::new());
    let mut helper = helper(&ec2, node(), Vec::new());
    let error = helper.init(&node()).await.expect_err("no address");
    assert!(matches!(error, RunError::NoAddresses { .. }), "{error}");
    assert!(error.to_string().contains("--wait-seconds"), "{error}");
    assert_eq!(ec2.calls(), Vec::<&str>::new());
}

#[tokio::test]
async fn plan_says_what_init_would_do_and_changes_nothing() {
    // 10.0.1.51 is in place in EC2; metadata still lists 10.0.1.52, which left.
    let mut shown = node();
    shown.enis[1].ipv4.push("10.0.1.51".parse().expect("ip"));
    let ec2 = FakeEc2::with(vec![
        record(&shown.enis[0], INSTANCE, false),
        record(&shown.enis[1], INSTANCE, true),
        other_nodes_multus_eni(&[], &["2600:1::50"]),
    ]);
    shown.enis[1].ipv4.push("10.0.1.52".parse().expect("ip"));
    let mut helper = helper(
        &ec2,
        shown.clone(),
        vec![
            pod_address("net1", 1, "10.0.1.50"),
            pod_address("net1", 1, "10.0.1.51"),
            pod_address("net1", 1, "10.0.1.52"),
            pod_address("net1", 1, "2600:1::50"),
        ],
    );
    let lines = helper.plan_report(&shown).await.expect("plan");
    assert_eq!(
        lines,
        vec![
            "assign 10.0.1.50 (net1) on eni-multus [matched by Mac]",
            "keep   10.0.1.51 (net1) on eni-multus [matched by Mac]",
            "assign 10.0.1.52 (net1) on eni-multus [matched by Mac]",
            "assign 2600:1::50 (net1) on eni-multus [matched by Mac, unassigned from eni-other-node first]",
        ]
    );
    assert_eq!(ec2.mutating_calls(), Vec::<&str>::new());
}

#[tokio::test]
async fn on_exit_only_what_is_still_on_the_pod_and_its_eni_is_released() {
    let ec2 = ec2_with(vec![other_nodes_multus_eni(&["10.0.1.52"], &[])]);
    let mut helper = helper(&ec2, node(), vec![pod_address("net1", 1, "10.0.1.50")]);
    ec2.assign_ipv4(
        "eni-multus",
        &[
            "10.0.1.50".parse().expect("ip"),
            "10.0.1.51".parse().expect("ip"),
        ],
    )
    .await
    .expect("setup");
    helper.routing.assigned = ["10.0.1.50", "10.0.1.51", "10.0.1.52"]
        .map(|address| Assignment {
            eni_id: "eni-multus".to_owned(),
            address: address.parse().expect("ip"),
        })
        .into();
    let carried = helper.network.addresses().await.expect("addresses");
    helper.routing.release(&carried).await.expect("released");
    assert!(
        !ec2.holds("eni-multus", "10.0.1.50"),
        "on the pod and on its ENI"
    );
    assert!(ec2.holds("eni-multus", "10.0.1.51"), "no longer on the pod");
    assert!(
        ec2.holds("eni-other-node", "10.0.1.52"),
        "moved to another holder"
    );
}
