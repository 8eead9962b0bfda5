//! What the helper's test binaries share: running the helper in a pod, and reading its
//! output.

#![allow(dead_code, reason = "each test binary uses its own subset")]

pub(crate) mod agents;

use std::process::{Command, Stdio};
use std::time::Duration;

use ipmgr_testbed::{Background, Interface, Pod, TestBed, Topology, finish};
use serde_json::{Value, json};

/// A bed with the how-to's topology (testenv/topologies/how-to.json).
pub(crate) fn how_to_bed() -> TestBed {
    TestBed::start(Topology::File("how-to"))
}

/// `ipmgr-helper args...` inside `pod` (the build under test: `IPMGR_HELPER_BIN` when set).
pub(crate) fn helper(bed: &TestBed, pod: &Pod, args: &[&str]) -> Command {
    let binary = ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"));
    bed.command(pod, &binary, args)
}

/// The how-to's dual-stack pod on a shared subnet, `init` run twice by `init` (a helper
/// command in a pod): the interface's MAC picks eth2 over eth1, one assign per family and one
/// Describe per family, then a second run that only checks EC2.
pub(crate) fn dual_stack_init_twice(init: impl Fn(&TestBed, &Pod) -> Command) {
    let mut bed = how_to_bed();
    let v6 = format!("{}50", bed.ipv6_prefix("multus1"));
    // eth1 and eth2 of node1 share subnet multus1; the interface carries eth2's MAC.
    let pod = bed.pod(
        "node1",
        "pod",
        &[Interface::on_eni(
            "net1",
            "eth2",
            &["10.0.1.50/24", &format!("{v6}/64")],
        )],
    );
    let (output, stderr, _) = finish(init(&bed, &pod));
    assert!(output.status.success(), "{stderr}");
    let (second, first) = (bed.eni_id("node1", "eth2"), bed.eni_id("node1", "eth1"));
    assert!(bed.holds(&second, "10.0.1.50"), "{stderr}");
    assert!(bed.holds(&second, &v6), "{stderr}");
    assert!(!bed.holds(&first, "10.0.1.50"));
    assert_eq!(
        bed.calls(),
        json!({"AssignPrivateIpAddresses": 1, "AssignIpv6Addresses": 1, "DescribeNetworkInterfaces": 2}),
        "one assign per ENI and family; one Describe per family for the holders (the IPv4 one lists the target ENI and its tags too)"
    );

    bed.reset_calls();
    let (output, stderr, _) = finish(init(&bed, &pod));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        bed.calls(),
        json!({"DescribeNetworkInterfaces": 2}),
        "already assigned: checked in EC2 (one Describe per family), no mutating call"
    );
}

/// `ipmgr-helper sidecar args...` in `pod`, its output discarded; killed if the test ends
/// without stopping it.
pub(crate) fn sidecar(bed: &TestBed, pod: &Pod, args: &[&str]) -> Background {
    let args: Vec<&str> = ["sidecar"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    Background(
        helper(bed, pod, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sidecar starts"),
    )
}

/// Pod A on node1 with 10.0.1.51 and pod B on node2 with 10.0.1.52, each on its node's eth1
/// with a sidecar (re-check every 60 s), once EC2 holds both addresses.
pub(crate) struct SidecarPair {
    pub(crate) a: Pod,
    pub(crate) b: Pod,
    pub(crate) eni_a: String,
    pub(crate) eni_b: String,
    pub(crate) sidecar_a: Background,
    pub(crate) sidecar_b: Background,
}

/// How long the pair's helpers get for any one change.
pub(crate) const PAIR_LIMIT: Duration = Duration::from_secs(5);

/// Starts a [`SidecarPair`] on the how-to's nodes.
pub(crate) fn sidecar_pair(bed: &mut TestBed) -> SidecarPair {
    let a = bed.pod(
        "node1",
        "a",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.51/24"])],
    );
    let b = bed.pod(
        "node2",
        "b",
        &[Interface::on_eni("net1", "eth1", &["10.0.1.52/24"])],
    );
    let (eni_a, eni_b) = (bed.eni_id("node1", "eth1"), bed.eni_id("node2", "eth1"));
    let sidecar_a = sidecar(bed, &a, &["--recheck-seconds", "60"]);
    let sidecar_b = sidecar(bed, &b, &["--recheck-seconds", "60"]);
    assert!(
        bed.wait_until(&eni_a, "10.0.1.51", true, PAIR_LIMIT)
            .is_some()
    );
    assert!(
        bed.wait_until(&eni_b, "10.0.1.52", true, PAIR_LIMIT)
            .is_some()
    );
    SidecarPair {
        a,
        b,
        eni_a,
        eni_b,
        sidecar_a,
        sidecar_b,
    }
}

/// Moves `address` (a /24) to `to`'s net1, off `from`'s when given (a keepalived failover),
/// and waits up to [`PAIR_LIMIT`] for EC2 to hold it on `eni`: how long that took.
pub(crate) fn move_address(
    bed: &mut TestBed,
    from: Option<&Pod>,
    to: &Pod,
    address: &str,
    eni: &str,
) -> Option<Duration> {
    let cidr = format!("{address}/24");
    if let Some(from) = from {
        bed.remove_address(from, "net1", &cidr);
    }
    bed.add_address(to, "net1", &cidr);
    bed.wait_until(eni, address, true, PAIR_LIMIT)
}

/// The one-line reason the helper printed last on failure.
pub(crate) fn reason(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with("ipmgr-helper: "))
        .unwrap_or_default()
}

/// The helper's JSON log lines.
pub(crate) fn log_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The failures the helper logged, as (kind, message): kind is "rejected", "ec2" or
/// "unconfirmed".
pub(crate) fn failures(stderr: &str) -> Vec<(String, String)> {
    log_lines(stderr)
        .iter()
        .filter(|line| line["message"] == "address not routable")
        .map(|line| {
            let text = |key: &str| line[key].as_str().unwrap_or_default().to_owned();
            (text("kind"), text("failure"))
        })
        .collect()
}

/// The kinds of [`failures`].
pub(crate) fn failure_kinds(stderr: &str) -> Vec<String> {
    failures(stderr).into_iter().map(|(kind, _)| kind).collect()
}

/// The EC2 actions in `calls` that change something (everything but Describe*).
pub(crate) fn mutating_calls(calls: &Value) -> Vec<String> {
    calls
        .as_object()
        .expect("calls")
        .keys()
        .filter(|action| !action.starts_with("Describe"))
        .cloned()
        .collect()
}

/// The helper's sample IAM policies (manifests/samples/).
pub(crate) const HELPER_POLICIES: [&str; 2] = ["iam-policy.json", "iam-policy-tag-scoped.json"];

/// Panics unless every sample IAM policy of `files` allows every EC2 action in `calls`.
pub(crate) fn assert_allowed_by_iam_policies(calls: &Value, files: &[&str]) {
    for file in files {
        let path = ipmgr_testbed::repo_root()
            .join("manifests/samples")
            .join(file);
        let policy: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("policy"))
            .expect("policy is JSON");
        let allowed: Vec<&str> = policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .flat_map(|statement| statement["Action"].as_array().expect("actions"))
            .filter_map(Value::as_str)
            .collect();
        for action in calls.as_object().expect("calls").keys() {
            assert!(
                allowed.contains(&format!("ec2:{action}").as_str()),
                "{file} does not allow ec2:{action}"
            );
        }
    }
}
