//! The external tools of the manifest tests (`kubectl` for kustomize, PyPI
//! `kubernetes-validate`, helm from `scripts/helm.sh`): found or skipped with a note, or a
//! failure when `IPMGR_REQUIRE_TOOLS` is set (as `scripts/test` does).

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize as _;
use serde_json::Value;

use ipmgr_webhook::certs::{GeneratedCertificates, ServiceIdentity, write_for_kustomize};

/// Oldest version with native sidecars on by default, and the newest the validator knows.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];
/// Kinds from CRDs: no schema in the validator, the only warnings allowed.
pub const CRD_KINDS: [&str; 4] = [
    "NetworkAttachmentDefinition",
    "Issuer",
    "Certificate",
    "PrometheusRule",
];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The release namespace of the chart tests' renderings.
pub const NAMESPACE: &str = "multus-ipmgr";

/// `charts/multus-ipmgr`.
pub fn chart() -> PathBuf {
    repo_root().join("charts/multus-ipmgr")
}

/// A program's stdout and stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs helm with its cache, configuration and data in `home` (nothing of the user's).
pub fn run_helm(helm: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs")
}

/// `helm template multus-ipmgr charts/multus-ipmgr -n multus-ipmgr` with `values` files.
pub fn template(helm: &str, home: &Path, values: &[&Path]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template".to_owned(),
        "multus-ipmgr".to_owned(),
        chart.display().to_string(),
        "--namespace".to_owned(),
        NAMESPACE.to_owned(),
    ];
    for file in values {
        args.push("--values".to_owned());
        args.push(file.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run_helm(helm, home, &args);
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("UTF-8"))
    } else {
        Err(text(&output))
    }
}

/// Writes `yaml` to `dir/name`, for `--values`.
pub fn values_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let file = dir.join(name);
    fs::write(&file, yaml).expect("write values");
    file
}

/// The documents of a YAML stream (empty ones left out).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

