//! The `ipmgr-webhook` binary's offline commands, run as a user would.

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &str) -> Output {
    run_with_env(args, &[], stdin)
}

fn run_with_env(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipmgr-webhook"))
        .args(args)
        .env("IPMGR_LOG_FORMAT", "text")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("binary exits")
}

/// The default backend, and the direct one chosen through its environment variable.
#[rstest::rstest]
#[case::agent(&[], "agent")]
#[case::direct(&[("IPMGR_HELPER_BACKEND", "direct")], "direct")]
fn inject_reads_stdin_and_reports_each_object(#[case] env: &[(&str, &str)], #[case] backend: &str) {
    let input =
        std::fs::read_to_string(common::test_path("golden/input/workloads.yaml")).expect("input");
    let output = run_with_env(
        &[
            "inject",
            "-f",
            "-",
            "--helper-image=registry.example.com/ipmgr-helper:0.1.0",
            "--pod-client-image=registry.example.com/ipmgr-pod:0.1.0",
            "--helper-arg=--allow-cidr=10.10.1.0/24",
        ],
        env,
        &input,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let golden = std::fs::read_to_string(common::test_path(&format!(
        "golden/output/{backend}/workloads.yaml"
    )))
    .expect("golden");
    assert_eq!(String::from_utf8_lossy(&output.stdout), golden);
    let report = String::from_utf8_lossy(&output.stderr);
    for line in [
        "deployment/web: injected (init)",
        "statefulset/db: injected (sidecar)",
        "daemonset/agent: injected (native-sidecar)",
        "replicaset/plain: skipped: no Multus networks requested",
        "cronjob/nightly: injected (init)",
        "service/web: not a workload, unchanged",
        "pod/listed-pod: injected (init)",
    ] {
        assert!(report.contains(line), "missing {line:?} in\n{report}");
    }
}

#[test]
fn inject_fails_on_a_pod_the_webhook_would_deny() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bad\n  annotations:\n    k8s.v1.cni.cncf.io/networks: n\n    multus-ipmgr.io/mode: later\nspec:\n  containers: [{name: app, image: busybox}]\n";
    let output = run(&["inject", "-f", "-"], pod);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("pod/bad"), "{error}");
    assert!(error.contains("multus-ipmgr.io/mode"), "{error}");
    assert!(
        output.stdout.is_empty(),
        "nothing is printed for a failed input"
    );
}

#[test]
fn inject_rejects_invalid_settings_and_files() {
    let output = run(&["inject", "-f", "/nonexistent.yaml"], "");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent.yaml"));
    let output = run(&["inject", "-f", "-", "--helper-memory-request=1Gi"], "");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("memory request 1Gi is larger than its limit 64Mi")
    );
}

#[test]
fn certs_writes_what_kustomize_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("tls");
    let output = run(
        &[
            "certs",
            "--out-dir",
            out.to_str().expect("UTF-8 path"),
            "--namespace",
            "net",
        ],
        "",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["tls.crt", "tls.key", "ca.crt", "cabundle-patch.yaml"] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(out.join("tls.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    assert!(String::from_utf8_lossy(&output.stdout).contains("ipmgr-webhook.net.svc"));
}

#[test]
fn every_configmap_key_is_a_serve_setting() {
    let configmap =
        std::fs::read_to_string(common::test_path("../../manifests/base/configmap.yaml"))
            .expect("configmap");
    let help = run(&["serve", "--help"], "");
    let help = String::from_utf8_lossy(&help.stdout);
    let keys: Vec<&str> = configmap
        .lines()
        .filter_map(|line| line.strip_prefix("  ")?.split_once(':'))
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("IPMGR_"))
        .collect();
    assert!(keys.len() >= 19, "{keys:?}");
    for key in keys {
        assert!(
            help.contains(&format!("[env: {key}=")),
            "{key} is not a serve setting"
        );
    }
}

/// The golden flags of `inject` (the golden files were made with them).
const GOLDEN_ARGS: [&str; 5] = [
    "--helper-image=registry.example.com/ipmgr-helper:0.1.0",
    "--pod-client-image=registry.example.com/ipmgr-pod:0.1.0",
    "--helper-arg=--allow-cidr=10.10.1.0/24",
    "--allow-image-override",
    "--allowed-image-prefix=mirror.example.com/",
];

/// With the definitions, by flag or by its environment variable (comma-separated), the
/// output is the golden file, requests included.
#[rstest::rstest]
#[case::flag(true)]
#[case::environment(false)]
fn inject_adds_the_requests_of_the_definitions_files(#[case] flag: bool) {
    let definitions = common::test_path("golden/network-attachment-definitions.yaml");
    let definitions = definitions.to_str().expect("UTF-8");
    let input = std::fs::read_to_string(common::test_path(
        "golden/input/pod-resources-other-namespace.yaml",
    ))
    .expect("input");
    let dir = tempfile::tempdir().expect("tempdir");
    let more = dir.path().join("more.yaml");
    std::fs::write(
        &more,
        "kind: NetworkAttachmentDefinition\nmetadata: {name: unused, namespace: other}\n",
    )
    .expect("file");
    let both = format!("{definitions},{}", more.display());
    let mut args = vec!["inject", "-f", "-"];
    args.extend(GOLDEN_ARGS);
    let flags = [
        format!("--network-attachment-definitions={definitions}"),
        format!("--network-attachment-definitions={}", more.display()),
    ];
    let env: Vec<(&str, &str)> = if flag {
        args.extend(flags.iter().map(String::as_str));
        Vec::new()
    } else {
        vec![("IPMGR_NETWORK_ATTACHMENT_DEFINITIONS", both.as_str())]
    };
    let output = run_with_env(&args, &env, &input);
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    let golden = std::fs::read_to_string(common::test_path(
        "golden/output/agent/pod-resources-other-namespace.yaml",
    ))
    .expect("golden");
    assert_eq!(String::from_utf8_lossy(&output.stdout), golden);
    assert!(!report.contains("note:"), "{report}");
}

#[test]
fn inject_without_definitions_adds_no_request_and_says_so() {
    let input = std::fs::read_to_string(common::test_path(
        "golden/input/pod-resources-one-network.yaml",
    ))
    .expect("input");
    let output = run(&["inject", "-f", "-"], &input);
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("multus-ipmgr.io/eth1"),
        "no requests without definitions"
    );
    let notes: Vec<&str> = report.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(
        notes,
        [
            "note: no multus-ipmgr.io/ resource requests added to the 1 injected workload(s): give the NetworkAttachmentDefinitions their networks name with --network-attachment-definitions FILE"
        ]
    );
    // Turned off: no requests and no note, even with files.
    let definitions = common::test_path("golden/network-attachment-definitions.yaml");
    let output = run(
        &[
            "inject",
            "-f",
            "-",
            "--network-resources=false",
            "--network-attachment-definitions",
            definitions.to_str().expect("UTF-8"),
        ],
        &input,
    );
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}");
    assert!(!report.contains("note:"), "{report}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("multus-ipmgr.io/eth1"));
    // A pod without networks gets no note either.
    let output = run(
        &["inject", "-f", "-"],
        &std::fs::read_to_string(common::test_path("golden/input/pod-no-networks.yaml"))
            .expect("input"),
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("note:"));
}

