//! The Helm chart (`charts/multus-ipmgr/`): `helm lint --strict` clean; with default values
//! and `certs.mode existingSecret` `helm template` renders the objects `kubectl kustomize
//! manifests/` renders (parsed and compared object by object, normalised as [`normalise`]
//! says), and with certManager those of `certs/cert-manager/`; every certificate mode renders
//! the same bytes on every run (nothing random, nothing looked up: Argo CD and Flux render
//! with `helm template`) and every rendered object passes `kubernetes-validate --strict`;
//! managed, the default, renders the webhook's empty Secret, RBAC for exactly that Secret and
//! its MutatingWebhookConfiguration, no caBundle, and egress to the API server; with
//! webhook.networkResources, the default, every mode lets the webhook get
//! NetworkAttachmentDefinitions, mount its token and reach the API server; the removed
//! selfSigned fails naming its replacement; bad values fail with the schema's message; the
//! chart's version and appVersion are the workspace version; every webhook setting the chart
//! can write is one the webhook reads, with values it accepts.
//!
//! helm comes from `scripts/helm.sh` (`.venv/bin/helm`, or `HELM`), kubectl and
//! kubernetes-validate as for `schema.rs`. Without them a test is skipped with a note;
//! `scripts/test` sets `IPMGR_REQUIRE_TOOLS`, which turns a missing tool into a failure.

mod common;
#[path = "common/kube_tools.rs"]
mod kube_tools;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Command;

use ipmgr_webhook::certs::ServiceIdentity;
use serde_json::Value;

use rstest::rstest;

use kube_tools::{
    NAMESPACE, chart, documents, helm, kubectl, kubernetes_validate,
    kustomize_with_test_certificate, repo_root, run_helm, template, text, validate, values_file,
};

/// kustomize's secretGenerator suffix: `ipmgr-webhook-tls-k75gmkgh8m` is `ipmgr-webhook-tls`.
fn without_hash(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((base, hash))
            if base == "ipmgr-webhook-tls"
                && hash.len() == 10
                && hash.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            base.to_owned()
        }
        _ => name.to_owned(),
    }
}

/// The objects keyed by kind/namespace/name, normalised: kustomize's name suffix of the TLS
/// Secret dropped (in its name and the Deployment's volume), and `IPMGR_CERTIFICATES=files`
/// left out of the webhook's environment (the chart names the mode it mounts a Secret in;
/// manifests/ leaves the webhook's default, files). The chart adds no labels of its own, so
/// labels are compared as they are.
fn normalise(yaml: &str) -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for mut object in documents(yaml) {
        let name = without_hash(object["metadata"]["name"].as_str().expect("name"));
        object["metadata"]["name"] = Value::String(name.clone());
        if object["kind"] == "Deployment" {
            let pod = &mut object["spec"]["template"]["spec"];
            for volume in pod["volumes"].as_array_mut().expect("volumes") {
                if let Some(secret) = volume["secret"]["secretName"].as_str() {
                    volume["secret"]["secretName"] = Value::String(without_hash(secret));
                }
            }
            for container in pod["containers"].as_array_mut().expect("containers") {
                if let Some(env) = container["env"].as_array_mut() {
                    env.retain(|variable| {
                        *variable
                            != serde_json::json!({"name": "IPMGR_CERTIFICATES", "value": "files"})
                    });
                }
            }
        }
        let key = format!(
            "{}/{}/{}",
            object["kind"].as_str().expect("kind"),
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            name
        );
        assert!(
            objects.insert(key.clone(), sorted(object)).is_none(),
            "{key} twice"
        );
    }
    objects
}

/// `value` with the keys of every map in order, so that renderings compare as text.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Compares two normalised renderings, naming every object that differs.
fn assert_same_objects(kustomize: &BTreeMap<String, Value>, chart: &BTreeMap<String, Value>) {
    let only_kustomize: Vec<&String> = kustomize
        .keys()
        .filter(|k| !chart.contains_key(*k))
        .collect();
    let only_chart: Vec<&String> = chart
        .keys()
        .filter(|k| !kustomize.contains_key(*k))
        .collect();
    assert!(
        only_kustomize.is_empty() && only_chart.is_empty(),
        "only in the kustomize build: {only_kustomize:?}; only in the chart: {only_chart:?}"
    );
    for (key, expected) in kustomize {
        pretty_assertions::assert_eq!(
            serde_yaml::to_string(expected).expect("YAML"),
            serde_yaml::to_string(&chart[key]).expect("YAML"),
            "{key}: kustomize build (left) and chart (right) differ"
        );
    }
}

/// Values that set every optional setting of the chart (and a non-default choice of each).
const EVERY_SETTING: &str = r#"
namespace: {create: true}
webhook:
  image: {repository: registry.example.com/ipmgr-webhook, tag: "9.9.9", pullPolicy: Always}
  replicas: 3
  port: 9443
  log: debug
  logFormat: text
  limits: {drainSeconds: 15, headerTimeoutSeconds: 1.5, maxBodyBytes: 1048576}
  extraConfig: {IPMGR_MAX_CONNECTIONS: "128"}
  nodeSelector: {kubernetes.io/os: linux}
  tolerations: [{key: dedicated, operator: Equal, value: system, effect: NoSchedule}]
  networkPolicy: {apiServerCIDRs: [10.0.0.0/28, 10.0.0.16/28], apiServerPort: 6443}
  networkResources: false
  failurePolicy: Ignore
  timeoutSeconds: 3
  excludedNamespaces: [kube-system, monitoring]
certs:
  managed: {caValidDays: 730, certValidDays: 90, rotationOverlapSeconds: 120, checkSeconds: 2.5}
