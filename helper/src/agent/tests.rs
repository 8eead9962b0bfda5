//! The node agent's rounds over in-memory adapters ([`crate::fakes`] and scripted scans):
//! what it releases, what it keeps, and what it does with a view it cannot trust or a
//! call that fails, without root, namespaces or EC2.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use ipmgr_eni::ErrorClass;
use pretty_assertions::assert_eq;

use super::Agent;
use super::metrics::{AgentMetrics, ReasonLabel};
use super::test_fakes::{FakeScanner, scan};
use crate::config::{Cli, Command};
use crate::fakes::{FakeEc2, FakeMetadata, INSTANCE, eni, node, record};

/// The fakes' node, whose Multus ENI holds 10.0.1.50 and 10.0.1.51 (in EC2 and metadata),
/// and an agent on it: grace 0, one scan, retries spaced at most 1 ms.
pub(super) fn agent(
    extra: &[&str],
) -> (
    Agent<FakeEc2, FakeMetadata, FakeScanner>,
    FakeEc2,
    FakeScanner,
) {
    let mut node = node();
    node.enis[1]
        .ipv4
        .extend(["10.0.1.50", "10.0.1.51"].map(|a| a.parse::<std::net::Ipv4Addr>().expect("ip")));
    let ec2 = FakeEc2::with(vec![
        record(&node.enis[0], INSTANCE, false),
        record(&node.enis[1], INSTANCE, true),
    ]);
    let args = [
        "ipmgr-helper",
        "agent",
        "--release-grace-seconds",
        "0",
        "--release-scans",
        "1",
        "--ec2-throttle-backoff-min-ms",
        "1",
        "--ec2-backoff-initial-ms",
        "1",
        "--ec2-backoff-max-seconds",
        "1",
        "--pod-listen",
        "off",
    ];
    let cli = Cli::try_parse_from(args.iter().chain(extra)).expect("arguments");
    let Command::Agent(settings) = cli.command else {
        unreachable!("agent")
    };
    let scanner = FakeScanner::default();
    scanner.carrying(1, &[]);
    let agent = Agent::new(
        settings,
        (ec2.clone(), ec2.clone()),
        FakeMetadata::showing(node.clone()),
        scanner.clone(),
        node,
        Arc::new(AgentMetrics::default()),
    );
    (agent, ec2, scanner)
}

/// Addresses kept after all, for `reason`.
pub(super) fn kept(agent: &Agent<FakeEc2, FakeMetadata, FakeScanner>, reason: &'static str) -> u64 {
    agent
        .metrics
        .refused
        .get_or_create(&ReasonLabel { reason })
        .get()
}

pub(super) fn unassigns(ec2: &FakeEc2) -> usize {
    ec2.calls()
        .iter()
        .filter(|action| action.starts_with("Unassign"))
        .count()
}

#[tokio::test]
async fn what_no_pod_carries_is_released_and_nothing_else() {
    let (mut agent, ec2, scanner) = agent(&[]);
    scanner.carrying(2, &["10.0.1.51"]);
    agent.round().await.expect("round");
    assert!(!ec2.holds("eni-multus", "10.0.1.50"), "in no pod");
    assert!(ec2.holds("eni-multus", "10.0.1.51"), "a pod carries it");
    assert!(
        ec2.holds("eni-multus", "10.0.1.10"),
        "the ENI's primary address"
    );
    assert!(ec2.holds("eni-primary", "10.0.0.10"), "the primary ENI");
    assert_eq!(agent.metrics.released.get(), 1);
    assert_eq!(agent.metrics.unready_reason(), None);
}

#[tokio::test]
async fn an_empty_view_gives_nothing_back_and_says_why() {
    let (mut agent, ec2, scanner) = agent(&[]);
    scanner.carrying(0, &[]);
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 0);
    let reason = agent.metrics.unready_reason().expect("not ready");
    assert!(reason.contains("no pod network namespace"), "{reason}");
    assert!(reason.contains("2 secondary address(es)"), "{reason}");
}

#[tokio::test]
async fn incomplete_views_give_nothing_back_and_three_in_a_row_make_it_unready() {
    let (mut agent, ec2, scanner) = agent(&[]);
    let mut incomplete = scan(2, &[]);
    incomplete.unreadable.push("/run/netns/cni-new".into());
    scanner.standing(incomplete);
    agent.round().await.expect("round");
    agent.round().await.expect("round");
    assert_eq!(
        agent.metrics.unready_reason().as_deref(),
        Some("the first scan is not done")
    );
    agent.round().await.expect("round");
    let reason = agent.metrics.unready_reason().expect("not ready");
    assert!(
        reason.contains("3 scans in a row") && reason.contains("cni-new"),
        "{reason}"
    );
    assert_eq!(unassigns(&ec2), 0);
}

#[tokio::test]
async fn a_pod_that_took_the_address_before_the_call_keeps_it() {
    let (mut agent, ec2, scanner) = agent(&[]);
    scanner.then(2, &["10.0.1.51"]);
    scanner.carrying(2, &["10.0.1.50", "10.0.1.51"]);
    agent.round().await.expect("round");
    assert_eq!(
        unassigns(&ec2),
        0,
        "the fresh scan just before the call shows it"
    );
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
    assert_eq!(kept(&agent, "in_use"), 1);
}

