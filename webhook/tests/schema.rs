//! Offline validation against the Kubernetes OpenAPI schema (PyPI `kubernetes-validate
//! --strict`, pinned in `tests/requirements.txt` and installed by `scripts/test`): the
//! kustomize builds of `manifests/` (the webhook, the agent and the admission policy),
//! `certs/cert-manager/`, `manifests/agent/` and `manifests/policy/`, every manifest file,
//! and every golden output of both backends, each object for the Kubernetes versions its
//! kind has (the admission policy from 1.31). Kinds from CRDs (NetworkAttachmentDefinition,
//! cert-manager, the Prometheus Operator's PrometheusRule) have no schema there and are the
//! only warnings allowed.
//!
//! Without `kubectl` or `kubernetes-validate` a test is skipped with a note, so a plain
//! `cargo test` works anywhere; `scripts/test` sets `IPMGR_REQUIRE_TOOLS`, which turns a
//! missing tool into a failure.

mod common;
#[path = "common/kube_tools.rs"]
mod kube_tools;

use std::fs;
use std::path::{Path, PathBuf};

use kube_tools::{
    kubectl, kubernetes_validate, kustomize_with_test_certificate, repo_root, validate,
};

/// The YAML files below `dir` (not kustomizations, not generated `tls/`).
fn yaml_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "tls") {
                yaml_files(&path, files);
            }
        } else if path.extension().is_some_and(|ext| ext == "yaml")
            && path
                .file_name()
                .is_some_and(|name| name != "kustomization.yaml")
        {
            files.push(path);
        }
    }
}

#[test]
fn the_validator_rejects_an_invalid_pod() {
    let Some(validator) = kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: a, image: b, restartPolicy: 7}]\n",
    )
    .expect("write");
    assert!(
        validate(&validator, &[bad]).is_err(),
        "a wrong type must fail validation"
    );
}