helper:
  image: {repository: registry.example.com/ipmgr-helper, tag: "9.9.9", pullPolicy: Always}
  command: /usr/local/bin/ipmgr-helper
  args: [--allow-cidr=10.10.1.0/24]
  defaultMode: native-sidecar
  log: debug
  runAsUser: 1337
  allowImageOverride: true
  allowedImagePrefixes: [mirror.example.com/, registry.example.com/]
  backend: direct
  meshExclusions: istio
  waitSeconds: 30
  ec2RetrySeconds: 60
  metadataRetrySeconds: 20
podClient:
  image: {repository: registry.example.com/ipmgr-pod, tag: "9.9.9"}
  command: /usr/local/bin/ipmgr-pod
agent:
  namespace: {name: ipmgr-agent, create: true}
  serviceAccount: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::111122223333:role/ipmgr-agent"}}
  podApiPort: 19472
  metricsPort: 19471
  netnsDir: /run/netns
  releaseGraceSeconds: 300
  logFormat: text
  resyncSeconds: 60
  releaseScans: 3
  allowCidrs: [10.10.0.0/16]
  keepCidrs: [10.10.9.0/24]
  dryRun: true
  claims: any
  batchWindowMs: 50
  primaryInterface: eth0
  allowUntaggedEnis: true
  ec2: {retrySeconds: 600, backoffInitialMs: 500, throttleBackoffMinMs: 6000, backoffMaxSeconds: 30, metadataRetrySeconds: 60}
  extraEnv: [{name: HTTPS_PROXY, value: "http://proxy.example.com:3128"}]
  maxUnavailable: 1
policy:
  networkStatusWriters:
    usernames: [system:serviceaccount:multus-system:multus]
    groups: [multus-writers]
    nodeUsernamePrefixes: ["system:multus:", "system:node:"]
"#;

