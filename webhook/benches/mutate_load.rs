//! Load benchmark of the real `ipmgr-webhook serve` binary over TLS with keep-alive on
//! loopback: closed-loop throughput of `/mutate` (a realistic 6 KB pod that gets injected)
//! against the trivial `/healthz` of the same server, then `/mutate` at a fixed rate with
//! latencies measured from each request's scheduled start (no coordinated omission), and
//! the server's RSS at idle and after load. Then, on a fresh server with the default limits,
//! what hostile clients cost: peak RSS under one amplification body at the body cap and
//! under a flood of stalled bodies, RSS after each, and how long stalled and slowloris
//! clients are held.
//!
//! `cargo bench -p ipmgr-webhook --bench mutate_load`; knobs: `BENCH_SECONDS` (5),
//! `BENCH_CONNECTIONS` (4), `BENCH_RATE` (1000 requests/s), `BENCH_STALLED` (64 clients),
//! `BENCH_BODY_CAP` (3 MiB, the default `--max-body-bytes`), `BENCH_HOSTILE` (0 skips the
//! hostile clients); `IPMGR_WEBHOOK_BIN` measures another build of the server.

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{KeepAlive, ServerProcess, env_number, keep_alive};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use ipmgr_webhook::admission::{Reviewed, review};
use tokio::io::AsyncWriteExt as _;
use tokio_rustls::TlsConnector;

#[derive(Clone)]
struct Target {
    method: hyper::Method,
    path: &'static str,
    body: Bytes,
}

async fn send(sender: &mut KeepAlive, target: &Target) {
    let request = hyper::Request::builder()
        .method(target.method.clone())
        .uri(target.path)
        .header("host", common::SERVER_NAME)
        .header("content-type", "application/json")
        .body(Full::new(target.body.clone()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200, "{} failed", target.path);
    response.into_body().collect().await.expect("body");
}

struct Summary {
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Summary {
    latencies.sort_unstable();
    let at = |quantile: f64| {
        latencies[((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1)]
    };
    Summary {
        requests: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        max: latencies[latencies.len() - 1],
    }
}

/// Every connection sends its next request as soon as the previous one answered.
async fn closed_loop(
    connector: &TlsConnector,
    addr: SocketAddr,
    target: &Target,
    connections: usize,
    run: Duration,
) -> Summary {
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (connector, target) = (connector.clone(), target.clone());
            tokio::spawn(async move {
                let mut sender = keep_alive(&connector, addr).await;
                let mut latencies = Vec::new();
                while started.elapsed() < run {
                    let sent = Instant::now();
                    send(&mut sender, &target).await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("load task"));
    }
    summarize(latencies, started.elapsed())
}

/// Requests are scheduled at `rate` per second by a thread that sleeps precisely (tokio's
/// timer has 1 ms granularity) and hands each tick to the connections in turn; each latency
/// counts from the scheduled start, so a stalled server is not hidden by a waiting client.
async fn open_loop(
    connector: &TlsConnector,
    addr: SocketAddr,
    target: &Target,
    connections: usize,
    rate: u64,
    run: Duration,
) -> Summary {
    let mut ticks = Vec::with_capacity(connections);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (tick, mut scheduled_ticks) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut sender = keep_alive(connector, addr).await;
        let target = target.clone();
        ticks.push(tick);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(scheduled) = scheduled_ticks.recv().await {
                send(&mut sender, &target).await;
                latencies.push(scheduled.elapsed());
            }
            latencies
        }));
    }
    let total = (run.as_secs_f64() * rate as f64) as u32;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let ticker = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(50);
        for index in 0..total {
            let scheduled = start + interval * index;
            std::thread::sleep(scheduled.saturating_duration_since(Instant::now()));
            ticks[index as usize % ticks.len()]
                .send(scheduled)
                .expect("connection task alive");
        }
    });
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("load task"));
    }
    ticker.join().expect("ticker thread");
    summarize(latencies, run)
}

