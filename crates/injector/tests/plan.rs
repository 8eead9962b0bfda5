//! Table tests of the injection decision and of the patches it produces, applied with the
//! json-patch crate to real pod documents.

use ipmgr_injector::{
    Backend, Decision, DenyReason, FirstPassBudget, HelperSettings, MeshExclusions, Mode,
    NetworkDefinitions, PodTemplate, ResourceSettings, SkipReason, annotations, plan,
};
use json_patch::jsonptr::{Pointer, PointerBuf};
use pretty_assertions::assert_eq;
use rstest::{fixture, rstest};
use serde::Deserialize as _;
use serde_json::{Value, json};

#[fixture]
fn settings() -> HelperSettings {
    HelperSettings {
        image: "registry.example/ipmgr-helper:1.0".to_owned(),
        image_pull_policy: "IfNotPresent".to_owned(),
        command: "/usr/local/bin/ipmgr-helper".to_owned(),
        pod_client_image: "registry.example/ipmgr-pod:1.0".to_owned(),
        pod_client_command: "/usr/local/bin/ipmgr-pod".to_owned(),
        extra_args: vec!["--allow-cidr=10.10.1.0/24".to_owned()],
        log_filter: "debug".to_owned(),
        default_mode: Mode::Init,
        resources: ResourceSettings {
            cpu_request: "10m".parse().expect("quantity"),
            cpu_limit: "200m".parse().expect("quantity"),
            memory_request: "24Mi".parse().expect("quantity"),
            memory_limit: "64Mi".parse().expect("quantity"),
        },
        run_as_user: 65532,
        allow_image_override: true,
        allowed_image_prefixes: Vec::new(),
        backend: Backend::Agent,
        agent_port: 9472,
        mesh_exclusions: MeshExclusions::Auto,
        first_pass: FirstPassBudget::default(),
    }
}

/// A Multus pod with the given extra annotations and spec fields.
fn pod(annotations: Value, spec: Value) -> Value {
    let mut all_annotations = json!({ "k8s.v1.cni.cncf.io/networks": "ipvlan-multus" });
    merge(&mut all_annotations, annotations);
    let mut all_spec = json!({ "containers": [{ "name": "app", "image": "busybox" }] });
    merge(&mut all_spec, spec);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "p", "namespace": "multus", "annotations": all_annotations },
        "spec": all_spec,
    })
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        target.extend(extra);
    }
}

fn decide(document: &Value, settings: &HelperSettings) -> Decision {
    let pod = PodTemplate::deserialize(document).expect("test pods are valid");
    plan(Pointer::root(), &pod, settings)
}

/// Plans and applies the injection; panics unless the decision is an injection.
fn inject(document: &Value, settings: &HelperSettings) -> Value {
    let Decision::Inject(injection) = decide(document, settings) else {
        panic!("expected an injection for {document}");
    };
    let mut patched = document.clone();
    json_patch::patch(&mut patched, &injection.patch.0).expect("the patch applies");
    patched
}

fn container_names(document: &Value, list: &str) -> Vec<String> {
    document["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|container| container["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[rstest]
#[case::no_networks_annotation(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}), SkipReason::NoMultusNetworks)]
#[case::empty_networks(pod(json!({"k8s.v1.cni.cncf.io/networks": "  "}), json!({})), SkipReason::NoMultusNetworks)]
#[case::host_network(pod(json!({}), json!({"hostNetwork": true})), SkipReason::HostNetwork)]
#[case::disabled(pod(json!({"multus-ipmgr.io/mode": "disabled"}), json!({})), SkipReason::Disabled)]
#[case::already_injected(pod(json!({"multus-ipmgr.io/status": "init"}), json!({})), SkipReason::AlreadyInjected)]
#[case::hand_added_init(pod(json!({}), json!({"initContainers": [{"name": "aws-ip-mgmt", "image": "old"}]})), SkipReason::HelperPresent)]
#[case::hand_added_sidecar(pod(json!({}), json!({"containers": [{"name": "app"}, {"name": "aws-ip-mgmt"}]})), SkipReason::HelperPresent)]
fn skips(settings: HelperSettings, #[case] document: Value, #[case] reason: SkipReason) {
    assert_eq!(decide(&document, &settings), Decision::Skip(reason));
}

#[rstest]
#[case::unknown_mode(json!({"multus-ipmgr.io/mode": "always"}), "annotation multus-ipmgr.io/mode has unknown value \"always\"; valid values are init, sidecar, native-sidecar, disabled")]
#[case::bad_cpu(json!({"multus-ipmgr.io/cpu-limit": "lots"}), "annotation multus-ipmgr.io/cpu-limit: \"lots\" is not a Kubernetes quantity (examples: 10m, 0.5, 64Mi, 1G)")]
#[case::request_above_limit(json!({"multus-ipmgr.io/memory-request": "128Mi"}), "memory request 128Mi is larger than its limit 64Mi")]
#[case::bad_image(json!({"multus-ipmgr.io/image": "two words"}), "annotation multus-ipmgr.io/image has value \"two words\", which is not an image reference")]
#[case::negative_cpu(json!({"multus-ipmgr.io/cpu-request": "-1"}), "annotation multus-ipmgr.io/cpu-request: \"-1\" is negative; resource quantities must be zero or more")]
#[case::negative_memory(json!({"multus-ipmgr.io/memory-limit": "-64Mi"}), "annotation multus-ipmgr.io/memory-limit: \"-64Mi\" is negative")]
#[case::request_above_limit_in_other_units(json!({"multus-ipmgr.io/cpu-request": "0.0091", "multus-ipmgr.io/cpu-limit": "9m"}), "cpu request 0.0091 is larger than its limit 9m")]
#[case::unreadable_networks(json!({"k8s.v1.cni.cncf.io/networks": "[{\"name\": "}), "annotation k8s.v1.cni.cncf.io/networks has value \"[{\\\"name\\\": \", which Multus cannot read")]
fn denies_with_a_message_naming_the_annotation(
    settings: HelperSettings,
    #[case] extra_annotations: Value,
    #[case] message: &str,
) {
    let Decision::Deny(reason) = decide(&pod(extra_annotations, json!({})), &settings) else {
        panic!("expected a denial");
    };
    assert!(reason.to_string().starts_with(message), "{reason}");
}

#[rstest]
#[case::unnamed("a, ns/b", None, Some("true"))]
#[case::all_named("a@data0, ns/b@storage", Some("data0,storage"), None)]
#[case::mixed("a, ns/b@storage, c", Some("storage"), Some("true"))]
#[case::short_form_with_spaces_around_the_at("a @ data0", Some("data0"), None)]
#[case::json_form(
    r#"[{"name": "a", "interface": "data0"}, {"name": "b"}]"#,
    Some("data0"),
    Some("true")
)]
fn the_helper_learns_the_pods_multus_interfaces_without_guessing_their_names(
    settings: HelperSettings,
    #[case] networks: &str,
    #[case] interfaces: Option<&str>,
    #[case] by_mac: Option<&str>,
) {
    let injected = inject(
        &pod(json!({"k8s.v1.cni.cncf.io/networks": networks}), json!({})),
        &settings,
    );
    let env = env_of_helper(&injected);
    let value = |name: &str| {
        env.iter()
            .find(|var| var["name"] == name)
            .map(|var| var["value"].as_str().expect("a value").to_owned())
    };
    assert_eq!(
        (
            value("IPMGR_INTERFACES").as_deref(),
            value("IPMGR_INTERFACES_BY_MAC").as_deref()
        ),
        (interfaces, by_mac)
    );
}

