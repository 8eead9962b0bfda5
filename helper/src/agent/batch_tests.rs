//! The pod API over in-memory adapters: how the node's pods share EC2 calls.

use hyper::StatusCode;
use ipmgr_eni::ErrorClass;
use pretty_assertions::assert_eq;

use super::serve_bed::*;
use crate::aws::Ec2Api as _;
use crate::config::ClaimsMode;
use ipmgr_eni::Reason;
use ipmgr_pod::api::RoutableAnswer;

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