/// A table row; `cpu` is the server's CPU time during the run.
fn row(name: &str, summary: &Summary, cpu: Duration) {
    println!(
        "| {name} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} |",
        summary.requests,
        summary.per_second,
        summary.p50.as_secs_f64() * 1e3,
        summary.p99.as_secs_f64() * 1e3,
        summary.max.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / summary.requests as f64
    );
}

/// Runs `load` and returns its summary with the server's CPU time during it.
async fn with_cpu(
    server: &ServerProcess,
    load: impl Future<Output = Summary>,
) -> (Summary, Duration) {
    let before = server.cpu_time();
    let summary = load.await;
    (summary, server.cpu_time().saturating_sub(before))
}

/// CPU cost of answering one review in-process, without HTTP or TLS.
fn review_cost(body: &[u8]) -> Duration {
    let settings = common::settings();
    let iterations = 20_000u32;
    let started = Instant::now();
    for _ in 0..iterations {
        let (response, _) = match review(std::hint::black_box(body), &settings).expect("review") {
            Reviewed::Answered(response, outcome) => (response, outcome),
            Reviewed::Pending(pending) => pending.finish(None),
        };
        std::hint::black_box(serde_json::to_vec(&response).expect("response serializes"));
    }
    started.elapsed() / iterations
}

const MIB: f64 = 1024.0 * 1024.0;

/// Peak and final RSS of one hostile load, against the RSS before it.
struct MemoryRun {
    baseline: u64,
    peak: u64,
    after: u64,
}

impl MemoryRun {
    fn print(&self, name: &str) {
        println!(
            "| {name} | {:.1} | {:.1} (+{:.1}) | {:.1} |",
            self.baseline as f64 / MIB,
            self.peak as f64 / MIB,
            self.peak.saturating_sub(self.baseline) as f64 / MIB,
            self.after as f64 / MIB
        );
    }
}

/// Runs `load` on `server` and reads its RSS before, at peak and a second after.
async fn measure<F: Future<Output = ()>>(server: &ServerProcess, load: F) -> MemoryRun {
    let baseline = server.memory("VmRSS");
    server.reset_peak();
    load.await;
    let peak = server.memory("VmHWM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    MemoryRun {
        baseline,
        peak,
        after: server.memory("VmRSS"),
    }
}

