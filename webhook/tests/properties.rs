//! Property test of `/mutate`'s review over well-typed pods with hostile annotations, with
//! either helper backend: every answer is a valid AdmissionReview with the request's uid; an
//! injection's patch applies, adds exactly one restricted helper where its mode puts it (with
//! the agent's address only with the agent backend, the mesh proxy's UID in a mesh, behind a
//! mesh's native proxy) and the agent port to the exclusions of the meshes the pod shows,
//! nothing else, and is not repeated on reinvocation; a denial's
//! message is short; and the decision is the one the README's rules give, computed here
//! independently of the injector.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipmgr_injector::{Backend, HelperSettings, managed_interfaces};
use ipmgr_webhook::admission::review;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Quantity suffixes the generator writes, with the nano units of one; longer suffixes
/// first, so that the first one a text ends with is its suffix.
const UNITS: [(&str, u128); 10] = [
    ("Ki", 1_024_000_000_000),
    ("Mi", 1_048_576_000_000_000),
    ("Gi", 1_073_741_824_000_000_000),
    ("n", 1),
    ("u", 1_000),
    ("m", 1_000_000),
    ("k", 1_000_000_000_000),
    ("M", 1_000_000_000_000_000),
    ("G", 1_000_000_000_000_000_000),
    ("", 1_000_000_000),
];

/// A resource quantity as text, with its amount in nano units when it is a valid,
/// non-negative quantity.
fn quantity() -> impl Strategy<Value = (String, Option<u128>)> {
    let whole = (0u64..5000, 0..UNITS.len(), any::<bool>()).prop_map(|(n, unit, padded)| {
        let (suffix, scale) = UNITS[unit];
        let text = format!("{n}{suffix}");
        let text = if padded { format!(" {text} ") } else { text };
        (text, Some(u128::from(n) * scale))
    });
    let decimal = (0u64..5000, 0u64..10, 0..UNITS.len()).prop_map(|(n, tenth, unit)| {
        let (suffix, scale) = UNITS[unit];
        // Finer than a nano rounds up.
        let nanos = (u128::from(n * 10 + tenth) * scale).div_ceil(10);
        (format!("{n}.{tenth}{suffix}"), Some(nanos))
    });
    let negative =
        (1u64..5000, 0..UNITS.len()).prop_map(|(n, unit)| (format!("-{n}{}", UNITS[unit].0), None));
    let garbage = prop::sample::select(vec![
        "", "ten", "1.2.3", "5 Mi", "10MB", "Mi", "1e", "-", ".", "0x10", "∞",
    ])
    .prop_map(|text| (text.to_owned(), None));
    prop_oneof![4 => whole, 2 => decimal, 1 => negative, 1 => garbage]
}

/// Text an attacker might put anywhere: quotes, escapes, control and non-ASCII characters,
/// sometimes long.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[\"\\\\\\u{0}\\n\\t {}\\[\\]:,]{0,16}",
        (1usize..20_000).prop_map(|n| "é\"\\".repeat(n)),
    ]
}

/// `Some` with probability `present`: weighted so that many pods reach the later rules.
fn optional<T: std::fmt::Debug>(
    present: f64,
    strategy: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(present, strategy)
}

