//! Fleet benchmark: a node failure reschedules many Multus pods at once. N pods on M
//! emulated nodes, each pod a network namespace with its own `ipmgr-helper init`, all
//! started together against the account's token buckets scaled down (root; the release
//! helper and the stand-in of `testenv/`). Each backend on a fresh bed: `agent` (a node
//! agent per node, started and ready before the pods; the inits have no AWS variable and
//! ask their node's agent) and `direct` (every init calls metadata and EC2 itself).
//!
//! `cargo bench -p ipmgr-helper --bench fleet`; knobs: `BENCH_PODS` (50), `BENCH_NODES`
//! (pods / 10), `BENCH_BUCKET` (`10,2`: the Assign bucket's size and refill per second;
//! Describe gets the same size and 4x the refill, as AWS's 100/5 and 100/20),
//! `BENCH_BACKEND` (`agent`, `direct` or `both`, the default), `BENCH_WINDOW_MS` (the
//! agents' `--batch-window-ms`, 20), and the helper's own settings
//! through `IPMGR_*` variables.
//!
//! It prints a table row per backend: pods that exited 0, the time from the first start to
//! the last success against the floor ((Assign calls that went through - burst) / refill),
//! Assign calls in all
//! and at most on one node, throttled calls (Assign alone), Describes, EC2 calls per pod.

mod common;

use std::collections::BTreeMap;
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

/// Who calls EC2 for the pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Agent,
    Direct,
}

/// The fleet's shape and the account's bucket.
struct Fleet {
    pods: usize,
    nodes: usize,
    burst: f64,
    refill: f64,
}

fn main() {
    let pods: usize = env_or("BENCH_PODS", 50);
    let bucket: String = env_or("BENCH_BUCKET", "10,2".to_owned());
    let (burst, refill) = bucket
        .split_once(',')
        .and_then(|(size, rate)| Some((size.parse::<f64>().ok()?, rate.parse::<f64>().ok()?)))
        .expect("BENCH_BUCKET is size,refill");
    let fleet = Fleet {
        pods,
        nodes: env_or("BENCH_NODES", (pods / 10).max(1)),
        burst,
        refill,
    };
    let backends = match env_or("BENCH_BACKEND", "both".to_owned()).as_str() {
        "agent" => vec![Backend::Agent],
        "direct" => vec![Backend::Direct],
        _ => vec![Backend::Agent, Backend::Direct],
    };
    println!(
        "| backend | pods | nodes | Assign bucket | exited 0 | last success | floor | Assign calls (most on a node) | throttled (Assign) | Describes | EC2 calls per pod |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in backends {
        println!("{}", run(&fleet, backend));
    }
}

/// One backend on a fresh bed: its table row.
fn run(fleet: &Fleet, backend: Backend) -> String {
    let Fleet {
        pods,
        nodes,
        burst,
        refill,
    } = *fleet;
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
    let binary = helper_binary();
    let mut agents = Vec::new();
    let mut agent_urls = BTreeMap::new();
    if backend == Backend::Agent {
        bed.pods_reach_metadata(false);
        for index in 1..=nodes {
            let node = bed.node(&format!("node{index}"));
            let window = env_or("BENCH_WINDOW_MS", 20u64).to_string();
            agents.push(bed.start_agent(&node, &binary, &["--batch-window-ms", &window]));
            agent_urls.insert(node.name.clone(), format!("http://{}:9472", node.address));
        }
    }
    let members: Vec<_> = (0..pods)
        .map(|index| {
            // From 10.0.17.4: clear of the ENIs' primary addresses (10.0.16.10 up).
            let address = format!("10.0.{}.{}/20", 17 + index / 250, 4 + index % 250);
            let node = format!("node{}", index % nodes + 1);
            let mut pod = bed.pod(
                &node,
                &format!("p{index}"),
                &[Interface::on_eni("net1", "eth1", &[&address])],
            );
            if let Some(url) = agent_urls.get(&node) {
                pod.env = vec![("IPMGR_AGENT_URL".to_owned(), url.clone())];
            }
            pod
        })
        .collect();
    bed.reset_calls();

    let started = Instant::now();
    let mut running: Vec<_> = members
        .iter()
        .map(|pod| bed.spawn_quiet(pod, &binary, &["init"]))
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
    let log = bed.control("GET", "calls/log", Value::Null);
    let eni_node: BTreeMap<String, usize> = (1..=nodes)
        .map(|index| (bed.eni_id(&format!("node{index}"), "eth1"), index))
        .collect();
    let mut per_node: BTreeMap<usize, u64> = BTreeMap::new();
    for entry in log["calls"].as_array().expect("log") {
        if entry[0] == "AssignPrivateIpAddresses"
            && let Some(node) = entry[2].as_str().and_then(|eni| eni_node.get(eni))
        {
            *per_node.entry(*node).or_default() += 1;
        }
    }
    drop(agents);
    let all = count(&calls, None);
    let assign = count(&calls, Some("AssignPrivateIpAddresses"));
    let assign_throttled = count(&throttled, Some("AssignPrivateIpAddresses"));
    // The Assign bucket lets the calls that went through pass at best burst + refill * t.
    let floor = ((assign - assign_throttled) as f64 - burst).max(0.0) / refill;
    eprintln!("{backend:?}: EC2 calls {calls}, of which throttled {throttled}");
    format!(
        "| {backend:?} | {pods} | {nodes} | {burst} + {refill}/s | {succeeded}/{pods} | {:.2} s | {floor:.1} s | {assign} ({}) | {} ({assign_throttled}) | {} | {:.2} |",
        last_success.as_secs_f64(),
        per_node.values().max().copied().unwrap_or(0),
        count(&throttled, None),
        count(&calls, Some("DescribeNetworkInterfaces")),
        all as f64 / pods as f64,
    )
}
