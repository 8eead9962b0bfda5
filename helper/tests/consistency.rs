//! The real `ipmgr-helper` where EC2 is the truth and the account has limits: metadata that
//! lags EC2, addresses moving while the helper works, token buckets and persistent errors
//! (testenv's lag, bucket and fault knobs). Every test needs root: pods are network
//! namespaces.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{helper, how_to_bed, log_lines, move_address, sidecar, sidecar_pair};
use ipmgr_testbed::{Background, Interface, finish};
use serde_json::json;

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn init_exits_0_once_ec2_accepted_even_when_metadata_lags_past_the_confirm_window() {
    let mut bed = how_to_bed();
    bed.control("POST", "config", json!({"imds_delay_ms": 3000}));
    let pod = bed.pod(
        "node1",
        "lagging",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let (output, stderr, elapsed) = finish(helper(&bed, &pod, &["init", "--confirm-seconds", "1"]));
    assert!(output.status.success(), "{stderr}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.50"));
    assert!(
        stderr.contains("EC2 accepted the assignment, but instance metadata does not show it yet"),
        "{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "waited about the confirm window: {elapsed:?}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn init_assigns_an_address_lagging_metadata_still_lists_here_but_ec2_moved_away() {
    let mut bed = how_to_bed();
    bed.control("POST", "config", json!({"imds_delay_ms": 5000}));
    let (here, there) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    let address = "10.0.1.57";
    bed.control("POST", "assign", json!({"eni": here, "ipv4": [address]}));
    std::thread::sleep(Duration::from_millis(5500)); // node1's metadata lists it by now
    // Another node takes it in EC2; for 5 s node1's metadata still lists it on eth1.
    bed.control("POST", "assign", json!({"eni": there, "ipv4": [address]}));
    let moved = Instant::now();
    let pod = bed.pod(
        "node1",
        "lagging",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.57/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init", "--confirm-seconds", "1"]));
    assert!(
        moved.elapsed() < Duration::from_secs(5),
        "init ran inside the metadata lag: {:?}",
        moved.elapsed()
    );
    assert!(output.status.success(), "{stderr}");
    assert!(
        bed.holds(&here, address),
        "assigned before exit 0: {stderr}"
    );
    assert!(!bed.holds(&there, address));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn failback_inside_the_metadata_lag_is_reassigned_in_under_a_second() {
    let mut bed = how_to_bed();
    bed.control("POST", "config", json!({"imds_delay_ms": 3000}));
    let pair = sidecar_pair(&mut bed);
    let vip = "10.0.1.100";
    assert!(move_address(&mut bed, None, &pair.a, vip, &pair.eni_a).is_some());
    std::thread::sleep(Duration::from_secs(4)); // A's metadata shows the VIP by now
    let failover = move_address(&mut bed, Some(&pair.a), &pair.b, vip, &pair.eni_b);
    assert!(failover.is_some(), "failover");
    // Within the lag, A's metadata still says A holds the VIP.
    let failback = move_address(&mut bed, Some(&pair.b), &pair.a, vip, &pair.eni_a);
    assert!(
        failback.is_some_and(|took| took < Duration::from_secs(1)),
        "failback took {failback:?}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn release_gives_back_what_is_still_ours_and_leaves_a_moved_address_with_its_holder() {
    let mut bed = how_to_bed();
    bed.control("POST", "config", json!({"imds_delay_ms": 3000}));
    let pod = bed.pod(
        "node1",
        "leaving",
        &[Interface::on_eni(
            "net1",
            "eth1",
            &["10.0.1.53/24", "10.0.1.54/24"],
        )],
    );
    let (here, there) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    let mut sidecar = Background(
        helper(&bed, &pod, &["sidecar", "--recheck-seconds", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sidecar starts"),
    );
    assert!(
        bed.wait_until(&here, "10.0.1.54", true, Duration::from_secs(5))
            .is_some()
    );
    // Another node's helper takes 10.0.1.54; this node's metadata still shows it here.
    bed.control(
        "POST",
        "assign",
        json!({"eni": there, "ipv4": ["10.0.1.54"]}),
    );
    assert!(
        sidecar.terminate(Duration::from_secs(10)),
        "exit 0 after the release"
    );
    assert!(!bed.holds(&here, "10.0.1.53"), "released");
    assert!(bed.holds(&there, "10.0.1.54"), "stays with its new holder");
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_refused_release_batch_goes_address_by_address() {
    let mut bed = how_to_bed();
    let pod = bed.pod(
        "node1",
        "batch",
        &[Interface::on_eni(
            "net1",
            "eth1",
            &["10.0.1.55/24", "10.0.1.56/24"],
        )],
    );
    let here = bed.eni_id("node1", "eth1");
    let mut sidecar = sidecar(&bed, &pod, &[]);
    assert!(
        bed.wait_until(&here, "10.0.1.56", true, Duration::from_secs(5))
            .is_some()
    );
    // As EC2 answers when an address of the batch left the ENI between lookup and call.
    bed.control(
        "POST",
        "faults",
        json!({"action": "UnassignPrivateIpAddresses", "code": "InvalidParameterValue", "count": 1,
               "message": format!("Some of the specified addresses are not assigned to interface {here}")}),
    );
    bed.reset_calls();
    assert!(sidecar.terminate(Duration::from_secs(10)));
    assert!(!bed.holds(&here, "10.0.1.55"));
    assert!(!bed.holds(&here, "10.0.1.56"));
    assert_eq!(
        bed.calls()["UnassignPrivateIpAddresses"],
        3,
        "the batch, then each address"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_long_throttle_is_waited_out_with_the_attempts_logged() {
    let mut bed = how_to_bed();
    bed.control(
        "POST",
        "faults",
        json!({"action": "AssignPrivateIpAddresses", "code": "RequestLimitExceeded", "status": 503, "count": 12}),
    );
    let pod = bed
        .pod(
            "node1",
            "patient",
            &[Interface::on_eni("net1", "eth1", &["10.0.1.57/24"])],
        )
        .with_env("IPMGR_EC2_THROTTLE_BACKOFF_MIN_MS", "20")
        .with_env("IPMGR_EC2_BACKOFF_MAX_SECONDS", "1");
    let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(bed.calls()["AssignPrivateIpAddresses"], 13);
    let attempts: Vec<u64> = log_lines(&stderr)
        .iter()
        .filter(|line| line["message"] == "EC2 call failed, retrying")
        .filter_map(|line| line["attempt"].as_u64())
        .collect();
    assert_eq!(attempts, (1..=12).collect::<Vec<_>>());
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn several_pods_against_a_small_bucket_all_get_through() {
    let mut bed = how_to_bed();
    bed.control(
        "POST",
        "config",
        json!({"buckets": {"AssignPrivateIpAddresses": [1, 1]}}),
    );
    // 10 pods need 9 s of refills: longer than any fixed count of quick retries lasts.
    let pods: Vec<_> = (0..10)
        .map(|index| {
            bed.pod(
                if index % 2 == 0 { "node1" } else { "node2" },
                &format!("crowd{index}"),
                &[Interface::on_eni(
                    "net1",
                    "eth1",
                    &[&format!("10.0.1.{}/24", 60 + index)],
                )],
            )
        })
        .collect();
    let children: Vec<_> = pods
        .iter()
        .map(|pod| {
            // A lower ceiling than the default 24 s keeps the test short.
            let pod = pod.with_env("IPMGR_EC2_BACKOFF_MAX_SECONDS", "4");
            helper(&bed, &pod, &["init"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("init starts")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("init ends").success());
    }
    assert!(
        bed.control("GET", "throttled", serde_json::Value::Null)["AssignPrivateIpAddresses"]
            .as_u64()
            .is_some_and(|throttled| throttled > 0)
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_sidecar_backs_off_a_persistent_error_and_recovers_when_it_clears() {
    let mut bed = how_to_bed();
    bed.control(
        "POST",
        "faults",
        json!({"action": "AssignPrivateIpAddresses", "code": "UnauthorizedOperation", "status": 403, "count": 2,
               "message": "You are not authorized to perform this operation."}),
    );
    let pod = bed.pod(
        "node1",
        "denied",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.70/24"])],
    );
    let ready = std::env::temp_dir().join(format!("{}-ready", pod.netns));
    let _ = std::fs::remove_file(&ready);
    let ready_arg = ready.to_str().expect("UTF-8 path").to_owned();
    let started = Instant::now();
    let mut sidecar = sidecar(&bed, &pod, &["--ready-file", &ready_arg]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        bed.calls()["AssignPrivateIpAddresses"],
        1,
        "the first pass failed; the next waits 2 s"
    );
    assert!(matches!(sidecar.0.try_wait(), Ok(None)), "still running");
    let here = bed.eni_id("node1", "eth1");
    let healed = bed.wait_until(&here, "10.0.1.70", true, Duration::from_secs(10));
    assert!(healed.is_some(), "assigned once the error cleared");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5),
        "passes at 0, 2 and 6 s: {elapsed:?}"
    );
    assert_eq!(bed.calls()["AssignPrivateIpAddresses"], 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ready.exists(), "ready after the first clean pass");
    sidecar.terminate(Duration::from_secs(10));
    let _ = std::fs::remove_file(&ready);
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn metadata_briefly_unreachable_is_waited_out() {
    let mut bed = how_to_bed();
    let pod = bed.pod(
        "node1",
        "early",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.71/24"])],
    );
    bed.control("POST", "config", json!({"imds_down_ms": 4000}));
    let (output, stderr, elapsed) = finish(helper(&bed, &pod, &["init"]));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("instance metadata unreachable, retrying"),
        "{stderr}"
    );
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.71"));
}