/// The admission policy is validated too, for the versions that have it: a wrong field fails,
/// and the policy as shipped passes although Kubernetes 1.29 has no such kind.
#[test]
fn the_validator_checks_the_admission_policy_from_its_version() {
    let Some(validator) = kubernetes_validate() else {
        return;
    };
    let policy = repo_root().join("manifests/policy/validatingadmissionpolicy.yaml");
    validate(&validator, std::slice::from_ref(&policy)).unwrap_or_else(|error| panic!("{error}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = fs::read_to_string(&policy).expect("policy");
    fs::write(
        &bad,
        text.replace(
            "  failurePolicy: Fail\n",
            "  failurePolicy: Fail\n  bogusField: 1\n",
        ),
    )
    .expect("write");
    let error = validate(&validator, &[bad]).expect_err("an unknown field must fail");
    assert!(
        error.contains("Kubernetes 1.31.0") && error.contains("bogusField"),
        "{error}"
    );
}

#[test]
fn kustomize_builds_validate_and_carry_the_generated_certificate() {
    let (Some(kubectl), Some(validator)) = (kubectl(), kubernetes_validate()) else {
        return;
    };
    let builds = [
        "manifests",
        "certs/cert-manager",
        "manifests/agent",
        "manifests/policy",
    ];
    let (texts, certificates) = kustomize_with_test_certificate(&kubectl, &builds);
    let work = tempfile::tempdir().expect("tempdir");
    let mut rendered = Vec::new();
    for (build, text) in builds.into_iter().zip(texts) {
        let file = work
            .path()
            .join(format!("{}.rendered.yaml", build.replace('/', "-")));
        fs::write(&file, &text).expect("write rendered");
        rendered.push((build, text, file));
    }
    let files: Vec<PathBuf> = rendered.iter().map(|(_, _, file)| file.clone()).collect();
    validate(&validator, &files).unwrap_or_else(|error| panic!("{error}"));

    let (_, default_build, _) = &rendered[0];
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
        "NetworkPolicy",
        "PriorityClass",
        "DaemonSet",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(
            default_build.contains(&format!("\nkind: {kind}\n")),
            "{kind} missing from the build"
        );
    }
    let (_, agent_build, _) = &rendered[2];
    let (_, policy_build, _) = &rendered[3];
    for (part, build) in [("agent", agent_build), ("policy", policy_build)] {
        for object in build.split("---\n") {
            for (installer, installed) in [
                ("manifests/", default_build),
                ("certs/cert-manager/", &rendered[1].1),
            ] {
                assert!(
                    installed.contains(object),
                    "{installer} installs the {part} as manifests/{part}/ does; missing:\n{object}"
                );
            }
        }
    }
    use base64::Engine as _;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&certificates.ca_pem);
    assert!(
        default_build.contains(&format!("caBundle: {ca_bundle}")),
        "caBundle not patched in"
    );
    assert!(
        default_build.contains("priorityClassName: multus-ipmgr-webhook\n"),
        "the Deployment uses the PriorityClass"
    );
    for build in [default_build, &rendered[1].1] {
        assert!(
            build.contains("values:\n      - kube-system\n      - multus-ipmgr\n"),
            "kube-system and the webhook's namespace are excluded by name:\n{build}"
        );
    }
    let (_, cert_manager_build, _) = &rendered[1];
    assert!(
        cert_manager_build.contains("cert-manager.io/inject-ca-from: multus-ipmgr/ipmgr-webhook")
    );
    assert!(cert_manager_build.contains("secretName: ipmgr-webhook-tls\n"));
    for part in [
        "kind: DaemonSet\n",
        "hostNetwork: true\n",
        "mountPropagation: HostToContainer\n",
        "pod-security.kubernetes.io/enforce: privileged\n",
        // The pod API, on the port the webhook's agent backend gives the helper.
        "- containerPort: 9472\n          name: pod-api\n",
        "automountServiceAccountToken: true\n",
        // Least privilege: pods and namespaces read-only, nodes listed (the holder of an
        // address on another instance), the nodes' status patched (the Multus address
        // capacity), nothing else.
        "rules:\n- apiGroups:\n  - \"\"\n  resources:\n  - pods\n  verbs:\n  - get\n  - list\n  - watch\n\
         - apiGroups:\n  - \"\"\n  resources:\n  - namespaces\n  verbs:\n  - get\n  - list\n  - watch\n\
         - apiGroups:\n  - \"\"\n  resources:\n  - nodes\n  verbs:\n  - list\n\
         - apiGroups:\n  - \"\"\n  resources:\n  - nodes/status\n  verbs:\n  - patch\n---",
    ] {
        assert!(
            agent_build.contains(part),
            "{part} missing from the agent's build"
        );
    }
}

/// Copies `file` into `dir` with the items of every `List` as documents of their own (the
/// validator has no schema for List).
fn expand_lists(file: &Path, dir: &Path) -> PathBuf {
    use serde::Deserialize as _;
    let text = fs::read_to_string(file).expect("read");
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(document).expect("YAML");
        match value["items"].as_array() {
            Some(items) if value["kind"] == "List" => documents.extend(items.iter().cloned()),
            _ => documents.push(value),
        }
    }
    let expanded: Vec<String> = documents
        .iter()
        .map(|document| serde_yaml::to_string(document).expect("YAML"))
        .collect();
    let target = dir.join(file.file_name().expect("file name"));
    fs::write(&target, expanded.join("---\n")).expect("write");
    target
}

#[test]
fn every_manifest_and_golden_output_validates() {
    let Some(validator) = kubernetes_validate() else {
        return;
    };
    let root = repo_root();
    let mut files = Vec::new();
    yaml_files(&root.join("manifests"), &mut files);
    yaml_files(&root.join("certs"), &mut files);
    let mut golden = Vec::new();
    yaml_files(&common::test_path("golden/output"), &mut golden);
    let expanded = tempfile::tempdir().expect("tempdir");
    files.extend(
        golden
            .iter()
            .map(|file| expand_lists(file, expanded.path())),
    );
    files.sort();
    assert!(
        files.len() >= 25,
        "expected the manifests and golden files, found {files:?}"
    );
    validate(&validator, &files).unwrap_or_else(|error| panic!("{error}"));
}