#[test]
fn chart_version_and_app_version_are_the_workspace_version() {
    let chart: Value =
        serde_yaml::from_str(&fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("YAML");
    // ipmgr-webhook takes its version from [workspace.package] (version.workspace = true).
    let workspace = env!("CARGO_PKG_VERSION");
    let cargo = fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let package = cargo
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    assert!(
        package
            .lines()
            .take_while(|line| !line.starts_with('['))
            .any(|line| line.replace(' ', "") == format!("version=\"{workspace}\"")),
        "Cargo.toml [workspace.package] version is {workspace}"
    );
    assert_eq!(chart["version"], workspace, "Chart.yaml version");
    assert_eq!(chart["appVersion"], workspace, "Chart.yaml appVersion");
    assert_eq!(chart["apiVersion"], "v2");
}

#[test]
fn helm_lint_strict_is_clean() {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let every = values_file(home.path(), "every.yaml", EVERY_SETTING);
    let chart = chart().display().to_string();
    for extra in [vec![], vec!["--values", every.to_str().expect("UTF-8")]] {
        let mut args = vec!["lint", "--strict", &chart];
        args.extend(extra);
        let output = run_helm(&helm, home.path(), &args);
        let report = text(&output);
        assert!(output.status.success(), "helm {args:?}:\n{report}");
        assert!(
            report.contains("1 chart(s) linted, 0 chart(s) failed")
                && !report.contains("[WARNING]")
                && !report.contains("[ERROR]"),
            "helm {args:?}:\n{report}"
        );
    }
}

/// manifests/ is the chart with its default values and certs.mode existingSecret, the Secret
/// being the one kustomize generates (ipmgr-webhook-tls, from manifests/tls/) and the caBundle
/// its CA; certs/cert-manager/ is the chart with certs.mode certManager.
#[test]
fn the_kustomize_builds_are_the_chart_with_a_secret_or_cert_manager() {
    let (Some(helm), Some(kubectl)) = (helm(), kubectl()) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let (builds, certificates) =
        kustomize_with_test_certificate(&kubectl, &["manifests", "certs/cert-manager"]);
    let mut expected = normalise(&builds[0]);
    assert!(
        expected
            .remove(&format!("Secret/{NAMESPACE}/ipmgr-webhook-tls"))
            .is_some(),
        "kustomize generates the Secret ipmgr-webhook-tls"
    );
    let existing_secret = format!(
        "certs: {{mode: existingSecret, existingSecret: {{name: ipmgr-webhook-tls, caBundle: {}}}}}\n",
        base64_of(&certificates.ca_pem)
    );

    // Helm installs into the release namespace, created by `--create-namespace`: the chart
    // renders the webhook's Namespace only with namespace.create.
    let with_namespace = values_file(
        home.path(),
        "ns.yaml",
        &format!("namespace: {{create: true}}\n{existing_secret}"),
    );
    let rendered = normalise(&template(&helm, home.path(), &[&with_namespace]).expect("renders"));
    assert_same_objects(&expected, &rendered);

    let namespace = expected
        .remove(&format!("Namespace//{NAMESPACE}"))
        .expect("kustomize renders the Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let without_namespace = values_file(home.path(), "secret.yaml", &existing_secret);
    let rendered =
        normalise(&template(&helm, home.path(), &[&without_namespace]).expect("renders"));
    assert_same_objects(&expected, &rendered);

    // cert-manager: the objects of certs/cert-manager/, the caBundle left to its cainjector.
    let cert_manager = values_file(
        home.path(),
        "cm.yaml",
        "namespace: {create: true}\ncerts: {mode: certManager}\n",
    );
    let rendered = normalise(&template(&helm, home.path(), &[&cert_manager]).expect("renders"));
    assert_same_objects(&normalise(&builds[1]), &rendered);
    let webhook = &rendered["MutatingWebhookConfiguration//multus-ipmgr"];
    assert!(
        webhook["webhooks"][0]["clientConfig"]["caBundle"].is_null(),
        "cert-manager fills the caBundle"
    );

    // The images are the chart's appVersion.
    let defaults = template(&helm, home.path(), &[]).expect("renders");
    let version = env!("CARGO_PKG_VERSION");
    for image in [
        format!("image: ghcr.io/multus-ipmgr/ipmgr-webhook:{version}\n"),
        format!("image: ghcr.io/multus-ipmgr/ipmgr-helper:{version}\n"),
        format!("IPMGR_HELPER_IMAGE: \"ghcr.io/multus-ipmgr/ipmgr-helper:{version}\"\n"),
        format!("IPMGR_POD_CLIENT_IMAGE: \"ghcr.io/multus-ipmgr/ipmgr-pod:{version}\"\n"),
    ] {
        assert!(defaults.contains(&image), "{image} missing");
    }
}

/// The certificate modes of the chart (certs.mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The default: the webhook keeps its certificates in a Secret and writes the caBundle.
    Managed,
    CertManager,
    /// The Secret my-tls, and a real CA as its caBundle.
    ExistingSecret,
}

impl Mode {
    /// The keys under `certs:` that choose this mode (none for the default).
    fn certs(self) -> String {
        match self {
            Self::Managed => String::new(),
            Self::CertManager => "  mode: certManager\n".to_owned(),
            Self::ExistingSecret => format!(
                "  mode: existingSecret\n  existingSecret: {{name: my-tls, caBundle: {}}}\n",
                test_ca_bundle()
            ),
        }
    }

    /// The values that choose this mode.
    fn values(self) -> String {
        match self.certs() {
            certs if certs.is_empty() => String::new(),
            certs => format!("certs:\n{certs}"),
        }
    }

    /// [`EVERY_SETTING`] in this mode.
    fn every_setting(self) -> String {
        EVERY_SETTING.replacen("\ncerts:\n", &format!("\ncerts:\n{}", self.certs()), 1)
    }

    /// The values that choose this mode, and webhook.networkResources `network_resources`
    /// with the other `webhook` values of `webhook` (flow-style keys, or empty).
    fn with(self, network_resources: bool, webhook: &str) -> String {
        let mut keys = vec![format!("networkResources: {network_resources}")];
        keys.extend((!webhook.is_empty()).then(|| webhook.to_owned()));
        format!("{}webhook: {{{}}}\n", self.values(), keys.join(", "))
    }
}

/// `values` (which set webhook.networkResources, or leave it to its default, true) with
/// webhook.networkResources `network_resources`.
fn with_network_resources(values: &str, network_resources: bool) -> String {
    let set = format!("  networkResources: {network_resources}\n");
    if values.contains("  networkResources: ") {
        values
            .replace("  networkResources: true\n", &set)
            .replace("  networkResources: false\n", &set)
    } else if network_resources {
        values.to_owned()
    } else {
        format!("{values}webhook: {{networkResources: false}}\n")
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A CA for ipmgr-webhook.multus-ipmgr.svc, base64-encoded: a caBundle for existingSecret.
fn test_ca_bundle() -> String {
    let pair = ServiceIdentity {
        service: "ipmgr-webhook".to_owned(),
        namespace: NAMESPACE.to_owned(),
        valid_days: 30,
    }
    .generate()
    .expect("certificates");
    base64_of(&pair.ca_pem)
}

/// `helm template` with `values` (YAML), parsed; panics with helm's message if it fails.
fn render(helm: &str, values: &str) -> Vec<Value> {
    let home = tempfile::tempdir().expect("tempdir");
    let file = values_file(home.path(), "values.yaml", values);
    documents(&template(helm, home.path(), &[&file]).unwrap_or_else(|error| panic!("{error}")))
}

/// The object of `kind` named `name` in a rendering.
fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} missing"))
}

/// The rendered objects of `kind` that belong to the webhook (its labels).
fn webhook_objects<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| {
            o["kind"] == kind
                && o["metadata"]["labels"]["app.kubernetes.io/name"] == "ipmgr-webhook"
        })
        .collect()
}

