//! The real `ipmgr-helper` on EKS nodes with their neighbours (testenv/topologies/eks-node.json):
//! the VPC CNI's ENIs and pool, its pods' `v4if0`, untagged ENIs, delegated prefixes, a
//! multi-card instance. Every test needs root: pods are network namespaces.

mod common;

use common::{failures, helper, mutating_calls};
use ipmgr_testbed::{Interface, TestBed, Topology, finish};
use serde_json::json;

fn bed() -> TestBed {
    TestBed::start(Topology::File("eks-node"))
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_address_the_vpc_cni_holds_is_never_taken_and_the_rest_goes_through() {
    let mut bed = bed();
    let (eth1, eth2) = (bed.eni_id("node1", "eth1"), bed.eni_id("node1", "eth2"));
    let pool_address = bed.eni("node1", "eth2")["secondary_ips"][0]
        .as_str()
        .expect("the VPC CNI's address")
        .to_owned();
    let pod = bed.pod(
        "node1",
        "overlap",
        &[Interface::on_eni(
            "net1",
            "eth1",
            &["10.0.1.50/24", &format!("{pool_address}/24")],
        )],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(!output.status.success(), "{stderr}");
    assert!(bed.holds(&eth2, &pool_address), "still the VPC CNI's");
    assert!(!bed.holds(&eth1, &pool_address));
    assert!(
        bed.holds(&eth1, "10.0.1.50"),
        "the other address went through"
    );
    let failures = failures(&stderr);
    assert_eq!(failures.len(), 1, "{stderr}");
    let (kind, message) = &failures[0];
    assert_eq!(kind, "rejected");
    let instance = bed.topology["nodes"]["node1"]["instance_id"]
        .as_str()
        .expect("instance")
        .to_owned();
    for part in [
        pool_address.as_str(),
        eth2.as_str(),
        instance.as_str(),
        "not a Multus ENI",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_untagged_eni_is_refused_naming_the_tag_and_the_setting_that_relaxes_it() {
    let mut bed = bed();
    let eth2 = bed.eni_id("node1", "eth2");
    let pod = bed.pod(
        "node1",
        "untagged",
        &[Interface::on_eni("net1", "eth2", &["10.0.1.60/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(!output.status.success());
    let (_, message) = &failures(&stderr)[0];
    for part in [
        eth2.as_str(),
        "node.k8s.amazonaws.com/no_manage=true",
        "aws ec2 create-tags",
        "--allow-untagged-enis",
        "MANAGE_UNTAGGED_ENI=false",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }
    assert_eq!(mutating_calls(&bed.calls()), Vec::<String>::new());

    let relaxed = pod.with_env("IPMGR_ALLOW_UNTAGGED_ENIS", "true");
    let (output, stderr, _) = finish(helper(&bed, &relaxed, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&eth2, "10.0.1.60"));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_vpc_cnis_egress_interfaces_are_left_alone_and_an_ipv4_pass_makes_one_describe() {
    let mut bed = bed();
    let pod = bed.pod(
        "node1",
        "ipv6-cluster",
        &[
            Interface::other("v4if0", &["169.254.172.9/22"]),
            Interface::other("v6if0", &["fd00::ac:9/118"]),
            Interface::on_eni("net1", "eth1", &["10.0.1.70/24"]),
        ],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.70"));
    assert_eq!(
        bed.calls(),
        json!({"DescribeNetworkInterfaces": 1, "AssignPrivateIpAddresses": 1}),
        "the holders and the target ENI with its tags in one Describe, then one assign"
    );
    bed.reset_calls();
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        bed.calls(),
        json!({"DescribeNetworkInterfaces": 1}),
        "in place: checked in EC2, no mutating call"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn with_the_webhooks_interface_list_only_those_interfaces_are_managed() {
    let mut bed = bed();
    let eth1 = bed.eni_id("node1", "eth1");
    let pod = bed
        .pod(
            "node1",
            "listed",
            &[
                Interface::on_eni("net1", "eth1", &["10.0.1.71/24"]),
                Interface::on_eni("other", "eth1", &["10.0.1.72/24"]),
            ],
        )
        .with_env("IPMGR_INTERFACES", "net1");
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&eth1, "10.0.1.71"));
    assert!(
        !bed.holds(&eth1, "10.0.1.72"),
        "not a Multus interface of the pod"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_address_that_is_not_a_vpc_address_is_left_alone_and_logged() {
    let mut bed = bed();
    let pod = bed.pod(
        "node1",
        "bridge",
        &[Interface::other("net1", &["192.168.77.5/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("192.168.77.5 on net1"), "{stderr}");
    assert!(stderr.contains("not a VPC address, left alone"), "{stderr}");
    assert_eq!(bed.calls(), json!({}));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_address_in_its_enis_prefix_needs_no_call_and_one_in_another_enis_is_refused() {
    let mut bed = bed();
    let eth1 = bed.eni("node1", "eth1").clone();
    let prefix = eth1["ipv4_prefixes"][0].as_str().expect("prefix");
    let prefix6 = eth1["ipv6_prefixes"][0].as_str().expect("prefix");
    let inside = prefix.replace(".128/28", ".130");
    let inside6 = prefix6.replace("::/80", "::9");
    let own = bed.pod(
        "node1",
        "own-prefix",
        &[Interface::on_eni(
            "net1",
            "eth1",
            &[&format!("{inside}/24"), &format!("{inside6}/64")],
        )],
    );
    let (output, stderr, _) = finish(helper(&bed, &own, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(bed.calls(), json!({}), "routed by the prefix: no call");

    let other = bed.pod(
        "node1",
        "other-prefix",
        &[Interface::on_eni("net1", "eth2", &["10.0.1.131/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &other, &["init"]));
    assert!(!output.status.success());
    let (_, message) = &failures(&stderr)[0];
    let eth1_id = eth1["id"].as_str().expect("id");
    assert!(
        message.contains(&format!(
            "lies in prefix {prefix}, delegated to ENI {eth1_id}"
        )),
        "{message}"
    );
    assert_eq!(bed.calls(), json!({}));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn on_a_multi_card_instance_device_0_of_card_1_is_a_multus_eni() {
    let mut bed = bed();
    let pod = bed.pod(
        "node2",
        "card1",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.80/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node2", "eth1"), "10.0.1.80"));
    let primary = bed.pod(
        "node2",
        "primary",
        &[Interface::on_eni("net1", "eth0", &["10.0.0.80/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &primary, &["init"]));
    assert!(!output.status.success());
    assert!(
        failures(&stderr)[0]
            .1
            .contains("belongs on the primary ENI"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn plan_shows_every_decision_and_changes_nothing() {
    let mut bed = bed();
    let pool_address = bed.eni("node1", "eth2")["secondary_ips"][1]
        .as_str()
        .expect("the VPC CNI's address")
        .to_owned();
    let pod = bed.pod(
        "node1",
        "planned",
        &[
            Interface::on_eni(
                "net1",
                "eth1",
                &["10.0.1.91/24", &format!("{pool_address}/24")],
            ),
            Interface::on_eni("net2", "eth2", &["10.0.1.92/24"]),
            Interface::other("v4if0", &["169.254.172.10/22"]),
        ],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["plan"]));
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (eth1, eth2) = (bed.eni_id("node1", "eth1"), bed.eni_id("node1", "eth2"));
    for line in [
        format!("assign 10.0.1.91 (net1) on {eth1}"),
        format!("refuse {pool_address} on net1"),
        format!("EC2 has this address on ENI {eth2}"),
        "refuse 10.0.1.92 on net2".to_owned(),
        "lacks the tag node.k8s.amazonaws.com/no_manage=true".to_owned(),
        "skip   169.254.172.10 on v4if0".to_owned(),
    ] {
        assert!(stdout.contains(&line), "{line} missing from {stdout}");
    }
    assert_eq!(mutating_calls(&bed.calls()), Vec::<String>::new());
}
