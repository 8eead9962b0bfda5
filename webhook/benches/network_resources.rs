//! Admission latency of the real `ipmgr-webhook serve` binary over TLS (keep-alive, loopback)
//! for a pod whose `k8s.v1.cni.cncf.io/networks` names one NetworkAttachmentDefinition on
//! `multus-ipmgr.io/eth1`, read from the emulated API server (testenv/kube.py, plain HTTP on
//! loopback) as the chart's service account with its RBAC rule, in three settings:
//! network requests off (`IPMGR_NETWORK_RESOURCES=false`: no read), on with the default cache
//! (`--nad-cache-seconds 30`: one GET, then cache hits), and on without a cache
//! (`IPMGR_NAD_CACHE_SECONDS=0`: one GET per admission). Each setting gets a fresh server and
//! one connection that sends admissions one after the other; every answer must be allowed
//! with a patch that injects the helper and (when the requests are on) gives the first app
//! container `multus-ipmgr.io/eth1: 1`, so a denial cannot pass for a fast admission. The
//! GETs are the server's `ipmgr_webhook_network_definition_reads_total`.
//!
//! `cargo bench -p ipmgr-webhook --bench network_resources`; knobs: `BENCH_ADMISSIONS` (2000
//! per setting), `BENCH_WARMUP` (200 per setting, not measured); `IPMGR_WEBHOOK_BIN`
//! measures another build of the server; `IPMGR_TESTENV_PYTHON` (else `.venv/bin/python`)
//! runs the API server.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{KeepAlive, ServerProcess, env_number, keep_alive};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use ipmgr_testbed::KubeApi;
use ipmgr_testbed::kube::JSON;
use serde_json::{Value, json};

/// The webhook's service account, as the chart names it.
const WEBHOOK_USER: &str = "system:serviceaccount:multus-ipmgr:ipmgr-webhook";
const NAMESPACE: &str = "telco-core";
const DEFINITION: &str = "ipvlan-n3";
const RESOURCE: &str = "multus-ipmgr.io/eth1";
const READS: &str = "ipmgr_webhook_network_definition_reads_total";
const HITS: &str = "ipmgr_webhook_network_definition_cache_hits_total";

/// One setting of the server: its name, its environment, and whether its patches carry the
/// request.
struct Setting {
    name: &'static str,
    env: Vec<(&'static str, String)>,
    requests: bool,
}

/// What one setting measured.
struct Run {
    latencies: Vec<Duration>,
    /// Reads of the definition (GETs to the API server) during the measured admissions, and
    /// over the server's life (warm-up included).
    gets: u64,
    gets_total: u64,
    /// Cache hits during the measured admissions.
    hits: u64,
    /// The server's CPU time during the measured admissions.
    cpu: Duration,
}

/// The API server with namespace [`NAMESPACE`] and definition [`DEFINITION`] on
/// [`RESOURCE`]; a kubeconfig of the webhook's service account with the chart's rule.
fn cluster() -> (KubeApi, String) {
    let kube = KubeApi::start();
    let (status, body) = kube.post(
        "/api/v1/namespaces",
        JSON,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    );
    assert_eq!(status, 201, "{body}");
    kube.create_nad(
        NAMESPACE,
        DEFINITION,
        r#"{"cniVersion": "0.3.1", "type": "ipvlan", "master": "eth1", "ipam": {"type": "whereabouts", "range": "10.10.1.0/24"}}"#,
        Some(RESOURCE),
    );
    let rules = json!([{"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"], "verbs": ["get"]}]);
    let kubeconfig = kube.kubeconfig_with_rules(WEBHOOK_USER, &rules);
    let kubeconfig = kubeconfig.to_str().expect("UTF-8 path").to_owned();
    (kube, kubeconfig)
}

/// The realistic pod of the load benchmark, in [`NAMESPACE`], on [`DEFINITION`] only.
fn pod() -> Value {
    let mut pod: Value = serde_json::from_str(include_str!("../tests/fixtures/realistic-pod.json"))
        .expect("fixture");
    pod["metadata"]["namespace"] = json!(NAMESPACE);
    pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(format!(
        r#"[{{"name": "{DEFINITION}", "interface": "net1"}}]"#
    ));
    pod
}

/// `method path` with `body` on the kept-alive connection: the answer's body, and the time
/// from sending to its last byte.
async fn exchange(
    sender: &mut KeepAlive,
    method: hyper::Method,
    path: &str,
    body: &Bytes,
) -> (Bytes, Duration) {
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", common::SERVER_NAME)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    sender.ready().await.expect("connection ready");
    let sent = Instant::now();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let elapsed = sent.elapsed();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&answer));
    (answer, elapsed)
}

