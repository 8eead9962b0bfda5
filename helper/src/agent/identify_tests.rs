//! The pod API over in-memory adapters: who may ask.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use pretty_assertions::assert_eq;

use super::cluster::NodePods;
use super::serve::PodService;
use super::serve_bed::*;
use crate::config::ClaimsMode;
use ipmgr_eni::Reason;
use ipmgr_pod::api::RoutableRequest;

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
