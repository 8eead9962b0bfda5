//! The node agent's invariants under churn (root; the real `init` and `agent` against the
//! stand-in of `testenv/`): pods created and deleted at random on several nodes, addresses
//! reused by new pods, EC2 throttling Describe and Unassign, metadata lagging EC2, and the
//! agents restarted, while a checker samples EC2 every 100 ms (see
//! `ipmgr_testbed::churn`).
//!
//! `cargo bench -p ipmgr-helper --bench churn`; knobs: `BENCH_SECONDS` (300), `BENCH_NODES`
//! (2), `BENCH_PODS_PER_NODE` (5), `BENCH_SEED` (1).

mod common;

use std::time::Duration;

use common::{env_or, helper_binary};
use ipmgr_testbed::churn::{ChurnOptions, run};

fn main() {
    let options = ChurnOptions {
        helper: helper_binary(),
        nodes: env_or("BENCH_NODES", 2),
        duration: Duration::from_secs(env_or("BENCH_SECONDS", 300)),
        pods_per_node: env_or("BENCH_PODS_PER_NODE", 5),
        seed: env_or("BENCH_SEED", 1),
        ..ChurnOptions::default()
    };
    let report = run(&options);
    println!(
        "| churn ({} nodes, grace {} s, resync {} s, retry budget {} s, metadata lag {:?}, agent restart every {:?}) | result |",
        options.nodes,
        options.grace_seconds,
        options.resync_seconds,
        options.retry_seconds,
        options.metadata_lag,
        options.restart_every
    );
    println!("|---|---|");
    println!("| run | {:.0} s |", report.ran.as_secs_f64());
    println!(
        "| pods created / deleted / made routable by init / init failures | {} / {} / {} / {} |",
        report.created, report.deleted, report.routable, report.init_failures
    );
    println!(
        "| pods that reused an address a deleted pod had | {} |",
        report.reused
    );
    println!(
        "| inits that exited 0 with the address on no ENI (they trusted lagging metadata) | {} |",
        report.init_unplaced
    );
    println!(
        "| addresses released / agent restarts | {} / {} |",
        report.releases, report.restarts
    );
    println!(
        "| deleted pod's address off its ENI (median / max) | {:.1} s / {:.1} s |",
        report.release_latency.0, report.release_latency.1
    );
    println!(
        "| throttled EC2 calls (buckets and {} windows of 3 s) | {} |",
        report.throttle_windows, report.throttled
    );
    println!(
        "| still within their bound at the end | {} |",
        report.pending_at_end
    );
    println!("| **violations** | **{}** |", report.violations.len());
    for violation in &report.violations {
        println!("- {violation}");
    }
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}
