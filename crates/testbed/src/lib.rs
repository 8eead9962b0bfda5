//! Rust client of the emulated cluster in `testenv/` (the Python one is
//! `testenv/client.py`): it starts the stand-in, builds a topology from
//! `testenv/topologies/`, makes and deletes pods, and runs programs inside them. Every piece
//! of the bed itself (EC2 rules, instance metadata, pods as network namespaces, the
//! Kubernetes API server that shows them as Pod objects) lives in the stand-in; this crate
//! only speaks its control protocol.
//!
//! [`KubeApi`] runs the stand-in's Kubernetes API server on its own, without root, for tests
//! that only write to and read from the API (a webhook's Secret and caBundle).
//!
//! Test helpers: failures panic with the reason. Pods need root; tests that use them carry
//! `#[ignore = "needs root ..."]` so that a normal `cargo test` reports them as skipped and
//! `scripts/test` runs them with `--run-ignored all`.

pub mod churn;
pub mod kube;
pub mod process;
pub mod scheduler;

pub use kube::KubeApi;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python that runs the stand-in (with the tools of `tests/requirements.txt`):
/// `$IPMGR_TESTENV_PYTHON`, else the repository's `.venv`.
pub fn testenv_python() -> PathBuf {
    let python = std::env::var_os("IPMGR_TESTENV_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} missing: run scripts/test (it installs tests/requirements.txt in .venv), or set IPMGR_TESTENV_PYTHON",
        python.display()
    );
    python
}

/// One emulated cluster: the stand-in process, its topology and its pods.
#[derive(Debug)]
pub struct TestBed {
    process: Child,
    control_in: Option<ChildStdin>,
    control_out: BufReader<ChildStdout>,
    /// The bed's name: its network namespace, and the prefix of its pods' namespaces.
    pub name: String,
    /// The EC2 endpoint, reachable from the pods.
    pub ec2_endpoint: String,
    /// What the stand-in answered to the topology: VPC, subnets, nodes with ENIs.
    pub topology: Value,
    /// The bed's Kubernetes API server (`http://gateway:port`, no TLS), reachable from its
    /// pods and nodes.
    pub kube_endpoint: String,
    /// A kubeconfig for that server (no credentials), for `KUBECONFIG`: what
    /// `kube::Config::infer()` reads.
    pub kubeconfig: PathBuf,
}

/// A pod of the bed: a network namespace on a node, and its Kubernetes object.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its name in the bed, and its object's `metadata.name`.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its object's `metadata.namespace`.
    pub namespace: String,
    /// Its object's `metadata.uid`.
    pub uid: String,
    /// Its pod IP (`status.podIP`): the address of its `eth0`, as the VPC CNI's is on EKS
    /// (IPv6 for [`PodSpec::ipv6`]).
    pub ip: String,
    /// The host side of its `eth0`, in its node's namespace: `eni` and a hash of its
    /// namespace and name, as the VPC CNI names it.
    pub host_veth: String,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// The variables that reach AWS from it (IMDS and EC2 endpoints).
    pub env: Vec<(String, String)>,
}

/// A node's own network namespace (its host network), where a node agent runs.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's name in the topology.
    pub name: String,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// The IPv4 address of its `eth0`, where a node agent listens: its pods' `status.hostIP`.
    pub address: String,
    /// The IPv6 address of its `eth0`: its IPv6 pods' `status.hostIP`.
    pub address6: String,
    /// Its runtime netns directory: a `cni-<uuid>` bind mount per pod of the node.
    pub netns_dir: PathBuf,
    /// The variables that reach AWS from it (IMDS and EC2 endpoints), and the node agent's
    /// `NODE_NAME` and `KUBECONFIG`.
    pub env: Vec<(String, String)>,
}

/// Somewhere programs run: a pod or a node's host network.
pub trait Place {
    /// The network namespace.
    fn netns(&self) -> &str;
    /// The environment programs get there.
    fn env(&self) -> &[(String, String)];
}

impl Place for Pod {
    fn netns(&self) -> &str {
        &self.netns
    }

    fn env(&self) -> &[(String, String)] {
        &self.env
    }
}

