//! `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` against the emulated cluster: EC2 over HTTPS
//! by its real name, which the pods cannot resolve, is reachable through the bed's CONNECT
//! proxy alone (testenv/proxy.py), as in a cluster without VPC endpoints. Needs root.

mod common;

use std::time::Duration;

use common::{helper, how_to_bed, log_lines};
use ipmgr_testbed::{BedProxy, Interface, Pod, TestBed, finish};
use serde_json::{Value, json};

/// `pod` calling EC2 at `endpoint` (trusting the bed's CA), with `variables` besides, and a
/// short EC2 retry budget: an EC2 it cannot reach fails the test in seconds.
fn configured(pod: &Pod, proxy: &BedProxy, endpoint: &str, variables: &[(&str, &str)]) -> Pod {
    let ca_file = proxy.ca_file.to_str().expect("UTF-8 path");
    let base = [
        ("AWS_ENDPOINT_URL_EC2", endpoint),
        ("SSL_CERT_FILE", ca_file),
        ("IPMGR_EC2_RETRY_SECONDS", "3"),
    ];
    base.iter()
        .chain(variables)
        .fold(pod.clone(), |pod, (name, value)| pod.with_env(name, value))
}

/// The `host:port` of a URL.
fn authority(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .expect("a URL")
        .trim_end_matches('/')
}

/// The port of `pod`'s instance metadata endpoint.
fn metadata_port(pod: &Pod) -> String {
    let (_, endpoint) = pod
        .env
        .iter()
        .find(|(name, _)| name == "AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .expect("the bed gives pods a metadata endpoint");
    endpoint.rsplit(':').next().expect("a port").to_owned()
}

/// Asserts that the proxy was asked nothing for the metadata endpoint at `port`, and that
/// `pod` asked metadata itself.
fn metadata_went_direct(bed: &mut TestBed, pod: &Pod, port: &str) {
    let requests = bed.proxy_requests();
    for kind in ["connect", "forward"] {
        let targets = requests[kind].as_object().expect("targets");
        assert!(
            targets
                .keys()
                .all(|target| !target.ends_with(&format!(":{port}"))),
            "instance metadata went through the proxy: {requests}"
        );
    }
    assert!(
        bed.metadata_requests()[&pod.ip].as_u64() > Some(0),
        "the pod asked metadata itself"
    );
}

/// A pod named `name` on node1 with `address` on its eth1.
fn pod_with_address(bed: &mut TestBed, name: &str, address: &str) -> Pod {
    bed.pod(
        "node1",
        name,
        &[Interface::on_eni(
            "net1",
            "eth1",
            &[&format!("{address}/24")],
        )],
    )
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn init_reaches_ec2_through_the_https_proxy_alone_and_logs_it_without_credentials() {
    let mut bed = how_to_bed();
    let proxy = bed.proxy();
    let pod = pod_with_address(&mut bed, "pod", "10.0.1.80");
    let with_credentials = proxy.url.replace("http://", "http://user:secret@");
    let pod = configured(
        &pod,
        &proxy,
        &proxy.ec2_https_by_name,
        &[("HTTPS_PROXY", &with_credentials)],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.80"));
    let requests = bed.proxy_requests();
    let tunnels = &requests["connect"][authority(&proxy.ec2_https_by_name)];
    assert!(tunnels.as_u64() > Some(0), "{requests}");
    assert_eq!(requests["forward"], json!({}), "{requests}");
    metadata_went_direct(&mut bed, &pod, &metadata_port(&pod));

    let logged: Vec<Value> = log_lines(&stderr)
        .into_iter()
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("proxy"))
        })
        .collect();
    assert_eq!(logged.len(), 1, "logged once: {stderr}");
    assert_eq!(
        logged[0]["https"],
        format!("{} (HTTPS_PROXY)", proxy.url),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn no_proxy_covering_the_ec2_host_makes_no_connect() {
    let mut bed = how_to_bed();
    let proxy = bed.proxy();
    let pod = pod_with_address(&mut bed, "bypassing", "10.0.1.81");
    let bypassing = configured(
        &pod,
        &proxy,
        &proxy.ec2_https,
        &[
            ("https_proxy", &proxy.url),
            ("no_proxy", "example.com,198.18.0.0/16"),
        ],
    );
    let (output, stderr, _) = finish(helper(&bed, &bypassing, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.81"));
    assert_eq!(bed.proxy_requests(), json!({"connect": {}, "forward": {}}));

    // The same endpoint without NO_PROXY goes through the proxy.
    let other = pod_with_address(&mut bed, "proxied", "10.0.1.83");
    let proxied = configured(
        &other,
        &proxy,
        &proxy.ec2_https,
        &[("https_proxy", &proxy.url)],
    );
    let (output, stderr, _) = finish(helper(&bed, &proxied, &["init"]));
    assert!(output.status.success(), "{stderr}");
    let requests = bed.proxy_requests();
    assert!(
        requests["connect"][authority(&proxy.ec2_https)].as_u64() > Some(0),
        "{requests}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn plain_http_endpoints_take_http_proxy_but_instance_metadata_never_does() {
    let mut bed = how_to_bed();
    let proxy = bed.proxy();
    let pod = pod_with_address(&mut bed, "pod", "10.0.1.82");
    // EC2 by name over plain HTTP (the bed's; AWS's are HTTPS): forwarded in absolute form.
    let plain_by_name = bed.topology["ec2_endpoint_by_name"]
        .as_str()
        .expect("the bed's EC2 by name")
        .to_owned();
    let pod = configured(
        &pod,
        &proxy,
        &plain_by_name,
        &[("HTTP_PROXY", &proxy.url), ("HTTPS_PROXY", &proxy.url)],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    let requests = bed.proxy_requests();
    assert!(
        requests["forward"][authority(&plain_by_name)].as_u64() > Some(0),
        "{requests}"
    );
    metadata_went_direct(&mut bed, &pod, &metadata_port(&pod));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_node_agent_reaches_ec2_through_the_proxy() {
    let mut bed = how_to_bed();
    let proxy = bed.proxy();
    let mut node = bed.node("node1");
    let ca_file = proxy.ca_file.to_str().expect("UTF-8 path").to_owned();
    let (kube_host, _) = authority(&bed.kube_endpoint)
        .rsplit_once(':')
        .expect("host:port");
    let kube_host = kube_host.to_owned();
    node.env.retain(|(name, _)| name != "AWS_ENDPOINT_URL_EC2");
    node.env.extend(
        [
            ("AWS_ENDPOINT_URL_EC2", proxy.ec2_https_by_name.as_str()),
            ("SSL_CERT_FILE", &ca_file),
            ("HTTPS_PROXY", &proxy.url),
            ("HTTP_PROXY", &proxy.url),
            // The bed's API server (KUBECONFIG: kube reads HTTPS_PROXY and NO_PROXY for it;
            // in a cluster the in-cluster configuration takes no proxy).
            ("NO_PROXY", &kube_host),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    let program = ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"));
    let mut agent = bed.start_agent(&node, &program, &["--resync-seconds", "3600"]);
    let requests = bed.proxy_requests();
    assert!(
        requests["connect"][authority(&proxy.ec2_https_by_name)].as_u64() > Some(0),
        "{requests}"
    );
    assert_eq!(
        requests["forward"],
        json!({}),
        "metadata went direct: {requests}"
    );
    assert!(agent.terminate(Duration::from_secs(5)));
}