/// Panics unless `answer` allows `pod` with a patch that injects the helper and gives the
/// first app container `RESOURCE: 1` exactly when `requests`.
fn check(answer: &[u8], pod: &Value, requests: bool) {
    let review: Value = serde_json::from_slice(answer).expect("an AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["allowed"], true, "denied: {response}");
    let patch = response["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("no patch: {response}"));
    let patch: json_patch::Patch =
        serde_json::from_slice(&BASE64.decode(patch).expect("base64")).expect("JSON Patch");
    let mut served = pod.clone();
    json_patch::patch(&mut served, &patch.0).expect("the patch applies");
    let injected = served["spec"]["containers"]
        .as_array()
        .into_iter()
        .chain(served["spec"]["initContainers"].as_array())
        .flatten()
        .any(|container| container["name"] == "aws-ip-mgmt");
    assert!(injected, "the helper is not injected: {response}");
    let resources = &served["spec"]["containers"][0]["resources"];
    if requests {
        assert_eq!(resources["requests"][RESOURCE], "1", "{resources}");
        assert_eq!(resources["limits"][RESOURCE], "1", "{resources}");
    } else {
        assert!(resources["requests"].get(RESOURCE).is_none(), "{resources}");
    }
}

/// The definition reads (every result: each is one GET) and the cache hits the server
/// counted so far, read on the same connection.
async fn counters(sender: &mut KeepAlive) -> (u64, u64) {
    let (text, _) = exchange(sender, hyper::Method::GET, "/metrics", &Bytes::new()).await;
    let text = String::from_utf8_lossy(&text);
    let (mut reads, mut hits) = (0, 0);
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        if name.starts_with(&format!("{READS}{{")) {
            assert_eq!(
                name,
                format!(r#"{READS}{{result="found"}}"#),
                "a read that did not find the definition: {line}"
            );
            reads += value;
        } else if name == HITS {
            hits = value;
        }
    }
    (reads, hits)
}

async fn measure(setting: &Setting, warmup: usize, admissions: usize, body: &Bytes) -> Run {
    let env: Vec<(&str, &str)> = std::iter::once(("IPMGR_LOG", "warn"))
        .chain(
            setting
                .env
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        )
        .collect();
    let server = ServerProcess::start(&env).await;
    let pod = pod();
    let mut sender = keep_alive(&server.connector, server.addr).await;
    for _ in 0..warmup {
        let (answer, _) = exchange(&mut sender, hyper::Method::POST, "/mutate", body).await;
        check(&answer, &pod, setting.requests);
    }
    let (reads_before, hits_before) = counters(&mut sender).await;
    let cpu_before = server.cpu_time();
    let mut latencies = Vec::with_capacity(admissions);
    for _ in 0..admissions {
        let (answer, elapsed) = exchange(&mut sender, hyper::Method::POST, "/mutate", body).await;
        latencies.push(elapsed);
        check(&answer, &pod, setting.requests);
    }
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    let (reads_after, hits_after) = counters(&mut sender).await;
    drop(sender);
    let log = server.stop();
    assert!(!log.contains("ERROR"), "the server logged an error:\n{log}");
    Run {
        latencies,
        gets: reads_after - reads_before,
        gets_total: reads_after,
        hits: hits_after - hits_before,
        cpu,
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn row(setting: &Setting, run: &Run) {
    let mut sorted = run.latencies.clone();
    sorted.sort_unstable();
    // Nearest rank.
    let at = |quantile: f64| {
        let rank = (sorted.len() as f64 * quantile).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    };
    let count = sorted.len();
    println!(
        "| {} | {count} | {:.0} | {:.0} | {:.0} | {:.0} | {} ({} incl. warm-up) | {} | {:.0} |",
        setting.name,
        micros(at(0.50)),
        micros(at(0.90)),
        micros(at(0.99)),
        micros(sorted[count - 1]),
        run.gets,
        run.gets_total,
        run.hits,
        micros(run.cpu) / count as f64,
    );
}

fn main() {
    let admissions = env_number("BENCH_ADMISSIONS", 2000).max(1);
    let warmup = env_number("BENCH_WARMUP", 200);
    let (kube, kubeconfig) = cluster();
    let body = Bytes::from(common::admission_review("bench", &pod(), false).to_string());
    let on = |name, cache: Option<&str>| Setting {
        name,
        env: [
            ("KUBECONFIG", kubeconfig.clone()),
            ("IPMGR_NETWORK_RESOURCES", "true".to_owned()),
        ]
        .into_iter()
        .chain(cache.map(|seconds| ("IPMGR_NAD_CACHE_SECONDS", seconds.to_owned())))
        .collect(),
        requests: true,
    };
    let settings = [
        Setting {
            name: "network requests off (no read)",
            env: vec![("IPMGR_NETWORK_RESOURCES", "false".to_owned())],
            requests: false,
        },
        on("on, cache 30 s (default)", None),
        on("on, cache 0 (a GET per admission)", Some("0")),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let runs: Vec<Run> = runtime.block_on(async {
        let mut runs = Vec::new();
        for setting in &settings {
            runs.push(measure(setting, warmup, admissions, &body).await);
        }
        runs
    });
    drop(kube);

    println!(
        "server: {} over TLS, one keep-alive connection, admissions one after the other",
        common::webhook_binary().display()
    );
    println!(
        "AdmissionReview: {} B, a pod on NetworkAttachmentDefinition {NAMESPACE}/{DEFINITION} \
         ({RESOURCE}); API server: testenv/kube.py on loopback",
        body.len()
    );
    println!(
        "{admissions} measured admissions per setting after {warmup} of warm-up; \
         total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| setting | admissions | p50 µs | p90 µs | p99 µs | max µs | NAD GETs | cache hits | server CPU µs/admission |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (setting, run) in settings.iter().zip(&runs) {
        row(setting, run);
    }
    // Every admission with the requests on either read the definition or found it cached.
    for (setting, run) in settings.iter().zip(&runs) {
        let name = setting.name;
        if setting.requests {
            assert_eq!(run.gets + run.hits, admissions as u64, "{name}");
        } else {
            assert_eq!((run.gets_total, run.hits), (0, 0), "{name}");
        }
    }
    assert!(runs[1].gets_total >= 1, "{}", settings[1].name);
    assert_eq!(runs[2].gets, admissions as u64, "{}", settings[2].name);
    assert_eq!(runs[2].gets_total, (admissions + warmup) as u64);
}
