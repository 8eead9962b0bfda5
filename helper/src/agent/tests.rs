//! The node agent's rounds over in-memory adapters ([`crate::fakes`] and scripted scans):
//! what it releases, what it keeps, and what it does with a view it cannot trust or a
//! call that fails, without root, namespaces or EC2.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser as _;
use ipmgr_eni::ErrorClass;
use pretty_assertions::assert_eq;

use super::Agent;
use super::metrics::{AgentMetrics, ReasonLabel};
use super::netns::{Caller, PodNamespace, PodScanner, Scan, ScanError};
use crate::config::{Cli, Command};
use crate::fakes::{FakeEc2, FakeMetadata, INSTANCE, eni, node, record};

/// Scans as the test scripts them: the queued ones first (each after its delay), then the
/// standing one.
#[derive(Debug, Clone, Default)]
pub(super) struct FakeScanner(Arc<Mutex<Scans>>);

/// The scans of a [`FakeScanner`].
#[derive(Debug, Default)]
struct Scans {
    queued: VecDeque<(Scan, Duration)>,
    standing: Scan,
    /// The pod namespaces `find` looks through.
    namespaces: Vec<PodNamespace>,
    /// The namespace the node routes a pod IP to, where it does.
    routes: BTreeMap<IpAddr, PathBuf>,
}

impl FakeScanner {
    /// From now on, `find` sees these pod namespaces.
    pub(super) fn with_namespaces(&self, namespaces: Vec<PodNamespace>) {
        self.0.lock().expect("scanner").namespaces = namespaces;
    }

    /// From now on, the node routes `pod_ip` to the namespace at `path`.
    pub(super) fn routing(&self, pod_ip: &str, path: &str) {
        self.0
            .lock()
            .expect("scanner")
            .routes
            .insert(pod_ip.parse().expect("ip"), path.into());
    }

    /// From now on, pods (in `namespaces` namespaces) carry `in_use`.
    fn carrying(&self, namespaces: usize, in_use: &[&str]) {
        self.0.lock().expect("scanner").standing = scan(namespaces, in_use);
    }

    /// The next scan only shows `in_use`.
    fn then(&self, namespaces: usize, in_use: &[&str]) {
        self.then_after(Duration::ZERO, namespaces, in_use);
    }

    /// The next scan takes `delay`, then shows `in_use`.
    fn then_after(&self, delay: Duration, namespaces: usize, in_use: &[&str]) {
        self.0
            .lock()
            .expect("scanner")
            .queued
            .push_back((scan(namespaces, in_use), delay));
    }
}

fn scan(namespaces: usize, in_use: &[&str]) -> Scan {
    Scan {
        in_use: in_use
            .iter()
            .map(|a| a.parse::<IpAddr>().expect("ip"))
            .collect::<BTreeSet<_>>(),
        namespaces,
        ..Scan::default()
    }
}

impl PodScanner for FakeScanner {
    async fn scan(&self) -> Result<Scan, ScanError> {
        let next = {
            let mut scans = self.0.lock().expect("scanner");
            let standing = (scans.standing.clone(), Duration::ZERO);
            scans.queued.pop_front().unwrap_or(standing)
        };
        tokio::time::sleep(next.1).await;
        Ok(next.0)
    }

    /// As the kernel answers: the routed namespace when there is one, else every
    /// namespace carrying `pod_ip` on `primary`.
    async fn find(&self, pod_ip: IpAddr, primary: &str) -> Result<Caller, ScanError> {
        let scans = self.0.lock().expect("scanner");
        let routed = scans.routes.get(&pod_ip);
        let carriers: Vec<PodNamespace> = scans
            .namespaces
            .iter()
            .filter(|namespace| routed.is_none_or(|path| &namespace.path == path))
            .filter(|namespace| {
                namespace
                    .addresses
                    .iter()
                    .any(|address| address.interface == primary && address.address == pod_ip)
            })
            .cloned()
            .collect();
        Ok(Caller::among(carriers))
    }
}

/// The fakes' node, whose Multus ENI holds 10.0.1.50 and 10.0.1.51 (in EC2 and metadata),
/// and an agent on it: grace 0, one scan, retries spaced at most 1 ms.
fn agent(
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
fn kept(agent: &Agent<FakeEc2, FakeMetadata, FakeScanner>, reason: &'static str) -> u64 {
    agent
        .metrics
        .refused
        .get_or_create(&ReasonLabel { reason })
        .get()
}

fn unassigns(ec2: &FakeEc2) -> usize {
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
    scanner.0.lock().expect("scanner").standing = incomplete;
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

/// A namespace object `name` with these annotations.
pub(super) fn namespace_object(
    name: &str,
    annotations: &[(&str, &str)],
) -> k8s_openapi::api::core::v1::Namespace {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|&(key, value)| (key.to_owned(), value.into()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
    }))
    .expect("namespace")
}

