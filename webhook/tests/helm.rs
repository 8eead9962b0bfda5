//! The Helm chart (`charts/multus-ipmgr/`): `helm lint --strict` clean; with default values
//! `helm template` renders the objects `kubectl kustomize manifests/` renders (parsed and
//! compared object by object, normalised as [`normalise`] says); every certificate mode
//! renders and every rendered object passes `kubernetes-validate --strict`; bad values fail
//! with the schema's message; the chart's version and appVersion are the workspace version;
//! every webhook setting the chart can write is one the webhook reads, with values it accepts.
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
/// Secret dropped (in its name and the Deployment's volume), and the generated parts
/// ignored: the Secret's data and the webhook's caBundle (each side made its own pair). The
/// chart adds no labels of its own, so labels are compared as they are.
fn normalise(yaml: &str) -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for mut object in documents(yaml) {
        let name = without_hash(object["metadata"]["name"].as_str().expect("name"));
        object["metadata"]["name"] = Value::String(name.clone());
        match object["kind"].as_str() {
            Some("Secret") => {
                object["data"] = Value::Null;
            }
            Some("MutatingWebhookConfiguration") => {
                for webhook in object["webhooks"].as_array_mut().expect("webhooks") {
                    if let Some(config) = webhook["clientConfig"].as_object_mut() {
                        config.remove("caBundle");
                    }
                }
            }
            Some("Deployment") => {
                for volume in object["spec"]["template"]["spec"]["volumes"]
                    .as_array_mut()
                    .expect("volumes")
                {
                    if let Some(secret) = volume["secret"]["secretName"].as_str() {
                        volume["secret"]["secretName"] = Value::String(without_hash(secret));
                    }
                }
            }
            _ => {}
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
  networkPolicy: {apiServerCIDRs: [10.0.0.0/28, 10.0.0.16/28]}
  failurePolicy: Ignore
  timeoutSeconds: 3
  excludedNamespaces: [kube-system, monitoring]
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

#[test]
fn default_values_render_the_kustomize_build() {
    let (Some(helm), Some(kubectl)) = (helm(), kubectl()) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let (builds, _) =
        kustomize_with_test_certificate(&kubectl, &["manifests", "certs/cert-manager"]);
    let mut expected = normalise(&builds[0]);

    // Helm installs into the release namespace, created by `--create-namespace`: the chart
    // renders the webhook's Namespace only with namespace.create.
    let with_namespace = values_file(home.path(), "ns.yaml", "namespace: {create: true}\n");
    let rendered = normalise(&template(&helm, home.path(), &[&with_namespace]).expect("renders"));
    assert_same_objects(&expected, &rendered);

    let namespace = expected
        .remove(&format!("Namespace//{NAMESPACE}"))
        .expect("kustomize renders the Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let defaults = template(&helm, home.path(), &[]).expect("renders");
    assert_same_objects(&expected, &normalise(&defaults));

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

/// The self-signed pair: the Secret's CA is the caBundle, and it issued the serving
/// certificate, which names the Service.
fn check_self_signed(rendered: &str) {
    use base64::Engine as _;
    let decode = |value: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("base64 string"))
            .expect("base64")
    };
    let objects = documents(rendered);
    let secret = objects
        .iter()
        .find(|o| o["kind"] == "Secret")
        .expect("the chart's Secret");
    let webhook = objects
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook");
    let ca = decode(&secret["data"]["ca.crt"]);
    assert_eq!(
        ca,
        decode(&webhook["webhooks"][0]["clientConfig"]["caBundle"]),
        "the caBundle is the Secret's CA"
    );
    let der = |pem: &[u8]| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
        pem.contents
    };
    let (ca_der, cert_der) = (der(&ca), der(&decode(&secret["data"]["tls.crt"])));
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA");
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("certificate");
    assert_eq!(cert.issuer(), ca.subject(), "the CA issued the certificate");
    assert!(ca.is_ca(), "the caBundle is a CA");
    let names: Vec<String> = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        names
            .iter()
            .any(|name| name.contains("ipmgr-webhook.multus-ipmgr.svc")),
        "{names:?}"
    );
    assert!(!decode(&secret["data"]["tls.key"]).is_empty());
}

#[test]
fn every_certificate_mode_renders_and_validates() {
    let Some(helm) = helm() else {
        return;
    };
    let validator = kubernetes_validate();
    let home = tempfile::tempdir().expect("tempdir");
    let ca_bundle = {
        use base64::Engine as _;
        let pair = ServiceIdentity {
            service: "ipmgr-webhook".to_owned(),
            namespace: NAMESPACE.to_owned(),
            valid_days: 30,
        }
        .generate()
        .expect("certificates");
        base64::engine::general_purpose::STANDARD.encode(pair.ca_pem)
    };
    let cases = [
        ("self-signed.yaml", String::new()),
        (
            "cert-manager.yaml",
            "certs: {mode: certManager}\n".to_owned(),
        ),
        (
            "existing-secret.yaml",
            format!(
                "certs: {{mode: existingSecret, existingSecret: {{name: my-tls, caBundle: {ca_bundle}}}}}\n"
            ),
        ),
        ("every-setting.yaml", EVERY_SETTING.to_owned()),
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
            "self-signed.yaml" | "every-setting.yaml" => {
                check_self_signed(&rendered);
            }
            "cert-manager.yaml" => {
                assert!(kinds.contains("Certificate") && kinds.contains("Issuer"));
                assert!(!kinds.contains("Secret"), "cert-manager writes the Secret");
                assert!(
                    rendered
                        .contains("cert-manager.io/inject-ca-from: multus-ipmgr/ipmgr-webhook\n")
                );
            }
            "existing-secret.yaml" => {
                assert!(!kinds.contains("Secret"), "the user's Secret");
                assert!(rendered.contains("secretName: my-tls\n"));
                assert!(rendered.contains(&format!("caBundle: {ca_bundle}\n")));
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
            _ => {
                for kind in [
                    "ValidatingAdmissionPolicy",
                    "ValidatingAdmissionPolicyBinding",
                ] {
                    assert!(kinds.contains(kind), "{name}: {kind} missing");
                }
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
            r#"certs.mode: certs.mode must be one of the following: "selfSigned", "certManager", "existingSecret""#,
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
