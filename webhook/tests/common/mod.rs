//! Helpers shared by the webhook's integration tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt as _;
use ipmgr_injector::HelperSettings;
use ipmgr_webhook::config::InjectionArgs;
use ipmgr_webhook::network_definitions::files::DefinitionFiles;
use ipmgr_webhook::network_definitions::{DefinitionSource, Found, Reading};
use ipmgr_webhook::server::{AppState, RequestLimits};
use ipmgr_webhook::tls::ServingCertificate;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::ServiceExt as _;

/// The name the API server uses for the webhook Service.
pub const SERVER_NAME: &str = "ipmgr-webhook.multus-ipmgr.svc";

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    injection: InjectionArgs,
}

/// The flags the golden files were made with. Image overrides are off by default; these
/// turn them on for one registry, so that `golden/input/pod-overrides.yaml` exercises an
/// allowed override.
const GOLDEN_FLAGS: [&str; 5] = [
    "--helper-image=registry.example.com/ipmgr-helper:0.1.0",
    "--pod-client-image=registry.example.com/ipmgr-pod:0.1.0",
    "--helper-arg=--allow-cidr=10.10.1.0/24",
    "--allow-image-override",
    "--allowed-image-prefix=mirror.example.com/",
];

/// Each helper backend with the flags that select it: the golden outputs of a backend are
/// in `golden/output/<backend>/`.
pub const BACKENDS: [(&str, &[&str]); 2] =
    [("agent", &[]), ("direct", &["--helper-backend=direct"])];

/// The settings the golden files were made with (the default, agent backend), parsed
/// through the real flags.
pub fn settings() -> HelperSettings {
    golden_settings(&[])
}

/// The golden settings with these extra flags.
pub fn golden_settings(extra: &[&str]) -> HelperSettings {
    let flags: Vec<&str> = GOLDEN_FLAGS.iter().chain(extra).copied().collect();
    settings_from(&flags)
}

/// Settings from these injection flags (the defaults for the others).
pub fn settings_from(flags: &[&str]) -> HelperSettings {
    TestCli::try_parse_from(std::iter::once("test").chain(flags.iter().copied()))
        .expect("test flags parse")
        .injection
        .settings()
        .expect("test settings are valid")
}

/// Webhook state with the golden [`settings`], bodies up to `max_body_bytes` and generous
/// time limits (the limits have their own tests against the real server).
pub fn state(max_body_bytes: usize, certificate: Option<Arc<ServingCertificate>>) -> Arc<AppState> {
    state_with(settings(), max_body_bytes, certificate)
}

/// [`state`] with other injection settings.
pub fn state_with(
    settings: HelperSettings,
    max_body_bytes: usize,
    certificate: Option<Arc<ServingCertificate>>,
) -> Arc<AppState> {
    Arc::new(app_state(settings, max_body_bytes, certificate))
}

/// [`state_with`], not shared yet (to add network definitions to it).
pub fn app_state(
    settings: HelperSettings,
    max_body_bytes: usize,
    certificate: Option<Arc<ServingCertificate>>,
) -> AppState {
    AppState::new(
        settings,
        certificate,
        RequestLimits {
            max_body_bytes,
            max_in_flight: 16,
            body_timeout: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(5),
        },
    )
}

/// The NetworkAttachmentDefinitions the golden files were made with
/// (`golden/network-attachment-definitions.yaml`).
pub fn golden_definitions() -> DefinitionFiles {
    DefinitionFiles::read(&[test_path("golden/network-attachment-definitions.yaml")])
        .expect("the golden definitions read")
}

/// Definitions the webhook reads from memory instead of the API server.
#[derive(Debug)]
pub struct FixedDefinitions(pub ipmgr_injector::NetworkDefinitions);

impl DefinitionSource for FixedDefinitions {
    fn read<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        _timeout: std::time::Duration,
    ) -> Reading<'a> {
        let found = match self.0.get(&(namespace.to_owned(), name.to_owned())) {
            Some(resource_name) => Found::Definition(resource_name.clone()),
            None => Found::Missing,
        };
        Box::pin(async move { Ok(found) })
    }
}

/// `webhook/tests/<relative>`.
pub fn test_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(relative)
}

