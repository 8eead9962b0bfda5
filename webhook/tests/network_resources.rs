//! Network requests over real TLS: an `ipmgr-webhook serve` process reads the
//! NetworkAttachmentDefinitions injected pods name from the emulated Kubernetes API
//! (testenv/kube.py) as the service account the chart binds (`get` on
//! network-attachment-definitions), adds their `multus-ipmgr.io/` requests, denies a pod
//! whose definition is missing or unreadable, naming it, caches what it found, and answers
//! as `ipmgr-webhook inject` does offline with the same definitions in a file.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::ServerProcess;
use ipmgr_testbed::KubeApi;
use serde::Deserialize as _;
use serde_json::{Value, json};

const JSON: &str = "application/json";
/// The webhook's service account, as the chart names it.
const WEBHOOK_USER: &str = "system:serviceaccount:multus-ipmgr:ipmgr-webhook";

/// The ClusterRole rule the chart gives the webhook with webhook.networkResources.
fn chart_rules() -> Value {
    json!([{"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"], "verbs": ["get"]}])
}

fn nads_path(namespace: &str) -> String {
    format!("/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/network-attachment-definitions")
}

/// NetworkAttachmentDefinition `namespace/name`, on `resource` when given.
fn nad(namespace: &str, name: &str, resource: Option<&str>) -> Value {
    let mut metadata = json!({"name": name, "namespace": namespace});
    if let Some(resource) = resource {
        metadata["annotations"] = json!({"k8s.v1.cni.cncf.io/resourceName": resource});
    }
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": metadata,
        "spec": {"config": r#"{"cniVersion": "0.3.1", "type": "ipvlan", "master": "eth1", "ipam": {"type": "whereabouts", "range": "10.10.1.0/24"}}"#},
    })
}

fn create(kube: &KubeApi, definition: &Value) {
    let namespace = definition["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let (status, body) = kube.post(&nads_path(namespace), JSON, definition);
    assert_eq!(status, 201, "{body}");
}

/// The API server with the namespaces `apps` and `shared` and the definitions
/// `apps/eth1-net` and `shared/eth1-shared` (on multus-ipmgr.io/eth1) and `apps/plain` (no
/// resource); and a kubeconfig of the webhook's service account with the chart's rules.
fn cluster() -> (KubeApi, Vec<Value>, String) {
    let kube = KubeApi::start();
    for namespace in ["apps", "shared"] {
        let (status, body) = kube.post(
            "/api/v1/namespaces",
            JSON,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        );
        assert_eq!(status, 201, "{body}");
    }
    let definitions = vec![
        nad("apps", "eth1-net", Some("multus-ipmgr.io/eth1")),
        nad("shared", "eth1-shared", Some("multus-ipmgr.io/eth1")),
        nad("apps", "plain", None),
    ];
    for definition in &definitions {
        create(&kube, definition);
    }
    let kubeconfig = kubeconfig_of(&kube, &chart_rules());
    (kube, definitions, kubeconfig)
}

/// A kubeconfig of the webhook's service account, allowed `rules`.
fn kubeconfig_of(kube: &KubeApi, rules: &Value) -> String {
    let (status, answer) = kube.post(
        "/_testenv/rbac",
        JSON,
        &json!({"user": WEBHOOK_USER, "rules": rules}),
    );
    assert_eq!(status, 200, "{answer}");
    answer["kubeconfig"]
        .as_str()
        .expect("kubeconfig")
        .to_owned()
}

/// `serve` reading definitions through `kubeconfig`, kept `cache_seconds`.
async fn webhook(kubeconfig: &str, cache_seconds: &str) -> ServerProcess {
    ServerProcess::start(&[
        ("KUBECONFIG", kubeconfig),
        ("IPMGR_NETWORK_RESOURCES", "true"),
        ("IPMGR_NAD_CACHE_SECONDS", cache_seconds),
    ])
    .await
}

/// A Pod in `apps` on `networks` (none when empty).
fn pod(name: &str, networks: &str) -> Value {
    let annotations = if networks.is_empty() {
        json!({})
    } else {
        json!({"k8s.v1.cni.cncf.io/networks": networks})
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "busybox"}, {"name": "logger", "image": "busybox"}]},
    })
}

