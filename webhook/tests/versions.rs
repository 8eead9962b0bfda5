//! One version: the workspace's (`Cargo.toml` `[workspace.package] version`) is the source,
//! and everything that names a version of this project must agree with it. Every crate takes
//! it (`version.workspace = true`), so the binaries' `--version` and the webhook's default
//! helper and pod client images (`ghcr.io/multus-ipmgr/ipmgr-helper:<crate version>`,
//! `.../ipmgr-pod:<crate version>`) follow; scripts/images and scripts/release tag the
//! images with it; the kustomize image tags of `manifests/` (the webhook's Deployment, the
//! agent's DaemonSet, `IPMGR_HELPER_IMAGE` and `IPMGR_POD_CLIENT_IMAGE` in the ConfigMap)
//! and the chart's `version` and `appVersion` are written by hand, and checked here. A
//! failure names the file that differs.

use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// `[workspace.package] version` of the root Cargo.toml.
fn workspace_version(root: &Path) -> String {
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[workspace.package]"
            && let Some(value) = line.strip_prefix("version")
        {
            let value = value.trim_start().trim_start_matches('=').trim();
            return value.trim_matches('"').to_owned();
        }
    }
    panic!("Cargo.toml has no [workspace.package] version");
}

/// Every YAML file under `directory`, recursively, in a stable order.
fn yaml_files(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(directory)
        .expect("directory")
        .map(|entry| entry.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml" || extension == "yml")
        {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_crate_takes_the_workspace_version() {
    let root = repo_root();
    let version = workspace_version(&root);
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        version,
        "webhook/Cargo.toml: the crate's version is not the workspace's"
    );
    for member in [
        "webhook",
        "helper",
        "pod",
        "crates/contract",
        "crates/eni",
        "crates/injector",
        "crates/testbed",
    ] {
        let path = root.join(member).join("Cargo.toml");
        let manifest = fs::read_to_string(&path).expect("member Cargo.toml");
        assert!(
            manifest
                .lines()
                .any(|line| line.trim() == "version.workspace = true"),
            "{member}/Cargo.toml: set `version.workspace = true` (the workspace's {version})"
        );
    }
}

#[test]
fn the_kustomize_image_tags_are_the_workspace_version() {
    let root = repo_root();
    let version = workspace_version(&root);
    let mut references = Vec::new();
    for file in yaml_files(&root.join("manifests")) {
        let text = fs::read_to_string(&file).expect("manifest");
        let relative = file.strip_prefix(&root).expect("under the root").display();
        for line in text.lines() {
            let Some(at) = line.find("ghcr.io/multus-ipmgr/") else {
                continue;
            };
            let reference = line[at..]
                .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .next()
                .unwrap_or_default();
            let (image, tag) = reference.rsplit_once(':').unwrap_or((reference, ""));
            assert_eq!(
                tag, version,
                "{relative}: {image} is tagged {tag:?}, the workspace version (Cargo.toml) is {version}"
            );
            references.push(format!("{relative} {image}"));
        }
    }
    for expected in [
        "manifests/base/deployment.yaml ghcr.io/multus-ipmgr/ipmgr-webhook",
        "manifests/agent/daemonset.yaml ghcr.io/multus-ipmgr/ipmgr-helper",
        "manifests/base/configmap.yaml ghcr.io/multus-ipmgr/ipmgr-helper",
        "manifests/base/configmap.yaml ghcr.io/multus-ipmgr/ipmgr-pod",
    ] {
        assert!(
            references.iter().any(|found| found == expected),
            "no {expected} reference found (checked: {references:?})"
        );
    }
}

#[test]
fn the_charts_version_and_app_version_are_the_workspace_version() {
    let root = repo_root();
    let version = workspace_version(&root);
    let path = root.join("charts/multus-ipmgr/Chart.yaml");
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(&path).expect("Chart.yaml")).expect("YAML");
    for key in ["version", "appVersion"] {
        assert_eq!(
            chart[key].as_str(),
            Some(version.as_str()),
            "charts/multus-ipmgr/Chart.yaml: {key} is not the workspace version (Cargo.toml) {version}"
        );
    }
}
