//! The pod API over in-memory adapters: what a pod may claim.

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;

use super::serve_bed::*;
use crate::config::ClaimsMode;
use ipmgr_eni::Reason;

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