/// The `response` of the webhook's answer to the creation of `pod`, over TLS.
async fn admit(server: &ServerProcess, pod: &Value) -> Value {
    let uid = pod["metadata"]["name"].as_str().expect("name");
    let body = common::admission_review(uid, pod, false).to_string();
    let answer = common::post(server, body.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let review: Value = serde_json::from_str(body).expect("an AdmissionReview");
    assert_eq!(review["response"]["uid"], uid);
    review["response"].clone()
}

/// `pod` with the patch of `response` applied.
fn patched(pod: &Value, response: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(patch) = response["patch"].as_str() {
        let patch: json_patch::Patch =
            serde_json::from_slice(&BASE64.decode(patch).expect("base64")).expect("JSON Patch");
        json_patch::patch(&mut pod, &patch.0).expect("the patch applies");
    }
    pod
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_requests_what_the_networks_need_as_inject_does_offline() {
    let (_kube, definitions, kubeconfig) = cluster();
    let server = webhook(&kubeconfig, "30").await;

    let on_eth1 = pod("on-eth1", "eth1-net@net1, shared/eth1-shared@net2");
    let response = admit(&server, &on_eth1).await;
    assert_eq!(response["allowed"], true, "{response}");
    let served = patched(&on_eth1, &response);
    let containers = served["spec"]["containers"].as_array().expect("containers");
    assert_eq!(
        containers[0]["resources"],
        json!({"requests": {"multus-ipmgr.io/eth1": "2"}, "limits": {"multus-ipmgr.io/eth1": "2"}})
    );
    assert!(
        containers[1].get("resources").is_none(),
        "the first app container only"
    );

    let plain = pod("plain", "plain");
    let response = admit(&server, &plain).await;
    assert_eq!(response["allowed"], true, "{response}");
    let plain_served = patched(&plain, &response);
    assert_eq!(
        plain_served["spec"]["initContainers"][0]["name"],
        "aws-ip-mgmt"
    );
    assert!(
        plain_served["spec"]["containers"][0]
            .get("resources")
            .is_none()
    );

    let none = pod("no-networks", "");
    let response = admit(&server, &none).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");

    // Offline, with the same definitions in a file: the same pods.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nads.yaml");
    let text: Vec<String> = definitions
        .iter()
        .map(|definition| serde_yaml::to_string(definition).expect("YAML"))
        .collect();
    std::fs::write(&file, text.join("---\n")).expect("file");
    for (input, served) in [(&on_eth1, &served), (&plain, &plain_served)] {
        let mut child = Command::new(common::webhook_binary())
            .args(["inject", "-f", "-", "--network-attachment-definitions"])
            .arg(&file)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("inject runs");
        std::io::Write::write_all(
            &mut child.stdin.take().expect("stdin"),
            input.to_string().as_bytes(),
        )
        .expect("stdin");
        let output = child.wait_with_output().expect("inject ends");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let offline =
            Value::deserialize(serde_yaml::Deserializer::from_slice(&output.stdout)).expect("YAML");
        assert_eq!(&offline, served, "offline and served injections differ");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_definition_is_denied_and_one_created_later_is_seen_at_once() {
    let (kube, _, kubeconfig) = cluster();
    let server = webhook(&kubeconfig, "30").await;
    let late = pod("late", "eth1-net, late-net@net2");
    let response = admit(&server, &late).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(
        response["status"]["message"],
        "multus-ipmgr: pod network \"late-net@net2\" (k8s.v1.cni.cncf.io/networks selection 2) names NetworkAttachmentDefinition apps/late-net, which does not exist: create it or correct the annotation"
    );
    create(
        &kube,
        &nad("apps", "late-net", Some("multus-ipmgr.io/eth1")),
    );
    let response = admit(&server, &late).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(
        patched(&late, &response)["spec"]["containers"][0]["resources"]["limits"],
        json!({"multus-ipmgr.io/eth1": "2"})
    );
    let metrics = server.metrics().await;
    assert!(
        has_line(
            &metrics,
            r#"ipmgr_webhook_admission_requests_total{outcome="denied",reason="network_definition_missing"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        has_line(
            &metrics,
            r#"ipmgr_webhook_network_definition_reads_total{result="missing"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_is_read_once_within_the_cache_time() {
    let (kube, _, kubeconfig) = cluster();
    let server = webhook(&kubeconfig, "2").await;
    let on_eth1 = pod("cached", "eth1-net");
    assert_eq!(admit(&server, &on_eth1).await["allowed"], true);
    // Gone from the API server: within the cache time the webhook does not ask again.
    let (status, body) = kube.delete(&format!("{}/eth1-net", nads_path("apps")));
    assert_eq!(status, 200, "{body}");
    let response = admit(&server, &on_eth1).await;
    assert_eq!(
        response["allowed"], true,
        "served from the cache: {response}"
    );
    let metrics_text = server.metrics().await;
    for line in [
        r#"ipmgr_webhook_network_definition_reads_total{result="found"} 1"#,
        "ipmgr_webhook_network_definition_cache_hits_total 1",
    ] {
        assert!(
            has_line(&metrics_text, line),
            "missing {line:?} in\n{metrics_text}"
        );
    }
    // After it, the webhook reads again and finds it gone.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let response = admit(&server, &on_eth1).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert!(
        response["status"]["message"]
            .as_str()
            .expect("message")
            .ends_with("names NetworkAttachmentDefinition apps/eth1-net, which does not exist: create it or correct the annotation"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_it_may_not_read_or_cannot_reach_is_denied_naming_the_cause() {
    let (kube, _, _) = cluster();
    // No rule for NetworkAttachmentDefinitions: 403.
    let kubeconfig = kubeconfig_of(
        &kube,
        &json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
    );
    let server = webhook(&kubeconfig, "30").await;
    let response = admit(&server, &pod("forbidden", "eth1-net")).await;
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("multus-ipmgr: pod network \"eth1-net\" (k8s.v1.cni.cncf.io/networks selection 1) names NetworkAttachmentDefinition apps/eth1-net, which the webhook cannot read: HTTP 403: "),
        "{message}"
    );
    assert!(
        message.ends_with("grant the webhook get on network-attachment-definitions in k8s.cni.cncf.io (the chart does with webhook.networkResources), or turn the requests off with --network-resources=false"),
        "{message}"
    );
    let denied = kube.denied();
    assert!(
        denied.iter().any(|denial| denial["user"] == WEBHOOK_USER
            && denial["verb"] == "get"
            && denial["resource"] == "network-attachment-definitions"
            && denial["name"] == "eth1-net"),
        "{denied:?}"
    );
    server.stop();

    // The API server refusing every request: 503, a denial that says to retry.
    let server = webhook(&kubeconfig_of(&kube, &chart_rules()), "30").await;
    let (status, body) = kube.post(
        "/_testenv/faults",
        JSON,
        &json!({"unavailable_seconds": 30}),
    );
    assert_eq!(status, 200, "{body}");
    let response = admit(&server, &pod("unavailable", "eth1-net")).await;
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains("which the webhook cannot read: HTTP 503")
            && message.ends_with("; retry once the API server answers"),
        "{message}"
    );
    let metrics = server.metrics().await;
    assert!(
        has_line(
            &metrics,
            r#"ipmgr_webhook_admission_requests_total{outcome="denied",reason="network_definition_unreadable"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_does_not_answer_is_denied_within_the_request_time() {
    // A listener that accepts and never answers stands in for a hung API server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: hung\ncontexts:\n- name: hung\n  context: {{cluster: hung, user: hung}}\nclusters:\n- name: hung\n  cluster:\n    server: http://{}\nusers:\n- name: hung\n  user:\n    token: abc\n",
            listener.local_addr().expect("address")
        ),
    )
    .expect("kubeconfig");
    let server = webhook(kubeconfig.to_str().expect("UTF-8"), "30").await;
    let started = std::time::Instant::now();
    let response = admit(&server, &pod("hung", "eth1-net")).await;
    let took = started.elapsed();
    assert_eq!(response["allowed"], false, "{response}");
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains("which the webhook cannot read: GET /apis/k8s.cni.cncf.io/v1/namespaces/apps/network-attachment-definitions/eth1-net: no answer within 2s"),
        "{message}"
    );
    assert!(
        took < Duration::from_secs(4),
        "answered in {took:?}, past the API server's webhook timeout"
    );
    drop(listener);
}