#[test]
fn every_certificate_mode_renders_and_validates() {
    let Some(helm) = helm() else {
        return;
    };
    let validator = kubernetes_validate();
    let home = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("managed.yaml", Mode::Managed.values()),
        ("cert-manager.yaml", Mode::CertManager.values()),
        ("existing-secret.yaml", Mode::ExistingSecret.values()),
        ("every-setting.yaml", EVERY_SETTING.to_owned()),
        (
            "every-setting-existing-secret.yaml",
            Mode::ExistingSecret.every_setting(),
        ),
        (
            "no-agent.yaml",
            "agent: {enabled: false}\nwebhook: {networkPolicy: {enabled: false}}\n".to_owned(),
        ),
        ("no-policy.yaml", "policy: {enabled: false}\n".to_owned()),
    ];
    let mut files = Vec::new();
    for (name, values) in &cases {
        let values = values_file(home.path(), &format!("values-{name}"), values);
        let rendered = template(&helm, home.path(), &[&values])
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let kinds: BTreeSet<String> = documents(&rendered)
            .iter()
            .map(|o| o["kind"].as_str().expect("kind").to_owned())
            .collect();
        match *name {
            "managed.yaml" | "every-setting.yaml" => {
                assert!(
                    rendered.contains("\n  name: ipmgr-webhook-certs\n")
                        && kinds.contains("Role")
                        && kinds.contains("RoleBinding"),
                    "{name}: the managed Secret and its RBAC"
                );
                assert!(!kinds.contains("Certificate"), "{name}: {kinds:?}");
            }
            "cert-manager.yaml" => {
                assert!(kinds.contains("Certificate") && kinds.contains("Issuer"));
                assert!(!kinds.contains("Secret"), "cert-manager writes the Secret");
                assert!(
                    rendered
                        .contains("cert-manager.io/inject-ca-from: multus-ipmgr/ipmgr-webhook\n")
                );
            }
            "existing-secret.yaml" | "every-setting-existing-secret.yaml" => {
                assert!(!kinds.contains("Secret"), "the user's Secret");
                assert!(rendered.contains("secretName: my-tls\n"));
                assert!(rendered.contains("caBundle: "));
            }
            "no-agent.yaml" => {
                assert!(!kinds.contains("DaemonSet") && !kinds.contains("NetworkPolicy"));
            }
            "no-policy.yaml" => {
                assert!(
                    kinds
                        .iter()
                        .all(|kind| !kind.starts_with("ValidatingAdmissionPolicy")),
                    "{kinds:?}"
                );
            }
            _ => {}
        }
        if *name != "no-policy.yaml" {
            for kind in [
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            ] {
                assert!(kinds.contains(kind), "{name}: {kind} missing");
            }
        }
        if *name == "every-setting.yaml" {
            for part in [
                "namespace: ipmgr-agent\n",
                "- name: IPMGR_POD_LISTEN\n              value: \"[::]:19472\"\n",
                "IPMGR_AGENT_PORT: \"19472\"\n",
                "IPMGR_HELPER_IMAGE: \"registry.example.com/ipmgr-helper:9.9.9\"\n",
                "IPMGR_POD_CLIENT_IMAGE: \"registry.example.com/ipmgr-pod:9.9.9\"\n",
                "IPMGR_POD_CLIENT_COMMAND: \"/usr/local/bin/ipmgr-pod\"\n",
                "IPMGR_HEADER_TIMEOUT_SECONDS: \"1.5\"\n",
                "IPMGR_MAX_BODY_BYTES: \"1048576\"\n",
                "path: /run/netns\n",
                "- \"monitoring\"\n",
                "eks.amazonaws.com/role-arn:",
                "expression: \"[\\\"system:serviceaccount:multus-system:multus\\\"]\"\n",
                "expression: \"[\\\"multus-writers\\\"]\"\n",
                "expression: \"[\\\"system:multus:\\\",\\\"system:node:\\\"]\"\n",
                "- name: IPMGR_CA_VALID_DAYS\n              value: \"730\"\n",
                "- name: IPMGR_CERT_VALID_DAYS\n              value: \"90\"\n",
                "- name: IPMGR_ROTATION_OVERLAP_SECONDS\n              value: \"120\"\n",
                "- name: IPMGR_CERT_CHECK_SECONDS\n              value: \"2.5\"\n",
                "port: 6443\n",
            ] {
                assert!(rendered.contains(part), "{part} missing:\n{rendered}");
            }
        }
        let file = home.path().join(format!("rendered-{name}"));
        fs::write(&file, &rendered).expect("write");
        files.push(file);
    }
    // existingSecret without its name fails with the schema's message.
    let incomplete = values_file(
        home.path(),
        "incomplete.yaml",
        "certs: {mode: existingSecret}\n",
    );
    let error = template(&helm, home.path(), &[&incomplete]).expect_err("refused");
    assert!(
        error.contains(
            "certs.existingSecret.name: String length must be greater than or equal to 1"
        ),
        "{error}"
    );
    if let Some(validator) = validator {
        validate(&validator, &files).unwrap_or_else(|error| panic!("{error}"));
    }
}

/// Argo CD and Flux render with `helm template`, which sees no cluster: every mode must
/// render the same bytes every time, or the application is never in sync (and, as with
/// the removed selfSigned, every sync makes a new CA). Two runs, separate processes.
#[rstest]
fn helm_template_renders_the_same_bytes_every_time(
    #[values(Mode::Managed, Mode::CertManager, Mode::ExistingSecret)] mode: Mode,
    #[values(false, true)] every_setting: bool,
    #[values(false, true)] network_resources: bool,
) {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let values = if every_setting {
        mode.every_setting()
    } else {
        mode.values()
    };
    let values = with_network_resources(&values, network_resources);
    let file = values_file(home.path(), "values.yaml", &values);
    let first = template(&helm, home.path(), &[&file]).expect("renders");
    let second = template(&helm, home.path(), &[&file]).expect("renders");
    assert!(!first.is_empty());
    pretty_assertions::assert_eq!(first, second, "{mode:?}: two renderings differ");
}

/// Nothing in the templates can make a rendering differ from the last: no cluster lookup,
/// no generated keys or certificates, no random strings, no clock.
#[test]
fn the_templates_neither_look_up_nor_generate_anything() {
    const FORBIDDEN: [&str; 16] = [
        "lookup",
        "genCA",
        "genCAWithKey",
        "genSelfSignedCert",
        "genSelfSignedCertWithKey",
        "genSignedCert",
        "genSignedCertWithKey",
        "genPrivateKey",
        "derivePassword",
        "randAlphaNum",
        "randAlpha",
        "randNumeric",
        "randAscii",
        "randBytes",
        "uuidv4",
        "now",
    ];
    let templates = chart().join("templates");
    let mut checked = 0;
    for entry in fs::read_dir(&templates).expect("templates") {
        let path = entry.expect("entry").path();
        let text = fs::read_to_string(&path).expect("read a template");
        // The actions ({{ ... }}), split into identifiers.
        let mut rest = text.as_str();
        while let Some(start) = rest.find("{{") {
            let end = rest[start..].find("}}").expect("an action ends") + start;
            let action = &rest[start + 2..end];
            if !action
                .trim_start_matches('-')
                .trim_start()
                .starts_with("/*")
            {
                for word in action.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    assert!(
                        !FORBIDDEN.contains(&word),
                        "{}: {word} in {{{{{action}}}}}",
                        path.display()
                    );
                }
            }
            rest = &rest[end + 2..];
        }
        checked += 1;
    }
    assert!(checked >= 10, "{checked} templates");
}

