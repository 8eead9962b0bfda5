//! Helpers shared by the webhook's integration tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use std::path::PathBuf;

use clap::Parser;
use ipmgr_injector::HelperSettings;
use ipmgr_webhook::config::InjectionArgs;
use serde_json::{Value, json};

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    injection: InjectionArgs,
}

/// The settings the golden files were made with, parsed through the real flags.
pub fn settings() -> HelperSettings {
    TestCli::try_parse_from([
        "test",
        "--helper-image=registry.example.com/ipmgr-helper:0.1.0",
        "--helper-arg=--allow-cidr=10.10.1.0/24",
    ])
    .expect("test flags parse")
    .injection
    .settings()
    .expect("test settings are valid")
}

/// `webhook/tests/<relative>`.
pub fn test_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(relative)
}

/// An AdmissionReview for creating `object` (kind from the object, core group).
pub fn admission_review(uid: &str, object: &Value, dry_run: bool) -> Value {
    let kind = object["kind"].as_str().unwrap_or("Pod");
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "namespace": object["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}
