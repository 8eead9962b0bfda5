//! Fleet benchmark: a node failure reschedules many Multus pods at once. N pods on M
//! emulated nodes, each pod a network namespace with its own `ipmgr-helper init`, all
//! started together against the account's token buckets scaled down (root; the release
//! helper and the stand-in of `testenv/`).
//!
//! `cargo bench -p ipmgr-helper --bench fleet`; knobs: `BENCH_PODS` (50), `BENCH_NODES`
//! (pods / 10), `BENCH_BUCKET` (`10,2`: the Assign bucket's size and refill per second;
//! Describe gets the same size and 4x the refill, as AWS's 100/5 and 100/20), and the
//! helper's own settings through `IPMGR_*` variables.
//!
//! It prints one table row: pods that exited 0, the time to the last success against the
//! floor (N - burst) / refill, throttled calls per successful call (all actions, then Assign
//! alone), and EC2 calls per pod.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{env_or, helper_binary};
use ipmgr_testbed::{Interface, TestBed, Topology};
use serde_json::{Value, json};

/// M nodes, each with its primary ENI and one Multus ENI in a /20 Multus subnet.
fn topology(nodes: usize) -> Value {
    let node = json!({"enis": [{"subnet": "node"}, {"subnet": "multus", "multus": true}]});
    json!({
        "vpc_cidr": "10.0.0.0/16",
        "subnets": {"node": {"cidr": "10.0.0.0/22"}, "multus": {"cidr": "10.0.16.0/20"}},
        "nodes": (1..=nodes).map(|index| (format!("node{index}"), node.clone())).collect::<serde_json::Map<_, _>>(),
    })
}

fn count(calls: &Value, action: Option<&str>) -> u64 {
    let map = calls.as_object().expect("counts");
    match action {
        Some(action) => map.get(action).and_then(Value::as_u64).unwrap_or(0),
        None => map.values().filter_map(Value::as_u64).sum(),
    }
}

fn main() {
    let pods: usize = env_or("BENCH_PODS", 50);
    let nodes: usize = env_or("BENCH_NODES", (pods / 10).max(1));
    let bucket: String = env_or("BENCH_BUCKET", "10,2".to_owned());
    let (burst, refill) = bucket
        .split_once(',')
        .and_then(|(size, rate)| Some((size.parse::<f64>().ok()?, rate.parse::<f64>().ok()?)))
        .expect("BENCH_BUCKET is size,refill");

    let mut bed = TestBed::start(Topology::Inline(topology(nodes)));
    bed.control(
        "POST",
        "config",
        json!({
            "eni_ipv4_limit": pods + 10,
            "buckets": {
                "AssignPrivateIpAddresses": [burst, refill],
                "describe": [burst, refill * 4.0],
                "mutating": [burst / 2.0, refill],
            },
        }),
    );
    let members: Vec<_> = (0..pods)
        .map(|index| {
            // From 10.0.17.4: clear of the ENIs' primary addresses (10.0.16.10 up).
            let address = format!("10.0.{}.{}/20", 17 + index / 250, 4 + index % 250);
            bed.pod(
                &format!("node{}", index % nodes + 1),
                &format!("p{index}"),
                &[Interface::on_eni("net1", "eth1", &[&address])],
            )
        })
        .collect();
    bed.reset_calls();

    let binary = helper_binary();
    let started = Instant::now();
    let mut running: Vec<_> = members
        .iter()
        .map(|pod| {
            bed.command(pod, &binary, &["init"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("init starts")
        })
        .collect();
    let mut succeeded = 0;
    let mut last_success = Duration::ZERO;
    while !running.is_empty() {
        running.retain_mut(|child| match child.try_wait().expect("wait") {
            Some(status) => {
                if status.success() {
                    succeeded += 1;
                    last_success = started.elapsed();
                }
                false
            }
            None => true,
        });
        std::thread::sleep(Duration::from_millis(20));
    }

    let calls = bed.calls();
    let throttled = bed.control("GET", "throttled", Value::Null);
    let (all, all_throttled) = (count(&calls, None), count(&throttled, None));
    let assign = count(&calls, Some("AssignPrivateIpAddresses"));
    let assign_throttled = count(&throttled, Some("AssignPrivateIpAddresses"));
    let floor = (pods as f64 - burst).max(0.0) / refill;
    let ratio = |throttled: u64, total: u64| throttled as f64 / (total - throttled).max(1) as f64;
    eprintln!("EC2 calls {calls}, of which throttled {throttled}");
    println!(
        "| pods | nodes | Assign bucket | exited 0 | last success | floor | last / floor | throttled per success (Assign alone) | EC2 calls per pod |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {pods} | {nodes} | {burst} + {refill}/s | {succeeded}/{pods} | {:.1} s | {floor:.1} s | {:.2} | {:.2} ({:.2}) | {:.2} |",
        last_success.as_secs_f64(),
        last_success.as_secs_f64() / floor.max(f64::EPSILON),
        ratio(all_throttled, all),
        ratio(assign_throttled, assign),
        all as f64 / pods as f64,
    );
}