/// A Pod with well-typed fields and hostile annotations.
fn pod() -> impl Strategy<Value = Value> {
    let networks = optional(
        0.9,
        prop_oneof![
            1 => Just(String::new()),
            1 => Just("  ".to_owned()),
            4 => Just("ipvlan-multus".to_owned()),
            4 => hostile(),
        ],
    );
    let mode = optional(
        0.6,
        prop_oneof![
            prop::sample::select(vec![
                "init",
                "sidecar",
                "native-sidecar",
                "disabled",
                " native-sidecar ",
                "Init",
            ])
            .prop_map(str::to_owned),
            hostile(),
        ],
    );
    let image = optional(
        0.3,
        prop_oneof![
            Just("mirror.example.com/ipmgr-helper:2".to_owned()),
            Just(" mirror.example.com/ipmgr-helper:3 ".to_owned()),
            Just("mirror.example.com.attacker.io/x:1".to_owned()),
            Just("attacker.example/x:1".to_owned()),
            Just("two words".to_owned()),
            hostile(),
        ],
    );
    let status = optional(0.1, hostile());
    let meshes = (
        optional(
            0.3,
            prop::sample::select(vec!["true", "TRUE", "on", "false", ""]).prop_map(str::to_owned),
        ),
        optional(
            0.3,
            prop::sample::select(vec!["enabled", "ingress", "disabled"]).prop_map(str::to_owned),
        ),
        prop::array::uniform2(optional(
            0.3,
            prop_oneof![
                prop::sample::select(vec!["8080", "9472", "15020, 9472", "9000-9999", "1-9471,"])
                    .prop_map(str::to_owned),
                hostile(),
            ],
        )),
    );
    let resources = prop::array::uniform4(optional(0.5, quantity()));
    let others = prop::collection::btree_map(hostile(), hostile(), 0..4);
    let names = || {
        prop::collection::vec(
            prop_oneof![
                8 => Just("app".to_owned()),
                1 => Just("aws-ip-mgmt".to_owned()),
                1 => Just("istio-proxy".to_owned()),
                1 => Just("linkerd-proxy".to_owned()),
                2 => Just("aws-ip-mgmt-run".to_owned()),
                4 => hostile(),
            ],
            0..4,
        )
    };
    let lists = (
        names(),
        prop_oneof![
            Just(None),
            Just(Some(None)),
            names().prop_map(|n| Some(Some(n)))
        ],
        optional(0.5, names()),
    );
    let host_network = optional(0.3, any::<bool>());
    (
        (networks, mode, image, status, resources, others),
        lists,
        host_network,
        meshes,
    )
        .prop_map(
            |(
                (networks, mode, image, status, resources, others),
                (containers, init_containers, volumes),
                host_network,
                (istio, linkerd, [istio_ports, linkerd_ports]),
            )| {
                let mut annotations: Map<String, Value> = others
                    .into_iter()
                    .map(|(key, value)| (key, Value::String(value)))
                    .collect();
                let mut set = |key: &str, value: Option<String>| {
                    if let Some(value) = value {
                        annotations.insert(key.to_owned(), Value::String(value));
                    }
                };
                set("k8s.v1.cni.cncf.io/networks", networks);
                set("multus-ipmgr.io/mode", mode);
                set("multus-ipmgr.io/image", image);
                set("multus-ipmgr.io/status", status);
                for (key, quantity) in RESOURCE_KEYS.iter().zip(resources) {
                    set(key, quantity.map(|(text, _)| text));
                }
                set(ISTIO_INJECT, istio);
                set("linkerd.io/inject", linkerd);
                set(ISTIO_PORTS, istio_ports);
                set(LINKERD_PORTS, linkerd_ports);
                let named = |names: Vec<String>| {
                    Value::Array(
                        names
                            .into_iter()
                            .map(|name| json!({"name": name, "image": "busybox"}))
                            .collect(),
                    )
                };
                let mut spec = json!({ "containers": named(containers) });
                match init_containers {
                    None => {}
                    Some(None) => spec["initContainers"] = Value::Null,
                    Some(Some(names)) => spec["initContainers"] = named(names),
                }
                if let Some(volumes) = volumes {
                    spec["volumes"] = Value::Array(
                        volumes
                            .into_iter()
                            .map(|name| json!({"name": name, "emptyDir": {}}))
                            .collect(),
                    );
                }
                if let Some(host_network) = host_network {
                    spec["hostNetwork"] = json!(host_network);
                }
                json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"generateName": "web-", "namespace": "multus", "annotations": annotations},
                    "spec": spec,
                })
            },
        )
}

const ISTIO_INJECT: &str = "sidecar.istio.io/inject";
const ISTIO_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const LINKERD_PORTS: &str = "config.linkerd.io/skip-outbound-ports";

const RESOURCE_KEYS: [&str; 4] = [
    "multus-ipmgr.io/cpu-request",
    "multus-ipmgr.io/cpu-limit",
    "multus-ipmgr.io/memory-request",
    "multus-ipmgr.io/memory-limit",
];

