//! The client's view of what the bed adds for a node agent: pods as Kubernetes objects, the
//! kubeconfig, node addresses, namespaces and nodes, IPv6 pods, kept objects, the API
//! server's faults, and metadata closed to pods (root: pods are network namespaces); and the
//! API server alone, written to as a webhook writes (no root).

use std::time::{Duration, Instant};

use ipmgr_testbed::kube::{JSON, MERGE_PATCH};
use ipmgr_testbed::{
    Background, Interface, KubeApi, PodSpec, TestBed, Topology, finish, http_get, testenv_python,
};
use serde_json::{Value, json};

const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it as root)"]
fn a_pod_carries_its_object_and_a_node_its_address() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let node = bed.node("node1");
    let spec = PodSpec::new("node1", "web")
        .namespace("multus")
        .label("app", "web")
        .interfaces(&[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"]).network("ipvlan-wb")]);
    let pod = bed.create_pod(&spec);
    assert_eq!(pod.namespace, "multus");
    assert!(pod.ip.starts_with("198.19.") && node.address.starts_with("198.18."));

    let object = bed.set_annotations(&pod, json!({"team": "blue"}));
    assert_eq!(object["metadata"]["uid"], pod.uid.as_str());
    assert_eq!(object["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(object["metadata"]["annotations"]["team"], "blue");
    assert_eq!(object["status"]["podIP"], pod.ip.as_str());
    assert_eq!(object["status"]["hostIP"], node.address.as_str());
    let recorded = object["metadata"]["annotations"][NETWORK_STATUS]
        .as_str()
        .expect("network-status");
    let recorded: Value = serde_json::from_str(recorded).expect("JSON");
    assert_eq!(
        recorded,
        json!([
            {"name": "aws-cni", "interface": "eth0", "ips": [pod.ip], "default": true, "dns": {}},
            {"name": "multus/ipvlan-wb", "interface": "net1", "ips": ["10.0.1.50"],
             "mac": bed.eni_mac("node1", "eth1"), "dns": {}},
        ])
    );
    let object = bed.remove_annotations(&pod, &["team"]);
    assert!(object["metadata"]["annotations"].get("team").is_none());

    let unrecorded = bed.create_pod(&PodSpec::new("node1", "plain").without_network_status());
    let object = bed.set_annotations(&unrecorded, json!({"a": "b"}));
    assert_eq!(object["metadata"]["annotations"], json!({"a": "b"}));

    let kubeconfig = std::fs::read_to_string(&bed.kubeconfig).expect("kubeconfig");
    assert!(bed.kube_endpoint.starts_with("http://198.18.0.1:"));
    assert!(kubeconfig.contains(&format!("server: {}\n", bed.kube_endpoint)));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it as root)"]
fn pods_that_cannot_reach_metadata_are_refused_and_counted() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let node = bed.node("node1");
    let pod = bed.pod("node1", "pod", &[]);
    let script = "import os, urllib.request as u; e = os.environ['AWS_EC2_METADATA_SERVICE_ENDPOINT'];\
                  print(u.urlopen(u.Request(e + '/latest/api/token', method='PUT',\
                  headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'}), timeout=10).status)";
    bed.pods_reach_metadata(false);
    let (refused, stderr, _) = finish(bed.command(&pod, &testenv_python(), &["-c", script]));
    assert!(
        !refused.status.success()
            && (stderr.contains("RemoteDisconnected") || stderr.contains("ConnectionResetError")),
        "{stderr}"
    );
    let (answered, stderr, _) = finish(bed.command(&node, &testenv_python(), &["-c", script]));
    assert_eq!(
        String::from_utf8_lossy(&answered.stdout).trim(),
        "200",
        "{stderr}"
    );
    assert_eq!(bed.metadata_refused(), json!({ pod.ip.as_str(): 1 }));
    let requests = bed.metadata_requests();
    assert_eq!(
        (requests[&pod.ip].as_u64(), requests[&node.address].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it as root)"]
fn an_ipv6_pod_reaches_its_node_and_its_ip_moves_on_while_its_object_is_kept() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let node = bed.node("node1");
    let pod = bed.create_pod(&PodSpec::new("node1", "six").ipv6());
    assert!(pod.ip.starts_with("2001:2:0:1::") && node.address6.starts_with("2001:2::"));
    assert!(pod.host_veth.starts_with("eni") && pod.host_veth.len() == 14);
    let python = testenv_python();
    let bind = ["-m", "http.server", "9472", "--bind", &node.address6];
    let _server = Background(bed.spawn_quiet(&node, &python, &bind));
    let url = format!("http://[{}]:9472/", node.address6);
    let started = Instant::now();
    while !http_get(&pod, &url).starts_with("200") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{url} never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let object = format!("{}/api/v1/namespaces/default/pods/six", bed.kube_endpoint);
    assert!(http_get(&node, &object).contains(&format!("\"hostIP\": \"{}\"", node.address6)));

    bed.delete_pod_keeping_object(&pod);
    let again = bed.create_pod(&PodSpec::new("node2", "six-again").pod_ip(&pod.ip));
    assert_eq!(again.ip, pod.ip);
    let by_ip = format!(
        "{}/api/v1/pods?fieldSelector=status.podIP%3D{}",
        bed.kube_endpoint, pod.ip
    );
    let listing = http_get(&node, &by_ip);
    assert!(listing.contains("\"six\"") && listing.contains("\"six-again\""));
    bed.delete_pod_object(&pod);
    assert!(!http_get(&node, &by_ip).contains("\"six\""));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it as root)"]
fn namespaces_nodes_and_faults_through_the_client() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let node = bed.node("node1");
    let key = "multus-ipmgr.io/floating-ip-cidrs";
    let made = bed.create_namespace("team", json!({"tier": "web"}), json!({key: "10.0.1.0/24"}));
    assert_eq!(
        made["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    let changed = bed.annotate_namespace("team", json!({key: "10.0.2.0/24"}), &[]);
    assert_eq!(changed["metadata"]["annotations"][key], "10.0.2.0/24");
    let cleared = bed.annotate_namespace("team", json!({}), &[key]);
    assert!(cleared["metadata"].get("annotations").is_none());

    let shown = http_get(&node, &format!("{}/api/v1/nodes/node1", bed.kube_endpoint));
    let instance_id = bed.topology["nodes"]["node1"]["instance_id"]
        .as_str()
        .expect("id");
    assert!(shown.starts_with("200") && shown.contains(&format!("/{instance_id}\"")));

    let pods = format!("{}/api/v1/pods", bed.kube_endpoint);
    bed.stall_watches(Duration::from_secs(2));
    assert!(http_get(&node, &pods).starts_with("200")); // lists are answered
    bed.kube_unavailable(Duration::from_secs(1));
    assert!(http_get(&node, &pods).starts_with("503"));
    std::thread::sleep(Duration::from_millis(1200));
    assert!(http_get(&node, &pods).starts_with("200"));
}

/// The API server alone (no root): a Secret updated with a version another writer moved on
/// from is a conflict; the conflicts fault and the write log.
#[test]
fn a_secret_updated_with_a_stale_version_is_a_conflict() {
    let api = KubeApi::start();
    let secrets = "/api/v1/namespaces/default/secrets";
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "webhook-tls"},
        "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    });
    let (status, made) = api.post(secrets, JSON, &secret);
    assert_eq!(status, 201, "{made}");
    let path = format!("{secrets}/webhook-tls");
    assert_eq!(api.get(&path), (200, made.clone()));

    let mut renewed = made.clone();
    renewed["data"]["tls.crt"] = json!("bmV3");
    let (status, updated) = api.put(&path, JSON, &renewed);
    assert_eq!(status, 200, "{updated}");
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        made["metadata"]["resourceVersion"]
    );
    let (status, stale) = api.put(&path, JSON, &renewed); // made's version: stale now
    assert_eq!((status, &stale["reason"]), (409, &json!("Conflict")));
    assert_eq!(
        stale["message"],
        "Operation cannot be fulfilled on secrets \"webhook-tls\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );

    api.conflicts("Secret", 1);
    let ca = json!({"data": {"ca.crt": "Y2E="}});
    assert_eq!(api.patch(&path, MERGE_PATCH, &ca).0, 409);
    let (status, patched) = api.patch(&path, MERGE_PATCH, &ca);
    assert_eq!((status, &patched["data"]["ca.crt"]), (200, &json!("Y2E=")));
    let codes: Vec<u64> = api
        .writes()
        .iter()
        .map(|write| write["code"].as_u64().expect("code"))
        .collect();
    assert_eq!(codes, [201, 200, 409, 409, 200]);

    let kubeconfig = api.kubeconfig().to_owned();
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(text.contains(&format!("server: {}\n", api.endpoint())));
    drop(api);
    assert!(!kubeconfig.exists());
}
