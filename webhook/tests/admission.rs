//! The `/mutate` contract at the HTTP level, driven through the router with `oneshot`:
//! bad input is answered (never a crash), denials name the annotation, and the metrics
//! count every outcome.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use ipmgr_webhook::server::router;
use rstest::rstest;
use serde_json::{Value, json};

const MAX_BODY: usize = 64 * 1024;

fn app() -> Router {
    router(common::state(MAX_BODY, None))
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, String) {
    let (status, body) = common::call(app, method, path, body).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[rstest]
#[case::not_json("{not json", "is not an admission.k8s.io/v1 AdmissionReview")]
#[case::not_a_review(
    r#"{"hello": "world"}"#,
    "is not an admission.k8s.io/v1 AdmissionReview"
)]
#[case::no_request(
    r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
    "has no request"
)]
#[case::old_version(
    r#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#,
    "admissionReviewVersions"
)]
#[tokio::test]
async fn malformed_bodies_get_400_with_a_reason(#[case] body: &'static str, #[case] reason: &str) {
    let (status, text) = call(&app(), Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains(reason), "{text}");
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let mut pod = common::multus_pod(json!({}));
    pod["metadata"]["annotations"]["padding"] = json!("x".repeat(MAX_BODY));
    let body = common::admission_review("big", &pod, false).to_string();
    let (status, _) = call(&app(), Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[rstest]
#[case::deployment(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}), "only handles Pods")]
#[case::pod_with_broken_spec(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "nope"}}), "could not read the Pod")]
#[tokio::test]
async fn objects_it_cannot_handle_are_allowed_unchanged_with_a_warning(
    #[case] object: Value,
    #[case] warning: &str,
) {
    let body = common::admission_review("odd", &object, false).to_string();
    let (status, text) = call(&app(), Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["response"]["uid"], "odd");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .expect("warning")
            .contains(warning),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_mode_is_denied_naming_the_annotation_and_values() {
    let pod = common::multus_pod(json!({"multus-ipmgr.io/mode": "sometimes"}));
    let body = common::admission_review("deny-me", &pod, false).to_string();
    let (status, text) = call(&app(), Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    let response = &answer["response"];
    assert_eq!(response["uid"], "deny-me");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(message.contains("multus-ipmgr.io/mode"), "{message}");
    assert!(message.contains("\"sometimes\""), "{message}");
    assert!(
        message.contains("init, sidecar, native-sidecar, disabled"),
        "{message}"
    );
}

#[tokio::test]
async fn health_readiness_and_methods() {
    let app = app();
    assert_eq!(
        call(&app, Method::GET, "/healthz", "").await,
        (StatusCode::OK, "ok".to_owned())
    );
    // No certificate in this router: not ready.
    assert_eq!(
        call(&app, Method::GET, "/readyz", "").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(&app, Method::GET, "/mutate", "").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(&app, Method::GET, "/nope", "").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn metrics_count_every_outcome() {
    let app = app();
    let review = |uid: &str, pod: Value| common::admission_review(uid, &pod, false).to_string();
    call(
        &app,
        Method::POST,
        "/mutate",
        review("a", common::multus_pod(json!({}))),
    )
    .await;
    call(
        &app,
        Method::POST,
        "/mutate",
        review(
            "b",
            common::multus_pod(json!({"multus-ipmgr.io/mode": "sidecar"})),
        ),
    )
    .await;
    call(
        &app,
        Method::POST,
        "/mutate",
        review(
            "c",
            common::multus_pod(json!({"multus-ipmgr.io/mode": "x"})),
        ),
    )
    .await;
    call(
        &app,
        Method::POST,
        "/mutate",
        review(
            "d",
            json!({"kind": "Pod", "metadata": {}, "spec": {"containers": []}}),
        ),
    )
    .await;
    call(&app, Method::POST, "/mutate", "garbage").await;

    let (status, text) = call(&app, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        r#"ipmgr_webhook_admission_requests_total{outcome="injected",reason="init"} 1"#,
        r#"ipmgr_webhook_admission_requests_total{outcome="injected",reason="sidecar"} 1"#,
        r#"ipmgr_webhook_admission_requests_total{outcome="denied",reason="invalid_annotation"} 1"#,
        r#"ipmgr_webhook_admission_requests_total{outcome="skipped",reason="no_multus_networks"} 1"#,
        r#"ipmgr_webhook_admission_requests_total{outcome="error",reason="bad_request"} 1"#,
        "ipmgr_webhook_admission_duration_seconds_count 5",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// Finding: `operation` was never checked, so an UPDATE of a Multus pod got a patch.
#[rstest]
#[case::update(Some("UPDATE"))]
#[case::delete(Some("DELETE"))]
#[case::connect(Some("CONNECT"))]
#[case::missing(None)]
#[tokio::test]
async fn only_a_create_is_mutated(#[case] operation: Option<&str>) {
    let app = app();
    let mut review = common::admission_review("op", &common::multus_pod(json!({})), false);
    match operation {
        Some(operation) => review["request"]["operation"] = json!(operation),
        None => {
            review["request"]
                .as_object_mut()
                .expect("request")
                .remove("operation");
        }
    }
    let (status, text) = call(&app, Method::POST, "/mutate", review.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["response"]["uid"], "op");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{text}");
    let warning = answer["response"]["warnings"][0].as_str().expect("warning");
    assert!(warning.contains("only injects at creation"), "{warning}");
    let (_, metrics) = call(&app, Method::GET, "/metrics", "").await;
    assert!(
        metrics.contains(
            r#"ipmgr_webhook_admission_requests_total{outcome="ignored",reason="not_a_create"} 1"#
        ),
        "{metrics}"
    );
}

/// Finding: the image annotation was honoured by default with any text.
#[tokio::test]
async fn the_image_annotation_is_denied_unless_overrides_are_on() {
    let app = router(common::state_with(
        common::settings_from(&[]),
        MAX_BODY,
        None,
    ));
    let pod =
        common::multus_pod(json!({"multus-ipmgr.io/image": "attacker.example/not-the-helper:1"}));
    let body = common::admission_review("image", &pod, false).to_string();
    let (status, text) = call(&app, Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["response"]["allowed"], false, "{text}");
    let message = answer["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(message.contains("allow-image-override is off"), "{message}");
}

/// Finding: a pod the fast parser could not read was parsed a second time in full; now it
/// is answered from the envelope, whatever the object holds.
#[tokio::test]
async fn an_unreadable_pod_is_answered_from_its_envelope() {
    let app = router(common::state(8 << 20, None));
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    // Nested deeper than serde_json builds a Value from: spliced into the text by hand.
    let body = common::admission_review(
        "envelope",
        &json!({"kind": "Pod", "spec": {"containers": "nope", "deep": "DEEP"}}),
        false,
    )
    .to_string()
    .replace("\"DEEP\"", &deep);
    let (status, text) = call(&app, Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(answer["response"]["uid"], "envelope");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(text.contains("could not read the Pod"), "{text}");
}

/// Finding: a megabyte uid was echoed and logged in full; the API server sends UUIDs.
#[tokio::test]
async fn a_uid_longer_than_a_kubernetes_uid_is_refused_shortened() {
    let app = router(common::state(8 << 20, None));
    let uid = "u".repeat(3_000_000);
    let body = common::admission_review(&uid, &common::multus_pod(json!({})), false).to_string();
    let (status, text) = call(&app, Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.len() < 512, "{} bytes", text.len());
    assert!(text.contains("3000000 bytes"), "{text}");
}

/// A source whose every read fails as a forbidden one does.
#[derive(Debug)]
struct Forbidden;

impl ipmgr_webhook::network_definitions::DefinitionSource for Forbidden {
    fn read<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: std::time::Duration,
    ) -> ipmgr_webhook::network_definitions::Reading<'a> {
        Box::pin(async {
            Err(ipmgr_webhook::network_definitions::ReadError::Forbidden {
                code: 403,
                message: "forbidden by RBAC".to_owned(),
            })
        })
    }
}

/// A router reading definitions from `source`.
fn reading(source: Box<dyn ipmgr_webhook::network_definitions::DefinitionSource>) -> Router {
    let state = common::app_state(common::settings(), MAX_BODY, None)
        .with_network_definitions(source, std::time::Duration::from_secs(30));
    router(std::sync::Arc::new(state))
}

async fn answer_for(app: &Router, networks: &str) -> Value {
    let mut pod = common::multus_pod(json!({"k8s.v1.cni.cncf.io/networks": networks}));
    pod["metadata"]["namespace"] = json!("apps");
    let body = common::admission_review("nad", &pod, false).to_string();
    let (status, text) = call(app, Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test]
async fn a_missing_or_unreadable_definition_is_denied_naming_it_and_counted() {
    let known = common::FixedDefinitions(
        [(
            ("apps".to_owned(), "eth1".to_owned()),
            Some("multus-ipmgr.io/eth1".to_owned()),
        )]
        .into(),
    );
    let app = reading(Box::new(known));
    let injected = answer_for(&app, "eth1").await;
    assert_eq!(injected["response"]["allowed"], true, "{injected}");
    let missing = answer_for(&app, "eth1, other/gone@net2").await;
    assert_eq!(missing["response"]["allowed"], false);
    assert_eq!(
        missing["response"]["status"]["message"],
        "multus-ipmgr: pod network \"other/gone@net2\" (k8s.v1.cni.cncf.io/networks selection 2) names NetworkAttachmentDefinition other/gone, which does not exist: create it or correct the annotation"
    );
    let (_, metrics) = call(&app, Method::GET, "/metrics", "").await;
    for line in [
        r#"ipmgr_webhook_admission_requests_total{outcome="denied",reason="network_definition_missing"} 1"#,
        r#"ipmgr_webhook_network_definition_reads_total{result="found"} 1"#,
        r#"ipmgr_webhook_network_definition_reads_total{result="missing"} 1"#,
        "ipmgr_webhook_network_definition_cache_hits_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }

    let app = reading(Box::new(Forbidden));
    let unreadable = answer_for(&app, "eth1").await;
    assert_eq!(unreadable["response"]["allowed"], false);
    assert_eq!(
        unreadable["response"]["status"]["message"],
        "multus-ipmgr: pod network \"eth1\" (k8s.v1.cni.cncf.io/networks selection 1) names NetworkAttachmentDefinition apps/eth1, which the webhook cannot read: HTTP 403: forbidden by RBAC; grant the webhook get on network-attachment-definitions in k8s.cni.cncf.io (the chart does with webhook.networkResources), or turn the requests off with --network-resources=false"
    );
    // A pod the webhook does not inject reads nothing.
    let skipped = answer_for(&app, "").await;
    assert_eq!(skipped["response"]["allowed"], true);
    let (_, metrics) = call(&app, Method::GET, "/metrics", "").await;
    for line in [
        r#"ipmgr_webhook_admission_requests_total{outcome="denied",reason="network_definition_unreadable"} 1"#,
        r#"ipmgr_webhook_network_definition_reads_total{result="error"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
}
