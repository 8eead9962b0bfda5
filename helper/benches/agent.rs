//! Benchmark of the node agent (root; the release helper and the stand-in of `testenv/`):
//! a node with many pods, each a network namespace in the node's runtime netns directory.
//!
//! `cargo bench -p ipmgr-helper --bench agent`; knobs: `BENCH_PODS` (200), `BENCH_GRACE`
//! (2 seconds), `BENCH_DELETIONS` (10).
//!
//! It reports the CPU of a scan of every pod namespace (scans every second over 10 s),
//! the idle agent's CPU and RSS, the time from deleting a pod to EC2 no longer holding its
//! address, and the EC2 calls while nothing changes and per deletion.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{env_or, helper_binary};
use ipmgr_testbed::process::{cpu_ticks, rss_kib};
use ipmgr_testbed::{Background, Interface, Node, TestBed, Topology};
use serde_json::{Value, json};

/// The agent process: `ip netns exec` runs it in place of itself.
fn agent(bed: &TestBed, node: &Node, resync: &str, grace: &str) -> Background {
    let dir = node.netns_dir.to_str().expect("UTF-8 path").to_owned();
    let args = [
        "agent",
        "--netns-dir",
        &dir,
        "--resync-seconds",
        resync,
        "--release-grace-seconds",
        grace,
        "--metrics-listen",
        "127.0.0.1:9471",
    ];
    Background(
        bed.command(node, &helper_binary(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent starts"),
    )
}

fn total(calls: &Value) -> u64 {
    calls
        .as_object()
        .expect("calls")
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

fn main() {
    let pods: usize = env_or("BENCH_PODS", 200);
    let grace: u64 = env_or("BENCH_GRACE", 2);
    let deletions: usize = env_or("BENCH_DELETIONS", 10);
    let mut bed = TestBed::start(Topology::Inline(json!({
        "vpc_cidr": "10.0.0.0/16",
        "subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus": {"cidr": "10.0.16.0/20"}},
        "nodes": {"node1": {"enis": [{"subnet": "node"}, {"subnet": "multus", "multus": true}]}},
    })));
    bed.control("POST", "config", json!({"eni_ipv4_limit": pods + 10}));
    let eni = bed.eni_id("node1", "eth1");
    let addresses: Vec<String> = (0..pods)
        .map(|index| format!("10.0.{}.{}", 17 + index / 250, 4 + index % 250))
        .collect();
    bed.control("POST", "assign", json!({"eni": eni, "ipv4": addresses}));
    let members: Vec<_> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| {
            bed.pod(
                "node1",
                &format!("p{index}"),
                &[Interface::on_eni(
                    "net1",
                    "eth1",
                    &[&format!("{address}/20")],
                )],
            )
        })
        .collect();
    let node = bed.node("node1");

    // Scans every second: CPU per scan of all the pod namespaces.
    let mut scanning = agent(&bed, &node, "1", &grace.to_string());
    std::thread::sleep(Duration::from_secs(3));
    let pid = scanning.0.id();
    let (ticks_before, window) = (cpu_ticks(pid), Duration::from_secs(10));
    std::thread::sleep(window);
    let scan_ticks = cpu_ticks(pid) - ticks_before;
    let scan_cpu_ms = scan_ticks as f64 * 10.0 / window.as_secs_f64();
    scanning.terminate(Duration::from_secs(5));

    // Idle: no change, scans only on changes (resync far away).
    let mut idle = agent(&bed, &node, "3600", &grace.to_string());
    std::thread::sleep(Duration::from_secs(3));
    let pid = idle.0.id();
    bed.reset_calls();
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(10));
    let idle_ticks = cpu_ticks(pid) - ticks_before;
    let idle_rss = rss_kib(pid);
    let idle_calls = total(&bed.calls());

    // Deletions: each pod's address, from its deletion to EC2 giving it up.
    let mut released = Vec::new();
    let mut round_calls = Vec::new();
    for (pod, address) in members.iter().zip(&addresses).take(deletions) {
        bed.reset_calls();
        let deleted = Instant::now();
        bed.delete_pod(pod);
        bed.wait_until(&eni, address, false, Duration::from_secs(grace + 30))
            .expect("released");
        released.push(deleted.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        round_calls.push(bed.calls());
    }
    idle.terminate(Duration::from_secs(5));

    released.sort_unstable();
    let secs = |duration: Duration| duration.as_secs_f64();
    println!("| measure ({pods} pod namespaces on the node) | result |");
    println!("|---|---|");
    println!(
        "| CPU per scan of every pod namespace (scans every 1 s over 10 s) | {scan_cpu_ms:.1} ms |"
    );
    println!(
        "| idle agent over 10 s (resync 1 h) | {idle_ticks} CPU ticks (1 tick = 10 ms), {:.1} MiB RSS, {idle_calls} EC2 calls |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| deleted pod's address released (grace {grace} s; median / max of {deletions}) | {:.2} s / {:.2} s |",
        secs(released[released.len() / 2]),
        secs(*released.last().expect("deletions"))
    );
    println!(
        "| EC2 calls per deletion (one ENI) | {} |",
        round_calls
            .first()
            .map(Value::to_string)
            .unwrap_or_default()
    );
}
