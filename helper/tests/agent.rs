//! The real `ipmgr-helper agent` in a node's host network, reading the node's runtime netns
//! directory, against the stand-in. Every test needs root: pods are network namespaces.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_allowed_by_iam_policies, helper};
use ipmgr_testbed::churn::ChurnOptions;
use ipmgr_testbed::{Background, Interface, Node, TestBed, Topology, finish};
use serde_json::json;

const GRACE_SECONDS: u64 = 2;

fn agent_command(bed: &TestBed, node: &Node, extra: &[&str]) -> Command {
    let binary = ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"));
    let dir = node.netns_dir.to_str().expect("UTF-8 path").to_owned();
    let grace = GRACE_SECONDS.to_string();
    let mut args = vec![
        "agent",
        "--release-grace-seconds",
        &grace,
        "--metrics-listen",
        "127.0.0.1:9471",
    ];
    if !extra.contains(&"--netns-dir") {
        args.extend(["--netns-dir", &dir]);
    }
    args.extend_from_slice(extra);
    bed.command(node, &binary, &args)
}

/// The agent on `node`, logging to a file the test can read.
fn agent(bed: &TestBed, node: &Node, extra: &[&str]) -> (Background, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("{}-agent.log", node.netns));
    let file = std::fs::File::create(&log).expect("log file");
    let child = agent_command(bed, node, extra)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("agent starts");
    (Background(child), log)
}

/// `GET path` on the agent's metrics endpoint (inside the node's namespace).
fn get(node: &Node, path: &str) -> String {
    ipmgr_testbed::http_get(node, &format!("http://127.0.0.1:9471{path}"))
}

/// A pod on `node` without Multus interfaces: nodes always run some, and an agent that
/// sees no pod namespace at all gives nothing back.
fn bystander(bed: &mut TestBed, node: &str) {
    bed.pod(node, &format!("bystander-{node}"), &[]);
}

/// `name value` of the agent's metrics text, 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Panics unless every metric the sample alerts (manifests/samples/prometheusrule-agent.yaml)
/// name is a family in the agent's `/metrics` text (a labelled family shows once it has a
/// sample).
fn assert_alerts_use_exported_metrics(metrics: &str) {
    let path = ipmgr_testbed::repo_root().join("manifests/samples/prometheusrule-agent.yaml");
    let rules = std::fs::read_to_string(path).expect("the sample alerts");
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ipmgr_agent_"))
        .collect();
    assert!(names.len() >= 3, "{names:?}");
    for name in names {
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the alerts use {name}, which the agent does not export:\n{metrics}"
        );
    }
}

