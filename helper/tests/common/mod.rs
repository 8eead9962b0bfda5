//! What the helper's test binaries share: running the helper in a pod, and reading its
//! output.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::process::Command;

use ipmgr_testbed::{Pod, TestBed};
use serde_json::Value;

/// `ipmgr-helper args...` inside `pod` (the build under test: `IPMGR_HELPER_BIN` when set).
pub(crate) fn helper(bed: &TestBed, pod: &Pod, args: &[&str]) -> Command {
    let binary = ipmgr_testbed::program("IPMGR_HELPER_BIN", env!("CARGO_BIN_EXE_ipmgr-helper"));
    bed.command(pod, &binary, args)
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
