//! The pod API against its own node's pods (issue 25): a pod that holds hundreds of
//! connections, idle or with a request head and no body, does not keep another pod from
//! being served, does not grow the agent past its memory limit, and its connections are
//! closed by the documented deadline; descriptors spent do not make the agent spin; a
//! pod's flood of requests costs EC2 next to nothing; a pod whose assign EC2 throttles
//! holds up no other pod. Every test needs root.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::agents::{METRICS, agent_helper, agent_with, bystander, counted, wait_capacity_read};
use common::how_to_bed;
use ipmgr_testbed::process::{cpu_ticks, rss_kib};
use ipmgr_testbed::{Background, Interface, finish, http_get};
use serde_json::{Value, json};

/// The agent's memory limit in the DaemonSet (manifests/agent).
const MEMORY_LIMIT_KIB: u64 = 64 * 1024;

/// A Python program that opens `count` connections to `url`'s host and port, half idle and
/// half with a request head and no body, reports how many were accepted, then waits for
/// the agent to close them and reports how many it closed and when.
fn holder_script(host: &str, count: usize) -> String {
    format!(
        r#"
import socket, time, sys
held = []
for n in range({count}):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("{host}", 9472))
        if n % 2:
            s.sendall(b"POST /v1/routable HTTP/1.1\r\nHost: agent\r\nContent-Length: 100\r\n\r\n")
        held.append(s)
    except OSError:
        s.close()
print("held", len(held), flush=True)
start = time.monotonic()
closed = 0
for s in held:
    s.settimeout(max(0.1, 30 - (time.monotonic() - start)))
    try:
        while s.recv(4096):
            pass
        closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1  # reset: closed with the head unread
print("closed", closed, round(time.monotonic() - start, 2), flush=True)
"#
    )
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_pod_holding_900_connections_neither_starves_its_neighbours_nor_outgrows_the_agent() {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    let (agent, node, log) =
        agent_with(&mut bed, "node1", &[("IPMGR_POD_API_REQUEST_SECONDS", "5")]);
    let before = rss_kib(agent.0.id());
    let hog = bed.pod("node1", "hog", &[]);
    let holder = bed
        .command(
            &hog,
            "python3".as_ref(),
            &["-c", &holder_script(&node.address, 900)],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::thread::sleep(Duration::from_secs(1));
    let during = rss_kib(agent.0.id());

    let neighbour = bed.pod(
        "node1",
        "neighbour",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let started = Instant::now();
    let (output, stderr, _) = finish(agent_helper(&bed, &neighbour, &node, &["init"]));
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{stderr}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(took < Duration::from_secs(10), "init took {took:?}");
    assert!(bed.holds(&bed.eni_id("node1", "eth1"), "10.0.1.50"));

    let output = holder.wait_with_output().expect("the holder ends");
    let report = String::from_utf8_lossy(&output.stdout);
    let closed: Vec<&str> = report
        .lines()
        .find_map(|line| line.strip_prefix("closed "))
        .expect("a report")
        .split(' ')
        .collect();
    let held: usize = report
        .lines()
        .find_map(|line| line.strip_prefix("held "))
        .and_then(|n| n.parse().ok())
        .expect("held");
    let seconds: f64 = closed[1].parse().expect("seconds");
    assert_eq!(closed[0].parse::<usize>().ok(), Some(held), "{report}");
    assert!(seconds < 5.0 + 2.0, "closed by the 5 s deadline: {report}");
    assert!(
        during < MEMORY_LIMIT_KIB,
        "agent RSS {during} KiB (before: {before} KiB)"
    );
    let metrics = http_get(&node, &format!("http://{METRICS}/metrics"));
    assert!(
        metrics.contains(r#"ipmgr_agent_connections_rejected_total{reason="per_source"}"#),
        "{metrics}"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn descriptors_spent_make_the_agent_back_off_not_spin() {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    // Per source as many as the node allows: one pod can spend every descriptor.
    let (agent, node, log) = agent_with(
        &mut bed,
        "node1",
        &[("IPMGR_POD_API_MAX_CONNECTIONS_PER_SOURCE", "512")],
    );
    let pid = agent.0.id().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=128:128"])
        .status()
        .expect("prlimit runs");
    assert!(limited.success());
    let hog = bed.pod("node1", "hog", &[]);
    let holder = Background(
        bed.command(
            &hog,
            "python3".as_ref(),
            &["-c", &holder_script(&node.address, 300)],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 runs"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (before, started) = (cpu_ticks(agent.0.id()), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let share =
        (cpu_ticks(agent.0.id()) - before) as f64 / (started.elapsed().as_secs_f64() * 100.0);
    assert!(
        share < 0.1,
        "the agent used {:.0}% of a core",
        share * 100.0
    );
    assert!(
        counted(
            &node,
            "ipmgr_agent_connections_rejected_total",
            "accept_failed"
        ) > 0.0,
        "the descriptors were spent: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    drop(holder);

    let neighbour = bed.pod(
        "node1",
        "neighbour",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let (output, stderr, _) = finish(agent_helper(&bed, &neighbour, &node, &["init"]));
    assert!(
        output.status.success(),
        "served again once they are back: {stderr}"
    );
}

/// A Python program sending `count` `change` requests to `host`'s pod API, `together` at a
/// time; prints the statuses it got, with their counts.
fn flood_script(host: &str, count: usize, together: usize) -> String {
    format!(
        r#"
import collections, http.client, json
from concurrent.futures import ThreadPoolExecutor
def ask(_):
    c = http.client.HTTPConnection("{host}", 9472, timeout=30)
    try:
        c.request("POST", "/v1/routable", json.dumps({{"reason": "change"}}), {{"Content-Type": "application/json"}})
        return c.getresponse().status
    except OSError as e:
        return str(e)
    finally:
        c.close()
with ThreadPoolExecutor({together}) as pool:
    print(dict(collections.Counter(pool.map(ask, range({count})))), flush=True)
"#
    )
}

fn total(calls: &Value) -> u64 {
    calls
        .as_object()
        .map(|calls| calls.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn two_hundred_changes_from_one_pod_that_changed_nothing_cost_at_most_two_ec2_calls() {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    let (_agent, node, log) = agent_with(&mut bed, "node1", &[]);
    let pod = bed.pod(
        "node1",
        "chatty",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let (output, stderr, _) = finish(agent_helper(&bed, &pod, &node, &["init"]));
    assert!(output.status.success(), "{stderr}");
    wait_capacity_read(&node, &log);
    bed.reset_calls();
    // Four at a time: the connections a source may have open (more are closed unread).
    for together in [4, 1] {
        let output = bed
            .command(
                &pod,
                "python3".as_ref(),
                &["-c", &flood_script(&node.address, 100, together)],
            )
            .output()
            .expect("python3 runs");
        let statuses = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            statuses.trim(),
            "{200: 100}",
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let calls = bed.calls();
    assert!(total(&calls) <= 2, "200 changes cost {calls}");
    assert!(
        counted(
            &node,
            "ipmgr_agent_pod_requests_coalesced_total",
            "unchanged"
        ) >= 100.0
    );
}

/// How long a neighbour's `init` on node1 takes while EC2 meets every assign naming the
/// first pod's address (10.0.1.50) with `fault`, once that pod's first assign went out.
fn neighbour_init_while_the_first_pod_meets(fault: Value) -> Duration {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    let (_agent, node, log) = agent_with(&mut bed, "node1", &[]);
    let first = bed.pod(
        "node1",
        "first",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.50/24"])],
    );
    let neighbour = bed.pod(
        "node1",
        "neighbour",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.51/24"])],
    );
    let mut fault = fault;
    fault["action"] = json!("AssignPrivateIpAddresses");
    fault["addresses"] = json!(["10.0.1.50"]);
    bed.control("POST", "faults", fault);
    let waiting = Background(
        agent_helper(&bed, &first, &node, &["init"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("init starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.calls()["AssignPrivateIpAddresses"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(Instant::now() < deadline, "the first pod never assigned");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (output, stderr, took) = finish(agent_helper(&bed, &neighbour, &node, &["init"]));
    assert!(
        output.status.success(),
        "{stderr}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let eni = bed.eni_id("node1", "eth1");
    assert!(bed.holds(&eni, "10.0.1.51"));
    assert!(
        !bed.holds(&eni, "10.0.1.50"),
        "the first pod is still held up"
    );
    drop(waiting);
    took
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_pod_whose_assign_is_throttled_holds_up_no_other_pod_of_the_node() {
    let took = neighbour_init_while_the_first_pod_meets(
        json!({"code": "RequestLimitExceeded", "status": 503, "seconds": 30}),
    );
    assert!(
        took < Duration::from_secs(1),
        "the neighbour waited {took:?} behind the throttled pod"
    );
}

#[test]
#[ignore = "needs root: pods are network namespaces"]
fn a_pod_whose_assign_ec2_is_slow_to_answer_holds_up_no_other_pod_of_the_node() {
    let took = neighbour_init_while_the_first_pod_meets(json!({"delay_ms": 8000, "count": 1}));
    assert!(
        took < Duration::from_secs(1),
        "the neighbour waited {took:?} behind the slow call"
    );
}