#[test]
fn inject_fails_naming_a_definition_missing_from_the_files() {
    let definitions = common::test_path("golden/network-attachment-definitions.yaml");
    let definitions = definitions.to_str().expect("UTF-8");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: apps\n  annotations:\n    k8s.v1.cni.cncf.io/networks: eth1-net@net1\nspec:\n  containers: [{name: app, image: busybox}]\n";
    let output = run(
        &[
            "inject",
            "-f",
            "-",
            "--network-attachment-definitions",
            definitions,
        ],
        pod,
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no output when it fails");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains(&format!(
            "pod/web: pod network \"eth1-net@net1\" (k8s.v1.cni.cncf.io/networks selection 1) names NetworkAttachmentDefinition apps/eth1-net, which is not in the --network-attachment-definitions files ({definitions}): add it to them or correct the annotation"
        )),
        "{error}"
    );
    let output = run(
        &[
            "inject",
            "-f",
            "-",
            "--network-attachment-definitions",
            "/nonexistent/nads.yaml",
        ],
        pod,
    );
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("cannot read /nonexistent/nads.yaml"),
        "{error}"
    );
}

/// `serve --network-resources=true` reads definitions from the API server: without a way to
/// reach it, it refuses to start, saying how to give it one or to turn the requests off.
#[test]
fn serve_without_an_api_configuration_refuses_to_start_saying_what_to_do() {
    let output = Command::new(env!("CARGO_BIN_EXE_ipmgr-webhook"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("IPMGR_LOG_FORMAT", "text")
        .env("IPMGR_NETWORK_RESOURCES", "true")
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("cannot configure the Kubernetes API for reading NetworkAttachmentDefinitions (--network-resources): give the webhook a service account token that may get them, or set --network-resources=false (IPMGR_NETWORK_RESOURCES)"),
        "{error}"
    );
    assert!(
        error.contains("KUBERNETES_SERVICE_HOST is not set"),
        "{error}"
    );
}

/// By default (`auto`) a `serve` without a Kubernetes API configuration (kustomize's files
/// mode of an older release, a demo) starts, and says at once that the requests are off and
/// how to turn them on or silence it.
#[test]
fn serve_without_an_api_configuration_by_default_starts_and_says_requests_are_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("tls");
    let out_dir = out.to_str().expect("UTF-8 path");
    let output = run(&["certs", "--out-dir", out_dir], "");
    assert!(output.status.success());
    let mut server = Command::new(env!("CARGO_BIN_EXE_ipmgr-webhook"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("IPMGR_LOG_FORMAT", "text")
        .env("IPMGR_TLS_CERT", out.join("tls.crt"))
        .env("IPMGR_TLS_KEY", out.join("tls.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = server.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let warning = lines
        .by_ref()
        .map_while(Result::ok)
        .take(20)
        .find(|line| line.contains("no Kubernetes API configuration"));
    let running = server.try_wait().expect("status").is_none();
    server.kill().expect("kill");
    server.wait().expect("reaped");
    let warning = warning.expect("the warning");
    assert!(running, "it keeps serving");
    assert!(
        warning.contains("capacity-aware scheduling off")
            && warning.contains("--network-resources=false"),
        "{warning}"
    );
}
