//! The real server over real TLS on loopback: the client verifies the certificate against
//! the CA that `certs` generated, the certificate rotates under load the way Kubernetes
//! rotates a mounted Secret, and SIGTERM-style shutdown drains an in-flight request.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ipmgr_webhook::certs::{GeneratedCertificates, ServiceIdentity};
use ipmgr_webhook::server::{ServeLimits, serve_tls};
use ipmgr_webhook::tls::ServingCertificate;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

fn generate() -> GeneratedCertificates {
    ServiceIdentity {
        service: "ipmgr-webhook".to_owned(),
        namespace: "multus-ipmgr".to_owned(),
        valid_days: 1,
    }
    .generate()
    .expect("certificates generate")
}

/// A directory laid out like a mounted Secret: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<version>`, updated by swapping `..data` atomically.
struct SecretVolume {
    dir: tempfile::TempDir,
    versions: usize,
}

impl SecretVolume {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.path().join(name))
                .expect("symlink");
        }
        SecretVolume { dir, versions: 0 }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Publishes a new version the way the kubelet's atomic writer does.
    fn publish(&mut self, cert_pem: &str, key_pem: &str) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        let version_dir = self.dir.path().join(&version);
        std::fs::create_dir(&version_dir).expect("version dir");
        std::fs::write(version_dir.join("tls.crt"), cert_pem).expect("cert");
        std::fs::write(version_dir.join("tls.key"), key_pem).expect("key");
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).expect("staged symlink");
        std::fs::rename(&staged, self.path("..data")).expect("swap ..data");
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(volume: &SecretVolume) -> Self {
        let certificate = Arc::new(ServingCertificate::from_files(
            volume.path("tls.crt"),
            volume.path("tls.key"),
        ));
        let tls = certificate.server_config().expect("TLS config");
        let state = common::state(1 << 20, Some(certificate));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = ServeLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            h2_keep_alive: Duration::from_secs(5),
            h2_max_concurrent_streams: 8,
            max_connections: 64,
            drain_timeout: Duration::from_secs(5),
        };
        let task = tokio::spawn(serve_tls(listener, tls, state, limits, async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A server whose Secret volume already holds `certificates`.
    async fn serving(certificates: &GeneratedCertificates) -> (SecretVolume, Self) {
        let mut volume = SecretVolume::new();
        volume.publish(&certificates.cert_pem, &certificates.key_pem);
        let server = Server::start(&volume).await;
        (volume, server)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops in time")
            .expect("server task does not panic");
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Opens a verified HTTP/1.1 connection; returns it with the served certificate.
async fn open(connector: &TlsConnector, addr: SocketAddr) -> Result<(Sender, Vec<u8>), String> {
    let stream = common::connect(connector, addr)
        .await
        .map_err(|error| error.to_string())?;
    let served = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec());
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    Ok((sender, served.unwrap_or_default()))
}

/// GET `path` on a new verified connection; returns the status and the served certificate.
async fn get(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Vec<u8>), String> {
    let (mut sender, served) = open(connector, addr).await?;
    let status = send(&mut sender, path).await?;
    Ok((status, served))
}

async fn send(sender: &mut Sender, path: &str) -> Result<u16, String> {
    let request = hyper::Request::get(path)
        .header("host", common::SERVER_NAME)
        .body(Empty::<Bytes>::new())
        .map_err(|error| error.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?;
    Ok(status)
}

fn der(cert_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .expect("PEM")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_verified_tls_and_rotates_the_certificate_under_load_without_a_failed_request() {
    let (first, second) = (generate(), generate());
    let (mut volume, server) = Server::serving(&first).await;

    // A client that trusts neither CA is refused: the certificate really is verified.
    let stranger = common::connector(&[&generate().ca_pem]);
    assert!(get(&stranger, server.addr, "/healthz").await.is_err());

    let client = common::connector(&[&first.ca_pem, &second.ca_pem]);
    assert_eq!(
        get(&client, server.addr, "/readyz").await,
        Ok((200, der(&first.cert_pem)))
    );

    let failures = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let load = {
        let (client, failures, requests, addr) = (
            client.clone(),
            failures.clone(),
            requests.clone(),
            server.addr,
        );
        let second_der = der(&second.cert_pem);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut rotated_seen_at = None;
            while Instant::now() < deadline {
                match get(&client, addr, "/healthz").await {
                    Ok((200, served)) => {
                        if served == second_der && rotated_seen_at.is_none() {
                            rotated_seen_at = Some(requests.load(Ordering::SeqCst));
                        }
                    }
                    other => {
                        eprintln!("request failed: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let done = requests.fetch_add(1, Ordering::SeqCst) + 1;
                if rotated_seen_at.is_some_and(|at| done >= at + 50) {
                    break;
                }
            }
            rotated_seen_at
        })
    };
    let (mut kept_alive, _) = open(&client, server.addr)
        .await
        .expect("keep-alive connection");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_rotation = requests.load(Ordering::SeqCst);
    volume.publish(&second.cert_pem, &second.key_pem);
    let rotated_at = load.await.expect("load task");
    assert_eq!(
        send(&mut kept_alive, "/healthz").await,
        Ok(200),
        "open connections survive a rotation"
    );

    assert!(
        before_rotation > 10,
        "only {before_rotation} requests before the rotation"
    );
    assert!(rotated_at.is_some(), "the new certificate was never served");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during rotation"
    );
    server.stop().await;
}

#[tokio::test]
async fn speaks_tls12_as_well_as_tls13() {
    let certificates = generate();
    let (_volume, server) = Server::serving(&certificates).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = common::connector_for(&[&certificates.ca_pem], &[version]);
        assert_eq!(
            get(&client, server.addr, "/healthz").await,
            Ok((200, der(&certificates.cert_pem))),
            "{version:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn negotiates_http2_through_alpn() {
    let certificates = generate();
    let (_volume, server) = Server::serving(&certificates).await;
    let mut config = common::client_config(&[&certificates.ca_pem], rustls::DEFAULT_VERSIONS);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let stream = common::connect(&TlsConnector::from(Arc::new(config)), server.addr)
        .await
        .expect("connects");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("https://{}/healthz", common::SERVER_NAME))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    server.stop().await;
}

#[tokio::test]
async fn a_broken_rotation_keeps_serving_the_previous_certificate() {
    let (good, next) = (generate(), generate());
    let (mut volume, server) = Server::serving(&good).await;
    let client = common::connector(&[&good.ca_pem, &next.ca_pem]);

    // Certificate of one pair with the key of another: refused, the old pair keeps serving.
    volume.publish(&next.cert_pem, &good.key_pem);
    assert_eq!(
        get(&client, server.addr, "/readyz").await,
        Ok((200, der(&good.cert_pem)))
    );
    volume.publish("not a certificate", "not a key");
    assert_eq!(
        get(&client, server.addr, "/readyz").await,
        Ok((200, der(&good.cert_pem)))
    );

    volume.publish(&next.cert_pem, &next.key_pem);
    assert_eq!(
        get(&client, server.addr, "/readyz").await,
        Ok((200, der(&next.cert_pem)))
    );
    server.stop().await;
}

#[tokio::test]
async fn starts_without_a_certificate_and_becomes_ready_when_it_appears() {
    let certificates = generate();
    let mut volume = SecretVolume::new();
    let server = Server::start(&volume).await;
    let client = common::connector(&[&certificates.ca_pem]);
    assert!(
        get(&client, server.addr, "/healthz").await.is_err(),
        "no certificate, no TLS"
    );

    volume.publish(&certificates.cert_pem, &certificates.key_pem);
    assert_eq!(
        get(&client, server.addr, "/readyz").await,
        Ok((200, der(&certificates.cert_pem)))
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_request_and_refuses_new_connections() {
    let certificates = generate();
    let (_volume, server) = Server::serving(&certificates).await;
    let client = common::connector(&[&certificates.ca_pem]);
    let addr = server.addr;

    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "multus", "annotations": {"k8s.v1.cni.cncf.io/networks": "n"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    let body = common::admission_review("in-flight", &pod, false).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = common::connect(&client, addr).await.expect("connects");
    let request_head = format!(
        "POST /mutate HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        common::SERVER_NAME,
        body.len()
    );
    stream
        .write_all(request_head.as_bytes())
        .await
        .expect("write head");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write half the body");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        common::connect(&client, addr).await.is_err(),
        "new connections are refused while draining"
    );

    stream
        .write_all(tail.as_bytes())
        .await
        .expect("write the rest");
    stream.flush().await.expect("flush");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"uid\":\"in-flight\""), "{response}");
    stopping.await.expect("server stopped");
}

#[test]
fn an_installed_certificate_is_ready_only_while_its_keeper_confirms_it() {
    let certificate = ServingCertificate::installed(Duration::from_millis(200));
    assert!(!certificate.is_loaded(), "nothing installed: not ready");
    let pair = generate();
    assert!(
        certificate
            .install("not PEM", &pair.key_pem, "test Secret")
            .is_err(),
        "an unusable pair is refused"
    );
    assert!(!certificate.is_loaded());
    certificate
        .install(&pair.cert_pem, &pair.key_pem, "test Secret")
        .expect("a usable pair");
    assert!(certificate.is_loaded(), "installed: ready");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !certificate.is_loaded(),
        "not confirmed for a while: not ready"
    );
    assert!(certificate.current().is_some(), "but it goes on serving");
    certificate.confirm();
    assert!(certificate.is_loaded(), "confirmed again: ready");
}