impl Place for Node {
    fn netns(&self) -> &str {
        &self.netns
    }

    fn env(&self) -> &[(String, String)] {
        &self.env
    }
}

impl Pod {
    /// The same pod, with `name=value` in the environment of programs run in it.
    pub fn with_env(&self, name: &str, value: &str) -> Pod {
        let mut pod = self.clone();
        pod.env.retain(|(key, _)| key != name);
        pod.env.push((name.to_owned(), value.to_owned()));
        pod
    }
}

/// One interface of a pod besides `eth0`.
#[derive(Clone, Debug)]
pub struct Interface {
    name: String,
    eni: Option<String>,
    mac: Option<String>,
    addresses: Vec<String>,
    network: Option<String>,
}

impl Interface {
    /// A Multus interface on node ENI `eni` (`eth1`...): it carries that ENI's MAC, as an
    /// ipvlan child does.
    pub fn on_eni(name: &str, eni: &str, addresses: &[&str]) -> Self {
        Interface {
            eni: Some(eni.to_owned()),
            ..Self::other(name, addresses)
        }
    }

    /// An interface with a given MAC.
    pub fn with_mac(name: &str, mac: &str, addresses: &[&str]) -> Self {
        Interface {
            mac: Some(mac.to_owned()),
            ..Self::other(name, addresses)
        }
    }

    /// An interface whose MAC is no ENI's (a bridge or macvlan network, the VPC CNI's `v4if0`).
    pub fn other(name: &str, addresses: &[&str]) -> Self {
        Interface {
            name: name.to_owned(),
            eni: None,
            mac: None,
            addresses: addresses
                .iter()
                .map(|&address| address.to_owned())
                .collect(),
            network: None,
        }
    }

    /// The same interface from NetworkAttachmentDefinition `network` (its name in the pod's
    /// network-status annotation is `<namespace>/<network>`; `multus-net` when not given).
    pub fn network(mut self, network: &str) -> Self {
        self.network = Some(network.to_owned());
        self
    }

    fn to_json(&self) -> Value {
        let mut value = json!({"name": self.name, "addresses": self.addresses});
        if let Some(eni) = &self.eni {
            value["eni"] = json!(eni);
        }
        if let Some(mac) = &self.mac {
            value["mac"] = json!(mac);
        }
        if let Some(network) = &self.network {
            value["network"] = json!(network);
        }
        value
    }
}

/// A pod to make with [`TestBed::create_pod`]: where it runs, its interfaces, and what its
/// Kubernetes object carries besides the network-status annotation Multus writes.
#[derive(Clone, Debug)]
pub struct PodSpec {
    node: String,
    name: String,
    namespace: String,
    interfaces: Vec<Interface>,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    network_status: bool,
    ipv6: bool,
    pod_ip: Option<String>,
    containers: Option<Value>,
}

impl PodSpec {
    /// A pod named `name` on `node`, in namespace `default`, with only its `eth0`.
    pub fn new(node: &str, name: &str) -> Self {
        PodSpec {
            node: node.to_owned(),
            name: name.to_owned(),
            namespace: "default".to_owned(),
            interfaces: Vec::new(),
            labels: Map::new(),
            annotations: Map::new(),
            network_status: true,
            ipv6: false,
            pod_ip: None,
            containers: None,
        }
    }

    /// With `interfaces` besides `eth0` (in the network-status annotation too).
    pub fn interfaces(mut self, interfaces: &[Interface]) -> Self {
        self.interfaces = interfaces.to_vec();
        self
    }