#[rstest]
#[case::two_ats("a@b@c", "selection 1 (\"a@b@c\") has more than one '@'")]
#[case::two_slashes("a, x/y/z", "selection 2 (\"x/y/z\") has more than one '/'")]
#[case::not_a_label(
    "Net1",
    "selection 1 (\"Net1\") has network name \"Net1\", which is not a DNS-1123 label"
)]
#[case::empty_item("a,,b", "selection 2 (\"\") names no network")]
fn denies_a_selection_multus_refuses_naming_it(
    settings: HelperSettings,
    #[case] networks: &str,
    #[case] problem: &str,
) {
    let Decision::Deny(reason) = decide(
        &pod(json!({"k8s.v1.cni.cncf.io/networks": networks}), json!({})),
        &settings,
    ) else {
        panic!("expected a denial of {networks}");
    };
    let message = reason.to_string();
    assert!(
        message.starts_with("annotation k8s.v1.cni.cncf.io/networks has value"),
        "{message}"
    );
    assert!(message.contains(problem), "{message}");
    assert!(
        message.ends_with("; fix the network selection"),
        "{message}"
    );
}

#[rstest]
fn an_empty_json_list_selects_no_network(settings: HelperSettings) {
    let document = pod(json!({"k8s.v1.cni.cncf.io/networks": "[]"}), json!({}));
    assert_eq!(
        decide(&document, &settings),
        Decision::Skip(SkipReason::NoMultusNetworks)
    );
}

#[rstest]
fn image_override_can_be_forbidden(mut settings: HelperSettings) {
    settings.allow_image_override = false;
    let document = pod(json!({"multus-ipmgr.io/image": "evil/image:1"}), json!({}));
    assert_eq!(
        decide(&document, &settings),
        Decision::Deny(DenyReason::ImageOverrideNotAllowed)
    );
}

#[rstest]
#[case::same_amount(json!({"multus-ipmgr.io/cpu-request": "9m", "multus-ipmgr.io/cpu-limit": "0.009"}))]
#[case::binary_and_decimal(json!({"multus-ipmgr.io/memory-request": "1Gi", "multus-ipmgr.io/memory-limit": "1073741824"}))]
#[case::finer_than_a_nano(json!({"multus-ipmgr.io/cpu-request": "0.0000000001", "multus-ipmgr.io/cpu-limit": "1n"}))]
fn a_request_equal_to_its_limit_is_injected(settings: HelperSettings, #[case] extra: Value) {
    let injected = inject(&pod(extra, json!({})), &settings);
    assert_eq!(
        container_names(&injected, "initContainers"),
        ["aws-ip-mgmt"]
    );
}

#[rstest]
#[case::mode("multus-ipmgr.io/mode")]
#[case::image("multus-ipmgr.io/image")]
#[case::quantity("multus-ipmgr.io/cpu-limit")]
fn a_huge_bad_value_is_quoted_shortened(settings: HelperSettings, #[case] annotation: &str) {
    let value = format!("{} x", "y".repeat(200_000));
    let Decision::Deny(reason) = decide(&pod(json!({ annotation: value }), json!({})), &settings)
    else {
        panic!("expected a denial");
    };
    let message = reason.to_string();
    assert!(
        message.len() < 400,
        "{} bytes: {message:.400}",
        message.len()
    );
    assert!(message.contains(annotation), "{message}");
    assert!(message.contains("(200002 bytes)"), "{message}");
}

#[test]
fn an_annotation_longer_than_kubernetes_allows_is_not_read() {
    let value = "y".repeat(ipmgr_injector::MAX_ANNOTATION_BYTES + 1);
    let document = pod(json!({ "multus-ipmgr.io/mode": value }), json!({}));
    let error = PodTemplate::deserialize(&document).expect_err("refused");
    assert!(
        error
            .to_string()
            .starts_with("annotation multus-ipmgr.io/mode is 262145 bytes long"),
        "{error}"
    );
    // Other annotations are skipped unread, whatever their size.
    let document = pod(json!({ "other": "y".repeat(1 << 20) }), json!({}));
    assert!(PodTemplate::deserialize(&document).is_ok());
}

#[rstest]
fn image_override_is_limited_to_the_allowed_prefixes(mut settings: HelperSettings) {
    settings.allowed_image_prefixes = vec!["mirror.example.com/".to_owned()];
    let allowed = pod(
        json!({"multus-ipmgr.io/image": "mirror.example.com/helper:2"}),
        json!({}),
    );
    assert_eq!(
        inject(&allowed, &settings)["spec"]["initContainers"][0]["image"],
        json!("mirror.example.com/helper:2")
    );
    let elsewhere = pod(
        json!({"multus-ipmgr.io/image": "attacker.example/helper:2"}),
        json!({}),
    );
    let Decision::Deny(reason) = decide(&elsewhere, &settings) else {
        panic!("expected a denial");
    };
    assert_eq!(
        reason.to_string(),
        "annotation multus-ipmgr.io/image has value \"attacker.example/helper:2\", which does not start with an allowed image prefix (mirror.example.com/); use an image from there or remove the annotation"
    );
}