/// certs.mode selfSigned was removed: the schema lets it (and the certs.selfSigned values of
/// an old release) through, and rendering fails saying why and what to use.
#[rstest]
#[case::mode("certs: {mode: selfSigned}\n")]
#[case::old_release_values(
    "certs: {mode: selfSigned, selfSigned: {days: 3650, regenerate: false}}\n"
)]
#[case::old_settings_only("certs: {selfSigned: {days: 365}}\n")]
fn self_signed_fails_naming_its_replacement(#[case] values: &str) {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let file = values_file(home.path(), "values.yaml", values);
    let error = template(&helm, home.path(), &[&file]).expect_err("selfSigned is refused");
    for part in [
        "certs.mode selfSigned was removed",
        "not reproducible under helm template or GitOps",
        "Use certs.mode managed, the default",
        "or certManager",
    ] {
        assert!(error.contains(part), "{part} missing: {error}");
    }
    assert!(
        !error.contains("values don't meet the specifications of the schema"),
        "the chart's message, not the schema's: {error}"
    );
    // (helm lint only logs a template's `fail`, as INFO: no lint check here.)
}

/// With no certs values the webhook manages its certificates: the empty Secret it fills,
/// and no cert-manager objects or mounted TLS Secret.
#[test]
fn managed_is_the_default() {
    let Some(helm) = helm() else {
        return;
    };
    let values: Value = serde_yaml::from_str(
        &fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"),
    )
    .expect("YAML");
    assert_eq!(values["certs"]["mode"], "managed");
    assert_eq!(
        values["certs"]["managed"],
        serde_json::json!({"caValidDays": 3650, "certValidDays": 365,
            "rotationOverlapSeconds": 60, "checkSeconds": 30})
    );
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(chart().join("values.schema.json")).expect("schema"),
    )
    .expect("JSON");
    assert_eq!(
        schema["properties"]["certs"]["properties"]["mode"]["oneOf"][0]["enum"],
        serde_json::json!(["managed", "certManager", "existingSecret"]),
        "the modes the schema offers"
    );

    let objects = render(&helm, "");
    let secrets: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Secret").collect();
    assert_eq!(secrets.len(), 1, "only the managed Secret: {secrets:?}");
    let secret = secrets[0];
    assert_eq!(
        *secret,
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "ipmgr-webhook-certs",
                "namespace": NAMESPACE,
                "labels": {
                    "app.kubernetes.io/name": "ipmgr-webhook",
                    "app.kubernetes.io/part-of": "multus-ipmgr",
                },
            },
            "type": "Opaque",
        }),
        "empty: the webhook fills it"
    );
    assert!(
        !objects.iter().any(|o| o["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))),
        "no cert-manager objects"
    );
}

/// The webhook's RBAC, exactly: with managed it may get and patch its own Secret (Role) and
/// get and update its own MutatingWebhookConfiguration (ClusterRole), by name; with
/// networkResources, in every mode, get NetworkAttachmentDefinitions (ClusterRole); nothing
/// else, and no RBAC at all when it calls no API.
#[rstest]
fn the_webhook_may_touch_only_what_it_reads_and_writes(
    #[values(Mode::Managed, Mode::CertManager, Mode::ExistingSecret)] mode: Mode,
    #[values(false, true)] network_resources: bool,
) {
    let Some(helm) = helm() else {
        return;
    };
    let objects = render(&helm, &mode.with(network_resources, ""));
    let managed = mode == Mode::Managed;
    for (kind, expected) in [
        ("Role", managed),
        ("RoleBinding", managed),
        ("ClusterRole", managed || network_resources),
        ("ClusterRoleBinding", managed || network_resources),
    ] {
        assert_eq!(
            webhook_objects(&objects, kind).len(),
            usize::from(expected),
            "{mode:?}, networkResources {network_resources}: {kind}"
        );
    }
    // Every Role and ClusterRole of the chart: the agent's (read-only, its own test) and
    // the webhook's.
    let roles: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().expect("kind"),
                o["metadata"]["name"].as_str().expect("name")
            )
        })
        .collect();
    let mut expected_roles = BTreeSet::from(["ClusterRole/multus-ipmgr-agent".to_owned()]);
    if managed || network_resources {
        expected_roles.insert("ClusterRole/multus-ipmgr-webhook".to_owned());
    }
    if managed {
        expected_roles.insert("Role/ipmgr-webhook".to_owned());
    }
    assert_eq!(roles, expected_roles);
    let configuration = object(&objects, "MutatingWebhookConfiguration", "multus-ipmgr");
    let mut cluster_rules = Vec::new();
    if managed {
        let secret = object(&objects, "Secret", "ipmgr-webhook-certs");
        let role = object(&objects, "Role", "ipmgr-webhook");
        assert_eq!(role["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            role["rules"],
            serde_json::json!([{
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [secret["metadata"]["name"]],
                "verbs": ["get", "patch"],
            }]),
            "the Role: its Secret, by name, get/patch only"
        );
        cluster_rules.push(serde_json::json!({
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [configuration["metadata"]["name"]],
            "verbs": ["get", "update"],
        }));
    }
    if network_resources {
        cluster_rules.push(serde_json::json!({
            "apiGroups": ["k8s.cni.cncf.io"],
            "resources": ["network-attachment-definitions"],
            "verbs": ["get"],
        }));
    }
    if !cluster_rules.is_empty() {
        let cluster_role = object(&objects, "ClusterRole", "multus-ipmgr-webhook");
        assert_eq!(
            cluster_role["rules"],
            Value::Array(cluster_rules),
            "the ClusterRole: its MutatingWebhookConfiguration by name, get/update; \
             NetworkAttachmentDefinitions, get"
        );
    }
    let mut bindings = Vec::new();
    if managed {
        bindings.push(("RoleBinding", "Role", "ipmgr-webhook"));
    }
    if managed || network_resources {
        bindings.push(("ClusterRoleBinding", "ClusterRole", "multus-ipmgr-webhook"));
    }
    for (binding, kind, name) in bindings {
        let binding = webhook_objects(&objects, binding)[0];
        assert_eq!(
            binding["roleRef"],
            serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name})
        );
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": "ipmgr-webhook", "namespace": NAMESPACE}]),
            "bound to the webhook's ServiceAccount only"
        );
    }
    let env = webhook_env(&objects);
    let config = object(&objects, "ConfigMap", "ipmgr-webhook-config");
    assert_eq!(
        config["data"]["IPMGR_NETWORK_RESOURCES"],
        network_resources.to_string(),
        "the webhook is told what it may read"
    );
    if !managed {
        return;
    }
    // The names the webhook is told are the names it may touch.
    let secret = object(&objects, "Secret", "ipmgr-webhook-certs");
    assert_eq!(
        env["IPMGR_CERT_SECRET"]["value"],
        secret["metadata"]["name"]
    );
    assert_eq!(
        env["IPMGR_WEBHOOK_CONFIGURATION"]["value"],
        configuration["metadata"]["name"]
    );
    let service = object(&objects, "Service", "ipmgr-webhook");
    assert_eq!(env["IPMGR_SERVICE"]["value"], service["metadata"]["name"]);
    assert_eq!(
        configuration["webhooks"][0]["clientConfig"]["service"]["name"],
        service["metadata"]["name"]
    );
}

