//! Benchmark of the release `ipmgr-helper` on an emulated node (root, network namespaces,
//! the AWS stand-in): one `init` pass to confirmed assignment (wall, CPU, peak RSS, EC2
//! calls), the idle `sidecar` (CPU and RSS over a quiet interval), and the sidecar's
//! reaction to a new address (from `ip addr add` to the EC2 call arriving).
//!
//! `cargo bench -p ipmgr-helper --bench helper_passes`; `BENCH_PASSES` (10) init passes;
//! `IPMGR_HELPER_BIN=target/dist/ipmgr-helper` measures the image's build instead.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::helper_binary;
use ipmgr_testbed::process::{cpu_ticks, rss_kib};
use ipmgr_testbed::{Interface, Pod, TestBed, Topology, stop_within};
use nix::sys::resource::{UsageWho, getrusage};
use serde_json::Value;

fn children_cpu() -> (Duration, i64) {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |time: nix::sys::time::TimeVal| {
        Duration::new(time.tv_sec() as u64, time.tv_usec() as u32 * 1000)
    };
    (
        seconds(usage.user_time()) + seconds(usage.system_time()),
        usage.max_rss(),
    )
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// One `ipmgr-helper init` in `pod`, measured.
struct InitRun {
    wall: Duration,
    cpu: Duration,
    max_rss: i64,
    calls: Value,
}

fn measured_init(bed: &mut TestBed, pod: &Pod) -> InitRun {
    bed.reset_calls();
    let (cpu_before, _) = children_cpu();
    let started = Instant::now();
    let output = bed
        .command(pod, &helper_binary(), &["init"])
        .output()
        .expect("helper runs");
    let wall = started.elapsed();
    let (cpu_after, max_rss) = children_cpu();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    InitRun {
        wall,
        cpu: cpu_after - cpu_before,
        max_rss,
        calls: bed.calls(),
    }
}

fn main() {
    let passes: usize = std::env::var("BENCH_PASSES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10);
    let mut bed = TestBed::start(Topology::File("how-to"));
    // Every pass leaves its addresses on the ENI (init never releases): room for all of them.
    bed.control(
        "POST",
        "config",
        serde_json::json!({"eni_ipv4_limit": 100, "eni_ipv6_limit": 100}),
    );
    let eni = bed.eni_id("node1", "eth2");
    let prefix = bed.ipv6_prefix("multus1");
    let pod = bed.pod("node1", "bench", &[Interface::on_eni("net1", "eth2", &[])]);

    // init: each pass gets a fresh IPv4 and IPv6 address, so each has real work to do.
    let (mut walls, mut cpus, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss = 0;
    for pass in 0..passes {
        let (v4, v6) = (
            format!("10.0.1.{}/24", 100 + pass),
            format!("{prefix}{:x}/64", 0x100 + pass),
        );
        bed.add_address(&pod, "net1", &v4);
        bed.add_address(&pod, "net1", &v6);
        let run = measured_init(&mut bed, &pod);
        walls.push(run.wall);
        cpus.push(run.cpu);
        peak_rss = peak_rss.max(run.max_rss);
        calls.push(run.calls);
        bed.remove_address(&pod, "net1", &v4);
        bed.remove_address(&pod, "net1", &v6);
    }
    let call_summary = |calls: &Value| {
        let map = calls.as_object().expect("calls");
        let total: u64 = map.values().filter_map(Value::as_u64).sum();
        let describe: u64 = map
            .iter()
            .filter(|(action, _)| action.starts_with("Describe"))
            .filter_map(|(_, count)| count.as_u64())
            .sum();
        (total, describe)
    };
    let (total_calls, describe_calls) = call_summary(&calls[0]);

    // An IPv4 address alone, then a second run on it: the cost of a pod restart.
    bed.add_address(&pod, "net1", "10.0.1.90/24");
    let ipv4_pass = measured_init(&mut bed, &pod);
    let (ipv4_total, ipv4_describe) = call_summary(&ipv4_pass.calls);
    let noop = measured_init(&mut bed, &pod);
    let (noop_wall, noop_cpu, noop_calls) = (noop.wall, noop.cpu, call_summary(&noop.calls).0);

    // sidecar: idle cost, then reaction to new addresses.
    let mut sidecar = bed
        .command(
            &pod,
            &helper_binary(),
            &["sidecar", "--recheck-seconds", "3600"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sidecar starts");
    let pid = sidecar.id();
    std::thread::sleep(Duration::from_secs(2));
    let idle = Duration::from_secs(10);
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(idle);
    let idle_ticks = cpu_ticks(pid) - ticks_before;
    let idle_rss = rss_kib(pid);

    let mut reactions = Vec::new();
    let mut end_to_end = Vec::new();
    let mut event_calls = Vec::new();
    for round in 0..10 {
        bed.reset_calls();
        let address = format!("10.0.1.{}", 200 + round);
        let added_at = now_unix();
        let started = Instant::now();
        bed.add_address(&pod, "net1", &format!("{address}/24"));
        let held = bed
            .wait_until(&eni, &address, true, Duration::from_secs(5))
            .expect("assigned");
        end_to_end.push(held.max(started.elapsed().min(held)));
        let log = bed.control("GET", "calls/log", Value::Null);
        let assign_at = log["calls"]
            .as_array()
            .expect("log")
            .iter()
            .find(|entry| entry[0] == "AssignPrivateIpAddresses")
            .and_then(|entry| entry[1].as_f64())
            .expect("an assign call");
        reactions.push(Duration::from_secs_f64((assign_at - added_at).max(0.0)));
        event_calls.push(call_summary(&bed.calls()));
    }
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    stop_within(&mut sidecar, Duration::from_secs(10));

    let binary = std::fs::metadata(helper_binary()).expect("binary").len();
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| init pass to confirmed assignment, 1 IPv4 + 1 IPv6 (median of {passes}) | {:.1} ms wall, {:.1} ms CPU |",
        ms(median(walls)),
        ms(median(cpus))
    );
    println!(
        "| peak RSS of an init pass | {:.1} MiB |",
        peak_rss as f64 / 1024.0
    );
    println!(
        "| EC2 calls of that pass | {total_calls} ({describe_calls} DescribeNetworkInterfaces: the IPv4 holders with the target ENI, the IPv6 holders) |"
    );
    println!(
        "| EC2 calls of an IPv4 init pass | {ipv4_total} ({ipv4_describe} DescribeNetworkInterfaces: the holders with the target ENI and its tags; {} AssignPrivateIpAddresses) |",
        ipv4_total - ipv4_describe
    );
    println!(
        "| init on already-assigned addresses | {:.1} ms wall, {:.1} ms CPU, {noop_calls} EC2 calls |",
        ms(noop_wall),
        ms(noop_cpu)
    );
    println!(
        "| sidecar idle over {}s | {idle_ticks} CPU ticks (1 tick = 10 ms), {:.1} MiB RSS |",
        idle.as_secs(),
        idle_rss as f64 / 1024.0
    );
    println!(
        "| sidecar: `ip addr add` to the AssignPrivateIpAddresses call (median / max of 10) | {:.1} ms / {:.1} ms |",
        ms(median(reactions.clone())),
        ms(*reactions.iter().max().expect("rounds"))
    );
    println!(
        "| sidecar: `ip addr add` to EC2 holding the address (median of 10) | {:.1} ms |",
        ms(median(end_to_end))
    );
    let (first_total, first_describe) = event_calls.first().copied().unwrap_or_default();
    let (last_total, last_describe) = event_calls.last().copied().unwrap_or_default();
    println!(
        "| sidecar: EC2 calls for a new address, first / later ones | {first_total} ({first_describe} DescribeNetworkInterfaces) / {last_total} ({last_describe} DescribeNetworkInterfaces: the holders with the target ENI) |"
    );
    println!("| helper binary | {:.1} MiB |", binary as f64 / 1_048_576.0);
}