/// What the README's rules say about a pod.
#[derive(Debug, PartialEq)]
enum Expected {
    Unchanged,
    Denied,
    Injected(&'static str),
}

/// Nano units of a quantity as the tests' generator writes them (`None`: not a valid,
/// non-negative quantity).
fn nanos(text: &str) -> Option<u128> {
    let text = text.trim();
    let (number, scale) = UNITS
        .iter()
        .find_map(|(suffix, scale)| Some((text.strip_suffix(suffix)?, *scale)))?;
    let (whole, tenth) = number.split_once('.').unwrap_or((number, "0"));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || tenth.len() != 1 {
        return None;
    }
    let tenths = whole.parse::<u128>().ok()? * 10 + tenth.parse::<u128>().ok()?;
    Some((tenths * scale).div_ceil(10))
}

fn expected(pod: &Value, overrides: bool) -> Expected {
    let annotation = |key: &str| pod["metadata"]["annotations"][key].as_str();
    let names = |list: &str| -> Vec<&str> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["name"].as_str())
            .collect()
    };
    if annotation("k8s.v1.cni.cncf.io/networks").is_none_or(|n| n.trim().is_empty())
        || pod["spec"]["hostNetwork"] == json!(true)
        || annotation("multus-ipmgr.io/status").is_some()
        || names("containers")
            .into_iter()
            .chain(names("initContainers"))
            .any(|name| name == "aws-ip-mgmt")
    {
        return Expected::Unchanged;
    }
    let mode = match annotation("multus-ipmgr.io/mode").map(str::trim) {
        None => "init",
        Some(mode @ ("init" | "sidecar" | "native-sidecar")) => {
            ["init", "sidecar", "native-sidecar"]
                .into_iter()
                .find(|known| *known == mode)
                .expect("known")
        }
        Some("disabled") => return Expected::Unchanged,
        Some(_) => return Expected::Denied,
    };
    // The selection's own grammar is tested by the injector's tables; here only that a
    // selection Multus could not read is refused.
    match managed_interfaces(annotation("k8s.v1.cni.cncf.io/networks").unwrap_or_default()) {
        Err(_) => return Expected::Denied,
        Ok(interfaces) if interfaces.names.is_empty() && !interfaces.by_mac => {
            return Expected::Unchanged;
        }
        Ok(_) => {}
    }
    if let Some(image) = annotation("multus-ipmgr.io/image").map(str::trim) {
        let reference = !image.is_empty() && !image.chars().any(char::is_whitespace);
        if !overrides || !reference || !image.starts_with("mirror.example.com/") {
            return Expected::Denied;
        }
    }
    let defaults = ["10m", "200m", "24Mi", "64Mi"];
    let mut amounts = [0u128; 4];
    for ((key, default), amount) in RESOURCE_KEYS.iter().zip(defaults).zip(&mut amounts) {
        match nanos(annotation(key).unwrap_or(default)) {
            Some(value) => *amount = value,
            None => return Expected::Denied,
        }
    }
    if amounts[0] > amounts[1] || amounts[2] > amounts[3] {
        return Expected::Denied;
    }
    if mode == "native-sidecar" && names("volumes").contains(&"aws-ip-mgmt-run") {
        return Expected::Denied;
    }
    Expected::Injected(mode)
}

fn answer(pod: &Value, uid: &str, settings: &HelperSettings) -> Value {
    let body = common::admission_review(uid, pod, false).to_string();
    let (response, _) = review(body.as_bytes(), settings).expect("a well-typed review is answered");
    serde_json::to_value(&response).expect("the answer serializes")
}

fn check(pod: &Value, uid: &str, settings: &HelperSettings, overrides: bool) {
    let answer = answer(pod, uid, settings);
    let response = &answer["response"];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["uid"], uid);
    let expected = expected(pod, overrides);
    match expected {
        Expected::Denied => {
            assert_eq!(response["allowed"], false, "{expected:?}: {answer}");
            assert_eq!(response["status"]["code"], 403);
            let message = response["status"]["message"].as_str().expect("message");
            assert!(message.starts_with("multus-ipmgr: "), "{message}");
            assert!(message.len() < 1024, "a {} byte message", message.len());
        }
        Expected::Unchanged => {
            assert_eq!(response["allowed"], true);
            assert!(response.get("patch").is_none(), "{expected:?}: {answer}");
        }
        Expected::Injected(mode) => {
            assert_eq!(response["allowed"], true, "{expected:?}: {answer}");
            assert_eq!(response["patchType"], "JSONPatch");
            let patch = BASE64
                .decode(response["patch"].as_str().expect("patch"))
                .expect("base64");
            let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("JSON Patch");
            let mut patched = pod.clone();
            json_patch::patch(&mut patched, &patch.0).expect("the patch applies");
            check_injected(pod, &patched, mode, settings);
            let again = self::answer(&patched, uid, settings);
            assert!(again["response"].get("patch").is_none(), "injected twice");
        }
    }
}