/// The webhook container's environment, by name.
fn webhook_env(objects: &[Value]) -> BTreeMap<String, Value> {
    let deployment = object(objects, "Deployment", "ipmgr-webhook");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "webhook");
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|variable| {
            (
                variable["name"].as_str().expect("name").to_owned(),
                variable.clone(),
            )
        })
        .collect()
}

/// The caBundle: written by the webhook (managed), by cert-manager's cainjector, or the
/// user's (existingSecret); the chart renders it only for existingSecret.
#[rstest]
#[case::managed(Mode::Managed)]
#[case::cert_manager(Mode::CertManager)]
#[case::existing_secret(Mode::ExistingSecret)]
fn the_ca_bundle_per_mode(#[case] mode: Mode) {
    let Some(helm) = helm() else {
        return;
    };
    let values = mode.values();
    let objects = render(&helm, &values);
    let configuration = object(&objects, "MutatingWebhookConfiguration", "multus-ipmgr");
    let webhooks = configuration["webhooks"].as_array().expect("webhooks");
    assert_eq!(webhooks.len(), 1);
    let client = webhooks[0]["clientConfig"]
        .as_object()
        .expect("clientConfig");
    let annotations = &configuration["metadata"]["annotations"];
    match mode {
        Mode::Managed => {
            assert!(
                !client.contains_key("caBundle"),
                "the webhook writes it: {client:?}"
            );
            assert!(annotations.is_null(), "{annotations}");
        }
        Mode::CertManager => {
            assert!(!client.contains_key("caBundle"), "the cainjector writes it");
            assert_eq!(
                annotations["cert-manager.io/inject-ca-from"],
                format!("{NAMESPACE}/ipmgr-webhook")
            );
        }
        Mode::ExistingSecret => {
            let ca_bundle = client["caBundle"].as_str().expect("caBundle");
            assert!(
                values.contains(&format!("caBundle: {ca_bundle}}}")),
                "the user's CA"
            );
        }
    }
}