/// What hostile clients cost a server with the default limits.
async fn hostile_clients(cap: usize, stalled: usize, max_connections: usize) {
    let server = ServerProcess::start(&[("IPMGR_LOG", "warn")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = common::amplification_body(cap - 512);
    let amplification = measure(&server, async {
        let answer = common::post(&server, &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.200}");
    })
    .await;

    let declared = cap - 1024;
    let sent = declared / 8 * 7;
    let mut answers = Vec::new();
    let flood = measure(&server, async {
        answers =
            common::stalled_bodies(&server, stalled, declared, sent, Duration::from_secs(15)).await;
    })
    .await;

    // Every connection slot taken by a client that sent half a request head.
    let connections = measure(&server, async {
        let mut held = Vec::new();
        for _ in 0..max_connections {
            let mut stream = common::connect(&server.connector, server.addr)
                .await
                .expect("connects");
            stream
                .write_all(b"POST /mutate HTTP/1.1\r\nhost: ipmgr-webhook\r\n")
                .await
                .expect("half a head");
            held.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;

    let slowloris =
        common::slowloris(&server, Duration::from_millis(500), Duration::from_secs(15)).await;

    println!();
    println!(
        "hostile clients, default limits, body cap {:.1} MiB; RSS in MiB:",
        cap as f64 / MIB
    );
    println!();
    println!("| load | RSS before | peak RSS | RSS 1 s after |");
    println!("|---|---|---|---|");
    amplification.print(&format!(
        "one {:.2} MiB amplification body",
        body.len() as f64 / MIB
    ));
    flood.print(&format!(
        "{stalled} stalled bodies of {:.2} MiB",
        sent as f64 / MIB
    ));
    connections.print(&format!(
        "{max_connections} connections with half a request head"
    ));
    println!();
    let mut by_status = std::collections::BTreeMap::<String, (usize, Duration)>::new();
    for (answer, elapsed) in &answers {
        let status = answer
            .get(..12)
            .filter(|s| !s.is_empty())
            .unwrap_or("no answer in 15 s");
        let entry = by_status.entry(status.to_owned()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(*elapsed);
    }
    for (status, (count, slowest)) in by_status {
        println!("stalled bodies: {count} x {status}, the last after {slowest:.2?}");
    }
    match slowloris {
        Some(elapsed) => println!("slowloris (a byte every 0.5 s): dropped after {elapsed:.2?}"),
        None => println!("slowloris (a byte every 0.5 s): still connected after 15 s"),
    }
}

fn main() {
    let run = Duration::from_secs(env_number("BENCH_SECONDS", 5));
    let connections = env_number("BENCH_CONNECTIONS", 4) as usize;
    let rate = env_number("BENCH_RATE", 1000);

    let cap = env_number("BENCH_BODY_CAP", 3 * 1024 * 1024) as usize;
    let stalled = env_number("BENCH_STALLED", 64) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server = ServerProcess::start(&[("IPMGR_LOG", "warn")]).await;
        let (connector, addr) = (server.connector.clone(), server.addr);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss = server.memory("VmRSS");

        let pod: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/realistic-pod.json"))
                .expect("fixture");
        let body = Bytes::from(common::admission_review("bench", &pod, false).to_string());
        let in_process = review_cost(&body);
        let mutate = Target {
            method: hyper::Method::POST,
            path: "/mutate",
            body,
        };
        let healthz = Target {
            method: hyper::Method::GET,
            path: "/healthz",
            body: Bytes::new(),
        };
        // Warm-up: connections, allocator, caches.
        closed_loop(
            &connector,
            addr,
            &mutate,
            connections,
            Duration::from_millis(500),
        )
        .await;

        let trivial = with_cpu(
            &server,
            closed_loop(&connector, addr, &healthz, connections, run),
        )
        .await;
        let heavy = with_cpu(
            &server,
            closed_loop(&connector, addr, &mutate, connections, run),
        )
        .await;
        let paced = with_cpu(
            &server,
            open_loop(&connector, addr, &mutate, connections, rate, run),
        )
        .await;
        let loaded_rss = server.memory("VmRSS");
        drop(server);

        println!(
            "server: {} with its default limits",
            common::webhook_binary().display()
        );
        println!(
            "{connections} keep-alive TLS connections, {}s per run, client on 1 thread",
            run.as_secs()
        );
        println!();
        println!(
            "| run | requests | requests/s | p50 ms | p99 ms | max ms | server CPU µs/request |"
        );
        println!("|---|---|---|---|---|---|---|");
        row("GET /healthz, closed loop", &trivial.0, trivial.1);
        row("POST /mutate, closed loop", &heavy.0, heavy.1);
        row(&format!("POST /mutate at {rate}/s"), &paced.0, paced.1);
        let (trivial, heavy) = (trivial.0, heavy.0);
        println!();
        println!(
            "in-process review of the {} B AdmissionReview: {:.1} µs",
            mutate.body.len(),
            in_process.as_secs_f64() * 1e6
        );
        println!(
            "/mutate throughput: {:.0}% of /healthz",
            heavy.per_second / trivial.per_second * 100.0
        );
        println!(
            "server RSS: {:.1} MiB idle, {:.1} MiB after load",
            idle_rss as f64 / MIB,
            loaded_rss as f64 / MIB
        );

        if env_number("BENCH_HOSTILE", 1) != 0 {
            hostile_clients(cap, stalled, 256).await;
        }
    });
}
