//! Benchmark of the pod API under abuse from its own node's pods (root; the release helper
//! and the stand-in of `testenv/`): one node with BENCH_PODS pods, each with a Multus
//! address made routable by `init`, and the agent at its DaemonSet settings.
//!
//! `cargo bench -p ipmgr-helper --bench pod_api_abuse`; knobs: `BENCH_PODS` (110, the
//! kubelet's default pod limit), `BENCH_REQUESTS` (1000: the sequential flood),
//! `BENCH_HELD` (900: connections one pod holds).
//!
//! Each phase reports the agent's CPU and RSS, a legitimate `init`'s latency while it
//! lasts, and the EC2 calls it cost:
//! - `sequential`: one pod sends BENCH_REQUESTS `change` requests one after the other
//!   (the agent's CPU per request is the cost of identity and an answer from its view);
//! - `together`: one pod sends 200 `change` requests at once;
//! - `every pod`: every pod sends 20 `change` requests at once;
//! - `held`: one pod holds BENCH_HELD connections, half idle, half a head without a body;
//! - `slow bodies`: one pod sends 50 requests a byte per second.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{ServedNode, env_or, helper_binary, init_all, served_node};
use ipmgr_testbed::process::{cpu_ticks, rss_kib};
use ipmgr_testbed::{Pod, TestBed, finish};
use serde_json::Value;

/// A Python program sending `count` `change` requests to `host`'s pod API, `together` at a
/// time; prints how many were answered 200.
fn flood_script(host: &str, count: usize, together: usize) -> String {
    format!(
        r#"
import http.client, json
from concurrent.futures import ThreadPoolExecutor
def ask(_):
    c = http.client.HTTPConnection("{host}", 9472, timeout=30)
    try:
        c.request("POST", "/v1/routable", json.dumps({{"reason": "change"}}), {{"Content-Type": "application/json"}})
        return c.getresponse().status
    except OSError:
        return 0
    finally:
        c.close()
with ThreadPoolExecutor({together}) as pool:
    statuses = list(pool.map(ask, range({count})))
print(sum(1 for s in statuses if s == 200), flush=True)
"#
    )
}

/// A Python program holding `count` connections to `host`'s pod API (half idle, half a
/// request head without its body) for `seconds`.
fn holder_script(host: &str, count: usize, seconds: u64) -> String {
    format!(
        r#"
import socket, time
held = []
for n in range({count}):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("{host}", 9472))
        if n % 2:
            s.sendall(b"POST /v1/routable HTTP/1.1\r\nHost: agent\r\nContent-Length: 100\r\n\r\n")
        held.append(s)
    except OSError:
        s.close()
time.sleep({seconds})
"#
    )
}

/// A Python program sending `count` requests to `host`'s pod API a byte per second.
fn slow_body_script(host: &str, count: usize, seconds: u64) -> String {
    format!(
        r#"
import socket, time
body = b'{{"reason": "change"}}'
held = []
for n in range({count}):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("{host}", 9472))
        s.sendall(b"POST /v1/routable HTTP/1.1\r\nHost: agent\r\nContent-Length: %d\r\n\r\n" % len(body))
        held.append(s)
    except OSError:
        s.close()
end = time.monotonic() + {seconds}
for byte in range(len(body)):
    if time.monotonic() > end:
        break
    for s in held:
        try:
            s.send(body[byte:byte + 1])
        except OSError:
            pass
    time.sleep(1)
"#
    )
}

/// What one phase cost.
struct Phase {
    name: String,
    seconds: f64,
    cpu_ms: f64,
    peak_rss_kib: u64,
    init: Duration,
    ec2_calls: u64,
    note: String,
}