/// `agent` with the pod API on (its readiness and its releases then depend on the API
/// server's view).
fn with_the_pod_api(agent: &mut Agent<FakeEc2, FakeMetadata, FakeScanner>) {
    agent.settings.pod_listen = crate::config::PodListen::On(([127, 0, 0, 1], 0).into());
    agent.require_current_view();
}

#[tokio::test]
async fn with_the_pod_api_on_the_agent_is_ready_only_once_it_listed_the_pods_and_the_namespaces() {
    let (mut agent, _ec2, _scanner) = agent(&[]);
    with_the_pod_api(&mut agent);
    agent.round().await.expect("round");
    let reason = agent.metrics.unready_reason().expect("not ready");
    assert!(reason.contains("have not been listed"), "{reason}");
    agent.pods.replace(&[]);
    agent.round().await.expect("round");
    let reason = agent
        .metrics
        .unready_reason()
        .expect("namespaces not listed");
    assert!(reason.contains("the namespaces"), "{reason}");
    agent.pods.replace_namespaces(&[]);
    agent.round().await.expect("round");
    assert_eq!(agent.metrics.unready_reason(), None);
}

#[tokio::test]
async fn a_view_the_api_server_stopped_confirming_turns_readyz_503_and_gives_nothing_back() {
    let (mut agent, ec2, _scanner) = agent(&["--pod-watch-stale-seconds", "10"]);
    with_the_pod_api(&mut agent);
    agent.pods.replace(&[]);
    agent.pods.replace_namespaces(&[]);
    agent.pods.age_confirmations(Duration::from_secs(11));
    agent.round().await.expect("round");
    let reason = agent.metrics.unready_reason().expect("stale");
    assert!(
        reason.contains("has not confirmed") && reason.contains("--pod-watch-stale-seconds 10"),
        "{reason}"
    );
    assert_eq!(unassigns(&ec2), 0, "nothing released on a stale view");
    agent.pods.confirm_pods();
    agent.pods.confirm_namespaces();
    agent.round().await.expect("round");
    assert_eq!(agent.metrics.unready_reason(), None);
    assert_eq!(
        unassigns(&ec2),
        1,
        "the leaked addresses go back once it is current"
    );
}

#[tokio::test]
async fn before_the_first_list_of_pods_and_namespaces_nothing_is_released() {
    let (mut agent, ec2, _scanner) = agent(&[]);
    with_the_pod_api(&mut agent);
    agent.pods.replace(&[]);
    agent.round().await.expect("round");
    assert_eq!(
        unassigns(&ec2),
        0,
        "the namespaces (grants) are not listed yet"
    );
    agent.pods.replace_namespaces(&[]);
    agent.round().await.expect("round");
    assert!(!ec2.holds("eni-multus", "10.0.1.50") && !ec2.holds("eni-multus", "10.0.1.51"));
}

#[tokio::test]
async fn an_address_a_live_pod_claims_is_never_released_even_when_no_namespace_shows_it() {
    let (mut agent, ec2, _scanner) = agent(&[]);
    agent.pods.replace_namespaces(&[namespace_object(
        "default",
        &[(ipmgr_eni::FLOATING_IP_CIDRS_ANNOTATION, "10.0.1.48/30")],
    )]);
    agent.pods.replace(&[super::serve_tests::pod(
        "default/vrrp",
        "192.168.0.5",
        Some(r#"[{"interface": "net1", "ips": ["10.0.1.60"]}]"#),
        Some("10.0.1.50"),
    )]);
    agent.round().await.expect("round");
    assert!(
        ec2.holds("eni-multus", "10.0.1.50"),
        "claimed as floating inside the namespace's grant: kept"
    );
    assert!(
        !ec2.holds("eni-multus", "10.0.1.51"),
        "claimed by no pod: released"
    );
}

#[tokio::test]
async fn a_floating_claim_outside_the_namespaces_grant_protects_nothing() {
    let (mut agent, ec2, _scanner) = agent(&[]);
    agent
        .pods
        .replace_namespaces(&[namespace_object("tenant-a", &[])]);
    // A pod with no Multus network and no capability, declaring every address floating.
    agent.pods.replace(&[super::serve_tests::pod(
        "tenant-a/everything",
        "192.168.0.5",
        None,
        Some("0.0.0.0/0,::/0"),
    )]);
    agent.round().await.expect("round");
    assert!(
        !ec2.holds("eni-multus", "10.0.1.50") && !ec2.holds("eni-multus", "10.0.1.51"),
        "leaks are released whatever a pod declares"
    );
}