    /// In Kubernetes namespace `namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// With label `key: value` on its object.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), json!(value));
        self
    }

    /// With annotation `key: value` on its object; it replaces the network-status annotation
    /// when `key` is `k8s.v1.cni.cncf.io/network-status`.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), json!(value));
        self
    }

    /// Without the network-status annotation (a pod Multus did not record).
    pub fn without_network_status(mut self) -> Self {
        self.network_status = false;
        self
    }

    /// With an IPv6 pod IP, networked as an IPv4 one: as on an IPv6 EKS cluster, its object's
    /// `status.podIP` is IPv6 and its `status.hostIP` its node's IPv6 address.
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// With these containers in its object (`spec.containers` as admitted, e.g. with the
    /// requests a webhook added); one `app` container otherwise.
    pub fn containers(mut self, containers: Value) -> Self {
        self.containers = Some(containers);
        self
    }

    /// With pod IP `ip` (of the bed's pod ranges, held by no live pod): a reused address,
    /// e.g. the one of an object [`TestBed::delete_pod_keeping_object`] kept.
    pub fn pod_ip(mut self, ip: &str) -> Self {
        self.pod_ip = Some(ip.to_owned());
        self
    }

    fn to_json(&self) -> Value {
        let interfaces: Vec<Value> = self.interfaces.iter().map(Interface::to_json).collect();
        let mut value = json!({
            "name": self.name,
            "node": self.node,
            "namespace": self.namespace,
            "interfaces": interfaces,
            "labels": self.labels,
            "annotations": self.annotations,
            "network_status": self.network_status,
            "ipv6": self.ipv6,
        });
        if let Some(ip) = &self.pod_ip {
            value["pod_ip"] = json!(ip);
        }
        if let Some(containers) = &self.containers {
            value["containers"] = containers.clone();
        }
        value
    }
}

/// A topology description for [`TestBed::start`].
#[derive(Clone, Debug)]
pub enum Topology {
    /// A file of `testenv/topologies/` by name (`how-to`).
    File(&'static str),
    /// A description built by the test (the same JSON shape).
    Inline(Value),
}

impl TestBed {
    /// Starts the stand-in in a namespace of its own (root) and builds `topology`.
    pub fn start(topology: Topology) -> TestBed {
        let number = NEXT_BED.fetch_add(1, Ordering::SeqCst);
        let name = format!("ipmgr-{:x}{number:x}", std::process::id() % 0xfffff);
        let mut process = Command::new(testenv_python())
            .args(["-m", "testenv.awsenv", "--control", "stdio", "--bed", &name])
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the stand-in starts");
        let control_in = process.stdin.take();
        let mut control_out = BufReader::new(process.stdout.take().expect("stdout"));
        let mut first = String::new();
        control_out
            .read_line(&mut first)
            .expect("the stand-in announces itself");
        let ready: Value = serde_json::from_str(&first)
            .unwrap_or_else(|_| panic!("the stand-in did not start (needs root): {first:?}"));
        let mut bed = TestBed {
            process,
            control_in,
            control_out,
            name,
            ec2_endpoint: ready["ec2_endpoint"].as_str().expect("endpoint").to_owned(),
            topology: Value::Null,
            kube_endpoint: String::new(),
            kubeconfig: PathBuf::new(),
        };
        let description = match topology {
            Topology::File(file) => json!({ "file": file }),
            Topology::Inline(value) => value,
        };
        bed.topology = bed.control("POST", "topology", description);
        bed.kube_endpoint = text(&bed.topology["kube_endpoint"]);
        bed.kubeconfig = PathBuf::from(text(&bed.topology["kubeconfig"]));
        bed
    }

    /// One control call; panics unless the stand-in answered 200.
    pub fn control(&mut self, method: &str, path: &str, body: Value) -> Value {
        self.try_control(method, path, body)
            .unwrap_or_else(|error| panic!("control {method} {path}: {error}"))
    }

    /// One control call; the stand-in's reason when it refused.
    pub fn try_control(&mut self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let request = json!({"method": method, "path": path, "body": body});
        let input = self.control_in.as_mut().expect("control input open");
        writeln!(input, "{request}").expect("control written");
        input.flush().expect("control flushed");
        let mut line = String::new();
        self.control_out
            .read_line(&mut line)
            .expect("control answered");
        let answer: Value = serde_json::from_str(&line).expect("control answer is JSON");
        if answer["status"] == 200 {
            Ok(answer["body"].clone())
        } else {
            Err(answer["body"]["error"].to_string())
        }
    }

    /// ENI `name` (`eth1`...) of `node`, as the topology built it.
    pub fn eni(&self, node: &str, name: &str) -> &Value {
        self.topology["nodes"][node]["enis"]
            .as_array()
            .and_then(|enis| enis.iter().find(|eni| eni["name"] == name))
            .unwrap_or_else(|| panic!("{node} has no ENI {name}"))
    }