/// An AdmissionReview for creating `object` (kind from the object, core group).
pub fn admission_review(uid: &str, object: &Value, dry_run: bool) -> Value {
    let kind = object["kind"].as_str().unwrap_or("Pod");
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "namespace": object["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// A client that trusts only the given CAs and checks [`SERVER_NAME`]. Session resumption is
/// off, so every connection is a full handshake that shows the served certificate.
pub fn connector(ca_pems: &[&str]) -> TlsConnector {
    connector_for(ca_pems, rustls::DEFAULT_VERSIONS)
}

/// [`connector`] limited to the given TLS versions.
pub fn connector_for(
    ca_pems: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config(ca_pems, versions)))
}

/// The client configuration behind [`connector_for`].
pub fn client_config(
    ca_pems: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).expect("CA PEM"))
            .expect("CA added");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// A verified TLS connection to `addr` as [`SERVER_NAME`].
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    connector
        .connect(ServerName::try_from(SERVER_NAME).expect("valid name"), tcp)
        .await
}

/// Sends one request through `app` with `oneshot`; returns the status and the body.
pub async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, axum::body::Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request builds");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// The review the issue used: a pod the fast parser cannot read (`spec.containers` is a
/// string) with a field of nested empty arrays, padded to `size` bytes.
pub fn amplification_body(size: usize) -> Vec<u8> {
    let nest = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"k8s.v1.cni.cncf.io/networks": "n"}},
        "spec": {"containers": "not a list"},
    });
    pod["spec"]["padding"] = json!("PLACEHOLDER");
    let text = admission_review("amplify", &pod, false).to_string();
    let room = size - (text.len() - "\"PLACEHOLDER\"".len());
    let groups = vec![nest.as_str(); (room - 2) / (nest.len() + 1)].join(",");
    text.replace("\"PLACEHOLDER\"", &format!("[{groups}]"))
        .into_bytes()
}

/// Sends `head` and then `body` on a new HTTP/1.1 connection, then reads until the server
/// closes it (or `wait` passes); returns what it answered and when it closed.
pub async fn http1(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    wait: std::time::Duration,
) -> (String, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut stream = connect(connector, addr).await.expect("connects");
    // The server may answer (and close) before the whole body is written.
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// `POST /mutate` of `body` on a new HTTP/1.1 connection; what the server answered.
pub async fn post(server: &ServerProcess, body: &[u8]) -> String {
    let (answer, _) = http1(
        &server.connector,
        server.addr,
        &post_head(body.len()),
        body,
        std::time::Duration::from_secs(30),
    )
    .await;
    answer
}

/// `clients` connections that each declare a body of `declared` bytes, send `sent` of it
/// and stall; what each was answered and when it was closed (at most `wait`).
pub async fn stalled_bodies(
    server: &ServerProcess,
    clients: usize,
    declared: usize,
    sent: usize,
    wait: std::time::Duration,
) -> Vec<(String, std::time::Duration)> {
    let sent = vec![b' '; sent];
    let clients: Vec<_> = (0..clients)
        .map(|_| {
            let (connector, addr, sent) = (server.connector.clone(), server.addr, sent.clone());
            tokio::spawn(
                async move { http1(&connector, addr, &post_head(declared), &sent, wait).await },
            )
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.expect("client task"));
    }
    answers
}

/// A slowloris client: a request line, then one byte of header every `every`. Returns how
/// long the server took to drop it, or `None` if it is still connected after `give_up`.
pub async fn slowloris(
    server: &ServerProcess,
    every: std::time::Duration,
    give_up: std::time::Duration,
) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    let mut stream = connect(&server.connector, server.addr)
        .await
        .expect("connects");
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\n")
        .await
        .expect("request line");
    stream.flush().await.expect("flush");
    let dripped = async {
        loop {
            tokio::time::sleep(every).await;
            if stream.write_all(b"x").await.is_err() || stream.flush().await.is_err() {
                break;
            }
            let mut byte = [0u8; 1];
            // A closed connection reads as end of file (or an error) at once.
            let read =
                tokio::time::timeout(std::time::Duration::from_millis(1), stream.read(&mut byte));
            if let Ok(Ok(0) | Err(_)) = read.await {
                break;
            }
        }
    };
    tokio::time::timeout(give_up, dripped)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// A Pod asking for a Multus network, with these extra annotations.
pub fn multus_pod(annotations: Value) -> Value {
    let mut all = json!({"k8s.v1.cni.cncf.io/networks": "ipvlan-multus"});
    all.as_object_mut()
        .expect("object")
        .extend(annotations.as_object().cloned().unwrap_or_default());
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "multus", "annotations": all,
                     "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    })
}

/// The head of a `POST /mutate` with this Content-Length, on a connection closed after it.
pub fn post_head(length: usize) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nhost: {SERVER_NAME}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

/// The `ipmgr-webhook` binary the process tests run: `IPMGR_WEBHOOK_BIN` when set (to run
/// them against another build), otherwise the one cargo built with the tests.
pub fn webhook_binary() -> PathBuf {
    std::env::var_os("IPMGR_WEBHOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ipmgr-webhook")))
}

