//! What the helper's benchmarks share: the binary under test, their knobs, and a node whose
//! agent serves many pods.

#![allow(dead_code, reason = "each benchmark uses its own subset")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipmgr_testbed::{Background, Interface, Node, Pod, TestBed, Topology};
use serde_json::json;

/// The helper under test: `IPMGR_HELPER_BIN` when set, else this build's.
pub(crate) fn helper_binary() -> PathBuf {
    ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"))
}

/// The pod client under test (what the webhook injects with the agent backend):
/// `IPMGR_POD_BIN` when set, else the `ipmgr-pod` built next to this build's helper.
pub(crate) fn pod_client_binary() -> PathBuf {
    std::env::var_os("IPMGR_POD_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_ipmgr-helper")).with_file_name("ipmgr-pod"),
        PathBuf::from,
    )
}

/// The knob `name` from the environment, or `default` when unset or unreadable.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One node whose pods cannot reach instance metadata, its agent, and its pods, each with a
/// Multus address on eth1 and the agent's URL.
pub(crate) struct ServedNode {
    pub(crate) bed: TestBed,
    pub(crate) node: Node,
    pub(crate) agent: Background,
    pub(crate) members: Vec<Pod>,
}

/// A node with `pods` pods and the agent `binary` serving them (their `init` not run yet).
pub(crate) fn served_node(pods: usize, binary: &Path) -> ServedNode {
    let mut bed = TestBed::start(Topology::Inline(json!({
        "vpc_cidr": "10.0.0.0/16",
        "subnets": {"node": {"cidr": "10.0.0.0/24"}, "multus": {"cidr": "10.0.16.0/20"}},
        "nodes": {"node1": {"enis": [{"subnet": "node"}, {"subnet": "multus", "multus": true}]}},
    })));
    bed.control("POST", "config", json!({"eni_ipv4_limit": pods + 10}));
    bed.pods_reach_metadata(false);
    let node = bed.node("node1");
    let agent = bed.start_agent(&node, binary, &[]);
    let url = format!("http://{}:9472", node.address);
    let members: Vec<Pod> = (0..pods)
        .map(|index| {
            let address = format!("10.0.{}.{}/20", 17 + index / 250, 4 + index % 250);
            let mut pod = bed.pod(
                "node1",
                &format!("p{index}"),
                &[Interface::on_eni("net1", "eth1", &[&address])],
            );
            pod.env = vec![("IPMGR_AGENT_URL".to_owned(), url.clone())];
            pod
        })
        .collect();
    ServedNode {
        bed,
        node,
        agent,
        members,
    }
}

/// Every pod's `init` of `binary`, 22 at a time: how long they all took.
pub(crate) fn init_all(bed: &TestBed, members: &[Pod], binary: &Path) -> Duration {
    let started = Instant::now();
    for chunk in members.chunks(22) {
        let children: Vec<_> = chunk
            .iter()
            .map(|pod| bed.spawn_quiet(pod, binary, &["init"]))
            .collect();
        for mut child in children {
            assert!(child.wait().expect("wait").success(), "an init failed");
        }
    }
    started.elapsed()
}