fn wait_ready(node: &Node) {
    if let Err(last) =
        ipmgr_testbed::wait_agent_ready(node, "127.0.0.1:9471", Duration::from_secs(10))
    {
        panic!("the agent never became ready: {last}");
    }
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_deleted_pods_address_goes_back_within_the_grace_and_a_reused_one_stays() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    let gone = bed.pod(
        "node1",
        "gone",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let reused = bed.pod(
        "node1",
        "reused",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.51/24"])],
    );
    for pod in [&gone, &reused] {
        let (output, stderr, _) = finish(helper(&bed, pod, &["init"]));
        assert!(output.status.success(), "{stderr}");
    }
    let node = bed.node("node1");
    // No periodic scan: the netns directory's changes and the end of the grace period are
    // what make the agent look.
    let (mut agent, log) = agent(&bed, &node, &["--resync-seconds", "3600"]);
    wait_ready(&node);
    // Its one start-up read (DescribeInstanceTypes, for the capacity) is not a change.
    if let Err(last) =
        ipmgr_testbed::wait_agent_capacity_read(&node, "127.0.0.1:9471", Duration::from_secs(10))
    {
        panic!("the agent never read its capacity: {last}");
    }
    bed.reset_calls();
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 1));
    assert_eq!(bed.calls(), json!({}), "nothing changes: no call");

    bed.delete_pod(&gone);
    bed.delete_pod(&reused);
    let deleted = Instant::now();
    // The same address comes back with a new pod before the grace ends.
    bed.pod(
        "node1",
        "recreated",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.51/24"])],
    );
    let released = bed.wait_until(&eth1, "10.0.1.50", false, Duration::from_secs(10));
    assert!(
        released.is_some(),
        "released; {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let took = deleted.elapsed();
    assert!(
        took <= Duration::from_secs(GRACE_SECONDS + 2),
        "within grace + 2 s: {took:?}"
    );
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 1));
    assert!(bed.holds(&eth1, "10.0.1.51"), "a live pod carries it again");
    let calls = bed.calls();
    assert_eq!(calls["UnassignPrivateIpAddresses"], 1, "{calls}");
    assert_eq!(calls["DescribeNetworkInterfaces"], 1, "{calls}");
    assert_allowed_by_iam_policies(&calls, &["iam-policy-agent.json"]);
    let metrics = get(&node, "/metrics");
    assert!(
        metrics.contains("ipmgr_agent_addresses_released_total 1"),
        "{metrics}"
    );
    assert!(agent.terminate(Duration::from_secs(5)), "SIGTERM: exit 0");
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_address_leaked_before_the_agent_started_is_released_but_not_in_a_dry_run() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.60"]}),
    );
    bystander(&mut bed, "node1");
    let node = bed.node("node1");
    let (mut dry, log) = agent(&bed, &node, &["--dry-run"]);
    wait_ready(&node);
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 2));
    assert!(bed.holds(&eth1, "10.0.1.60"), "a dry run changes nothing");
    assert!(dry.terminate(Duration::from_secs(5)));
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("dry run: would release") && logged.contains("10.0.1.60"),
        "{logged}"
    );

    let (mut agent, _log) = agent(&bed, &node, &[]);
    let released = bed.wait_until(&eth1, "10.0.1.60", false, Duration::from_secs(10));
    assert!(
        released.is_some(),
        "leaked before the agent started, released"
    );
    agent.terminate(Duration::from_secs(5));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn what_is_not_the_agents_is_never_touched() {
    let mut bed = TestBed::start(Topology::File("eks-node"));
    let eth1 = bed.eni_id("node1", "eth1");
    let live = bed.pod(
        "node1",
        "live",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &live, &["init"]));
    assert!(output.status.success(), "{stderr}");
    // Another node's Multus ENI, and a leaked address the agent should take back (so the
    // test sees the agent at work).
    let other_node = bed.eni_id("node2", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": other_node, "ipv4": ["10.0.1.99"]}),
    );
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.61"]}),
    );
    let before: Vec<_> = ["eth0", "eth1", "eth2", "eth3", "eth4"]
        .iter()
        .map(|name| {
            let id = bed.eni_id("node1", name);
            let held = bed.eni_addresses(&id);
            (id, held)
        })
        .collect();
    let node = bed.node("node1");
    let (mut agent, _log) = agent(&bed, &node, &[]);
    assert!(
        bed.wait_until(&eth1, "10.0.1.61", false, Duration::from_secs(10))
            .is_some()
    );
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 1));
    for (id, (ipv4, ipv6)) in before {
        let (now4, now6) = bed.eni_addresses(&id);
        let expected: Vec<String> = ipv4.into_iter().filter(|a| a != "10.0.1.61").collect();
        assert_eq!(
            now4, expected,
            "{id}: the VPC CNI's pool, primaries, a live pod"
        );
        assert_eq!(now6, ipv6, "{id}");
    }
    assert!(bed.holds(&other_node, "10.0.1.99"), "another node's ENI");
    agent.terminate(Duration::from_secs(5));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn ec2_refusing_an_unassign_is_counted_and_tried_again() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.62"]}),
    );
    bed.control(
        "POST",
        "faults",
        json!({"action": "UnassignPrivateIpAddresses", "code": "UnauthorizedOperation", "status": 403, "count": 1}),
    );
    bystander(&mut bed, "node1");
    let node = bed.node("node1");
    let (mut agent, _log) = agent(&bed, &node, &[]);
    let released = bed.wait_until(&eth1, "10.0.1.62", false, Duration::from_secs(15));
    assert!(released.is_some(), "released on a later round");
    assert_eq!(bed.calls()["UnassignPrivateIpAddresses"], 2);
    let metrics = get(&node, "/metrics");
    assert!(
        metrics.contains("ipmgr_agent_errors_total{action=\"unassign\"} 1"),
        "{metrics}"
    );
    assert!(agent.terminate(Duration::from_secs(5)));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn the_allow_and_keep_lists_bound_what_the_agent_gives_back() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.63", "10.0.1.70", "10.0.1.200"]}),
    );
    bystander(&mut bed, "node1");
    let node = bed.node("node1");
    // 10.0.1.70 stands for a gVisor or DPDK pod's address: no namespace shows it.
    let (mut agent, _log) = agent(
        &bed,
        &node,
        &["--allow-cidr", "10.0.1.0/25", "--keep-cidr", "10.0.1.70/32"],
    );
    assert!(
        bed.wait_until(&eth1, "10.0.1.63", false, Duration::from_secs(10))
            .is_some()
    );
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 1));
    assert!(bed.holds(&eth1, "10.0.1.200"), "outside the allow-list");
    assert!(bed.holds(&eth1, "10.0.1.70"), "inside a kept CIDR");
    agent.terminate(Duration::from_secs(5));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn an_empty_netns_directory_gives_nothing_back_and_says_so() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    for (name, address) in [("a", "10.0.1.50/24"), ("b", "10.0.1.51/24")] {
        let pod = bed.pod(
            "node1",
            name,
            &[Interface::on_eni("net1", "eth1", &[address])],
        );
        let (output, stderr, _) = finish(helper(&bed, &pod, &["init"]));
        assert!(output.status.success(), "{stderr}");
    }
    // What hostPath DirectoryOrCreate makes where the runtime keeps its namespaces
    // elsewhere: an empty directory.
    let empty = tempfile::tempdir().expect("temporary directory");
    let node = bed.node("node1");
    let empty_dir = empty.path().to_str().expect("UTF-8 path");
    let (mut agent, log) = agent(
        &bed,
        &node,
        &["--netns-dir", empty_dir, "--resync-seconds", "1"],
    );
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 8));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    for address in ["10.0.1.50", "10.0.1.51"] {
        assert!(bed.holds(&eth1, address), "{address} stays: {logged}");
    }
    assert!(
        !bed.calls()
            .as_object()
            .expect("calls")
            .contains_key("UnassignPrivateIpAddresses"),
        "no unassign call"
    );
    let ready = get(&node, "/readyz");
    assert!(
        ready.starts_with("503") && ready.contains("no pod network namespace in"),
        "{ready}"
    );
    let metrics = get(&node, "/metrics");
    assert!(
        metric(&metrics, "ipmgr_agent_scans_total{result=\"empty\"}") >= 2.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "ipmgr_agent_ready"), 0.0, "{metrics}");
    assert!(logged.contains("no pod network namespace in"), "{logged}");
    assert!(agent.terminate(Duration::from_secs(5)));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_missing_netns_directory_fails_at_start_naming_it() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let node = bed.node("node1");
    let (output, stderr, took) = finish(agent_command(
        &bed,
        &node,
        &["--netns-dir", "/run/ipmgr-no-such-netns-dir"],
    ));
    assert!(!output.status.success());
    assert!(took < Duration::from_secs(5), "at once: {took:?}");
    let reason = common::reason(&stderr);
    for part in [
        "/run/ipmgr-no-such-netns-dir does not exist",
        "findmnt -t nsfs",
        "IPMGR_NETNS_DIR",
    ] {
        assert!(reason.contains(part), "{part}: {reason}");
    }
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_throttled_release_retried_after_a_new_pod_took_the_address_leaves_it() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bystander(&mut bed, "node1");
    let old = bed.pod(
        "node1",
        "old",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &old, &["init"]));
    assert!(output.status.success(), "{stderr}");
    let node = bed.node("node1");
    // The retry of a throttled call comes 3 to 4 s later.
    let (mut agent, log) = agent(
        &bed,
        &node,
        &[
            "--ec2-throttle-backoff-min-ms",
            "3000",
            "--ec2-backoff-max-seconds",
            "4",
        ],
    );
    wait_ready(&node);
    bed.control(
        "POST",
        "faults",
        json!({"action": "UnassignPrivateIpAddresses", "code": "RequestLimitExceeded", "status": 503, "count": 1}),
    );
    bed.reset_calls();
    bed.delete_pod(&old);
    let deadline = Instant::now() + Duration::from_secs(GRACE_SECONDS + 10);
    while bed.calls()["UnassignPrivateIpAddresses"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the agent never tried to release"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // IPAM hands the address to a new pod on the node; its init finds it in place.
    let new = bed.pod(
        "node1",
        "new",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let (output, stderr, _) = finish(helper(&bed, &new, &["init"]));
    assert!(output.status.success(), "{stderr}");
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 6));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        bed.holds(&eth1, "10.0.1.50"),
        "the new pod's address stays on its ENI: {logged}"
    );
    assert_eq!(
        bed.calls()["UnassignPrivateIpAddresses"],
        1,
        "no second attempt"
    );
    assert!(agent.terminate(Duration::from_secs(5)));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn a_minute_of_describe_failures_does_not_end_the_agent() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bystander(&mut bed, "node1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.64"]}),
    );
    bed.control(
        "POST",
        "faults",
        json!({"action": "DescribeNetworkInterfaces", "code": "UnauthorizedOperation", "status": 403, "seconds": 60}),
    );
    let failing_since = Instant::now();
    let node = bed.node("node1");
    let (mut agent, log) = agent(&bed, &node, &[]);
    std::thread::sleep(Duration::from_secs(50));
    assert!(
        agent.0.try_wait().expect("status").is_none(),
        "still running: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(bed.holds(&eth1, "10.0.1.64"), "nothing released blind");
    let ready = get(&node, "/readyz");
    assert!(
        ready.starts_with("503") && ready.contains("cannot read the node's ENIs from EC2"),
        "{ready}"
    );
    let released = bed.wait_until(&eth1, "10.0.1.64", false, Duration::from_secs(40));
    assert!(
        released.is_some(),
        "released once EC2 answers: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(failing_since.elapsed() >= Duration::from_secs(60));
    assert!(get(&node, "/readyz").starts_with("200"));
    // Every family the sample alerts use has samples by now (errors among them).
    assert_alerts_use_exported_metrics(&get(&node, "/metrics"));
    assert!(agent.terminate(Duration::from_secs(5)));
}

#[test]
#[ignore = "needs root: pods are network namespaces (scripts/test runs it)"]
fn churn_under_throttling_lag_and_restarts_never_takes_a_live_pods_address() {
    // The short version of the churn benchmark (helper/benches/churn.rs).
    let report = ipmgr_testbed::churn::run(&ChurnOptions {
        helper: ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper")),
        duration: Duration::from_secs(45),
        restart_every: Duration::from_secs(15),
        throttle_every: Duration::from_secs(10),
        ..ChurnOptions::default()
    });
    assert!(report.violations.is_empty(), "{report:#?}");
    assert!(
        report.routable >= 10
            && report.reused >= 3
            && report.releases >= 3
            && report.restarts >= 2
            && report.throttle_windows >= 3
            && report.throttled["DescribeNetworkInterfaces"].as_u64() > Some(0),
        "the churn exercised too little: {report:#?}"
    );
}
