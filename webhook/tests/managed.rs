//! Managed certificates against the emulated Kubernetes API (testenv/kube.py): real
//! `ipmgr-webhook serve --certificates managed` processes keep their CA in a Secret and the
//! caBundle of their MutatingWebhookConfiguration, and a client that trusts only the
//! caBundle current at each moment, as the API server does, admits pods through them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{SERVER_NAME, admission_review, connect};
use ipmgr_testbed::KubeApi;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;

const NAMESPACE: &str = "multus-ipmgr";
const SECRET: &str = "ipmgr-webhook-certs";
const CONFIGURATION: &str = "multus-ipmgr";
const SECRET_PATH: &str = "/api/v1/namespaces/multus-ipmgr/secrets/ipmgr-webhook-certs";
const CONFIGURATION_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/multus-ipmgr";
const MERGE: &str = "application/merge-patch+json";
/// How far behind the writes of the webhook configuration the rotation test's client (the
/// API server) trusts its caBundle; the replicas' overlap is 2 s.
const API_SERVER_LAG: Duration = Duration::from_millis(1200);

/// The emulated API server with what the chart installs: the namespace, the webhook
/// configuration without a caBundle and (unless `with_secret` is false) the empty Secret.
fn cluster(with_secret: bool) -> KubeApi {
    let kube = KubeApi::start();
    let (status, _) = kube.post(
        "/api/v1/namespaces",
        "application/json",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    );
    assert!(status == 201 || status == 409, "namespace: {status}");
    let (status, body) = kube.post(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
        "application/json",
        &json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION, "labels": {"app.kubernetes.io/name": "ipmgr-webhook"}},
            "webhooks": [{
                "name": "inject.multus-ipmgr.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"service": {"name": "ipmgr-webhook", "namespace": NAMESPACE, "path": "/mutate", "port": 443}},
            }],
        }),
    );
    assert_eq!(status, 201, "webhook configuration: {body}");
    if with_secret {
        let (status, body) = kube.post(
            &format!("/api/v1/namespaces/{NAMESPACE}/secrets"),
            "application/json",
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": SECRET, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "ipmgr-webhook"}}}),
        );
        assert_eq!(status, 201, "secret: {body}");
    }
    kube
}

