//! The agent backend on the bed: the real `ipmgr-helper agent` in a node's host network, as
//! the DaemonSet runs it, and the real pod client (`ipmgr-pod`) in pods that have no AWS
//! variable, asking it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipmgr_testbed::{Background, Node, Pod, TestBed};
use serde_json::Value;

use super::how_to_bed;

/// Where a pod declares the addresses it may float (`crates/eni/src/claims.rs`).
pub(crate) const FLOATING: &str = "multus-ipmgr.io/floating-ips";
/// Where a cluster admin grants floating CIDRs to a namespace (`crates/eni/src/grants.rs`).
pub(crate) const FLOATING_GRANT: &str = "multus-ipmgr.io/floating-ip-cidrs";
/// Where the agents started here serve their metrics and probes, in their node's netns.
pub(crate) const METRICS: &str = "127.0.0.1:9471";

/// The helper binary under test (`IPMGR_HELPER_BIN` when set).
pub(crate) fn binary() -> PathBuf {
    ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"))
}

/// The agent on `node` with the pod API, as the DaemonSet runs it (and `env`, e.g. a
/// setting's variable), logging to a file, once it says ready.
pub(crate) fn agent_with(
    bed: &mut TestBed,
    node: &str,
    env: &[(&str, &str)],
) -> (Background, Node, PathBuf) {
    let (agent, place, log) = start_agent(bed, node, env);
    wait_ready(&place, &log);
    (agent, place, log)
}

/// [`agent_with`], without waiting for it to say ready.
pub(crate) fn start_agent(
    bed: &mut TestBed,
    node: &str,
    env: &[(&str, &str)],
) -> (Background, Node, PathBuf) {
    let mut place = bed.node(node);
    place.env.extend(
        env.iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    let dir = place.netns_dir.to_str().expect("UTF-8 path").to_owned();
    let log = std::env::temp_dir().join(format!("{}-pod-api.log", place.netns));
    let args = [
        "agent",
        "--netns-dir",
        &dir,
        "--release-grace-seconds",
        "2",
        "--metrics-listen",
        METRICS,
    ];
    let child = bed
        .command(&place, &binary(), &args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("agent starts");
    (Background(child), place, log)
}

/// [`agent_with`] and no extra variable.
pub(crate) fn agent(bed: &mut TestBed, node: &str) -> (Background, Node, PathBuf) {
    agent_with(bed, node, &[])
}

/// Waits until the agent's /readyz says 200 (it has read the node and listed its pods and
/// their namespaces).
pub(crate) fn wait_ready(node: &Node, log: &Path) {
    if let Err(last) = ipmgr_testbed::wait_agent_ready(node, METRICS, Duration::from_secs(30)) {
        panic!(
            "the agent never became ready ({last}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Waits until the agent has made its one start-up read (DescribeInstanceTypes, for the
/// capacity), so that a count of EC2 calls from here on sees only what pods cause.
pub(crate) fn wait_capacity_read(node: &Node, log: &Path) {
    if let Err(last) =
        ipmgr_testbed::wait_agent_capacity_read(node, METRICS, Duration::from_secs(30))
    {
        panic!(
            "the agent never read its capacity ({last}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// A bystander pod (nodes always run some), so that the agent's view is never empty.
pub(crate) fn bystander(bed: &mut TestBed, node: &str) {
    bed.pod(node, &format!("bystander-{node}"), &[]);
}

/// `pod` as the agent backend's helper runs: no AWS variable, only its node's agent.
pub(crate) fn without_aws(pod: &Pod, node: &Node) -> Pod {
    let mut pod = pod.clone();
    let host = if pod.ip.contains(':') {
        format!("[{}]", node.address6)
    } else {
        node.address.clone()
    };
    pod.env = vec![("IPMGR_AGENT_URL".to_owned(), format!("http://{host}:9472"))];
    pod
}

/// The pod client the webhook injects with the agent backend: `IPMGR_POD_BIN` when set,
/// else the `ipmgr-pod` built next to the helper under test (`cargo build -p ipmgr-pod`).
pub(crate) fn pod_client() -> PathBuf {
    built_next_to_helper("ipmgr-pod", "IPMGR_POD_BIN")
}

/// The binary `name` of another package of the workspace: `variable` when set, else the one
/// built next to the helper under test (`cargo build -p <its package>` with the same target).
pub(crate) fn built_next_to_helper(name: &str, variable: &str) -> PathBuf {
    if let Some(binary) = std::env::var_os(variable) {
        return binary.into();
    }
    let helper = PathBuf::from(env!("CARGO_BIN_EXE_ipmgr-helper"));
    let binary = helper.with_file_name(name);
    assert!(
        binary.exists(),
        "{} is missing: build it (cargo build -p {name} with the same target) or set {variable}",
        binary.display()
    );
    binary
}

/// `ipmgr-pod args...` in `pod`, asking the agent of `node`.
pub(crate) fn agent_helper(bed: &TestBed, pod: &Pod, node: &Node, args: &[&str]) -> Command {
    bed.command(&without_aws(pod, node), &pod_client(), args)
}

/// A bed whose pods cannot reach instance metadata, with an agent on node1.
pub(crate) fn bed_with_agent() -> (TestBed, Background, Node) {
    let mut bed = how_to_bed();
    bed.pods_reach_metadata(false);
    bystander(&mut bed, "node1");
    let (agent, node, _) = agent(&mut bed, "node1");
    (bed, agent, node)
}

/// Metadata requests made from the pods' addresses (not the nodes').
pub(crate) fn metadata_requests_from(bed: &mut TestBed, pods: &[&Pod]) -> u64 {
    let by_source = bed.metadata_requests();
    pods.iter()
        .map(|pod| by_source.get(&pod.ip).and_then(Value::as_u64).unwrap_or(0))
        .sum()
}

/// The value of the agent's counter `name` with label `reason` (0 when not yet counted).
pub(crate) fn counted(node: &Node, name: &str, reason: &str) -> f64 {
    let metrics = ipmgr_testbed::http_get(node, &format!("http://{METRICS}/metrics"));
    let series = format!("{name}{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}