    /// The id of ENI `name` of `node`.
    pub fn eni_id(&self, node: &str, name: &str) -> String {
        self.eni(node, name)["id"]
            .as_str()
            .expect("ENI id")
            .to_owned()
    }

    /// The MAC of ENI `name` of `node`.
    pub fn eni_mac(&self, node: &str, name: &str) -> String {
        self.eni(node, name)["mac"]
            .as_str()
            .expect("MAC")
            .to_owned()
    }

    /// An operator attaches a new ENI to running node `node`: `spec` is an ENI of a node
    /// description (testenv/topology.py; its `name` defaults to `eth<device>`, its `device`
    /// to the lowest free one). EC2, the node's metadata and its links change at once; the
    /// ENI as the topology answers it, which [`TestBed::eni`] finds from then on.
    pub fn attach_eni(&mut self, node: &str, spec: Value) -> Value {
        let eni = self.control("POST", &format!("nodes/{node}/enis"), spec);
        self.topology["nodes"][node]["enis"]
            .as_array_mut()
            .expect("the node's ENIs")
            .push(eni.clone());
        eni
    }

    /// An operator detaches ENI `name` from running node `node` (its link goes with it; the
    /// ENI stays, attached to nothing, with its addresses).
    pub fn detach_eni(&mut self, node: &str, name: &str) {
        self.control("DELETE", &format!("nodes/{node}/enis/{name}"), Value::Null);
        self.topology["nodes"][node]["enis"]
            .as_array_mut()
            .expect("the node's ENIs")
            .retain(|eni| eni["name"] != name);
    }

    /// The IPv6 prefix of `subnet`, e.g. `2400:6500:1:100::`.
    pub fn ipv6_prefix(&self, subnet: &str) -> String {
        let cidr = self.topology["subnets"][subnet]["ipv6_cidr"]
            .as_str()
            .expect("IPv6 subnet");
        cidr.split('/').next().expect("prefix").to_owned()
    }

    /// The addresses EC2 says ENI `eni_id` holds now: (IPv4, IPv6).
    pub fn eni_addresses(&mut self, eni_id: &str) -> (Vec<String>, Vec<String>) {
        let answer = self.control("GET", &format!("eni/{eni_id}"), Value::Null);
        let list = |key: &str| {
            answer[key]
                .as_array()
                .expect("list")
                .iter()
                .map(|value| value.as_str().expect("address").to_owned())
                .collect()
        };
        (list("ipv4"), list("ipv6"))
    }

    /// Whether ENI `eni_id` holds `address` (IPv4 or IPv6) now.
    pub fn holds(&mut self, eni_id: &str, address: &str) -> bool {
        let (ipv4, ipv6) = self.eni_addresses(eni_id);
        ipv4.iter().chain(&ipv6).any(|held| held == address)
    }

