//! The pod API against its own node's pods (issue 25): a pod that holds hundreds of
//! connections, idle or with a request head and no body, does not keep another pod from
//! being served, does not grow the agent past its memory limit, and its connections are
//! closed by the documented deadline. Every test needs root.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::agents::{METRICS, agent_helper, agent_with, bystander};
use common::how_to_bed;
use ipmgr_testbed::{Interface, finish, http_get};

/// The agent's memory limit in the DaemonSet (manifests/agent).
const MEMORY_LIMIT_KIB: u64 = 64 * 1024;

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

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