/// The program `variable` names, else the first of `candidates` that runs; `None` (with a
/// note) when none does, or a panic when `IPMGR_REQUIRE_TOOLS` is set.
pub fn tool(variable: &str, candidates: &[String], install: &str) -> Option<String> {
    let name = candidates.last().cloned().unwrap_or_default();
    let candidates = std::env::var(variable)
        .map(|program| vec![program])
        .unwrap_or_else(|_| candidates.to_vec());
    let found = candidates.into_iter().find(|program| {
        Command::new(program)
            .arg("--help")
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if found.is_none() {
        let note = format!("{name} not found: {install} (or set {variable})");
        assert!(std::env::var_os("IPMGR_REQUIRE_TOOLS").is_none(), "{note}");
        eprintln!("skipped: {note}");
    }
    found
}

pub fn kubernetes_validate() -> Option<String> {
    let venv = repo_root().join(".venv/bin/kubernetes-validate");
    tool(
        "KUBERNETES_VALIDATE",
        &[venv.display().to_string(), "kubernetes-validate".to_owned()],
        "run scripts/test, or pip install -r tests/requirements.txt",
    )
}

pub fn kubectl() -> Option<String> {
    tool(
        "KUBECTL",
        &["kubectl".to_owned()],
        "install kubectl (it carries kustomize)",
    )
}

pub fn helm() -> Option<String> {
    let venv = repo_root().join(".venv/bin/helm");
    tool(
        "HELM",
        &[venv.display().to_string(), "helm".to_owned()],
        "run scripts/test, or scripts/helm.sh after scripts/venv.sh",
    )
}

/// Kinds the oldest of [`KUBERNETES_VERSIONS`] lacks, with the version each is validated
/// from (and for the newest): the admission policy needs 1.31 for its CEL IP and CIDR
/// functions (ValidatingAdmissionPolicy v1 itself is GA in 1.30).
pub const NEWER_KINDS: [(&str, &str); 2] = [
    ("ValidatingAdmissionPolicy", "1.31.0"),
    ("ValidatingAdmissionPolicyBinding", "1.31.0"),
];

/// `major.minor.patch` as numbers, to compare versions.
fn version_number(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map(|part| part.parse().expect("a numeric version"))
        .collect()
}

/// Whether a document of `kind` is validated for Kubernetes `version`: a kind of
/// [`NEWER_KINDS`] from its version on, any other for [`KUBERNETES_VERSIONS`].
fn validated_for(kind: &str, version: &str) -> bool {
    match NEWER_KINDS.iter().find(|(newer, _)| *newer == kind) {
        Some((_, since)) => version_number(version) >= version_number(since),
        None => KUBERNETES_VERSIONS.contains(&version),
    }
}

/// Validates `files` with `validator` for every version each document's kind has (see
/// [`validated_for`]); an error for failures and for warnings other than CRDs.
pub fn validate(validator: &str, files: &[PathBuf]) -> Result<(), String> {
    let parsed: Vec<(&PathBuf, Vec<Value>)> = files
        .iter()
        .map(|file| {
            let text = fs::read_to_string(file).expect("read a file to validate");
            (file, documents(&text))
        })
        .collect();
    let mut versions: Vec<&str> = KUBERNETES_VERSIONS.to_vec();
    versions.extend(NEWER_KINDS.iter().map(|(_, since)| *since));
    versions.sort_by_key(|version| version_number(version));
    versions.dedup();
    let subsets = tempfile::tempdir().expect("tempdir");
    for version in versions {
        let mut selected = Vec::new();
        for (index, (file, documents)) in parsed.iter().enumerate() {
            let kept: Vec<&Value> = documents
                .iter()
                .filter(|document| validated_for(document["kind"].as_str().unwrap_or(""), version))
                .collect();
            if kept.len() == documents.len() {
                selected.push((*file).clone());
            } else if !kept.is_empty() {
                let name = file.file_name().expect("file name").to_string_lossy();
                let subset = subsets.path().join(format!("{version}-{index}-{name}"));
                let yaml: Vec<String> = kept
                    .iter()
                    .map(|document| serde_yaml::to_string(document).expect("YAML"))
                    .collect();
                fs::write(&subset, yaml.join("---\n")).expect("write a subset");
                selected.push(subset);
            }
        }
        if !selected.is_empty() {
            validate_version(validator, version, &selected)?;
        }
    }
    Ok(())
}

/// Validates `files` for Kubernetes `version`.
fn validate_version(validator: &str, version: &str, files: &[PathBuf]) -> Result<(), String> {
    let output = Command::new(validator)
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    let text = text(&output);
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("INFO "))
        .filter(|line| {
            !(line.starts_with("WARN ")
                && CRD_KINDS
                    .iter()
                    .any(|kind| line.contains(&format!("kind {kind} "))))
        })
        .filter(|line| !line.trim().is_empty())
        .collect();
    if !output.status.success() || !unexpected.is_empty() {
        return Err(format!("Kubernetes {version}:\n{}", unexpected.join("\n")));
    }
    Ok(())
}

/// Copies the tree `from` to `to`, leaving out `tls/` directories (generated certificates).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            if entry.file_name() != "tls" {
                copy_tree(&entry.path(), &target);
            }
        } else {
            fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// The kustomize builds `builds` (directories relative to the repository) of a copy of
/// manifests/ and certs/ with a fresh test certificate in manifests/tls, as
/// `certs/generate` writes it: each build's YAML, and the certificate.
pub fn kustomize_with_test_certificate(
    kubectl: &str,
    builds: &[&str],
) -> (Vec<String>, GeneratedCertificates) {
    let root = repo_root();
    let work = tempfile::tempdir().expect("tempdir");
    copy_tree(&root.join("manifests"), &work.path().join("manifests"));
    copy_tree(&root.join("certs"), &work.path().join("certs"));
    let certificates = ServiceIdentity {
        service: "ipmgr-webhook".to_owned(),
        namespace: "multus-ipmgr".to_owned(),
        valid_days: 30,
    }
    .generate()
    .expect("certificates");
    write_for_kustomize(&work.path().join("manifests/tls"), &certificates).expect("written");
    let rendered = builds
        .iter()
        .map(|build| {
            let output = Command::new(kubectl)
                .arg("kustomize")
                .arg(work.path().join(build))
                .output()
                .expect("kubectl kustomize runs");
            assert!(
                output.status.success(),
                "kustomize {build}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).expect("UTF-8")
        })
        .collect();
    (rendered, certificates)
}