/// The webhook's pod: with managed, no TLS volume (it serves from memory) and the managed
/// settings; otherwise the mounted Secret and its paths. The ServiceAccount token only when
/// it calls the API (managed, or networkResources); the ServiceAccount never automounts.
#[rstest]
fn the_deployment_per_mode(
    #[values(Mode::Managed, Mode::CertManager, Mode::ExistingSecret)] mode: Mode,
    #[values(false, true)] network_resources: bool,
) {
    let Some(helm) = helm() else {
        return;
    };
    let objects = render(&helm, &mode.with(network_resources, ""));
    let account = object(&objects, "ServiceAccount", "ipmgr-webhook");
    assert_eq!(account["automountServiceAccountToken"], false);
    let deployment = object(&objects, "Deployment", "ipmgr-webhook");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ipmgr-webhook");
    assert_eq!(
        pod["automountServiceAccountToken"],
        mode == Mode::Managed || network_resources,
        "the token only when the webhook calls the API"
    );
    let container = &pod["containers"][0];
    let env = webhook_env(&objects);
    let field = |path: &str| serde_json::json!({"fieldRef": {"fieldPath": path}});
    let managed_names = [
        "IPMGR_CERT_SECRET",
        "IPMGR_NAMESPACE",
        "IPMGR_REPLICA_NAME",
        "IPMGR_WEBHOOK_CONFIGURATION",
        "IPMGR_SERVICE",
        "IPMGR_CA_VALID_DAYS",
        "IPMGR_CERT_VALID_DAYS",
        "IPMGR_ROTATION_OVERLAP_SECONDS",
        "IPMGR_CERT_CHECK_SECONDS",
    ];
    if mode == Mode::Managed {
        assert!(pod["volumes"].is_null(), "{}", pod["volumes"]);
        assert!(
            container["volumeMounts"].is_null(),
            "{}",
            container["volumeMounts"]
        );
        let expected = serde_json::json!({
            "IPMGR_CERTIFICATES": {"value": "managed"},
            "IPMGR_CERT_SECRET": {"value": "ipmgr-webhook-certs"},
            "IPMGR_NAMESPACE": {"valueFrom": field("metadata.namespace")},
            "IPMGR_REPLICA_NAME": {"valueFrom": field("metadata.name")},
            "IPMGR_WEBHOOK_CONFIGURATION": {"value": "multus-ipmgr"},
            "IPMGR_SERVICE": {"value": "ipmgr-webhook"},
            "IPMGR_CA_VALID_DAYS": {"value": "3650"},
            "IPMGR_CERT_VALID_DAYS": {"value": "365"},
            "IPMGR_ROTATION_OVERLAP_SECONDS": {"value": "60"},
            "IPMGR_CERT_CHECK_SECONDS": {"value": "30"},
        });
        for (name, source) in expected.as_object().expect("map") {
            let mut variable = source.clone();
            variable["name"] = Value::String(name.clone());
            assert_eq!(
                sorted(env.get(name).cloned().unwrap_or(Value::Null)),
                sorted(variable),
                "{name}"
            );
        }
        for name in ["IPMGR_TLS_CERT", "IPMGR_TLS_KEY"] {
            assert!(
                !env.contains_key(name),
                "{name}: managed serves from memory"
            );
        }
    } else {
        assert_eq!(env["IPMGR_CERTIFICATES"]["value"], "files");
        assert_eq!(
            env["IPMGR_TLS_CERT"]["value"],
            "/etc/ipmgr-webhook/tls/tls.crt"
        );
        assert_eq!(
            env["IPMGR_TLS_KEY"]["value"],
            "/etc/ipmgr-webhook/tls/tls.key"
        );
        for name in managed_names {
            assert!(!env.contains_key(name), "{mode:?}: {name}");
        }
        let secret = match mode {
            Mode::CertManager => "ipmgr-webhook-tls",
            _ => "my-tls",
        };
        assert_eq!(
            pod["volumes"],
            serde_json::json!([{"name": "tls", "secret": {"secretName": secret}}])
        );
        assert_eq!(
            container["volumeMounts"],
            serde_json::json!([{"name": "tls", "mountPath": "/etc/ipmgr-webhook/tls", "readOnly": true}])
        );
    }
}

/// The webhook's egress: the API server (apiServerCIDRs, apiServerPort) when it calls it,
/// with managed (its certificates) or networkResources (NetworkAttachmentDefinitions);
/// nothing otherwise. Its ingress is the same in every mode.
#[rstest]
#[case::managed(Mode::Managed, true, "", Some(443))]
#[case::managed_alone(Mode::Managed, false, "", Some(443))]
#[case::managed_port(
    Mode::Managed,
    true,
    "networkPolicy: {apiServerCIDRs: [10.0.0.0/28, 10.0.0.16/28], apiServerPort: 6443}",
    Some(6443)
)]
#[case::cert_manager(Mode::CertManager, true, "", Some(443))]
#[case::cert_manager_alone(Mode::CertManager, false, "", None)]
#[case::existing_secret(Mode::ExistingSecret, true, "", Some(443))]
#[case::existing_secret_port(
    Mode::ExistingSecret,
    true,
    "networkPolicy: {apiServerCIDRs: [10.0.0.0/28, 10.0.0.16/28], apiServerPort: 6443}",
    Some(6443)
)]
#[case::existing_secret_alone(Mode::ExistingSecret, false, "", None)]
fn the_network_policy_per_mode(
    #[case] mode: Mode,
    #[case] network_resources: bool,
    #[case] extra: &str,
    #[case] port: Option<u16>,
) {
    let Some(helm) = helm() else {
        return;
    };
    let objects = render(&helm, &mode.with(network_resources, extra));
    let policy = object(&objects, "NetworkPolicy", "ipmgr-webhook");
    let cidrs: Vec<&str> = if extra.is_empty() {
        vec!["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    } else {
        vec!["10.0.0.0/28", "10.0.0.16/28"]
    };
    let blocks: Vec<Value> = cidrs
        .iter()
        .map(|cidr| serde_json::json!({"ipBlock": {"cidr": cidr}}))
        .collect();
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([{"from": blocks, "ports": [{"protocol": "TCP", "port": 8443}]}])
    );
    let egress = match port {
        Some(port) => {
            serde_json::json!([{"to": blocks, "ports": [{"protocol": "TCP", "port": port}]}])
        }
        None => serde_json::json!([]),
    };
    assert_eq!(policy["spec"]["egress"], egress, "{mode:?}");
}

/// Every IPMGR_ variable the chart sets on the webhook's container, in every mode, is one
/// `ipmgr-webhook serve` reads.
#[test]
fn the_webhook_reads_every_variable_of_its_deployment() {
    let Some(helm) = helm() else {
        return;
    };
    let output = Command::new(env!("CARGO_BIN_EXE_ipmgr-webhook"))
        .args(["serve", "--help"])
        .output()
        .expect("runs");
    let help = text(&output);
    for mode in [Mode::Managed, Mode::CertManager, Mode::ExistingSecret] {
        for name in webhook_env(&render(&helm, &mode.values())).keys() {
            if name.starts_with("IPMGR_") {
                assert!(
                    help.contains(&format!("[env: {name}=")),
                    "{mode:?}: `ipmgr-webhook serve` has no setting {name}"
                );
            }
        }
    }
}

