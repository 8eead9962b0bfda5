//! The agent backend on the emulated cluster: the real `ipmgr-helper agent` in each node's
//! host network, reading its node's pods from the bed's Kubernetes API (kube, KUBECONFIG)
//! and their namespaces, and the real helper in pods that have no AWS variable and no route
//! to instance metadata, asking their node's agent. Every test needs root.

mod common;

use std::time::{Duration, Instant};

use common::agents::{
    FLOATING, FLOATING_GRANT, agent, agent_helper as helper, bed_with_agent, bystander,
    metadata_requests_from, pod_client, without_aws,
};
use common::how_to_bed;
use ipmgr_testbed::{Background, Interface, Node, Pod, PodSpec, finish};

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn init_through_the_agent_needs_no_aws_variable_and_no_metadata() {
    let (mut bed, _agent, node) = bed_with_agent();
    let pod = bed.pod(
        "node1",
        "a",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let eni = bed.eni_id("node1", "eth1");
    let (output, stderr, took) = finish(helper(&bed, &pod, &node, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(
        bed.holds(&eni, "10.0.1.50"),
        "EC2 has the address on eth1 when init exits 0"
    );
    assert!(stderr.contains("routable"), "{stderr}");
    assert_eq!(
        metadata_requests_from(&mut bed, &[&pod]),
        0,
        "the pod never asked instance metadata"
    );
    eprintln!("init through the agent took {took:?}");
    // Again, unchanged: no mutating call.
    bed.reset_calls();
    let (output, stderr, _) = finish(helper(&bed, &pod, &node, &["init"]));
    assert!(output.status.success(), "{stderr}");
    let calls = bed.calls();
    let mutating: Vec<_> = calls
        .as_object()
        .expect("calls")
        .keys()
        .filter(|action| !action.starts_with("Describe"))
        .collect();
    assert!(mutating.is_empty(), "{calls}");
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn an_address_multus_did_not_record_is_refused_naming_the_annotation() {
    let (mut bed, _agent, node) = bed_with_agent();
    let pod = bed.pod(
        "node1",
        "a",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    // Configured after Multus wrote its record, and not declared floating.
    bed.add_address(&pod, "net1", "10.0.1.60/24");
    let eni = bed.eni_id("node1", "eth1");
    let (output, stderr, _) = finish(helper(&bed, &pod, &node, &["init"]));
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("10.0.1.60") && stderr.contains(FLOATING),
        "{stderr}"
    );
    assert!(
        !bed.holds(&eni, "10.0.1.60"),
        "the unclaimed address is not assigned"
    );
    assert!(bed.holds(&eni, "10.0.1.50"), "the recorded one is");
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_connection_from_no_pod_of_the_node_is_forbidden() {
    let (mut bed, _agent, node1) = bed_with_agent();
    // A pod of node2 asks node1's agent.
    let stranger = bed.pod(
        "node2",
        "stranger",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.61/24"])],
    );
    let (output, stderr, took) = finish(helper(&bed, &stranger, &node1, &["init"]));
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("HTTP 403") && stderr.contains(&stranger.ip),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(20),
        "a refusal is final: {took:?}"
    );
    assert!(!bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.61"));
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn sidecars_follow_a_floating_ip_through_their_agents_and_keep_it_on_sigterm() {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    bystander(&mut bed, "node2");
    let (_agent1, node1, _) = agent(&mut bed, "node1");
    let (_agent2, node2, _) = agent(&mut bed, "node2");
    let vip = "10.0.1.100";
    let spec = |node: &str, name: &str, own: &str| {
        PodSpec::new(node, name)
            .interfaces(&[Interface::on_eni("net1", "eth1", &[own])])
            .annotation(FLOATING, vip)
    };
    let a = bed.create_pod(&spec("node1", "a", "10.0.1.51/24"));
    let b = bed.create_pod(&spec("node2", "b", "10.0.1.52/24"));
    let (eni1, eni2) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    let ready = tempfile::tempdir().expect("dir");
    let ready_file = ready.path().join("ready");
    let ready_arg = ready_file.to_str().expect("UTF-8").to_owned();
    let run = |pod: &Pod, node: &Node, extra: &[&str]| {
        let args: Vec<&str> = [
            "sidecar",
            "--recheck-seconds",
            "60",
            "--error-backoff-max-seconds",
            "2",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
        Background(bed.spawn_quiet(&without_aws(pod, node), &pod_client(), &args))
    };
    let mut sidecar_a = run(&a, &node1, &["--ready-file", &ready_arg]);
    let _sidecar_b = run(&b, &node2, &[]);
    let limit = Duration::from_secs(5);
    assert!(bed.wait_until(&eni1, "10.0.1.51", true, limit).is_some());
    assert!(bed.wait_until(&eni2, "10.0.1.52", true, limit).is_some());
    let started = Instant::now();
    while !ready_file.exists() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ready_file.exists(),
        "the ready file after the first routable answer"
    );

    // Failover: the VIP comes up on b (keepalived). Both pods declare it, but no admin
    // granted it to their namespace: refused, until a cluster admin does (no restart).
    bed.add_address(&b, "net1", &format!("{vip}/24"));
    assert!(
        bed.wait_until(&eni2, vip, true, Duration::from_secs(3))
            .is_none(),
        "a floating address outside the namespace's grant is refused"
    );
    bed.annotate_namespace(
        "default",
        serde_json::json!({ FLOATING_GRANT: format!("{vip}/32") }),
        &[],
    );
    assert!(
        bed.wait_until(&eni2, vip, true, limit).is_some(),
        "granted, the VIP follows b to node2"
    );
    // Then failback to a.
    bed.remove_address(&b, "net1", &format!("{vip}/24"));
    bed.add_address(&a, "net1", &format!("{vip}/24"));
    assert!(
        bed.wait_until(&eni1, vip, true, limit).is_some(),
        "and back to node1"
    );

    // SIGTERM: the sidecar gives nothing back; the pod keeps its addresses while it drains.
    assert!(
        sidecar_a.terminate(Duration::from_secs(5)),
        "the sidecar exits on SIGTERM"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(bed.holds(&eni1, "10.0.1.51") && bed.holds(&eni1, vip));
    assert_eq!(metadata_requests_from(&mut bed, &[&a, &b]), 0);
}
