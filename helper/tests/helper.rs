//! The real `ipmgr-helper` binary in emulated pods against the AWS stand-in (testenv/).
//! Every test needs root: pods are network namespaces.

mod common;

use std::time::Duration;

use common::{
    HELPER_POLICIES, assert_allowed_by_iam_policies, dual_stack_init_twice, failure_kinds, helper,
    how_to_bed, log_lines, move_address, reason, sidecar, sidecar_pair,
};
use ipmgr_testbed::{Interface, finish};
use serde_json::json;

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn two_enis_in_one_subnet_the_mac_decides_and_a_second_run_costs_nothing() {
    dual_stack_init_twice(|bed, pod| helper(bed, pod, &["init"]));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_ipv4_held_by_another_node_moves() {
    let mut bed = how_to_bed();
    let elsewhere = bed.eni_id("node2", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": elsewhere, "ipv4": ["10.0.1.60"]}),
    );
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.60/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.60"));
    assert!(!bed.holds(&elsewhere, "10.0.1.60"));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_ipv6_held_by_another_node_is_unassigned_there_then_assigned_here() {
    let mut bed = how_to_bed();
    let v6 = format!("{}61", bed.ipv6_prefix("multus1"));
    let elsewhere = bed.eni_id("node2", "eth1");
    bed.control("POST", "assign", json!({"eni": elsewhere, "ipv6": [v6]}));
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &[&format!("{v6}/64")])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), &v6));
    assert!(!bed.holds(&elsewhere, &v6));
    let calls = bed.calls();
    assert_eq!(calls["UnassignIpv6Addresses"], 1);
    assert_allowed_by_iam_policies(&calls, &HELPER_POLICIES);
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_ipv6_move_whose_assign_fails_leaves_the_address_on_its_previous_eni() {
    let mut bed = how_to_bed();
    let v6 = format!("{}62", bed.ipv6_prefix("multus1"));
    let (here, elsewhere) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    bed.control("POST", "assign", json!({"eni": elsewhere, "ipv6": [v6]}));
    bed.control(
        "POST",
        "faults",
        json!({"action": "AssignIpv6Addresses", "code": "InvalidParameterValue", "count": 1,
               "message": format!("the address limit of {here} is reached")}),
    );
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &[&format!("{v6}/64")])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(!output.status.success(), "the move failed: {stderr}");
    assert!(reason(&stderr).contains(&v6), "{stderr}");
    assert!(bed.holds(&elsewhere, &v6), "back where it was: {stderr}");
    assert!(!bed.holds(&here, &v6));
    assert!(
        stderr.contains("back on their previous ENI"),
        "says so: {stderr}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn throttled_twice_then_success() {
    let mut bed = how_to_bed();
    bed.control(
        "POST",
        "faults",
        json!({"action": "AssignPrivateIpAddresses", "code": "RequestLimitExceeded", "status": 503, "count": 2}),
    );
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.70/24"])],
    );
    let quick = pod.with_env("IPMGR_EC2_THROTTLE_BACKOFF_MIN_MS", "50");
    let (output, stderr, _) = finish(helper(&bed, &quick, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(bed.calls()["AssignPrivateIpAddresses"], 3);
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.70"));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_permanent_ec2_error_fails_at_once_naming_address_eni_and_code() {
    let mut bed = how_to_bed();
    bed.control(
        "POST",
        "faults",
        json!({"action": "AssignPrivateIpAddresses", "code": "UnauthorizedOperation", "status": 403, "count": 100,
               "message": "You are not authorized to perform this operation."}),
    );
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.71/24"])],
    );
    let (output, stderr, elapsed) = finish(helper(&bed, &pod, &["init"]));
    assert!(!output.status.success());
    let line = reason(&stderr);
    let eni = bed.eni_id("node1", "eth1");
    for part in [
        "10.0.1.71",
        eni.as_str(),
        "UnauthorizedOperation",
        "AssignPrivateIpAddresses",
        "manifests/samples/iam-policy.json",
    ] {
        assert!(line.contains(part), "{part} missing from {line:?}");
    }
    assert_eq!(failure_kinds(&stderr), ["ec2"]);
    assert_eq!(bed.calls()["AssignPrivateIpAddresses"], 1, "not retried");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn unreachable_metadata_fails_in_bounded_time() {
    let mut bed = how_to_bed();
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.72/24"])],
    );
    // The bed's gateway, on a port where nothing listens.
    let unreachable = pod
        .with_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://198.18.0.1:9")
        .with_env("IPMGR_METADATA_RETRY_SECONDS", "3");
    let (output, stderr, elapsed) = finish(helper(&bed, &unreachable, &["init"]));
    assert!(!output.status.success());
    let line = reason(&stderr);
    assert!(line.contains("instance metadata"), "{stderr}");
    assert!(line.contains("HttpPutResponseHopLimit 2"), "{line}");
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(10)).contains(&elapsed),
        "retried for the budget, then gave up: {elapsed:?}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_interface_that_never_appears_fails_after_the_wait() {
    let mut bed = how_to_bed();
    let pod = bed.pod("node1", "pod", &[]);
    let (output, stderr, elapsed) = finish(helper(&bed, &pod, &["init", "--wait-seconds", "1"]));
    assert!(!output.status.success());
    assert!(
        reason(&stderr).contains("no address on the pod's interfaces besides eth0"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(bed.calls(), json!({}));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_per_eni_limit_is_reported() {
    let mut bed = how_to_bed();
    bed.control("POST", "config", json!({"eni_ipv4_limit": 2}));
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni(
            "net1",
            "eth1",
            &["10.0.1.80/24", "10.0.1.81/24"],
        )],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(!output.status.success());
    let line = reason(&stderr);
    assert!(line.contains("PrivateIpAddressLimitExceeded"), "{stderr}");
    assert!(line.contains("node agent"), "says what to do: {line}");
    assert_eq!(failure_kinds(&stderr), ["ec2"]);
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn every_log_line_carries_the_pod_node_and_mode_the_webhook_injected() {
    let mut bed = how_to_bed();
    let pod = bed
        .pod(
            "node1",
            "web-1",
            &[Interface::on_eni("net1", "eth1", &["10.0.1.73/24"])],
        )
        .with_env("NODE_NAME", "ip-10-0-0-10.us-east-2.compute.internal")
        .with_env("POD_NAME", "web-1")
        .with_env("POD_NAMESPACE", "multus")
        .with_env("IPMGR_MODE", "init");
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    let lines = log_lines(&stderr);
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        assert_eq!(line["span"]["pod"], "multus/web-1", "{line}");
        assert_eq!(
            line["span"]["node"], "ip-10-0-0-10.us-east-2.compute.internal",
            "{line}"
        );
        assert_eq!(line["span"]["mode"], "init", "{line}");
    }
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn sidecars_follow_a_floating_ip_over_and_back_and_release_on_sigterm() {
    let mut bed = how_to_bed();
    let mut pair = sidecar_pair(&mut bed);
    let (eni_a, eni_b) = (pair.eni_a.clone(), pair.eni_b.clone());
    let vip = "10.0.1.100";
    let appeared = move_address(&mut bed, None, &pair.a, vip, &eni_a).expect("assigned to A");
    let failover = move_address(&mut bed, Some(&pair.a), &pair.b, vip, &eni_b).expect("moved to B");
    assert!(!bed.holds(&eni_a, vip));
    let failback =
        move_address(&mut bed, Some(&pair.b), &pair.a, vip, &eni_a).expect("moved back to A");
    for (what, took) in [
        ("new address", appeared),
        ("failover", failover),
        ("failback", failback),
    ] {
        assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    }

    assert!(
        pair.sidecar_a.terminate(Duration::from_secs(10)),
        "exit 0 after the release"
    );
    pair.sidecar_b.terminate(Duration::from_secs(10));
    assert!(!bed.holds(&eni_a, "10.0.1.51"), "released on SIGTERM");
    assert_allowed_by_iam_policies(&bed.calls(), &HELPER_POLICIES);
    assert!(!bed.holds(&eni_a, vip), "the VIP A holds is released too");
    assert!(!bed.holds(&eni_b, "10.0.1.52"));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_sidecar_signals_readiness_and_heals_an_address_another_node_took() {
    let mut bed = how_to_bed();
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.53/24"])],
    );
    let ready = std::env::temp_dir().join(format!("{}-ready", pod.netns));
    let _ = std::fs::remove_file(&ready);
    let ready_arg = ready.to_str().expect("UTF-8 path").to_owned();
    let mut sidecar = sidecar(
        &bed,
        &pod,
        &["--recheck-seconds", "1", "--ready-file", &ready_arg],
    );
    let (here, there) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    assert!(
        bed.wait_until(&here, "10.0.1.53", true, Duration::from_secs(5))
            .is_some()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ready.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ready.exists(), "ready file written after the first pass");

    bed.control(
        "POST",
        "assign",
        json!({"eni": there, "ipv4": ["10.0.1.53"]}),
    );
    assert!(!bed.holds(&here, "10.0.1.53"));
    let healed = bed.wait_until(&here, "10.0.1.53", true, Duration::from_secs(5));
    assert!(
        healed.is_some(),
        "the periodic re-check takes the address back"
    );
    assert!(!bed.holds(&there, "10.0.1.53"));

    sidecar.terminate(Duration::from_secs(10));
    let _ = std::fs::remove_file(&ready);
}