/// glibc's threshold above which allocations are mapped, and unmapped when freed, as the
/// Deployment sets it (`MALLOC_MMAP_THRESHOLD_`): without it glibc raises the threshold after
/// the first large body and keeps later ones in its heap after they are freed.
pub const MALLOC_MMAP_THRESHOLD: &str = "131072";

/// A kept-alive HTTP/1.1 connection to the server, for the benchmarks.
pub type KeepAlive =
    hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>;

/// Opens a [`KeepAlive`] connection over TLS to `addr`.
pub async fn keep_alive(connector: &TlsConnector, addr: SocketAddr) -> KeepAlive {
    let stream = connect(connector, addr).await.expect("connects");
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
    tokio::spawn(connection);
    sender
}

/// The benchmark knob `name` from the environment, else `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A running `ipmgr-webhook serve` process on loopback with a fresh certificate, configured
/// through environment variables only (a build that lacks a setting ignores it), with the
/// Deployment's [`MALLOC_MMAP_THRESHOLD`], and without network requests (no API server to
/// read NetworkAttachmentDefinitions from) unless `env` turns them on.
pub struct ServerProcess {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Trusts its certificate.
    pub connector: TlsConnector,
    /// Its CA.
    pub ca_pem: String,
    /// `notAfter` of its certificate, seconds since the epoch.
    pub not_after: i64,
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// The server's metrics, over TLS (a connection of their own, closed after).
    pub async fn metrics(&self) -> String {
        let (answer, _) = http1(
            &self.connector,
            self.addr,
            &format!("GET /metrics HTTP/1.1\r\nhost: {SERVER_NAME}\r\nconnection: close\r\n\r\n"),
            b"",
            std::time::Duration::from_secs(10),
        )
        .await;
        answer
    }

    /// Starts the server with these extra environment variables and waits until it accepts
    /// TLS connections.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certificates = ipmgr_webhook::certs::ServiceIdentity {
            service: "ipmgr-webhook".to_owned(),
            namespace: "multus-ipmgr".to_owned(),
            valid_days: 1,
        }
        .generate()
        .expect("certificates");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &certificates.cert_pem).expect("cert");
        std::fs::write(&key, &certificates.key_pem).expect("key");
        let addr: SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr")
        };
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = std::process::Command::new(webhook_binary())
            .arg("serve")
            .env("IPMGR_LISTEN", addr.to_string())
            .env("IPMGR_TLS_CERT", &cert)
            .env("IPMGR_TLS_KEY", &key)
            .env("IPMGR_LOG", "info")
            .env("MALLOC_MMAP_THRESHOLD_", MALLOC_MMAP_THRESHOLD)
            .env("IPMGR_NETWORK_RESOURCES", "false")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("server starts");
        let connector = connector(&[&certificates.ca_pem]);
        let not_after = {
            let der = CertificateDer::from_pem_slice(certificates.cert_pem.as_bytes())
                .expect("certificate PEM");
            let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("certificate");
            parsed.validity().not_after.timestamp()
        };
        let server = ServerProcess {
            child,
            addr,
            connector,
            ca_pem: certificates.ca_pem,
            not_after,
            dir,
        };
        let ready_by = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while connect(&server.connector, addr).await.is_err() {
            assert!(
                std::time::Instant::now() < ready_by,
                "server did not come up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        server
    }

    /// A client that trusts it and offers only HTTP/2 through ALPN.
    pub fn h2_connector(&self) -> TlsConnector {
        let mut config = client_config(&[&self.ca_pem], rustls::DEFAULT_VERSIONS);
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes (`VmRSS`, `VmHWM`).
    pub fn memory(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("server status")
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("{field} missing"))
    }

    /// CPU time the process has used, user and system (in 10 ms ticks).
    pub fn cpu_time(&self) -> std::time::Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // The fields after the command name: state is the 3rd field, utime the 14th.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .expect("stat format")
            .1
            .split(' ')
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        std::time::Duration::from_millis(ticks * 10)
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS, so that [`Self::memory`] of
    /// `VmHWM` shows the peak of what follows.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("reset VmHWM through clear_refs");
    }

    /// Stops it with SIGTERM and returns what it logged.
    pub fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(self.dir.path().join("stderr.log")).expect("server log")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