#[rstest]
fn native_sidecar_refuses_a_taken_volume_name(settings: HelperSettings) {
    let document = pod(
        json!({"multus-ipmgr.io/mode": "native-sidecar"}),
        json!({"volumes": [{"name": "aws-ip-mgmt-run", "emptyDir": {}}]}),
    );
    assert_eq!(
        decide(&document, &settings),
        Decision::Deny(DenyReason::VolumeNameTaken)
    );
}

#[rstest]
#[case::default_mode(json!({}), json!({}), vec!["aws-ip-mgmt"], vec!["app"])]
#[case::init_goes_first(json!({"multus-ipmgr.io/mode": "init"}), json!({"initContainers": [{"name": "setup"}]}), vec!["aws-ip-mgmt", "setup"], vec!["app"])]
#[case::sidecar_goes_last(json!({"multus-ipmgr.io/mode": "sidecar"}), json!({"initContainers": [{"name": "setup"}]}), vec!["setup"], vec!["app", "aws-ip-mgmt"])]
#[case::native_sidecar_goes_first(json!({"multus-ipmgr.io/mode": "native-sidecar"}), json!({"initContainers": [{"name": "setup"}]}), vec!["aws-ip-mgmt", "setup"], vec!["app"])]
#[case::empty_init_list(json!({}), json!({"initContainers": []}), vec!["aws-ip-mgmt"], vec!["app"])]
#[case::null_init_list(json!({}), json!({"initContainers": null}), vec!["aws-ip-mgmt"], vec!["app"])]
fn places_the_helper(
    settings: HelperSettings,
    #[case] extra_annotations: Value,
    #[case] spec: Value,
    #[case] init_containers: Vec<&str>,
    #[case] containers: Vec<&str>,
) {
    let injected = inject(&pod(extra_annotations, spec), &settings);
    assert_eq!(
        container_names(&injected, "initContainers"),
        init_containers
    );
    assert_eq!(container_names(&injected, "containers"), containers);
}

#[rstest]
#[case(Mode::Init, "init")]
#[case(Mode::Sidecar, "sidecar")]
#[case(Mode::NativeSidecar, "native-sidecar")]
fn injecting_twice_changes_nothing(
    mut settings: HelperSettings,
    #[case] mode: Mode,
    #[case] status: &str,
) {
    settings.default_mode = mode;
    let injected = inject(&pod(json!({}), json!({})), &settings);
    assert_eq!(
        injected["metadata"]["annotations"][annotations::STATUS],
        json!(status)
    );
    assert_eq!(
        decide(&injected, &settings),
        Decision::Skip(SkipReason::AlreadyInjected)
    );
    // Even without the status annotation (stripped by some tool), the container name is seen.
    let stripped = without_status(&injected);
    assert_eq!(
        decide(&stripped, &settings),
        Decision::Skip(SkipReason::HelperPresent)
    );
}

/// `document` without the status annotation (as some tools strip it).
fn without_status(document: &serde_json::Value) -> serde_json::Value {
    let mut stripped = document.clone();
    stripped["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations")
        .remove(annotations::STATUS);
    stripped
}

/// The paths the injection's patch touches, in order.
fn patched_paths(document: &serde_json::Value, settings: &HelperSettings) -> Vec<String> {
    let Decision::Inject(injection) = decide(document, settings) else {
        panic!("expected an injection");
    };
    injection
        .patch
        .0
        .iter()
        .map(|op| op.path().to_string())
        .collect()
}

#[rstest]
fn escapes_the_status_annotation_key(settings: HelperSettings) {
    assert_eq!(
        patched_paths(&pod(json!({}), json!({})), &settings),
        [
            "/spec/initContainers",
            "/metadata/annotations/multus-ipmgr.io~1status"
        ]
    );
}

#[rstest]
fn patches_a_template_below_its_pointer(settings: HelperSettings) {
    let mut document = json!({
        "kind": "Deployment",
        "spec": {"template": {
            "metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "n"}},
            "spec": {"containers": [{"name": "app"}]},
        }},
    });
    let template = PointerBuf::parse("/spec/template").expect("pointer");
    let pod = PodTemplate::deserialize(&document["spec"]["template"]).expect("template");
    let Decision::Inject(injection) = plan(&template, &pod, &settings) else {
        panic!("expected an injection");
    };
    json_patch::patch(&mut document, &injection.patch.0).expect("applies");
    assert_eq!(
        document["spec"]["template"]["metadata"]["annotations"][annotations::STATUS],
        json!("init")
    );
    assert_eq!(
        document["spec"]["template"]["spec"]["initContainers"][0]["name"],
        json!("aws-ip-mgmt")
    );
}

