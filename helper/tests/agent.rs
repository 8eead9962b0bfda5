//! The real `ipmgr-helper agent` in a node's host network, reading the node's runtime netns
//! directory, against the stand-in. Every test needs root: pods are network namespaces.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_allowed_by_iam_policies, helper};
use ipmgr_testbed::{Background, Interface, Node, TestBed, Topology, finish};
use serde_json::json;

const GRACE_SECONDS: u64 = 2;

fn agent_command(bed: &TestBed, node: &Node, extra: &[&str]) -> Command {
    let binary = ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"));
    let dir = node.netns_dir.to_str().expect("UTF-8 path").to_owned();
    let grace = GRACE_SECONDS.to_string();
    let mut args = vec![
        "agent",
        "--netns-dir",
        &dir,
        "--release-grace-seconds",
        &grace,
        "--metrics-listen",
        "127.0.0.1:9471",
    ];
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
    let script = format!(
        "import urllib.request, urllib.error\ntry:\n    r = urllib.request.urlopen('http://127.0.0.1:9471{path}', timeout=5)\n    print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n    print(e.code)"
    );
    let output = Command::new("ip")
        .args(["netns", "exec", &node.netns, "python3", "-c", &script])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_ready(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if get(node, "/readyz").starts_with("200") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the agent never became ready");
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
        "given back; {}",
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
fn an_address_leaked_before_the_agent_started_is_reclaimed_but_not_in_a_dry_run() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.60"]}),
    );
    let node = bed.node("node1");
    let (mut dry, log) = agent(&bed, &node, &["--dry-run"]);
    wait_ready(&node);
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 2));
    assert!(bed.holds(&eth1, "10.0.1.60"), "a dry run changes nothing");
    assert!(dry.terminate(Duration::from_secs(5)));
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains("dry run: would give back") && logged.contains("10.0.1.60"),
        "{logged}"
    );

    let (mut agent, _log) = agent(&bed, &node, &[]);
    let reclaimed = bed.wait_until(&eth1, "10.0.1.60", false, Duration::from_secs(10));
    assert!(
        reclaimed.is_some(),
        "leaked before the agent started, reclaimed"
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
    let node = bed.node("node1");
    let (mut agent, _log) = agent(&bed, &node, &[]);
    let reclaimed = bed.wait_until(&eth1, "10.0.1.62", false, Duration::from_secs(15));
    assert!(reclaimed.is_some(), "given back on a later round");
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
fn the_allow_list_bounds_what_the_agent_gives_back() {
    let mut bed = TestBed::start(Topology::File("how-to"));
    let eth1 = bed.eni_id("node1", "eth1");
    bed.control(
        "POST",
        "assign",
        json!({"eni": eth1, "ipv4": ["10.0.1.63", "10.0.1.200"]}),
    );
    let node = bed.node("node1");
    let (mut agent, _log) = agent(&bed, &node, &["--allow-cidr", "10.0.1.0/25"]);
    assert!(
        bed.wait_until(&eth1, "10.0.1.63", false, Duration::from_secs(10))
            .is_some()
    );
    std::thread::sleep(Duration::from_secs(GRACE_SECONDS + 1));
    assert!(bed.holds(&eth1, "10.0.1.200"), "outside the allow-list");
    agent.terminate(Duration::from_secs(5));
}