fn total_calls(calls: &Value) -> u64 {
    calls
        .as_object()
        .map(|calls| calls.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Runs `abuse` (started by `start`) while one legitimate `init` runs after `settle`, and
/// measures the agent over the whole phase.
#[allow(
    clippy::too_many_arguments,
    reason = "a benchmark's phase, read in one place"
)]
fn phase(
    bed: &mut TestBed,
    agent: u32,
    legit: &Pod,
    binary: &Path,
    name: &str,
    settle: Duration,
    start: impl FnOnce(&TestBed) -> Vec<Child>,
    note: impl FnOnce(Vec<String>) -> String,
) -> Phase {
    bed.reset_calls();
    let (cpu, started) = (cpu_ticks(agent), Instant::now());
    let abusers = start(bed);
    let mut peak = rss_kib(agent);
    std::thread::sleep(settle);
    peak = peak.max(rss_kib(agent));
    let (output, stderr, init) = finish(bed.command(legit, binary, &["init"]));
    assert!(
        output.status.success(),
        "a legitimate init failed: {stderr}"
    );
    peak = peak.max(rss_kib(agent));
    let outputs: Vec<String> = abusers
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("the abuser ends");
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        })
        .collect();
    peak = peak.max(rss_kib(agent));
    let seconds = started.elapsed().as_secs_f64();
    Phase {
        name: name.to_owned(),
        seconds,
        cpu_ms: (cpu_ticks(agent) - cpu) as f64 * 10.0,
        peak_rss_kib: peak,
        init,
        ec2_calls: total_calls(&bed.calls()),
        note: note(outputs),
    }
}

fn python(bed: &TestBed, pod: &Pod, script: &str) -> Child {
    bed.command(pod, "python3".as_ref(), &["-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs")
}

fn main() {
    let pods: usize = env_or("BENCH_PODS", 110);
    let requests: usize = env_or("BENCH_REQUESTS", 1000);
    let held: usize = env_or("BENCH_HELD", 900);
    let binary = helper_binary();
    let ServedNode {
        mut bed,
        node,
        agent,
        members,
    } = served_node(pods, &binary);
    let agent_pid = agent.0.id();
    init_all(&bed, &members, &binary);
    let (abuser, legit) = (&members[0], &members[1]);
    let host = node.address.clone();
    let idle_rss = rss_kib(agent_pid);
    let answered = |asked: usize| {
        move |outputs: Vec<String>| {
            let total: usize = outputs.iter().filter_map(|n| n.parse::<usize>().ok()).sum();
            format!("{total} of {asked} answered 200, the rest closed at the per-source limit")
        }
    };
    let mut phases = Vec::new();

    phases.push(phase(
        &mut bed,
        agent_pid,
        legit,
        &binary,
        &format!("sequential: {requests} `change` from one pod"),
        Duration::from_millis(500),
        |bed| vec![python(bed, abuser, &flood_script(&host, requests, 1))],
        answered(requests),
    ));
    phases.push(phase(
        &mut bed,
        agent_pid,
        legit,
        &binary,
        "together: 200 `change` at once from one pod",
        Duration::from_millis(200),
        |bed| vec![python(bed, abuser, &flood_script(&host, 200, 200))],
        answered(200),
    ));
    phases.push(phase(
        &mut bed,
        agent_pid,
        legit,
        &binary,
        &format!("every pod: 20 `change` at once from each of {pods}"),
        // Once the clients are up: starting 110 interpreters saturates the bench machine.
        Duration::from_secs(3),
        |bed| {
            members
                .iter()
                .map(|pod| python(bed, pod, &flood_script(&host, 20, 20)))
                .collect()
        },
        answered(20 * pods),
    ));
    phases.push(phase(
        &mut bed,
        agent_pid,
        legit,
        &binary,
        &format!("held: {held} connections from one pod, 12 s"),
        Duration::from_secs(2),
        |bed| vec![python(bed, abuser, &holder_script(&host, held, 12))],
        |_| "closed by the 10 s request deadline".to_owned(),
    ));
    phases.push(phase(
        &mut bed,
        agent_pid,
        legit,
        &binary,
        "slow bodies: 50 requests a byte per second from one pod, 12 s",
        Duration::from_secs(2),
        |bed| vec![python(bed, abuser, &slow_body_script(&host, 50, 12))],
        |_| String::new(),
    ));
    drop(agent);

    println!("Agent RSS before: {:.1} MiB", idle_rss as f64 / 1024.0);
    println!(
        "| phase | took | agent CPU | agent RSS (peak) | legitimate init | EC2 calls (the init's included) | answers |"
    );
    println!("|---|---|---|---|---|---|---|");
    for phase in &phases {
        println!(
            "| {} | {:.1} s | {:.0} ms | {:.1} MiB | {:.0} ms | {} | {} |",
            phase.name,
            phase.seconds,
            phase.cpu_ms,
            phase.peak_rss_kib as f64 / 1024.0,
            phase.init.as_secs_f64() * 1e3,
            phase.ec2_calls,
            phase.note,
        );
    }
    let sequential = &phases[0];
    println!(
        "Agent CPU per request (sequential, {pods} namespaces): {:.2} ms",
        sequential.cpu_ms / requests as f64
    );
}
