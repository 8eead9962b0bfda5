//! Benchmark of the agent backend (root; the release helper and the stand-in of
//! `testenv/`): one node whose pods cannot reach instance metadata, its agent serving
//! BENCH_PODS pods, each with a Multus address and the pod client (`ipmgr-pod`,
//! `IPMGR_POD_BIN`; `IPMGR_HELPER_BIN` for the agent) asking the agent.
//!
//! `cargo bench -p ipmgr-helper --bench agent_backend`; knobs: `BENCH_PODS` (110, the
//! kubelet's default pod limit), `BENCH_SIDECARS` (20), `BENCH_SECONDS` (120: how long the
//! sidecars run; 600 for the 10-minute figure), `BENCH_RECHECK` (30 s, the sidecars'
//! `--recheck-seconds`).
//!
//! It reports `init` from start to exit with an idle agent and the address in place (20
//! runs), the client's peak RSS in `init` (`/usr/bin/time`'s maximum resident set) and in a
//! sidecar (its VmHWM), the agent's RSS with every pod served,
//! and, over the sidecars' run, the agent's CPU, the Describes per recheck interval and the
//! metadata requests from the pods.

mod common;

use std::time::{Duration, Instant};

use common::{ServedNode, env_or, helper_binary, init_all, pod_client_binary, served_node};
use ipmgr_testbed::process::{cpu_ticks, status_kib};
use ipmgr_testbed::{Background, finish};
use serde_json::Value;

fn main() {
    let pods: usize = env_or("BENCH_PODS", 110);
    let sidecars: usize = env_or("BENCH_SIDECARS", 20).min(pods);
    let seconds: u64 = env_or("BENCH_SECONDS", 120);
    let recheck: u64 = env_or("BENCH_RECHECK", 30);
    let ServedNode {
        mut bed,
        agent,
        members,
        ..
    } = served_node(pods, &helper_binary());
    let binary = pod_client_binary();
    let agent_pid = agent.0.id();

    // Every pod's init, 22 at a time.
    let all_inits = init_all(&bed, &members, &binary);
    let agent_rss = status_kib(agent_pid, "VmRSS:");

    // init with the address in place and an idle agent.
    let mut runs: Vec<Duration> = (0..20)
        .map(|_| {
            let (output, stderr, took) = finish(bed.command(&members[0], &binary, &["init"]));
            assert!(output.status.success(), "{stderr}");
            took
        })
        .collect();
    runs.sort();
    let client = binary.to_str().expect("UTF-8 path");
    let timed = ["-f", "%M", client, "init"];
    let (output, stderr, _) = finish(bed.command(&members[0], "/usr/bin/time".as_ref(), &timed));
    assert!(output.status.success(), "{stderr}");
    let init_peak_kib: u64 = stderr
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .expect("/usr/bin/time's maximum resident set, KiB");

    // Sidecars for a while: Describes per interval, agent CPU, metadata from pods.
    let ready_dir = tempfile::tempdir().expect("dir");
    let recheck_arg = recheck.to_string();
    let running: Vec<Background> = members[..sidecars]
        .iter()
        .enumerate()
        .map(|(index, pod)| {
            let ready = ready_dir.path().join(format!("ready-{index}"));
            let ready = ready.to_str().expect("UTF-8").to_owned();
            let args = [
                "sidecar",
                "--recheck-seconds",
                &recheck_arg,
                "--ready-file",
                &ready,
            ];
            Background(bed.spawn_quiet(pod, &binary, &args))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..sidecars).any(|index| !ready_dir.path().join(format!("ready-{index}")).exists()) {
        assert!(Instant::now() < deadline, "the sidecars never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sidecar_peak = status_kib(running[0].0.id(), "VmHWM:");
    let sidecar_rss = status_kib(running[0].0.id(), "VmRSS:");
    let (anon, file) = (
        status_kib(running[0].0.id(), "RssAnon:"),
        status_kib(running[0].0.id(), "RssFile:"),
    );
    eprintln!("sidecar RSS: {anon} KiB anonymous, {file} KiB file-backed");
    bed.reset_calls();
    let (cpu_before, window) = (cpu_ticks(agent_pid), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let agent_cpu = cpu_ticks(agent_pid) - cpu_before;
    let elapsed = window.elapsed().as_secs_f64();
    let calls = bed.calls();
    let describes = calls["DescribeNetworkInterfaces"].as_u64().unwrap_or(0);
    let by_source = bed.metadata_requests();
    let from_pods: u64 = members
        .iter()
        .map(|pod| by_source.get(&pod.ip).and_then(Value::as_u64).unwrap_or(0))
        .sum();
    drop(running);
    drop(agent);

    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    println!(
        "| pods | every init (22 at a time) | init, address in place (median / p90 / max) | init peak RSS | sidecar RSS (peak) | agent RSS, {pods} pods | sidecars, run | agent CPU | Describes per recheck interval | metadata requests from pods |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {pods} | {:.2} s | {:.0} / {:.0} / {:.0} ms | {:.1} MiB | {:.1} MiB ({:.1} MiB) | {:.1} MiB | {sidecars}, {seconds} s | {:.2}% | {:.2} | {from_pods} |",
        all_inits.as_secs_f64(),
        ms(runs[runs.len() / 2]),
        ms(runs[runs.len() * 9 / 10]),
        ms(runs[runs.len() - 1]),
        init_peak_kib as f64 / 1024.0,
        sidecar_rss as f64 / 1024.0,
        sidecar_peak as f64 / 1024.0,
        agent_rss as f64 / 1024.0,
        agent_cpu as f64 / (elapsed * 100.0) * 100.0,
        describes as f64 / (elapsed / recheck as f64),
    );
    eprintln!("calls during the sidecars' run: {calls}");
}