/// One `ipmgr-webhook serve --certificates managed` process.
struct Replica {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(kube: &KubeApi, name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("free port");
        let log = dir.path().join("stderr.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ipmgr-webhook"))
            .arg("serve")
            .env("KUBECONFIG", kube.kubeconfig())
            .env("IPMGR_LISTEN", addr.to_string())
            .env("IPMGR_CERTIFICATES", "managed")
            .env("IPMGR_NAMESPACE", NAMESPACE)
            .env("IPMGR_REPLICA_NAME", name)
            .env("IPMGR_CERT_CHECK_SECONDS", "0.2")
            .env("IPMGR_ROTATION_OVERLAP_SECONDS", "2")
            .env("IPMGR_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("webhook starts");
        Replica {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn object(kube: &KubeApi, path: &str) -> Value {
    let (status, body) = kube.get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A data key of the Secret; `None` while the Secret or the key does not exist.
fn secret_data(kube: &KubeApi, key: &str) -> Option<String> {
    let (status, secret) = kube.get(SECRET_PATH);
    if status == 404 {
        return None;
    }
    assert_eq!(status, 200, "GET {SECRET_PATH}: {secret}");
    let encoded = secret["data"][key].as_str()?;
    Some(String::from_utf8(BASE64.decode(encoded).expect("base64")).expect("PEM"))
}

/// The caBundle the API server would use now (the first webhook's; the webhook writes all).
fn current_bundle(kube: &KubeApi) -> Vec<u8> {
    let configuration = object(kube, CONFIGURATION_PATH);
    configuration["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .map(|encoded| BASE64.decode(encoded).expect("caBundle is base64"))
        .unwrap_or_default()
}

fn bundle_certificates(bundle: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bundle)
        .collect::<Result<_, _>>()
        .expect("caBundle is PEM")
}

/// A client that trusts exactly the CAs of `bundle`, as the API server does.
fn trusting(bundle: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in bundle_certificates(bundle) {
        roots.add(certificate).expect("CA added");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// One admission of a pod through `addr`, trusting `bundle`: Ok when the webhook answered
/// an allowed AdmissionReview over a verified connection.
async fn admit(addr: SocketAddr, bundle: &[u8], uid: &str) -> Result<(), String> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": uid, "namespace": "apps"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    let body = serde_json::to_vec(&admission_review(uid, &pod, false)).expect("json");
    let attempt = async {
        let mut stream = connect(&trusting(bundle), addr)
            .await
            .map_err(|error| format!("TLS as {SERVER_NAME}: {error}"))?;
        let head = format!(
            "POST /mutate HTTP/1.1\r\nhost: {SERVER_NAME}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        stream
            .write_all(&body)
            .await
            .map_err(|error| error.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|error| error.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let allowed = answer.starts_with("HTTP/1.1 200")
            && answer.contains(&format!("\"uid\":\"{uid}\""))
            && answer.contains("\"allowed\":true");
        allowed.then_some(()).ok_or(answer)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Waits up to `seconds` for `done`, checking every 100 ms.
fn wait_for(seconds: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn annotation(kube: &KubeApi, key: &str) -> Option<String> {
    object(kube, SECRET_PATH)["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_owned)
}

/// Waits until the replicas settled: a CA in the Secret and exactly it in the caBundle,
/// acknowledged by each of `replicas`.
fn settled(kube: &KubeApi, replicas: &[&str]) -> String {
    wait_for(
        30,
        "the first CA, its caBundle and every replica's acknowledgement",
        || {
            let Some(ca) = secret_data(kube, "ca.crt") else {
                return false;
            };
            current_bundle(kube) == ca.as_bytes()
                && secret_data(kube, "next-ca.crt").is_none()
                && secret_data(kube, "previous-ca.crt").is_none()
                && replicas.iter().all(|replica| {
                    annotation(kube, &format!("multus-ipmgr.io/serving.{replica}")).is_some()
                })
        },
    );
    secret_data(kube, "ca.crt").expect("ca.crt")
}

#[rstest::rstest]
#[case::secret_made_by_the_chart(true)]
#[case::secret_made_by_the_webhook(false)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_makes_a_ca_writes_the_bundle_and_serves(#[case] with_secret: bool) {
    let kube = cluster(with_secret);
    let replica = Replica::start(&kube, "webhook-a");
    let ca = settled(&kube, &["webhook-a"]);
    assert_eq!(bundle_certificates(ca.as_bytes()).len(), 1, "one CA");
    admit(replica.addr, &current_bundle(&kube), "first")
        .await
        .expect("admitted through the caBundle it wrote");
    let configuration = object(&kube, CONFIGURATION_PATH);
    assert_eq!(
        configuration["metadata"]["labels"]["app.kubernetes.io/name"], "ipmgr-webhook",
        "the rest of the configuration is left as it was"
    );
    let log = replica.stop();
    assert!(
        log.contains("caBundle of the webhook configuration written"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_together_agree_on_one_ca() {
    let kube = cluster(true);
    let replicas = [
        Replica::start(&kube, "webhook-a"),
        Replica::start(&kube, "webhook-b"),
    ];
    let ca = settled(&kube, &["webhook-a", "webhook-b"]);
    let bundle = current_bundle(&kube);
    assert_eq!(bundle, ca.as_bytes(), "one CA in the bundle, the Secret's");
    for (index, replica) in replicas.iter().enumerate() {
        admit(replica.addr, &bundle, &format!("pod-{index}"))
            .await
            .expect("each replica serves a certificate of that CA");
    }
    let creations = kube
        .writes()
        .iter()
        .filter(|write| write["kind"] == "Secret" && write["code"] == 200)
        .filter(|write| write["verb"] == "patch")
        .count();
    assert!(
        creations >= 3,
        "one initialization and two acknowledgements: {creations}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_secret() {
    let kube = cluster(true);
    let first = Replica::start(&kube, "webhook-a");
    let ca = settled(&kube, &["webhook-a"]);
    let served = secret_data(&kube, "tls.crt");
    let generation = annotation(&kube, "multus-ipmgr.io/generation");
    first.stop();
    let again = Replica::start(&kube, "webhook-a");
    wait_for(20, "the restarted replica to serve", || {
        again
            .log()
            .contains("serving the certificate of the Secret")
    });
    admit(again.addr, &current_bundle(&kube), "after-restart")
        .await
        .expect("served again");
    assert_eq!(
        secret_data(&kube, "ca.crt").as_deref(),
        Some(ca.as_str()),
        "same CA"
    );
    assert_eq!(secret_data(&kube, "tls.crt"), served, "same certificate");
    assert_eq!(annotation(&kube, "multus-ipmgr.io/generation"), generation);
}

/// Stops the admission client when the test ends, failed or not.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_rotation_under_admissions_fails_none() {
    let kube = Arc::new(cluster(true));
    let replicas = [
        Replica::start(&kube, "webhook-a"),
        Replica::start(&kube, "webhook-b"),
    ];
    let old_ca = settled(&kube, &["webhook-a", "webhook-b"]);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|replica| replica.addr).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_client = StopOnDrop(stop.clone());
    let admitted = Arc::new(AtomicUsize::new(0));
    let client = {
        let (kube, stop, admitted) = (kube.clone(), stop.clone(), admitted.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut turn = 0usize;
            // The caBundles read so far, with when. Every other admission trusts the one
            // current at that moment; the others the newest that is at least
            // API_SERVER_LAG old, as an API server whose view of the webhook configuration
            // lags its writes (its informer) would.
            let mut seen: Vec<(Instant, Vec<u8>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push((
                    Instant::now(),
                    tokio::task::block_in_place(|| current_bundle(&kube)),
                ));
                let trusted = if turn.is_multiple_of(2) {
                    &seen[seen.len() - 1]
                } else {
                    seen.iter()
                        .rev()
                        .find(|(read, _)| read.elapsed() >= API_SERVER_LAG)
                        .unwrap_or(&seen[0])
                };
                // Both replicas get both views: the replica changes every admission, the
                // pairing every other one.
                let addr = addrs[(turn + turn / 2) % addrs.len()];
                match admit(addr, &trusted.1, &format!("pod-{turn}")).await {
                    Ok(()) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        failures.push(format!("admission {turn} through {addr}: {error}"))
                    }
                }
                turn += 1;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = kube.patch(
        SECRET_PATH,
        MERGE,
        &json!({"metadata": {"annotations": {"multus-ipmgr.io/rotate-ca": "now"}}}),
    );
    assert_eq!(status, 200, "{body}");
    let mut saw_both = false;
    tokio::task::block_in_place(|| {
        wait_for(60, "the rotation to end", || {
            saw_both |= bundle_certificates(&current_bundle(&kube)).len() == 2;
            secret_data(&kube, "ca.crt").is_some_and(|ca| ca != old_ca)
                && secret_data(&kube, "previous-ca.crt").is_none()
                && current_bundle(&kube).len()
                    == secret_data(&kube, "ca.crt").map_or(0, |ca| ca.len())
        })
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = client.await.expect("client ends");
    let admissions = admitted.load(Ordering::Relaxed);
    let new_bundle = current_bundle(&kube);
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed: {failures:#?}",
        failures.len(),
        admissions + failures.len()
    );
    assert!(
        admissions >= 50,
        "only {admissions} admissions during the rotation"
    );
    for replica in &replicas {
        admit(replica.addr, &new_bundle, "after")
            .await
            .expect("every replica serves a certificate of the new CA alone");
    }
    eprintln!("admissions during the CA rotation: {admissions}, failed: 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_edited_into_something_invalid_is_refused_and_left_alone() {
    let kube = cluster(true);
    let replica = Replica::start(&kube, "webhook-a");
    settled(&kube, &["webhook-a"]);
    let bundle = current_bundle(&kube);
    let (status, body) = kube.patch(
        SECRET_PATH,
        MERGE,
        &json!({"data": {"tls.crt": BASE64.encode("not a certificate")}}),
    );
    assert_eq!(status, 200, "{body}");
    let edited_version = object(&kube, SECRET_PATH)["metadata"]["resourceVersion"].clone();
    wait_for(20, "the refusal in the log", || {
        replica
            .log()
            .contains("key tls.crt of the certificate Secret")
    });
    std::thread::sleep(Duration::from_secs(1));
    let secret = object(&kube, SECRET_PATH);
    assert_eq!(
        secret["metadata"]["resourceVersion"], edited_version,
        "nothing was written over the edit"
    );
    assert_eq!(
        current_bundle(&kube),
        bundle,
        "the caBundle was left as it was"
    );
    admit(replica.addr, &bundle, "still-serving")
        .await
        .expect("the replica keeps serving the certificate it had");

    let newcomer = Replica::start(&kube, "webhook-b");
    wait_for(20, "the newcomer's refusal", || {
        newcomer
            .log()
            .contains("key tls.crt of the certificate Secret")
    });
    assert!(
        admit(newcomer.addr, &bundle, "newcomer").await.is_err(),
        "a replica with nothing valid to serve serves nothing"
    );
    let log = newcomer.stop();
    assert!(
        log.contains(&format!("Secret {NAMESPACE}/{SECRET}")),
        "the error names the Secret: {log}"
    );
}

/// A kubeconfig at `dir/kubeconfig` with one cluster and one user.
fn kubeconfig(dir: &std::path::Path, cluster: &str, user: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\nclusters:\n- name: test\n  cluster:\n{cluster}\nusers:\n- name: test\n  user:\n{user}\n"
    );
    std::fs::write(&path, text).expect("kubeconfig");
    path
}

#[tokio::test]
async fn the_api_client_reads_its_token_file_for_every_call() {
    use ipmgr_webhook::kube_api::ApiClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let addr = listener.local_addr().expect("addr");
    let heads = tokio::spawn(async move {
        let mut heads = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = vec![0; 4096];
            let read = stream.read(&mut head).await.expect("read");
            heads.push(String::from_utf8_lossy(&head[..read]).into_owned());
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
                .await
                .expect("answer");
        }
        heads
    });
    let token = dir.path().join("token");
    std::fs::write(&token, "first\n").expect("token");
    let config = kubeconfig(
        dir.path(),
        &format!("    server: http://{addr}"),
        &format!("    tokenFile: {}", token.display()),
    );
    let api = ApiClient::from_kubeconfig(&config).expect("a usable kubeconfig");
    let (status, body) = api
        .call(hyper::Method::GET, "/api/v1/namespaces", None)
        .await
        .expect("answered");
    assert_eq!((status.as_u16(), body), (200, json!({"ok": true})));
    std::fs::write(&token, "rotated").expect("token");
    api.call(hyper::Method::GET, "/api/v1/namespaces", None)
        .await
        .expect("answered");
    let heads = heads.await.expect("heads");
    assert!(
        heads[0].contains("authorization: Bearer first\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].contains("authorization: Bearer rotated\r\n"),
        "a rotated token is read again: {}",
        heads[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_client_verifies_an_https_server_against_the_kubeconfig_ca() {
    use ipmgr_webhook::kube_api::ApiClient;
    let server = common::ServerProcess::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = |ca_pem: &str| {
        format!(
            "    server: https://{}\n    certificate-authority-data: {}\n    tls-server-name: {SERVER_NAME}",
            server.addr,
            BASE64.encode(ca_pem)
        )
    };
    let trusted = kubeconfig(dir.path(), &cluster(&server.ca_pem), "    token: abc");
    let api = ApiClient::from_kubeconfig(&trusted).expect("a usable kubeconfig");
    let (status, _) = api
        .call(hyper::Method::GET, "/healthz", None)
        .await
        .expect("answered over TLS");
    assert_eq!(status.as_u16(), 200);

    let other_ca = ipmgr_webhook::certs::ServiceIdentity {
        service: "other".into(),
        namespace: "other".into(),
        valid_days: 1,
    }
    .generate()
    .expect("certificates")
    .ca_pem;
    let untrusted = kubeconfig(dir.path(), &cluster(&other_ca), "    token: abc");
    let error = ApiClient::from_kubeconfig(&untrusted)
        .expect("a usable kubeconfig")
        .call(hyper::Method::GET, "/healthz", None)
        .await
        .expect_err("a server the CA did not sign is refused");
    assert!(error.to_string().contains("TLS with"), "{error}");
}

#[rstest::rstest]
#[case::client_certificate(
    "    server: http://127.0.0.1:1",
    "    client-certificate-data: AAAA",
    "client certificate or exec"
)]
#[case::exec_plugin(
    "    server: http://127.0.0.1:1",
    "    exec: {command: aws}",
    "client certificate or exec"
)]
#[case::https_without_a_ca(
    "    server: https://127.0.0.1:1",
    "    token: abc",
    "certificate-authority"
)]
#[case::not_a_url(
    "    server: 127.0.0.1:1",
    "    token: abc",
    "not an http or https URL"
)]
fn a_kubeconfig_the_client_cannot_use_is_refused_saying_why(
    #[case] cluster: &str,
    #[case] user: &str,
    #[case] reason: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let error =
        ipmgr_webhook::kube_api::ApiClient::from_kubeconfig(&kubeconfig(dir.path(), cluster, user))
            .expect_err("refused");
    assert!(error.to_string().contains(reason), "{error}");
    assert!(
        error.to_string().contains("kubeconfig"),
        "names the file: {error}"
    );
}