    /// Polls until `eni_id` holds `address` (or, with `held: false`, no longer does);
    /// how long it took, or `None` after `limit`.
    pub fn wait_until(
        &mut self,
        eni_id: &str,
        address: &str,
        held: bool,
        limit: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.holds(eni_id, address) == held {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// EC2 calls by action since the last reset.
    pub fn calls(&mut self) -> Value {
        self.control("GET", "calls", Value::Null)
    }

    /// Forgets the call counts.
    pub fn reset_calls(&mut self) {
        self.control("POST", "calls/reset", Value::Null);
    }

    /// A pod named `name` on `node` with `interfaces` besides its `eth0`.
    pub fn pod(&mut self, node: &str, name: &str, interfaces: &[Interface]) -> Pod {
        self.create_pod(&PodSpec::new(node, name).interfaces(interfaces))
    }

    /// The pod `spec` describes: its namespace, then its object in the API server (ADDED).
    pub fn create_pod(&mut self, spec: &PodSpec) -> Pod {
        let answer = self.control("POST", "pods", spec.to_json());
        Pod {
            name: spec.name.clone(),
            node: spec.node.clone(),
            namespace: text(&answer["namespace"]),
            uid: text(&answer["uid"]),
            ip: text(&answer["pod_ip"]),
            host_veth: text(&answer["host_veth"]),
            netns: text(&answer["netns"]),
            env: json_env(&answer["env"]),
        }
    }

    /// Sets `annotations` (a JSON object of strings) on the pod's object: a MODIFIED event,
    /// none when nothing changes. The object after the change.
    pub fn set_annotations(&mut self, pod: &Pod, annotations: Value) -> Value {
        self.control(
            "POST",
            &format!("pods/{}/annotations", pod.name),
            json!({ "set": annotations }),
        )
    }

    /// Removes the annotations named `keys` from the pod's object; the object after it.
    pub fn remove_annotations(&mut self, pod: &Pod, keys: &[&str]) -> Value {
        self.control(
            "POST",
            &format!("pods/{}/annotations", pod.name),
            json!({ "remove": keys }),
        )
    }

    /// Whether pods reach their node's instance metadata (the default). With `false` each
    /// node's metadata answers only the node's own namespace and closes other connections
    /// unanswered, as on EKS with hop limit 1.
    pub fn pods_reach_metadata(&mut self, reach: bool) {
        self.control("POST", "config", json!({ "pods_reach_metadata": reach }));
    }

    /// Metadata requests by source address since the start, refused connections included:
    /// `{"198.19.0.3": 2, ...}` (compare with [`Pod::ip`] and [`Node::address`]).
    pub fn metadata_requests(&mut self) -> Value {
        self.control("GET", "metadata_requests", Value::Null)["by_source"].take()
    }

    /// Metadata connections refused by source address since the start.
    pub fn metadata_refused(&mut self) -> Value {
        self.control("GET", "metadata_refused", Value::Null)["by_source"].take()
    }

    /// Adds `interface` to a running pod.
    pub fn add_interface(&mut self, pod: &Pod, interface: &Interface) {
        self.control(
            "POST",
            &format!("pods/{}/interfaces", pod.name),
            interface.to_json(),
        );
    }

    /// Adds one address (CIDR form) to an interface of `pod`.
    pub fn add_address(&mut self, pod: &Pod, interface: &str, address: &str) {
        self.change_addresses(pod, interface, "add", address);
    }

    /// Removes one address (CIDR form) from an interface of `pod`.
    pub fn remove_address(&mut self, pod: &Pod, interface: &str, address: &str) {
        self.change_addresses(pod, interface, "remove", address);
    }

    fn change_addresses(&mut self, pod: &Pod, interface: &str, change: &str, address: &str) {
        self.control(
            "POST",
            &format!("pods/{}/addresses", pod.name),
            json!({"interface": interface, change: [address]}),
        );
    }

    /// Deletes a pod (its namespace and interfaces), as a runtime does when the pod goes, and
    /// its object: MODIFIED with a `deletionTimestamp`, then DELETED.
    pub fn delete_pod(&mut self, pod: &Pod) {
        self.control("DELETE", &format!("pods/{}", pod.name), Value::Null);
    }

    /// Deletes a pod's sandbox (its namespace and interfaces) but keeps its object as it was,
    /// with no event (a node whose status updates lag), so that its pod IP can go to another
    /// pod ([`PodSpec::pod_ip`]) while the object still shows it. [`TestBed::delete_pod_object`]
    /// deletes the object later.
    pub fn delete_pod_keeping_object(&mut self, pod: &Pod) {
        self.control(
            "DELETE",
            &format!("pods/{}", pod.name),
            json!({"keep_object": true}),
        );
    }

    /// Deletes the object [`TestBed::delete_pod_keeping_object`] kept: MODIFIED with a
    /// `deletionTimestamp`, then DELETED.
    pub fn delete_pod_object(&mut self, pod: &Pod) {
        self.delete_pod(pod);
    }

    /// Makes Namespace `name` as an admin would, with `labels` and `annotations` (JSON
    /// objects of strings; the API server adds the `kubernetes.io/metadata.name` label):
    /// ADDED. The object. (A pod's namespace is made on its first use.)
    pub fn create_namespace(&mut self, name: &str, labels: Value, annotations: Value) -> Value {
        self.control(
            "POST",
            "namespaces",
            json!({"name": name, "labels": labels, "annotations": annotations}),
        )
    }

    /// Sets `set` (a JSON object of strings) and removes the annotations named `remove` on
    /// Namespace `name`, as an admin editing e.g. `multus-ipmgr.io/floating-ip-cidrs`:
    /// MODIFIED, none when nothing changes. The object after it.
    pub fn annotate_namespace(&mut self, name: &str, set: Value, remove: &[&str]) -> Value {
        self.control(
            "POST",
            &format!("namespaces/{name}/annotations"),
            json!({"set": set, "remove": remove}),
        )
    }

    /// For `duration` from now, every watch of the API server, open or new, delivers nothing
    /// (no event, no bookmark, not its end), then what it held, in order; lists are still
    /// answered (a proxy or API server that silently stops delivering).
    pub fn stall_watches(&mut self, duration: Duration) {
        self.control(
            "POST",
            "kube/faults",
            json!({"stall_seconds": duration.as_secs_f64()}),
        );
    }

    /// For `duration` from now, the API server answers every new request with 503
    /// ServiceUnavailable (open watches go on).
    pub fn kube_unavailable(&mut self, duration: Duration) {
        self.control(
            "POST",
            "kube/faults",
            json!({"unavailable_seconds": duration.as_secs_f64()}),
        );
    }

    /// One request to the API server as a client in the bed makes it (not a watch), bearing
    /// `token` when given: `method path` (with its query) and `body` as `content_type`. The
    /// status and the JSON answer (a `v1` Status when refused).
    pub fn kube_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let request = json!({"method": method, "path": path, "content_type": content_type,
                             "body": body, "token": token});
        let mut answer = self.control("POST", "kube/request", request);
        let status = answer["status"].as_u64().expect("status");
        (
            u16::try_from(status).expect("HTTP status"),
            answer["body"].take(),
        )
    }

    /// Node `name` as the API server serves it now (its `status.capacity` and
    /// `status.allocatable` an EKS node's of its instance type, and what writers added).
    pub fn node_object(&mut self, name: &str) -> Value {
        let (status, node) = self.kube_request(
            "GET",
            &format!("/api/v1/nodes/{name}"),
            kube::JSON,
            None,
            None,
        );
        assert_eq!(status, 200, "node {name}: {node}");
        node
    }

    /// The kubelet registers Node `name` anew (its object deleted and created again): DELETED,
    /// then ADDED with a new uid and only what the kubelet reports, so without the extended
    /// resources of its capacity and allocatable. The new Node.
    pub fn reregister_node(&mut self, name: &str) -> Value {
        self.control("POST", &format!("kube/nodes/{name}/reregister"), json!({}))
    }

    /// After a write to a Node, its kubelet's status update (which copies extended resources
    /// from capacity to allocatable) comes `lag` later; zero (the default): at once, before
    /// the write is answered.
    pub fn kubelet_lag(&mut self, lag: Duration) {
        self.control(
            "POST",
            "kube/config",
            json!({"kubelet_sync_seconds": lag.as_secs_f64()}),
        );
    }

    /// Creates NetworkAttachmentDefinition `namespace/name` (its namespace must exist) with
    /// `config_json` as its `spec.config` and `resource_name` as its
    /// `k8s.v1.cni.cncf.io/resourceName` annotation; the object.
    pub fn create_nad(
        &mut self,
        namespace: &str,
        name: &str,
        config_json: &str,
        resource_name: Option<&str>,
    ) -> Value {
        let nad = kube::nad_object(namespace, name, config_json, resource_name);
        let path = kube::nads_path(namespace);
        let (status, made) = self.kube_request("POST", &path, kube::JSON, Some(&nad), None);
        assert_eq!(status, 201, "NetworkAttachmentDefinition {name}: {made}");
        made
    }

    /// Registers a bearer token for `user` allowed what `rules` allow (a JSON list of RBAC
    /// PolicyRules, each with `namespace` for a Role's rule; [`KubeApi::register_rules`]):
    /// `{"token", "user", "kubeconfig"}`.
    pub fn register_rules(&mut self, user: &str, rules: &Value) -> Value {
        self.control("POST", "kube/rbac", json!({"user": user, "rules": rules}))
    }

    /// A kubeconfig for the bed's API server like [`TestBed::kubeconfig`] but whose user is
    /// `user` with only `rules` (a bearer token, `token:`); requests beyond the rules are
    /// answered 403 Forbidden as RBAC words it. Removed when the bed stops.
    pub fn kubeconfig_with_rules(&mut self, user: &str, rules: &Value) -> PathBuf {
        PathBuf::from(text(&self.register_rules(user, rules)["kubeconfig"]))
    }

    /// Every request RBAC denied so far, oldest first: `{"time", "user", "verb", "path",
    /// "apiGroup", "resource", "subresource", "namespace", "name", "message"}`.
    pub fn kube_denied(&mut self) -> Vec<Value> {
        let answer = self.control("GET", "kube/denied", Value::Null);
        answer["denied"].as_array().expect("denied").clone()
    }

    /// The host network of `node` (made on first use).
    pub fn node(&mut self, node: &str) -> Node {
        let answer = self.control("GET", &format!("nodes/{node}"), Value::Null);
        // What the agent's DaemonSet gives it besides AWS: its node's name (downward API)
        // and the API server (the in-cluster service account there, a kubeconfig here).
        let mut env = json_env(&answer["env"]);
        env.push(("NODE_NAME".to_owned(), node.to_owned()));
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        env.push(("KUBECONFIG".to_owned(), kubeconfig));
        Node {
            name: node.to_owned(),
            netns: text(&answer["netns"]),
            address: text(&answer["address"]),
            address6: text(&answer["address6"]),
            netns_dir: PathBuf::from(text(&answer["netns_dir"])),
            env,
        }
    }

    /// `program args...` in `place` (a pod or a node), with only its AWS variables in its
    /// environment.
    pub fn command(&self, place: &impl Place, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", place.netns(), "env", "-i"])
            .args(
                place
                    .env()
                    .iter()
                    .map(|(key, value)| format!("{key}={value}")),
            )
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        command
    }
}

impl TestBed {
    /// `program args...` started in `place` as [`TestBed::command`] makes it, its output
    /// discarded.
    pub fn spawn_quiet(&self, place: &impl Place, program: &Path, args: &[&str]) -> Child {
        self.command(place, program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", program.display()))
    }
}

impl TestBed {
    /// `program agent` in `node` as the DaemonSet runs it (the node's netns directory,
    /// metrics on 127.0.0.1:9471, then `extra`), its output discarded, once it says ready.
    pub fn start_agent(&self, node: &Node, program: &Path, extra: &[&str]) -> Background {
        let dir = node.netns_dir.to_str().expect("UTF-8 path").to_owned();
        let mut args = vec![
            "agent",
            "--netns-dir",
            &dir,
            "--metrics-listen",
            AGENT_METRICS,
        ];
        args.extend_from_slice(extra);
        let agent = Background(self.spawn_quiet(node, program, &args));
        if let Err(last) = wait_agent_ready(node, AGENT_METRICS, Duration::from_secs(30)) {
            panic!("the agent on {} never became ready: {last}", node.name);
        }
        agent
    }
}

/// The bed's HTTP proxy, and EC2 over HTTPS behind it (testenv/proxy.py).
#[derive(Clone, Debug)]
pub struct BedProxy {
    /// The proxy, `http://gateway:port`, reachable from the pods.
    pub url: String,
    /// EC2 over HTTPS by the gateway's address: reachable from the pods directly.
    pub ec2_https: String,
    /// EC2 over HTTPS by its real name, which only the proxy resolves: reachable from the
    /// pods through the proxy alone.
    pub ec2_https_by_name: String,
    /// The CA of EC2's certificate, PEM (for `SSL_CERT_FILE`).
    pub ca_file: PathBuf,
}

impl TestBed {
    /// Starts (once) the bed's proxy and EC2 over HTTPS.
    pub fn proxy(&mut self) -> BedProxy {
        let answer = self.control("POST", "proxy", Value::Null);
        BedProxy {
            url: text(&answer["proxy_url"]),
            ec2_https: text(&answer["ec2_https_endpoint"]),
            ec2_https_by_name: text(&answer["ec2_https_endpoint_by_name"]),
            ca_file: PathBuf::from(text(&answer["ca_file"])),
        }
    }