/// Where the helper goes in its list: a sidecar last, an init first, a native sidecar
/// behind the mesh proxies among the initContainers (else first).
fn helper_index(pod: &Value, mode: &str) -> usize {
    let list = |name: &str| pod["spec"][name].as_array().cloned().unwrap_or_default();
    match mode {
        "sidecar" => list("containers").len(),
        "native-sidecar" => ["istio-proxy", "linkerd-proxy"]
            .iter()
            .filter_map(|proxy| {
                list("initContainers")
                    .iter()
                    .position(|item| item["name"] == *proxy)
            })
            .map(|first| first + 1)
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

/// The meshes the pod shows, as the README says they are detected: Istio, Linkerd.
fn meshes_shown(pod: &Value) -> (bool, bool) {
    let annotation = |key: &str| pod["metadata"]["annotations"][key].as_str();
    let holds = |name: &str| {
        ["containers", "initContainers"]
            .iter()
            .filter_map(|list| pod["spec"][list].as_array())
            .flatten()
            .any(|item| item["name"] == name)
    };
    let istio = annotation(ISTIO_INJECT).is_some_and(|value| {
        ["true", "yes", "y", "on"].contains(&value.trim().to_ascii_lowercase().as_str())
    }) || holds("istio-proxy");
    let linkerd = annotation("linkerd.io/inject")
        .is_some_and(|value| ["enabled", "ingress"].contains(&value.trim()))
        || holds("linkerd-proxy");
    (istio, linkerd)
}

fn check_injected(pod: &Value, patched: &Value, mode: &str, settings: &HelperSettings) {
    assert_eq!(
        patched["metadata"]["annotations"]["multus-ipmgr.io/status"],
        mode
    );
    let index = helper_index(pod, mode);
    let helper = if mode == "sidecar" {
        patched["spec"]["containers"].get(index)
    } else {
        patched["spec"]["initContainers"].get(index)
    }
    .expect("the helper where its mode puts it");
    assert_eq!(helper["name"], "aws-ip-mgmt");
    let helpers = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| patched["spec"][list].as_array())
        .flatten()
        .filter(|container| container["name"] == "aws-ip-mgmt")
        .count();
    assert_eq!(helpers, 1, "exactly one helper");
    // In a mesh, the helper runs as its proxy's UID (Istio's first), so that the mesh's
    // redirect lets its own traffic through.
    let uid = match meshes_shown(pod) {
        (true, _) => 1337,
        (false, true) => 2102,
        (false, false) => 65532,
    };
    assert_eq!(
        helper["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": uid,
            "runAsNonRoot": true,
            "runAsUser": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    let annotation = |key: &str| pod["metadata"]["annotations"][key].as_str().map(str::trim);
    let env = |name: &str| {
        helper["env"]
            .as_array()
            .and_then(|env| env.iter().find(|var| var["name"] == name))
            .and_then(|var| var["value"].as_str())
    };
    let selected =
        managed_interfaces(annotation("k8s.v1.cni.cncf.io/networks").unwrap_or_default())
            .expect("a valid selection");
    assert_eq!(
        (env("IPMGR_INTERFACES"), env("IPMGR_INTERFACES_BY_MAC")),
        (
            (!selected.names.is_empty())
                .then(|| selected.names.join(","))
                .as_deref(),
            selected.by_mac.then_some("true")
        ),
        "the pod's Multus interfaces are passed on"
    );
    assert_eq!(
        helper["image"],
        annotation("multus-ipmgr.io/image").unwrap_or(&settings.image)
    );
    let defaults = ["10m", "200m", "24Mi", "64Mi"];
    let fields = [
        ("requests", "cpu"),
        ("limits", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ];
    for ((key, default), (kind, resource)) in RESOURCE_KEYS.iter().zip(defaults).zip(fields) {
        assert_eq!(
            helper["resources"][kind][resource],
            annotation(key).unwrap_or(default)
        );
    }
    check_agent(pod, patched, helper, settings);
    // Everything else is untouched: remove what the patch added and compare.
    let mut unpatched = patched.clone();
    let annotations = unpatched["metadata"]["annotations"]
        .as_object_mut()
        .expect("annotations");
    annotations.remove("multus-ipmgr.io/status");
    for key in [ISTIO_PORTS, LINKERD_PORTS] {
        match pod["metadata"]["annotations"].get(key) {
            Some(original) => annotations.insert(key.to_owned(), original.clone()),
            None => annotations.remove(key),
        };
    }
    let list = |document: &mut Value, name: &str| {
        document["spec"][name]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    };
    let mut init_containers = list(&mut unpatched, "initContainers");
    let mut containers = list(&mut unpatched, "containers");
    let mut volumes = list(&mut unpatched, "volumes");
    if mode == "sidecar" {
        containers.remove(index);
    } else {
        init_containers.remove(index);
    }
    if mode == "native-sidecar" {
        assert_eq!(
            volumes.pop().expect("run volume")["name"],
            "aws-ip-mgmt-run"
        );
    }
    let mut original = pod.clone();
    for (name, items) in [
        ("initContainers", init_containers),
        ("containers", containers),
        ("volumes", volumes),
    ] {
        let before = list(&mut original, name);
        assert_eq!(items, before, "{name} changed beyond the helper");
    }
    assert_eq!(unpatched["metadata"], original["metadata"]);
}

/// The agent backend's part: the helper's address of its agent, and the agent port in the
/// exclusions of the meshes the pod shows, appended once; nothing of it with the direct one.
fn check_agent(pod: &Value, patched: &Value, helper: &Value, settings: &HelperSettings) {
    let agent = settings.backend == Backend::Agent;
    let env: Vec<&Value> = helper["env"].as_array().expect("env").iter().collect();
    let position = |name: &str| env.iter().position(|var| var["name"] == name);
    match (position("HOST_IP"), position("IPMGR_AGENT_URL")) {
        (Some(host), Some(url)) if agent => {
            assert!(host < url, "HOST_IP is defined before it is used");
            assert_eq!(
                env[host]["valueFrom"]["fieldRef"]["fieldPath"],
                "status.hostIP"
            );
            assert_eq!(env[url]["value"], "http://$(HOST_IP):9472");
        }
        (None, None) if !agent => {}
        found => panic!("agent backend {agent}: HOST_IP and IPMGR_AGENT_URL at {found:?}"),
    }
    let annotation = |key: &str| pod["metadata"]["annotations"][key].as_str();
    let (istio, linkerd) = meshes_shown(pod);
    for (key, meshed) in [(ISTIO_PORTS, istio), (LINKERD_PORTS, linkerd)] {
        let before = annotation(key);
        let after = patched["metadata"]["annotations"][key].as_str();
        if !(agent && meshed) {
            assert_eq!(after, before, "{key} changed");
            continue;
        }
        let list = before
            .unwrap_or_default()
            .trim()
            .trim_end_matches(',')
            .trim_end();
        let covered = list.split(',').any(|item| {
            let item = item.trim();
            item == "9472"
                || item.split_once('-').is_some_and(|(low, high)| {
                    matches!((low.trim().parse::<u16>(), high.trim().parse::<u16>()),
                        (Ok(low), Ok(high)) if low <= 9472 && 9472 <= high)
                })
        });
        let expected = match list {
            "" => "9472".to_owned(),
            _ if covered => before.expect("a list").to_owned(),
            _ => format!("{list},9472"),
        };
        assert_eq!(after, Some(expected.as_str()), "{key}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_review_follows_the_documented_rules(
        pod in pod(),
        uid in "[a-f0-9-]{1,36}",
        overrides in any::<bool>(),
        direct in any::<bool>(),
    ) {
        let backend: &[&str] = if direct { &["--helper-backend=direct"] } else { &[] };
        let settings = if overrides {
            common::golden_settings(backend)
        } else {
            let flags = ["--helper-image=registry.example.com/ipmgr-helper:0.1.0"];
            common::settings_from(&[&flags[..], backend].concat())
        };
        check(&pod, &uid, &settings, overrides);
    }
}
