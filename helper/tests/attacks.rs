//! The agent backend attacked as docs/security.md, "Who is trusted", says a pod author may:
//! write any annotation on their pods, run NET_ADMIN containers, and send anything to the
//! node's ports. Each test is one attack of issue 24 on the emulated cluster (real agents on
//! their nodes' host networks, real helpers in pod namespaces); each failed on the agent
//! before it. Every test needs root.

mod common;

use std::time::{Duration, Instant};

use common::agents::{
    FLOATING, FLOATING_GRANT, METRICS, agent, agent_helper, agent_with, bed_with_agent, bystander,
    counted, start_agent, wait_ready,
};
use common::how_to_bed;
use ipmgr_testbed::{Background, Interface, PodSpec, TestBed, finish, http_get};
use serde_json::json;

/// A tenant's pod that only floats addresses (keepalived-like): net1 on `eth1` with `own`,
/// declaring `floating` in its annotation.
fn floating_pod(node: &str, name: &str, namespace: &str, own: &str, floating: &str) -> PodSpec {
    PodSpec::new(node, name)
        .namespace(namespace)
        .interfaces(&[Interface::on_eni("net1", "eth1", &[own])])
        .annotation(FLOATING, floating)
}

/// Two tenants' namespaces on a bed whose pods cannot reach metadata, and an agent per node.
fn two_tenants() -> (TestBed, [(Background, ipmgr_testbed::Node); 2]) {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    for tenant in ["tenant-a", "tenant-b"] {
        bed.create_namespace(tenant, json!({}), json!({}));
    }
    bystander(&mut bed, "node1");
    bystander(&mut bed, "node2");
    let (agent1, node1, _) = agent(&mut bed, "node1");
    let (agent2, node2, _) = agent(&mut bed, "node2");
    (bed, [(agent1, node1), (agent2, node2)])
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_tenant_cannot_take_a_live_pod_of_another_namespace_off_another_node() {
    let (mut bed, [(_agent1, node1), (_agent2, node2)]) = two_tenants();
    let (eni1, eni2) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    let victim = bed.create_pod(
        &PodSpec::new("node1", "victim")
            .namespace("tenant-b")
            .interfaces(&[Interface::on_eni("net1", "eth1", &["10.0.1.51/24"])]),
    );
    let (output, stderr, _) = finish(agent_helper(&bed, &victim, &node1, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&eni1, "10.0.1.51"));

    // Floating: every address, or exactly the victim's, put on net1 with NET_ADMIN.
    for (name, declared) in [("every", "0.0.0.0/0,::/0"), ("exact", "10.0.1.51")] {
        let thief = bed.create_pod(&floating_pod(
            "node2",
            &format!("thief-{name}"),
            "tenant-a",
            "10.0.1.61/24",
            declared,
        ));
        bed.add_address(&thief, "net1", "10.0.1.51/24");
        let (output, stderr, _) = finish(agent_helper(&bed, &thief, &node2, &["init"]));
        assert!(!output.status.success(), "{declared}: {stderr}");
        assert!(
            stderr.contains("10.0.1.51") && stderr.contains(FLOATING_GRANT),
            "the refusal names the address and the grant an admin sets: {stderr}"
        );
        bed.delete_pod(&thief);
    }
    assert!(counted(&node2, "ipmgr_agent_claims_refused_total", "not_granted") >= 2.0);

    // Static IPAM: Multus recorded the victim's address for a tenant-a pod on node2.
    let recorded = bed.create_pod(
        &PodSpec::new("node2", "thief-recorded")
            .namespace("tenant-a")
            .interfaces(&[Interface::on_eni("net1", "eth1", &["10.0.1.51/24"])]),
    );
    let (output, stderr, _) = finish(agent_helper(&bed, &recorded, &node2, &["init"]));
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("10.0.1.51") && stderr.contains("victim"),
        "the refusal names the pod of the other namespace: {stderr}"
    );
    assert!(
        counted(
            &node2,
            "ipmgr_agent_claims_refused_total",
            "other_namespace"
        ) >= 1.0
    );

    assert!(
        bed.holds(&eni1, "10.0.1.51"),
        "the victim keeps its address"
    );
    assert!(!bed.holds(&eni2, "10.0.1.51"));
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_pod_declaring_every_address_does_not_keep_a_leak_from_being_released() {
    let mut bed = how_to_bed();
    bystander(&mut bed, "node1");
    bed.create_pod(&PodSpec::new("node1", "hoarder").annotation(FLOATING, "0.0.0.0/0,::/0"));
    let eni = bed.eni_id("node1", "eth1");
    bed.control("POST", "assign", json!({"eni": eni, "ipv4": ["10.0.1.70"]}));
    let (_agent, _node, log) = agent(&mut bed, "node1");
    assert!(
        bed.wait_until(&eni, "10.0.1.70", false, Duration::from_secs(20))
            .is_some(),
        "the leak is released: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_neighbour_carrying_the_victims_pod_ip_on_its_eth0_is_not_taken_for_the_victim() {
    let (mut bed, _agent, node) = bed_with_agent();
    let eni = bed.eni_id("node1", "eth1");
    let victim = bed.pod(
        "node1",
        "victim",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.52/24"])],
    );
    // Several, so that the victim is not first in the netns directory's order by luck.
    for n in 0..3 {
        let impostor = bed.create_pod(
            &PodSpec::new("node1", &format!("impostor-{n}")).interfaces(&[Interface::on_eni(
                "net1",
                "eth1",
                &["10.0.1.62/24"],
            )]),
        );
        bed.add_address(&impostor, "eth0", &format!("{}/32", victim.ip));
    }
    let (output, stderr, _) = finish(agent_helper(&bed, &victim, &node, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&eni, "10.0.1.52"));
    assert!(!bed.holds(&eni, "10.0.1.62"), "no impostor's address");
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_reused_pod_ip_is_not_judged_as_the_old_pod_while_both_objects_show_it() {
    let (mut bed, _agent, node) = bed_with_agent();
    let eni = bed.eni_id("node1", "eth1");
    bed.annotate_namespace("default", json!({ FLOATING_GRANT: "10.0.1.100/32" }), &[]);
    let old = bed.create_pod(&floating_pod(
        "node1",
        "old",
        "default",
        "10.0.1.54/24",
        "10.0.1.100",
    ));
    // The old sandbox is gone but its object is not (the watch lags); a new pod got its IP
    // (its name sorts after the old one's: the agent before judged by the first by name).
    bed.delete_pod_keeping_object(&old);
    let new = bed.create_pod(
        &PodSpec::new("node1", "reuser")
            .pod_ip(&old.ip)
            .interfaces(&[Interface::on_eni("net1", "eth1", &["10.0.1.55/24"])]),
    );
    bed.add_address(&new, "net1", "10.0.1.100/24");
    let init = agent_helper(&bed, &new, &node, &["init"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("init starts");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !bed.holds(&eni, "10.0.1.55") && !bed.holds(&eni, "10.0.1.100"),
        "nothing is done while two pods show the IP"
    );
    bed.delete_pod_object(&old);
    let output = init.wait_with_output().expect("init ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        bed.holds(&eni, "10.0.1.55"),
        "the new pod's own address: {stderr}"
    );
    assert!(
        !output.status.success() && !bed.holds(&eni, "10.0.1.100"),
        "the old pod's floating address is not the new pod's: {stderr}"
    );
    assert!(
        counted(
            &node,
            "ipmgr_agent_identity_conflicts_total",
            "duplicate_pod_ip"
        ) >= 1.0
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_stalled_watch_is_noticed_and_a_pod_the_agent_has_not_seen_waits_for_it() {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    let (_agent, node, log) =
        agent_with(&mut bed, "node1", &[("IPMGR_POD_WATCH_STALE_SECONDS", "3")]);
    let eni = bed.eni_id("node1", "eth1");
    let log = || std::fs::read_to_string(&log).unwrap_or_default();
    // Watches deliver nothing; lists are answered: the agent relists.
    bed.stall_watches(Duration::from_secs(60));
    let late = bed.pod(
        "node1",
        "late",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.56/24"])],
    );
    let (output, stderr, _) = finish(agent_helper(&bed, &late, &node, &["init"]));
    assert!(
        output.status.success(),
        "served once the agent relisted: {stderr}\n{}",
        log()
    );
    assert!(bed.holds(&eni, "10.0.1.56"));

    // And lists fail too: not ready, and an unseen pod is told to ask again, not refused.
    bed.kube_unavailable(Duration::from_secs(12));
    let started = Instant::now();
    while !http_get(&node, &format!("http://{METRICS}/readyz")).starts_with("503") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/readyz says 503 once the view is stale: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let later = bed.pod(
        "node1",
        "later",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.59/24"])],
    );
    let (output, stderr, _) = finish(agent_helper(&bed, &later, &node, &["init"]));
    assert!(
        output.status.success(),
        "asked again until the agent saw the pod: {stderr}\n{}",
        log()
    );
    assert!(
        stderr.contains("cannot answer yet"),
        "the agent said it could not answer yet: {stderr}"
    );
    assert!(bed.holds(&eni, "10.0.1.59"));
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn nothing_claimed_is_released_before_the_agent_has_read_the_api_server() {
    let mut bed = how_to_bed();
    bystander(&mut bed, "node1");
    bed.annotate_namespace("default", json!({ FLOATING_GRANT: "10.0.1.100/32" }), &[]);
    // The standby of a VIP pair: the VIP is on its ENI, on no pod's interface right now.
    bed.create_pod(&floating_pod(
        "node1",
        "standby",
        "default",
        "10.0.1.58/24",
        "10.0.1.100",
    ));
    let eni = bed.eni_id("node1", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eni, "ipv4": ["10.0.1.100", "10.0.1.71"]}),
    );
    let outage = Duration::from_secs(8);
    bed.kube_unavailable(outage);
    let (_agent, node, log) = start_agent(&mut bed, "node1", &[]);
    // Longer than the agent's grace (2 s) and its scans: nothing may go meanwhile.
    let started = Instant::now();
    while started.elapsed() < outage {
        assert!(
            bed.holds(&eni, "10.0.1.100") && bed.holds(&eni, "10.0.1.71"),
            "nothing is released before the agent has listed pods and namespaces: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_ready(&node, &log);
    assert!(
        bed.wait_until(&eni, "10.0.1.71", false, Duration::from_secs(20))
            .is_some(),
        "the unclaimed leak is released once the agent has read the cluster"
    );
    assert!(bed.holds(&eni, "10.0.1.100"), "the granted VIP stays");
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn an_ipv6_pod_reaches_its_agent_on_the_nodes_ipv6_address() {
    let (mut bed, _agent, node) = bed_with_agent();
    let eni = bed.eni_id("node1", "eth1");
    let pod = bed.create_pod(
        &PodSpec::new("node1", "six")
            .ipv6()
            .interfaces(&[Interface::on_eni("net1", "eth1", &["10.0.1.57/24"])]),
    );
    assert!(pod.ip.contains(':'), "an IPv6 pod IP: {}", pod.ip);
    let (output, stderr, _) = finish(agent_helper(&bed, &pod, &node, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&eni, "10.0.1.57"));
}
