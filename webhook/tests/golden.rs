//! Golden files: for each helper backend, every input under `golden/input/` is injected
//! offline, with the NetworkAttachmentDefinitions of
//! `golden/network-attachment-definitions.yaml`, and compared with
//! `golden/output/<backend>/`; the output injected again must not change; and every Pod input
//! sent as an AdmissionReview through the webhook router, reading the same definitions, must
//! give a patch that turns it into the same output. Set `UPDATE_GOLDEN=1` to rewrite the
//! outputs after an intended change.

mod common;

use std::fs;

use axum::http::Method;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipmgr_webhook::manifest::{ReportResult, inject_yaml};
use ipmgr_webhook::server::router;
use pretty_assertions::assert_eq;
use serde::Deserialize as _;
use serde_json::Value;

fn inputs() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(common::test_path("golden/input"))
        .expect("golden/input is readable")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 21, "golden inputs missing: {names:?}");
    names
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .filter(|value| !value.is_null())
        .collect()
}

/// `golden/output/<backend>/<name>`.
fn golden_path(backend: &str, name: &str) -> std::path::PathBuf {
    common::test_path(&format!("golden/output/{backend}/{name}"))
}

#[test]
fn offline_injection_matches_the_golden_files_and_is_idempotent() {
    for (backend, flags) in common::BACKENDS {
        offline_injection_matches(backend, &common::golden_settings(flags));
    }
}

fn offline_injection_matches(backend: &str, settings: &ipmgr_injector::HelperSettings) {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let definitions = common::golden_definitions();
    for name in inputs() {
        let input = fs::read_to_string(common::test_path(&format!("golden/input/{name}")))
            .expect("input readable");
        let (output, _) = inject_yaml(&input, settings, Some(&definitions)).expect("input injects");
        let golden_path = golden_path(backend, &name);
        if update {
            fs::create_dir_all(golden_path.parent().expect("a directory"))
                .expect("golden directory");
            fs::write(&golden_path, &output).expect("golden writable");
        }
        let golden = fs::read_to_string(&golden_path).unwrap_or_else(|error| {
            panic!(
                "{}: {error}; run with UPDATE_GOLDEN=1",
                golden_path.display()
            )
        });
        assert_eq!(
            output, golden,
            "{backend}/{name}: output differs from its golden file"
        );

        let (again, reports) =
            inject_yaml(&output, settings, Some(&definitions)).expect("output injects");
        assert_eq!(
            again, output,
            "{backend}/{name}: injecting the output changed it"
        );
        assert!(
            reports
                .iter()
                .all(|report| !matches!(report.result, ReportResult::Injected(_))),
            "{backend}/{name}: second pass injected again: {reports:?}"
        );
    }
}

async fn mutate(app: &axum::Router, review: &Value) -> Value {
    let (status, body) = common::call(app, Method::POST, "/mutate", review.to_string()).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("response is JSON")
}

#[tokio::test]
async fn the_webhook_patch_turns_each_pod_into_its_golden_output() {
    for (backend, flags) in common::BACKENDS {
        let state = common::app_state(common::golden_settings(flags), 1 << 20, None)
            .with_network_definitions(
                Box::new(common::FixedDefinitions(
                    common::golden_definitions().definitions,
                )),
                std::time::Duration::from_secs(30),
            );
        let app = router(std::sync::Arc::new(state));
        let pods_checked = webhook_matches(&app, backend).await;
        assert!(
            pods_checked >= 20,
            "{backend}: only {pods_checked} pods went through the webhook"
        );
    }
}

/// Sends every Pod input through `app`; returns how many it checked.
async fn webhook_matches(app: &axum::Router, backend: &str) -> usize {
    let mut pods_checked = 0;
    for name in inputs() {
        let input =
            fs::read_to_string(common::test_path(&format!("golden/input/{name}"))).expect("input");
        let golden = fs::read_to_string(golden_path(backend, &name)).expect("golden");
        let pods = documents(&input)
            .into_iter()
            .filter(|document| document["kind"] == "Pod");
        for (pod, expected) in pods.zip(documents(&golden)) {
            let uid = format!("uid-{name}");
            let answer = mutate(app, &common::admission_review(&uid, &pod, false)).await;
            let response = &answer["response"];
            assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(answer["kind"], "AdmissionReview");
            assert_eq!(response["uid"], uid.as_str());
            assert_eq!(response["allowed"], true);

            let mut patched = pod.clone();
            if let Some(patch) = response.get("patch") {
                assert_eq!(response["patchType"], "JSONPatch");
                let patch = patch
                    .as_str()
                    .expect("the patch is a base64 string, not an array");
                let patch: json_patch::Patch =
                    serde_json::from_slice(&BASE64.decode(patch).expect("base64"))
                        .expect("JSON Patch");
                json_patch::patch(&mut patched, &patch.0).expect("patch applies to the pod");
            }
            assert_eq!(
                patched, expected,
                "{backend}/{name}: webhook and offline injection disagree"
            );

            let dry_run = mutate(app, &common::admission_review(&uid, &pod, true)).await;
            assert_eq!(
                dry_run, answer,
                "{backend}/{name}: dryRun must get the same answer"
            );

            let reinvoked = mutate(app, &common::admission_review(&uid, &patched, false)).await;
            assert!(
                reinvoked["response"].get("patch").is_none(),
                "{backend}/{name}: reinvocation patched again: {reinvoked}"
            );
            pods_checked += 1;
        }
    }
    pods_checked
}