#[test]
fn bad_values_fail_with_the_schema_message() {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let chart = chart().display().to_string();
    for (values, message) in [
        (
            "helper: {backend: bogus}\n",
            r#"helper.backend: helper.backend must be one of the following: "agent", "direct""#,
        ),
        (
            "podClient: {image: {pullPolicy: Always}}\n",
            "podClient.image: Additional property pullPolicy is not allowed",
        ),
        (
            "agent: {podApiPort: 70000}\n",
            "agent.podApiPort: Must be less than or equal to 65535",
        ),
        (
            "webhook: {port: 0}\n",
            "webhook.port: Must be greater than or equal to 1",
        ),
        (
            "helper: {meshExclusions: always}\n",
            r#"helper.meshExclusions: helper.meshExclusions must be one of the following: "auto", "istio", "linkerd", "never""#,
        ),
        (
            "certs: {mode: vault}\n",
            r#"certs.mode: certs.mode must be one of the following: "managed", "certManager", "existingSecret""#,
        ),
        (
            "certs: {managed: {caValidDays: 0}}\n",
            "certs.managed.caValidDays: Must be greater than or equal to 1",
        ),
        (
            "certs: {managed: {certValidDays: 36501}}\n",
            "certs.managed.certValidDays: Must be less than or equal to 36500",
        ),
        (
            "certs: {managed: {checkSeconds: 0}}\n",
            "certs.managed.checkSeconds: Must be greater than 0",
        ),
        (
            "certs: {managed: {rotationOverlapSeconds: 0}}\n",
            "certs.managed.rotationOverlapSeconds: Must be greater than or equal to 1",
        ),
        (
            "certs: {managed: {certValidDays: 1.5}}\n",
            "certs.managed.certValidDays: Invalid type. Expected: integer",
        ),
        (
            "webhook: {networkPolicy: {apiServerPort: 0}}\n",
            "webhook.networkPolicy.apiServerPort: Must be greater than or equal to 1",
        ),
        (
            "webhook: {logFormat: yaml}\n",
            r#"webhook.logFormat: webhook.logFormat must be one of the following: null, "json", "text""#,
        ),
        (
            "webhook: {timeoutSeconds: 31}\n",
            "webhook.timeoutSeconds: Must be less than or equal to 30",
        ),
        (
            "agent: {releaseGraceSecond: 10}\n",
            "agent: Additional property releaseGraceSecond is not allowed",
        ),
        (
            "webhook: {networkPolicy: {apiServerCIDRs: [10.0.0.0]}}\n",
            "webhook.networkPolicy.apiServerCIDRs.0: Does not match pattern",
        ),
        (
            "policy: {networkStatusWriters: {usernames: [\"\"]}}\n",
            "policy.networkStatusWriters.usernames.0: String length must be greater than or equal to 1",
        ),
    ] {
        let file = values_file(home.path(), "bad.yaml", values);
        let error = template(&helm, home.path(), &[&file]).expect_err(values);
        assert!(
            error.contains("values don't meet the specifications of the schema")
                && error.contains(message),
            "helm template with {values}: {error}"
        );
        let output = run_helm(
            &helm,
            home.path(),
            &[
                "lint",
                "--strict",
                &chart,
                "--values",
                file.to_str().expect("UTF-8"),
            ],
        );
        assert!(!output.status.success(), "helm lint accepted {values}");
        assert!(
            text(&output).contains(message),
            "helm lint with {values}: {}",
            text(&output)
        );
    }
}

/// The ConfigMap's keys are the webhook's own variables, and the webhook accepts every
/// choice the schema allows: `ipmgr-webhook inject` (the same injection settings as
/// `serve`) runs with the ConfigMap as its environment.
#[test]
fn the_webhook_reads_every_setting_the_chart_writes() {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let webhook = env!("CARGO_BIN_EXE_ipmgr-webhook");
    let help = {
        let serve = Command::new(webhook)
            .args(["serve", "--help"])
            .output()
            .expect("runs");
        let inject = Command::new(webhook)
            .args(["inject", "--help"])
            .output()
            .expect("runs");
        format!("{}{}", text(&serve), text(&inject))
    };
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(chart().join("values.schema.json")).expect("schema"),
    )
    .expect("JSON");
    let helper = &schema["properties"]["helper"]["properties"];
    let choices = |key: &str| -> Vec<String> {
        helper[key]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect()
    };
    let pod = common::test_path("golden/input/pod-init-default.yaml");
    let mut cases = vec![EVERY_SETTING.to_owned(), String::new()];
    for backend in choices("backend") {
        for mesh in choices("meshExclusions") {
            for mode in choices("defaultMode") {
                cases.push(format!(
                    "helper: {{backend: {backend}, meshExclusions: {mesh}, defaultMode: {mode}}}\n"
                ));
            }
        }
    }
    for values in cases {
        let file = values_file(home.path(), "values.yaml", &values);
        let rendered = template(&helm, home.path(), &[&file]).expect("renders");
        let config = documents(&rendered)
            .into_iter()
            .find(|o| o["kind"] == "ConfigMap")
            .expect("ConfigMap");
        let data = config["data"].as_object().expect("data");
        for key in data.keys() {
            assert!(
                help.contains(&format!("[env: {key}=")),
                "the webhook has no setting {key}"
            );
        }
        let output = Command::new(webhook)
            .args(["inject", "--log-format", "text", "-f"])
            .arg(&pod)
            .env_clear()
            .envs(data.iter().map(|(k, v)| (k, v.as_str().expect("string"))))
            .output()
            .expect("inject runs");
        assert!(
            output.status.success(),
            "the webhook refuses the chart's settings {values}:\n{}",
            text(&output)
        );
    }
}