/// An agent whose unassign of 10.0.1.50 (in no pod) was just throttled, once the retry's
/// delay (at most 1 ms here) has passed.
async fn throttled_once() -> (
    Agent<FakeEc2, FakeMetadata, FakeScanner>,
    FakeEc2,
    FakeScanner,
) {
    let (mut agent, ec2, scanner) = agent(&[]);
    scanner.carrying(2, &["10.0.1.51"]);
    ec2.fail_next(
        "UnassignPrivateIpAddresses",
        "RequestLimitExceeded",
        ErrorClass::Throttling,
    );
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 1, "throttled");
    assert_eq!(agent.absences.waiting(), 1, "to be retried");
    tokio::time::sleep(Duration::from_millis(5)).await;
    (agent, ec2, scanner)
}

#[tokio::test]
async fn a_throttled_unassign_is_decided_afresh_and_a_pod_that_took_the_address_keeps_it() {
    let (mut agent, ec2, scanner) = throttled_once().await;
    // IPAM gave the address to a new pod while the agent waited.
    scanner.carrying(3, &["10.0.1.50", "10.0.1.51"]);
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 1, "no second attempt");
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
    assert_eq!(agent.absences.waiting(), 0);
}

#[tokio::test]
async fn a_throttled_unassign_is_retried_when_the_address_is_still_unused() {
    let (mut agent, ec2, _scanner) = throttled_once().await;
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 2);
    assert!(!ec2.holds("eni-multus", "10.0.1.50"));
}

#[tokio::test]
async fn a_failed_read_of_the_enis_is_not_fatal_and_says_why() {
    let (mut agent, ec2, _scanner) = agent(&[]);
    ec2.fail_next(
        "DescribeNetworkInterfaces",
        "UnauthorizedOperation",
        ErrorClass::Persistent,
    );
    agent.round().await.expect("not fatal");
    let reason = agent.metrics.unready_reason().expect("not ready");
    assert!(
        reason.contains("cannot read the node's ENIs from EC2"),
        "{reason}"
    );
    assert_eq!(unassigns(&ec2), 0);
    agent.round().await.expect("round");
    assert!(!ec2.holds("eni-multus", "10.0.1.50"), "once EC2 answers");
}

#[tokio::test]
async fn a_failed_read_just_before_the_call_drops_the_decision() {
    let (mut agent, ec2, scanner) = agent(&[]);
    scanner.carrying(2, &["10.0.1.50", "10.0.1.51"]);
    agent
        .round()
        .await
        .expect("round: reads the ENIs, nothing due");
    scanner.carrying(2, &["10.0.1.51"]);
    ec2.fail_next(
        "DescribeNetworkInterfaces",
        "RequestLimitExceeded",
        ErrorClass::Throttling,
    );
    agent.round().await.expect("round");
    assert_eq!(
        unassigns(&ec2),
        0,
        "no call on a view that could not be refreshed"
    );
    let dropped = agent
        .metrics
        .dropped
        .get_or_create(&ReasonLabel { reason: "describe" })
        .get();
    assert_eq!(dropped, 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    agent.round().await.expect("round");
    assert!(
        !ec2.holds("eni-multus", "10.0.1.50"),
        "taken again and carried out"
    );
}

#[tokio::test]
async fn an_address_ec2_no_longer_has_on_the_eni_is_kept() {
    let (mut agent, _, scanner) = agent(&[]);
    scanner.carrying(2, &["10.0.1.51"]);
    // Another node took 10.0.1.50; metadata still shows it here.
    let node = node();
    let mut multus = node.enis[1].clone();
    multus.ipv4.push("10.0.1.51".parse().expect("ip"));
    let mut other = eni(7, "other-node");
    other.ipv4.push("10.0.1.50".parse().expect("ip"));
    let ec2 = FakeEc2::with(vec![
        record(&node.enis[0], INSTANCE, false),
        record(&multus, INSTANCE, true),
        record(&other, "i-node2", true),
    ]);
    (agent.ec2, agent.release_ec2) = (ec2.clone(), ec2.clone());
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 0);
    assert!(ec2.holds("eni-other-node", "10.0.1.50"));
    assert_eq!(kept(&agent, "moved"), 1);
}

#[tokio::test]
async fn kept_cidrs_are_never_released() {
    let (mut agent, ec2, _scanner) = agent(&["--keep-cidr", "10.0.1.50/32"]);
    agent.round().await.expect("round");
    assert!(ec2.holds("eni-multus", "10.0.1.50"), "kept");
    assert!(!ec2.holds("eni-multus", "10.0.1.51"), "released");
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let (mut agent, ec2, _scanner) = agent(&["--dry-run"]);
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 0);
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
}

#[tokio::test]
async fn a_view_older_than_two_seconds_when_the_call_would_go_out_is_never_acted_on() {
    let (mut agent, ec2, scanner) = agent(&[]);
    scanner.carrying(2, &["10.0.1.51"]);
    scanner.then(2, &["10.0.1.51"]);
    // The scan just before the call takes longer than the view may age.
    scanner.then_after(
        super::VIEW_MAX_AGE + Duration::from_millis(100),
        2,
        &["10.0.1.51"],
    );
    agent.round().await.expect("round");
    assert_eq!(unassigns(&ec2), 0, "no call on a stale view");
    let dropped = agent
        .metrics
        .dropped
        .get_or_create(&ReasonLabel { reason: "stale" })
        .get();
    assert_eq!(dropped, 1);
    assert_eq!(agent.absences.waiting(), 1, "decided again later");
}
