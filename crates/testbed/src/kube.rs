//! The stand-in Kubernetes API server on its own (`python3 -m testenv.kube`, testenv/kube.py):
//! no bed, no root, no EC2. A test keeps Secrets and MutatingWebhookConfigurations there
//! (a webhook's CA and serving certificate, its `caBundle`) under the real API server's
//! write rules: 409 Conflict on a stale `resourceVersion`, validation, merge and JSON
//! patches, no new version for a write that changes nothing; and it reads back every write
//! request and its outcome. Nodes ([`KubeApi::add_node`]) take status writes, with a kubelet
//! that copies extended resources from `status.capacity` to `status.allocatable`, and can be
//! re-registered; NetworkAttachmentDefinitions are served as their CRD; a token registered
//! with RBAC rules ([`KubeApi::kubeconfig_with_rules`]) is authorized as RBAC does it.
//! testenv/kube.py documents each rule and its source.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{repo_root, stop_within, testenv_python};

static NEXT_KUBECONFIG: AtomicU32 = AtomicU32::new(0);

/// The content type of a whole object (a create or an update).
pub const JSON: &str = "application/json";
/// The content type of a JSON merge patch (RFC 7386).
pub const MERGE_PATCH: &str = "application/merge-patch+json";
/// The content type of a JSON patch (RFC 6902).
pub const JSON_PATCH: &str = "application/json-patch+json";
/// The annotation of a NetworkAttachmentDefinition naming the device plugin resource its
/// pods need (Multus' `k8s.v1.cni.cncf.io/resourceName`).
pub const RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";

/// The path of the NetworkAttachmentDefinitions of `namespace`.
pub fn nads_path(namespace: &str) -> String {
    format!("/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/network-attachment-definitions")
}

/// A NetworkAttachmentDefinition `namespace/name` whose `spec.config` is `config_json` (the
/// CNI configuration, as text), with the [`RESOURCE_NAME`] annotation when `resource_name`
/// is given.
pub fn nad_object(
    namespace: &str,
    name: &str,
    config_json: &str,
    resource_name: Option<&str>,
) -> Value {
    let mut metadata = json!({"name": name, "namespace": namespace});
    if let Some(resource) = resource_name {
        metadata["annotations"] = json!({ RESOURCE_NAME: resource });
    }
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": metadata,
        "spec": {"config": config_json},
    })
}

/// The API server, started on a free port of 127.0.0.1 with only the system namespaces
/// (`default`, `kube-node-lease`, `kube-public`, `kube-system`); stopped, and its kubeconfig
/// removed, on drop.
#[derive(Debug)]
pub struct KubeApi {
    process: Child,
    /// Its standard input: closing it stops the server (it stops too when the test dies).
    input: Option<ChildStdin>,
    endpoint: String,
    kubeconfig: PathBuf,
}

impl KubeApi {
    /// Starts the server (with the Python of [`testenv_python`], from the repository root)
    /// and waits for it to announce its endpoint; panics when it does not start.
    pub fn start() -> KubeApi {
        let number = NEXT_KUBECONFIG.fetch_add(1, Ordering::SeqCst);
        let kubeconfig = std::env::temp_dir().join(format!(
            "ipmgr-kube-{}-{number}.kubeconfig",
            std::process::id()
        ));
        let mut process = Command::new(testenv_python())
            .args(["-m", "testenv.kube", "--host", "127.0.0.1", "--kubeconfig"])
            .arg(&kubeconfig)
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the API server starts");
        let input = process.stdin.take();
        let mut first = String::new();
        BufReader::new(process.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the API server announces itself");
        let ready: Value = serde_json::from_str(&first)
            .unwrap_or_else(|_| panic!("the API server did not start: {first:?}"));
        let endpoint = ready["kube_endpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("no kube_endpoint in {ready}"))
            .to_owned();
        KubeApi {
            process,
            input,
            endpoint,
            kubeconfig,
        }
    }

    /// The server's URL, `http://127.0.0.1:PORT` (plain HTTP, no credentials).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A kubeconfig for the server (for `KUBECONFIG`: what `kube::Config::infer()` reads),
    /// a temporary file removed on drop.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `GET path` (e.g. `/api/v1/namespaces/default/secrets/NAME`): the status and the JSON
    /// answer (a `v1` Status when refused).
    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
    }

    /// `POST path` (a create on a collection) with `body` as `content_type` ([`JSON`]).
    pub fn post(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, Some((content_type, body)))
    }