    /// What the proxy was asked since it started, by target `host:port`:
    /// `{"connect": {...}, "forward": {...}}` (CONNECTs, absolute-form requests).
    pub fn proxy_requests(&mut self) -> Value {
        self.control("GET", "proxy", Value::Null)
    }
}

/// Where [`TestBed::start_agent`]'s agents serve their metrics, inside their node.
pub const AGENT_METRICS: &str = "127.0.0.1:9471";

impl Drop for TestBed {
    fn drop(&mut self) {
        drop(self.control_in.take()); // end of input stops the stand-in, which cleans up
        stop_within(&mut self.process, Duration::from_secs(10));
    }
}

/// A string of a control answer; panics when it is missing.
fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected text, the stand-in answered {value}"))
        .to_owned()
}

fn json_env(env: &Value) -> Vec<(String, String)> {
    env.as_object()
        .expect("env")
        .iter()
        .map(|(key, value)| (key.clone(), value.as_str().expect("text").to_owned()))
        .collect()
}

/// A background process (a sidecar) that is killed if the test ends without stopping it.
#[derive(Debug)]
pub struct Background(pub Child);

impl Background {
    /// Sends SIGTERM and waits up to `limit` for the exit; true when it exited with 0.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        stop_within(&mut self.0, limit);
        self.0.wait().is_ok_and(|status| status.success())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits up to `limit` for `child` to exit, then kills it.
pub fn stop_within(child: &mut Child, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `GET url` from inside `place`'s network namespace (an agent's endpoints listen there):
/// the status code, a newline, and the body; the error's text when there is no answer.
pub fn http_get(place: &impl Place, url: &str) -> String {
    let script = format!(
        "import urllib.request, urllib.error\ntry:\n    r = urllib.request.urlopen({url:?}, timeout=5)\n    print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\nexcept Exception as e:\n    print(e)"
    );
    let output = Command::new("ip")
        .args(["netns", "exec", place.netns(), "python3", "-c", &script])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits up to `limit` for the agent in `node` whose metrics listen on `metrics` (e.g.
/// `127.0.0.1:9471`) to say ready; its last /readyz answer when it does not.
pub fn wait_agent_ready(node: &Node, metrics: &str, limit: Duration) -> Result<(), String> {
    wait_for_answer(node, &format!("http://{metrics}/readyz"), limit, |ready| {
        ready.starts_with("200")
    })
}

/// Waits up to `limit` for the agent in `node` (metrics on `metrics`) to have read its
/// instance type's per-interface limit, its one `DescribeInstanceTypes`: it then exports
/// the gauge `ipmgr_agent_multus_capacity`. A test that counts the EC2 calls of an idle
/// agent waits for this first (the read follows readiness by up to a capacity check).
pub fn wait_agent_capacity_read(node: &Node, metrics: &str, limit: Duration) -> Result<(), String> {
    wait_for_answer(node, &format!("http://{metrics}/metrics"), limit, |text| {
        text.lines()
            .any(|line| line.starts_with("ipmgr_agent_multus_capacity{"))
    })
}

/// Asks `url` from `node` every 100 ms until its answer is `done`, for up to `limit`; the
/// last answer when it never was.
fn wait_for_answer(
    node: &Node,
    url: &str,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let answer = http_get(node, url);
        if done(&answer) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(answer);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `command` to the end: its output, standard error as text, and how long it took.
pub fn finish(mut command: Command) -> (Output, String, Duration) {
    let started = Instant::now();
    let output = command.output().expect("the program runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr, started.elapsed())
}

/// The program under test: the path in environment variable `override_variable` when set
/// (for example the build an image ships), else `built`, the one cargo built for the test.
pub fn program(override_variable: &str, built: &str) -> PathBuf {
    std::env::var_os(override_variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(built))
}