#[rstest]
fn builds_a_restricted_container_with_overrides(settings: HelperSettings) {
    let document = pod(
        json!({
            "multus-ipmgr.io/mode": "native-sidecar",
            "multus-ipmgr.io/image": "mirror.example/helper:2",
            "multus-ipmgr.io/cpu-request": "20m",
            "multus-ipmgr.io/memory-limit": "128Mi",
        }),
        json!({"volumes": [{"name": "data", "emptyDir": {}}]}),
    );
    let injected = inject(&document, &settings);
    let helper = &injected["spec"]["initContainers"][0];
    assert_eq!(helper["image"], json!("mirror.example/helper:2"));
    assert_eq!(helper["restartPolicy"], json!("Always"));
    assert_eq!(
        helper["args"],
        json!(["sidecar", "--allow-cidr=10.10.1.0/24"])
    );
    assert_eq!(
        helper["resources"],
        json!({"requests": {"cpu": "20m", "memory": "24Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}})
    );
    assert_eq!(
        helper["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 65532,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        helper["startupProbe"]["exec"]["command"],
        json!(["/usr/local/bin/ipmgr-pod", "ready"])
    );
    assert_eq!(
        container_names(&injected, "volumes"),
        ["data", "aws-ip-mgmt-run"]
    );
    let env: Vec<&str> = helper["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|var| var["name"].as_str())
        .collect();
    assert_eq!(
        env,
        [
            "NODE_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "IPMGR_MODE",
            "IPMGR_LOG",
            "IPMGR_INTERFACES_BY_MAC",
            "IPMGR_WAIT_SECONDS",
            "IPMGR_EC2_RETRY_SECONDS",
            "HOST_IP",
            "IPMGR_AGENT_URL",
            "IPMGR_READY_FILE"
        ]
    );
}

#[rstest]
#[case::null_lists(json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "n"}}, "spec": {"containers": null, "initContainers": null, "volumes": null}}))]
#[case::null_metadata_fields(json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "n"}, "labels": null}, "spec": {"containers": [{"name": "app"}]}}))]
fn reads_templates_with_nulls(settings: HelperSettings, #[case] document: Value) {
    let injected = inject(&document, &settings);
    assert_eq!(
        container_names(&injected, "initContainers"),
        ["aws-ip-mgmt"]
    );
}

#[test]
fn template_view_keeps_only_what_the_decision_reads() {
    let text = json!({
        "metadata": {"name": "p", "annotations": {"a": "b", "multus-ipmgr.io/mode": "sidecar", "deep": [[[[]]]]},
                     "managedFields": [{"manager": "x"}]},
        "spec": {"hostNetwork": true, "tolerations": [],
                 "containers": [{"name": "app", "image": "i", "env": []}, {"name": "aws-ip-mgmt"}, {}],
                 "volumes": [{"name": "aws-ip-mgmt-run"}]},
        "status": {"phase": "Pending"},
    })
    .to_string();
    // The same view from JSON text and from a parsed document (the offline inject path).
    let from_text: PodTemplate = serde_json::from_str(&text).expect("parses");
    let value: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(PodTemplate::deserialize(&value).expect("parses"), from_text);
    let pod = from_text;
    assert_eq!(pod.annotation(annotations::MODE), Some("sidecar"));
    assert_eq!(
        pod.annotation("a"),
        None,
        "not an annotation the injector reads"
    );
    assert!(pod.host_network());
    assert_eq!(pod.containers().len(), 3);
    assert!(pod.containers().holds("aws-ip-mgmt"));
    assert!(!pod.containers().holds("app"), "other names are not kept");
    assert!(pod.init_containers().is_empty());
    assert!(pod.volumes().holds("aws-ip-mgmt-run"));
    assert!(!pod.volumes().holds("aws-ip-mgmt"));
}

fn env_of_helper(document: &Value) -> Vec<Value> {
    document["spec"]["initContainers"][0]["env"]
        .as_array()
        .expect("env")
        .clone()
}

#[rstest]
fn the_agent_backend_gives_the_helper_its_agents_address_and_nothing_of_aws(
    mut settings: HelperSettings,
) {
    settings.agent_port = 9999;
    let env = env_of_helper(&inject(&pod(json!({}), json!({})), &settings));
    assert_eq!(
        env[8..],
        [
            json!({"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}),
            json!({"name": "IPMGR_AGENT_URL", "value": "http://$(HOST_IP):9999"}),
        ]
    );
    let names: Vec<&str> = env.iter().filter_map(|var| var["name"].as_str()).collect();
    assert!(
        names
            .iter()
            .all(|name| !name.starts_with("AWS_") && !name.contains("METADATA")),
        "{names:?}"
    );
}

/// The agent backend injects the thin pod client, the direct one the full helper: image,
/// command and, in native-sidecar mode, the startup probe's command; the image annotation,
/// when allowed, overrides either image.
#[rstest]
#[case::agent(
    Backend::Agent,
    "registry.example/ipmgr-pod:1.0",
    "/usr/local/bin/ipmgr-pod"
)]
#[case::direct(
    Backend::Direct,
    "registry.example/ipmgr-helper:1.0",
    "/usr/local/bin/ipmgr-helper"
)]
fn each_backend_injects_its_own_image_and_command(
    mut settings: HelperSettings,
    #[case] backend: Backend,
    #[case] image: &str,
    #[case] command: &str,
    #[values("init", "sidecar", "native-sidecar")] mode: &str,
) {
    settings.backend = backend;
    let list = if mode == "sidecar" {
        "containers"
    } else {
        "initContainers"
    };
    let helper_of = |annotations: Value| {
        let injected = inject(&pod(annotations, json!({})), &settings);
        injected["spec"][list]
            .as_array()
            .expect("containers")
            .iter()
            .find(|container| container["name"] == "aws-ip-mgmt")
            .cloned()
            .expect("the helper")
    };
    let helper = helper_of(json!({"multus-ipmgr.io/mode": mode}));
    assert_eq!(helper["image"], json!(image));
    assert_eq!(helper["command"], json!([command]));
    let probe = (mode == "native-sidecar").then(|| json!([command, "ready"]));
    assert_eq!(
        helper
            .get("startupProbe")
            .map(|probe| probe["exec"]["command"].clone()),
        probe
    );

    let helper = helper_of(
        json!({"multus-ipmgr.io/mode": mode, "multus-ipmgr.io/image": "mirror.example/own:2"}),
    );
    assert_eq!(helper["image"], json!("mirror.example/own:2"));
    assert_eq!(helper["command"], json!([command]));
}

#[rstest]
fn the_direct_backend_writes_no_mesh_annotation(mut settings: HelperSettings) {
    settings.backend = Backend::Direct;
    settings.mesh_exclusions = MeshExclusions::Istio;
    let document = pod(json!({"linkerd.io/inject": "enabled"}), json!({}));
    let injected = inject(&document, &settings);
    let names: Vec<String> = env_of_helper(&injected)
        .iter()
        .filter_map(|var| var["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        [
            "NODE_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "IPMGR_MODE",
            "IPMGR_LOG",
            "IPMGR_INTERFACES_BY_MAC",
            "IPMGR_WAIT_SECONDS",
            "IPMGR_EC2_RETRY_SECONDS",
            "IPMGR_METADATA_RETRY_SECONDS"
        ]
    );
    assert_eq!(
        injected["metadata"]["annotations"]
            .as_object()
            .expect("annotations")
            .len(),
        3,
        "no mesh annotation with the direct backend: {injected}"
    );
}

/// A Multus pod with these annotations, labels and spec fields.
fn labelled_pod(annotations: Value, labels: Value, spec: Value) -> Value {
    let mut document = pod(annotations, spec);
    document["metadata"]["labels"] = labels;
    document
}

const ISTIO: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const LINKERD: &str = "config.linkerd.io/skip-outbound-ports";

#[rstest]
#[case::no_mesh(MeshExclusions::Auto, json!({}), json!({}), json!({}), None, None)]
#[case::istio_annotation(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true"}), json!({}), json!({}), Some("9472"), None)]
#[case::istio_annotation_as_istio_reads_it(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "Yes"}), json!({}), json!({}), Some("9472"), None)]
#[case::istio_turned_off(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "false"}), json!({}), json!({}), None, None)]
#[case::istio_label(MeshExclusions::Auto, json!({}), json!({"sidecar.istio.io/inject": "true"}), json!({}), Some("9472"), None)]
#[case::istio_existing_ports(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true", ISTIO: "15020,8080"}), json!({}), json!({}), Some("15020,8080,9472"), None)]
#[case::istio_port_there(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true", ISTIO: "9472"}), json!({}), json!({}), Some("9472"), None)]
#[case::istio_proxy(MeshExclusions::Auto, json!({}), json!({}), json!({"containers": [{"name": "app"}, {"name": "istio-proxy"}]}), Some("9472"), None)]
#[case::istio_native_proxy(MeshExclusions::Auto, json!({}), json!({}), json!({"initContainers": [{"name": "istio-init"}, {"name": "istio-proxy"}]}), Some("9472"), None)]
#[case::linkerd_enabled(MeshExclusions::Auto, json!({"linkerd.io/inject": "enabled"}), json!({}), json!({}), None, Some("9472"))]
#[case::linkerd_ingress(MeshExclusions::Auto, json!({"linkerd.io/inject": "ingress", LINKERD: "25,443"}), json!({}), json!({}), None, Some("25,443,9472"))]
#[case::linkerd_disabled(MeshExclusions::Auto, json!({"linkerd.io/inject": "disabled"}), json!({}), json!({}), None, None)]
#[case::linkerd_range_covers_it(MeshExclusions::Auto, json!({"linkerd.io/inject": "enabled", LINKERD: "9000-9999"}), json!({}), json!({}), None, Some("9000-9999"))]
#[case::linkerd_proxy(MeshExclusions::Auto, json!({}), json!({}), json!({"containers": [{"name": "app"}, {"name": "linkerd-proxy"}]}), None, Some("9472"))]
#[case::both(MeshExclusions::Auto, json!({"linkerd.io/inject": "enabled"}), json!({"sidecar.istio.io/inject": "true"}), json!({}), Some("9472"), Some("9472"))]
#[case::istio_named(MeshExclusions::Istio, json!({}), json!({}), json!({}), Some("9472"), None)]
#[case::istio_named_keeps_existing(MeshExclusions::Istio, json!({ISTIO: "8080"}), json!({}), json!({}), Some("8080,9472"), None)]
#[case::linkerd_named(MeshExclusions::Linkerd, json!({}), json!({}), json!({}), None, Some("9472"))]
#[case::never(MeshExclusions::Never, json!({"sidecar.istio.io/inject": "true", "linkerd.io/inject": "enabled"}), json!({}), json!({}), None, None)]
fn excludes_the_agent_port_from_the_meshes(
    mut settings: HelperSettings,
    #[case] exclusions: MeshExclusions,
    #[case] annotations: Value,
    #[case] labels: Value,
    #[case] spec: Value,
    #[case] istio: Option<&str>,
    #[case] linkerd: Option<&str>,
) {
    settings.mesh_exclusions = exclusions;
    let document = labelled_pod(annotations, labels, spec);
    let injected = inject(&document, &settings);
    let value = |key: &str| injected["metadata"]["annotations"][key].as_str();
    assert_eq!((value(ISTIO), value(LINKERD)), (istio, linkerd));
    // Nothing else of the pod's metadata changes but the status annotation.
    let mut metadata = injected["metadata"].clone();
    let annotations = metadata["annotations"]
        .as_object_mut()
        .expect("annotations");
    annotations.remove(annotations::STATUS);
    for key in [ISTIO, LINKERD] {
        match document["metadata"]["annotations"].get(key) {
            Some(original) => annotations.insert(key.to_owned(), original.clone()),
            None => annotations.remove(key),
        };
    }
    assert_eq!(metadata, document["metadata"]);
}

#[rstest]
fn a_port_excluded_already_costs_no_patch_operation(settings: HelperSettings) {
    let document = pod(
        json!({"sidecar.istio.io/inject": "true", ISTIO: "9472", "linkerd.io/inject": "enabled", LINKERD: "1-65535"}),
        json!({}),
    );
    assert_eq!(
        patched_paths(&document, &settings),
        [
            "/spec/initContainers",
            "/metadata/annotations/multus-ipmgr.io~1status"
        ]
    );
}

#[rstest]
#[case::istio_annotation(json!({"sidecar.istio.io/inject": "true", ISTIO: "8080"}), json!({}))]
#[case::linkerd_annotation(json!({"linkerd.io/inject": "enabled"}), json!({}))]
#[case::istio_proxy(json!({"multus-ipmgr.io/mode": "sidecar"}), json!({"containers": [{"name": "app"}, {"name": "istio-proxy"}]}))]
#[case::istio_native_proxy(json!({"multus-ipmgr.io/mode": "native-sidecar"}), json!({"initContainers": [{"name": "istio-init"}, {"name": "istio-proxy", "restartPolicy": "Always"}]}))]
fn injecting_a_meshed_pod_twice_changes_nothing(
    settings: HelperSettings,
    #[case] annotations: Value,
    #[case] spec: Value,
) {
    let injected = inject(&pod(annotations, spec), &settings);
    assert_eq!(
        decide(&injected, &settings),
        Decision::Skip(SkipReason::AlreadyInjected)
    );
    // The mesh's webhook after ours adds its proxy: ours, reinvoked, still changes nothing.
    let mut meshed = injected.clone();
    meshed["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "linkerd-proxy"}));
    assert_eq!(
        decide(&meshed, &settings),
        Decision::Skip(SkipReason::AlreadyInjected)
    );
    // Without the status annotation the helper's name is seen, and the exclusions are kept
    // as they are: never a second copy of the port.
    let stripped = without_status(&injected);
    assert_eq!(
        decide(&stripped, &settings),
        Decision::Skip(SkipReason::HelperPresent)
    );
    let mut helper_removed = stripped.clone();
    for list in ["initContainers", "containers", "volumes"] {
        if let Some(items) = helper_removed["spec"][list].as_array_mut() {
            items.retain(|item| {
                !["aws-ip-mgmt", "aws-ip-mgmt-run"]
                    .contains(&item["name"].as_str().unwrap_or_default())
            });
        }
    }
    let again = inject(&helper_removed, &settings);
    assert_eq!(again["metadata"], injected["metadata"]);
}

#[test]
fn template_view_reads_the_mesh_label_and_proxies() {
    let pod: PodTemplate = serde_json::from_value(json!({
        "metadata": {"labels": {"sidecar.istio.io/inject": "true", "app": "web"}},
        "spec": {"containers": [{"name": "istio-proxy"}], "initContainers": [{"name": "linkerd-proxy"}]},
    }))
    .expect("parses");
    assert_eq!(pod.label("sidecar.istio.io/inject"), Some("true"));
    assert_eq!(pod.label("app"), None, "not a label the injector reads");
    assert!(pod.containers().holds("istio-proxy"));
    assert!(pod.init_containers().holds("linkerd-proxy"));
    let long = json!({"metadata": {"labels": {"sidecar.istio.io/inject": "y".repeat(64)}}});
    let error = PodTemplate::deserialize(&long).expect_err("longer than Kubernetes allows");
    assert!(
        error
            .to_string()
            .starts_with("label sidecar.istio.io/inject is 64 bytes long"),
        "{error}"
    );
}

/// The helper's own traffic bypasses a mesh's redirect as the mesh proxy's UID, in every
/// mode and with both backends; the app's containers are not touched.
#[rstest]
#[case::no_mesh(MeshExclusions::Auto, json!({}), json!({}), 65532)]
#[case::istio_annotation(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true"}), json!({}), 1337)]
#[case::istio_proxy(MeshExclusions::Auto, json!({}), json!({"containers": [{"name": "app"}, {"name": "istio-proxy"}]}), 1337)]
#[case::istio_native_proxy(MeshExclusions::Auto, json!({}), json!({"initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}]}), 1337)]
#[case::istio_turned_off(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "false"}), json!({}), 65532)]
#[case::linkerd_annotation(MeshExclusions::Auto, json!({"linkerd.io/inject": "enabled"}), json!({}), 2102)]
#[case::linkerd_proxy(MeshExclusions::Auto, json!({}), json!({"containers": [{"name": "app"}, {"name": "linkerd-proxy"}]}), 2102)]
#[case::both_istio_first(MeshExclusions::Auto, json!({"sidecar.istio.io/inject": "true", "linkerd.io/inject": "enabled"}), json!({}), 1337)]
#[case::istio_named(MeshExclusions::Istio, json!({}), json!({}), 1337)]
#[case::linkerd_named(MeshExclusions::Linkerd, json!({}), json!({}), 2102)]
#[case::never(MeshExclusions::Never, json!({"sidecar.istio.io/inject": "true"}), json!({}), 65532)]
fn runs_the_helper_as_the_mesh_proxys_uid(
    mut settings: HelperSettings,
    #[values(Backend::Agent, Backend::Direct)] backend: Backend,
    #[values("init", "sidecar", "native-sidecar")] mode: &str,
    #[case] exclusions: MeshExclusions,
    #[case] annotations: Value,
    #[case] spec: Value,
    #[case] uid: i64,
) {
    settings.backend = backend;
    settings.mesh_exclusions = exclusions;
    let mut annotations = annotations;
    annotations["multus-ipmgr.io/mode"] = json!(mode);
    let document = pod(annotations, spec);
    let injected = inject(&document, &settings);
    let list = if mode == "sidecar" {
        "containers"
    } else {
        "initContainers"
    };
    let helper = injected["spec"][list]
        .as_array()
        .expect("the helper's list")
        .iter()
        .find(|container| container["name"] == "aws-ip-mgmt")
        .expect("the helper");
    let context = &helper["securityContext"];
    assert_eq!(
        (&context["runAsUser"], &context["runAsGroup"]),
        (&json!(uid), &json!(uid))
    );
    assert_eq!(context["runAsNonRoot"], json!(true));
    assert_eq!(context["capabilities"], json!({"drop": ["ALL"]}));
    for container in injected["spec"]["containers"]
        .as_array()
        .expect("containers")
    {
        if container["name"] != "aws-ip-mgmt" {
            assert!(container.get("securityContext").is_none(), "{container}");
        }
    }
}

/// A native-sidecar helper goes behind a mesh's native proxy (the kubelet stops native
/// sidecars in reverse order: the helper's release runs before the proxy stops), and in
/// front of everything else; init mode always goes first.
#[rstest]
#[case::nothing_before("native-sidecar", json!([{"name": "setup"}]), &["aws-ip-mgmt", "setup"])]
#[case::istio_with_its_init("native-sidecar", json!([{"name": "istio-init"}, {"name": "istio-proxy", "restartPolicy": "Always"}, {"name": "setup"}]), &["istio-init", "istio-proxy", "aws-ip-mgmt", "setup"])]
#[case::istio_with_cni("native-sidecar", json!([{"name": "istio-validation"}, {"name": "istio-proxy", "restartPolicy": "Always"}]), &["istio-validation", "istio-proxy", "aws-ip-mgmt"])]
#[case::linkerd("native-sidecar", json!([{"name": "linkerd-init"}, {"name": "linkerd-proxy", "restartPolicy": "Always"}, {"name": "setup"}]), &["linkerd-init", "linkerd-proxy", "aws-ip-mgmt", "setup"])]
#[case::init_mode_goes_first("init", json!([{"name": "istio-init"}, {"name": "istio-proxy", "restartPolicy": "Always"}]), &["aws-ip-mgmt", "istio-init", "istio-proxy"])]
fn a_native_sidecar_helper_stops_before_the_mesh_proxy(
    settings: HelperSettings,
    #[case] mode: &str,
    #[case] init_containers: Value,
    #[case] order: &[&str],
) {
    let document = pod(
        json!({"multus-ipmgr.io/mode": mode}),
        json!({"initContainers": init_containers}),
    );
    let injected = inject(&document, &settings);
    assert_eq!(container_names(&injected, "initContainers"), order);
}

/// The native-sidecar startup probe lasts as long as the first pass the budgets the helper
/// gets allow, with a margin; the same values are in its environment.
#[rstest]
#[case::agent(Backend::Agent, FirstPassBudget::default(), 720)]
#[case::direct(Backend::Direct, FirstPassBudget::default(), 420)]
#[case::direct_longer_wait(Backend::Direct, FirstPassBudget { wait_seconds: 120, ..FirstPassBudget::default() }, 480)]
fn the_startup_probe_and_the_helpers_budgets_agree(
    mut settings: HelperSettings,
    #[case] backend: Backend,
    #[case] first_pass: FirstPassBudget,
    #[case] failure_threshold: i64,
) {
    settings.backend = backend;
    settings.first_pass = first_pass;
    let document = pod(json!({"multus-ipmgr.io/mode": "native-sidecar"}), json!({}));
    let injected = inject(&document, &settings);
    let helper = &injected["spec"]["initContainers"][0];
    let probe = &helper["startupProbe"];
    assert_eq!(
        (&probe["periodSeconds"], &probe["failureThreshold"]),
        (&json!(1), &json!(failure_threshold))
    );
    let env = env_of_helper(&injected);
    let value = |name: &str| {
        env.iter()
            .find(|var| var["name"] == name)
            .map(|var| var["value"].clone())
    };
    assert_eq!(
        value("IPMGR_WAIT_SECONDS"),
        Some(json!(first_pass.wait_seconds.to_string()))
    );
    assert_eq!(
        value("IPMGR_EC2_RETRY_SECONDS"),
        Some(json!(first_pass.ec2_retry_seconds.to_string()))
    );
    assert_eq!(
        value("IPMGR_METADATA_RETRY_SECONDS"),
        (backend == Backend::Direct).then(|| json!(first_pass.metadata_retry_seconds.to_string()))
    );
}

/// NetworkAttachmentDefinitions of the network-request tests: `eth1-a`, `eth1-b` and
/// `shared/eth1` on `multus-ipmgr.io/eth1`, `sriov` on another domain's resource, `plain`
/// without a resourceName; the pod's namespace is `multus`.
fn definitions() -> NetworkDefinitions {
    [
        ("multus", "eth1-a", Some("multus-ipmgr.io/eth1")),
        ("multus", "eth1-b", Some("multus-ipmgr.io/eth1")),
        ("multus", "sriov", Some("intel.com/sriov_netdevice")),
        ("multus", "plain", None),
        ("shared", "eth1", Some("multus-ipmgr.io/eth1")),
    ]
    .into_iter()
    .map(|(namespace, name, resource)| {
        (
            (namespace.to_owned(), name.to_owned()),
            resource.map(str::to_owned),
        )
    })
    .collect()
}

/// Plans, adds the network requests and applies the injection to `document`, whose template
/// is at `template`.
fn inject_with_requests_at(template: &str, document: &Value, settings: &HelperSettings) -> Value {
    let template = PointerBuf::parse(template).expect("pointer");
    let pod = PodTemplate::deserialize(template.resolve(document).expect("template"))
        .expect("test pods are valid");
    let Decision::Inject(mut injection) = plan(&template, &pod, settings) else {
        panic!("expected an injection for {document}");
    };
    injection
        .add_network_requests("multus", &definitions())
        .expect("requests added");
    let mut patched = document.clone();
    json_patch::patch(&mut patched, &injection.patch.0).expect("the patch applies");
    patched
}

fn inject_with_requests(document: &Value, settings: &HelperSettings) -> Value {
    inject_with_requests_at("", document, settings)
}

#[rstest]
#[case::our_resource("eth1-a", json!({}), json!({"requests": {"multus-ipmgr.io/eth1": "1"}, "limits": {"multus-ipmgr.io/eth1": "1"}}))]
#[case::two_networks_one_resource("eth1-a, eth1-b@net2", json!({}), json!({"requests": {"multus-ipmgr.io/eth1": "2"}, "limits": {"multus-ipmgr.io/eth1": "2"}}))]
#[case::ips_two_v4_one_v6(r#"[{"name": "eth1-a", "ips": ["10.0.1.5/24", "fd00::5", "10.0.1.6/24"]}]"#, json!({}), json!({"requests": {"multus-ipmgr.io/eth1": "2"}, "limits": {"multus-ipmgr.io/eth1": "2"}}))]
#[case::other_namespace("shared/eth1", json!({}), json!({"requests": {"multus-ipmgr.io/eth1": "1"}, "limits": {"multus-ipmgr.io/eth1": "1"}}))]
#[case::another_domain("sriov", json!({"requests": {"cpu": "1"}}), json!({"requests": {"cpu": "1"}}))]
#[case::no_resource_name("plain", json!({}), Value::Null)]
#[case::author_request_kept("eth1-a", json!({"requests": {"cpu": "1", "multus-ipmgr.io/eth1": "3"}}), json!({"requests": {"cpu": "1", "multus-ipmgr.io/eth1": "3"}, "limits": {"multus-ipmgr.io/eth1": "3"}}))]
#[case::author_limit_raised("eth1-a, eth1-b", json!({"limits": {"multus-ipmgr.io/eth1": "1", "memory": "1Gi"}}), json!({"requests": {"multus-ipmgr.io/eth1": "2"}, "limits": {"multus-ipmgr.io/eth1": "2", "memory": "1Gi"}}))]
fn the_first_app_container_requests_what_the_networks_need(
    settings: HelperSettings,
    #[values("init", "sidecar", "native-sidecar")] mode: &str,
    #[case] networks: &str,
    #[case] resources: Value,
    #[case] expected: Value,
) {
    let mut app = json!({"name": "app", "image": "busybox"});
    if resources != json!({}) {
        app["resources"] = resources;
    }
    let document = pod(
        json!({"k8s.v1.cni.cncf.io/networks": networks, "multus-ipmgr.io/mode": mode}),
        json!({"containers": [app, {"name": "second"}], "initContainers": [{"name": "setup"}]}),
    );
    let injected = inject_with_requests(&document, &settings);
    let containers = injected["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers[0]["resources"], expected, "{networks}");
    let others = containers[1..]
        .iter()
        .chain(injected["spec"]["initContainers"].as_array().expect("init"));
    for container in others {
        let requests = container["resources"]["requests"].as_object();
        assert!(
            requests
                .is_none_or(|requests| !requests.keys().any(|k| k.starts_with("multus-ipmgr.io/"))),
            "only the first app container requests: {container}"
        );
    }
    // Injected again (without the status annotation some tool stripped, and without the
    // helper): the same requests, never doubled.
    let mut again = without_status(&injected);
    for list in ["initContainers", "containers", "volumes"] {
        if let Some(items) = again["spec"].get_mut(list).and_then(Value::as_array_mut) {
            items.retain(|item| {
                !["aws-ip-mgmt", "aws-ip-mgmt-run"]
                    .contains(&item["name"].as_str().unwrap_or_default())
            });
        }
    }
    assert_eq!(inject_with_requests(&again, &settings), injected);
    assert_eq!(
        decide(&injected, &settings),
        Decision::Skip(SkipReason::AlreadyInjected)
    );
}

#[rstest]
fn a_sidecar_alone_in_its_pod_requests_nothing(mut settings: HelperSettings) {
    settings.default_mode = Mode::Sidecar;
    let document = pod(
        json!({"k8s.v1.cni.cncf.io/networks": "eth1-a"}),
        json!({"containers": []}),
    );
    let injected = inject_with_requests(&document, &settings);
    assert_eq!(container_names(&injected, "containers"), ["aws-ip-mgmt"]);
    assert_eq!(
        injected["spec"]["containers"][0]["resources"]["requests"],
        json!({"cpu": "10m", "memory": "24Mi"}),
        "the helper keeps its own requests only"
    );
}

#[rstest]
fn requests_go_below_the_template_pointer(settings: HelperSettings) {
    let document = json!({
        "kind": "Deployment",
        "spec": {"template": {
            "metadata": {"annotations": {"k8s.v1.cni.cncf.io/networks": "eth1-a"}},
            "spec": {"containers": [{"name": "app"}]},
        }},
    });
    let injected = inject_with_requests_at("/spec/template", &document, &settings);
    assert_eq!(
        injected["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({"requests": {"multus-ipmgr.io/eth1": "1"}, "limits": {"multus-ipmgr.io/eth1": "1"}})
    );
}

#[rstest]
fn a_missing_definition_is_denied_naming_the_selection_and_the_fix(settings: HelperSettings) {
    let document = pod(
        json!({"k8s.v1.cni.cncf.io/networks": "eth1-a, other/gone@net2"}),
        json!({}),
    );
    let Decision::Inject(mut injection) = decide(&document, &settings) else {
        panic!("expected an injection");
    };
    let named: Vec<String> = injection
        .network_definitions("multus")
        .iter()
        .map(|definition| format!("{}/{}", definition.namespace, definition.name))
        .collect();
    assert_eq!(named, ["multus/eth1-a", "other/gone"]);
    let reason = injection
        .add_network_requests("multus", &definitions())
        .expect_err("denied");
    assert_eq!(
        reason.to_string(),
        "pod network \"other/gone@net2\" (k8s.v1.cni.cncf.io/networks selection 2) names NetworkAttachmentDefinition other/gone, which does not exist: create it or correct the annotation"
    );
}

#[rstest]
fn an_author_quantity_that_is_not_one_is_denied(settings: HelperSettings) {
    let document = pod(
        json!({"k8s.v1.cni.cncf.io/networks": "eth1-a"}),
        json!({"containers": [{"name": "app", "resources": {"requests": {"multus-ipmgr.io/eth1": "one"}}}]}),
    );
    let Decision::Inject(mut injection) = decide(&document, &settings) else {
        panic!("expected an injection");
    };
    let reason = injection
        .add_network_requests("multus", &definitions())
        .expect_err("denied");
    assert!(
        reason
            .to_string()
            .starts_with("the first container's resources.requests[multus-ipmgr.io/eth1]: \"one\" is not a Kubernetes quantity"),
        "{reason}"
    );
}

#[test]
fn template_view_keeps_only_our_resources_of_the_first_container() {
    let pod: PodTemplate = serde_json::from_value(json!({
        "spec": {"containers": [
            {"name": "app", "resources": {"requests": {"cpu": "1", "multus-ipmgr.io/eth1": 2}, "limits": null, "claims": [{"name": "x"}]}},
            {"name": "aws-ip-mgmt", "resources": {"requests": {"multus-ipmgr.io/eth1": "9"}}},
        ]},
    }))
    .expect("parses");
    let containers = pod.app_containers().expect("containers");
    assert_eq!(containers.names().len(), 2);
    assert!(pod.containers().holds("aws-ip-mgmt"));
    let resources = containers
        .first_resources()
        .expect("a first container")
        .expect("with resources");
    assert_eq!(
        resources.requests.as_ref().map(|own| own.0.clone()),
        Some([("multus-ipmgr.io/eth1".to_owned(), "2".to_owned())].into())
    );
    assert_eq!(resources.limits, None);
}