    /// `PUT path` (an update) with `body` as `content_type` ([`JSON`]).
    pub fn put(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        self.request("PUT", path, Some((content_type, body)))
    }

    /// `PATCH path` with `body` as `content_type`: [`MERGE_PATCH`] or [`JSON_PATCH`] (any
    /// other type is 415, as strategic merge and apply patches are not modelled).
    pub fn patch(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        self.request("PATCH", path, Some((content_type, body)))
    }

    /// `DELETE path`: 200 with a Status of success, or the refusal.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        self.request("DELETE", path, None)
    }

    /// Every write request so far, oldest first: `{"time", "verb" (create, update, patch,
    /// delete), "kind", "namespace", "name", "resourceVersion" ("" when refused), "code"}`.
    pub fn writes(&self) -> Vec<Value> {
        let (status, answer) = self.get("/_testenv/writes");
        assert_eq!(status, 200, "the write log: {answer}");
        answer["writes"].as_array().expect("writes").clone()
    }

    /// The next `count` writes of `kind` (`Secret`, `MutatingWebhookConfiguration`,
    /// `Namespace`, `Node`, `NetworkAttachmentDefinition`) are answered 409 Conflict, as if another writer had just changed the
    /// object; 0 clears it.
    pub fn conflicts(&self, kind: &str, count: u32) {
        let fault = json!({"conflicts": {"kind": kind, "count": count}});
        let (status, answer) = self.post("/_testenv/faults", JSON, &fault);
        assert_eq!(status, 200, "the conflicts fault: {answer}");
    }

    /// A Node `name` of `instance_type` (`m5.large`...), as its kubelet registers it: its
    /// capacity and allocatable (cpu, memory, pods...) are an EKS node's of that type. The
    /// Node (ADDED).
    pub fn add_node(&self, name: &str, instance_type: &str) -> Value {
        let request = json!({"name": name, "instance_type": instance_type});
        let (status, node) = self.post("/_testenv/nodes", JSON, &request);
        assert_eq!(status, 200, "node {name}: {node}");
        node
    }

    /// Node `name` as the API serves it now.
    pub fn node_object(&self, name: &str) -> Value {
        let (status, node) = self.get(&format!("/api/v1/nodes/{name}"));
        assert_eq!(status, 200, "node {name}: {node}");
        node
    }

    /// The kubelet registers Node `name` anew (its object deleted and created again): DELETED,
    /// then ADDED with a new uid and only what the kubelet reports, so without the extended
    /// resources of its capacity and allocatable. The new Node.
    pub fn reregister_node(&self, name: &str) -> Value {
        let (status, node) = self.post(
            &format!("/_testenv/nodes/{name}/reregister"),
            JSON,
            &json!({}),
        );
        assert_eq!(status, 200, "re-registering {name}: {node}");
        node
    }

    /// After a write to a Node, its kubelet's status update (which copies extended resources
    /// from capacity to allocatable) comes `lag` later; zero (the default): at once, before
    /// the write is answered.
    pub fn kubelet_lag(&self, lag: Duration) {
        let config = json!({"kubelet_sync_seconds": lag.as_secs_f64()});
        let (status, answer) = self.post("/_testenv/config", JSON, &config);
        assert_eq!(status, 200, "the kubelet's lag: {answer}");
    }

    /// Creates NetworkAttachmentDefinition `namespace/name` ([`nad_object`]); the object.
    pub fn create_nad(
        &self,
        namespace: &str,
        name: &str,
        config_json: &str,
        resource_name: Option<&str>,
    ) -> Value {
        let nad = nad_object(namespace, name, config_json, resource_name);
        let (status, made) = self.post(&nads_path(namespace), JSON, &nad);
        assert_eq!(status, 201, "NetworkAttachmentDefinition {name}: {made}");
        made
    }

    /// Registers a bearer token for `user` (e.g.
    /// `system:serviceaccount:multus-ipmgr:multus-ipmgr-agent`) allowed what `rules` allow: a
    /// JSON list of RBAC PolicyRules (`apiGroups`, `resources` such as `nodes/status`,
    /// `resourceNames`, `verbs`, `nonResourceURLs`), each with `namespace` for a Role's rule.
    /// `{"token", "user", "kubeconfig"}`.
    pub fn register_rules(&self, user: &str, rules: &Value) -> Value {
        let (status, answer) = self.post(
            "/_testenv/rbac",
            JSON,
            &json!({"user": user, "rules": rules}),
        );
        assert_eq!(status, 200, "RBAC for {user}: {answer}");
        answer
    }

    /// A kubeconfig for the server whose user is `user` with only `rules`
    /// ([`KubeApi::register_rules`]): its requests bear the token (`token:`), and are
    /// answered 403 Forbidden, as RBAC words it, beyond the rules. Removed when the server
    /// stops.
    pub fn kubeconfig_with_rules(&self, user: &str, rules: &Value) -> PathBuf {
        PathBuf::from(
            self.register_rules(user, rules)["kubeconfig"]
                .as_str()
                .expect("kubeconfig"),
        )
    }

    /// `method path` bearing `token` (`Authorization: Bearer`), with `body` as its content
    /// type: the status and the JSON answer.
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> (u16, Value) {
        self.request_with(
            &[("Authorization", &format!("Bearer {token}"))],
            method,
            path,
            body,
        )
    }

    /// Every request RBAC denied so far, oldest first: `{"time", "user", "verb", "path",
    /// "apiGroup", "resource", "subresource", "namespace", "name", "message"}`.
    pub fn denied(&self) -> Vec<Value> {
        let (status, answer) = self.get("/_testenv/denied");
        assert_eq!(status, 200, "the denials: {answer}");
        answer["denied"].as_array().expect("denied").clone()
    }

    fn request(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> (u16, Value) {
        self.request_with(&[], method, path, body)
    }

    fn request_with(
        &self,
        headers: &[(&str, &str)],
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> (u16, Value) {
        let data = body.map(|(content_type, value)| (content_type, value.to_string().into_bytes()));
        let (status, answer) = http_request_with(
            &self.endpoint,
            method,
            path,
            headers,
            data.as_ref()
                .map(|(content_type, bytes)| (*content_type, bytes.as_slice())),
        );
        let value = serde_json::from_slice(&answer).unwrap_or_else(|_| {
            panic!(
                "{method} {path}: {status} with a body that is not JSON: {}",
                String::from_utf8_lossy(&answer)
            )
        });
        (status, value)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        drop(self.input.take()); // the end of its input stops the server, which removes its kubeconfig
        stop_within(&mut self.process, Duration::from_secs(5)); // else it is killed by its PID
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// One HTTP/1.1 request to `endpoint` (`http://host:port`, no TLS) on a connection of its
/// own: `method path`, with `body` (its content type and bytes) when given. The status and
/// the body, read by its Content-Length (so not a watch, whose answer is chunked). Panics
/// when the server cannot be reached or answers something else.
pub fn http_request(
    endpoint: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> (u16, Vec<u8>) {
    http_request_with(endpoint, method, path, &[], body)
}

/// [`http_request`] with more `headers` (name, value).
pub fn http_request_with(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> (u16, Vec<u8>) {
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{endpoint} is not an http:// URL"))
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)
        .unwrap_or_else(|error| panic!("{endpoint} cannot be reached: {error}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let data = body.map_or(&[][..], |(_, data)| data);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        data.len()
    );
    if let Some((content_type, _)) = body {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(data))
        .unwrap_or_else(|error| panic!("{method} {path} not sent: {error}"));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP status in {line:?}"));
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("a header line");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
    let length: usize =
        length.unwrap_or_else(|| panic!("{method} {path}: {status} without a Content-Length"));
    let mut answer = vec![0; length];
    reader
        .read_exact(&mut answer)
        .unwrap_or_else(|error| panic!("{method} {path}: the body broke off: {error}"));
    (status, answer)
}
