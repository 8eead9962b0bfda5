//! The agent's rounds with the pod API on: readiness and releases follow the API server's
//! view of the node's pods and the namespaces.

use std::time::Duration;

use pretty_assertions::assert_eq;

use super::Agent;
use super::test_fakes::{FakeScanner, namespace_object};
use super::tests::{agent, unassigns};
use crate::fakes::{FakeEc2, FakeMetadata};

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
    agent.pods.replace(&[super::serve_bed::pod(
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
    agent.pods.replace(&[super::serve_bed::pod(
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
