//! Property test of `/mutate`'s review over well-typed pods with hostile annotations, with
//! either helper backend: every answer is a valid AdmissionReview with the request's uid; an
//! injection's patch applies, adds exactly one restricted helper where its mode puts it (the
//! pod client and the agent's address with the agent backend, the full helper with the
//! direct one, the mesh proxy's UID in a mesh, behind a mesh's native proxy) and the agent
//! port to the exclusions of the meshes the pod shows, nothing else, and is not repeated on
//! reinvocation; a denial's message is short; and the decision is the one the rules of
//! docs/configuration.md, "Annotations and labels", give, computed here independently of
//! the injector.

mod common;
#[path = "common/pods.rs"]
mod pods;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipmgr_injector::{Backend, HelperSettings, managed_interfaces};
use ipmgr_webhook::admission::{Reviewed, review};
use pods::{ISTIO_INJECT, ISTIO_PORTS, LINKERD_PORTS, RESOURCE_KEYS, UNITS, pod};
use proptest::prelude::*;
use serde_json::{Value, json};

/// What the rules of docs/configuration.md, "Annotations and labels", say about a pod.
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
    let reviewed = review(body.as_bytes(), settings).expect("a well-typed review is answered");
    let (response, _) = match reviewed {
        Reviewed::Answered(response, outcome) => (response, outcome),
        Reviewed::Pending(pending) => pending.finish(None),
    };
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

/// The meshes the pod shows, as docs/how-it-works.md, "Service meshes", says they are
/// detected: Istio, Linkerd.
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
    // The agent backend injects the thin pod client, the direct one the full helper; the
    // image annotation overrides the image, never the command.
    let (image, command) = match settings.backend {
        Backend::Agent => (&settings.pod_client_image, &settings.pod_client_command),
        Backend::Direct => (&settings.image, &settings.command),
    };
    assert_eq!(
        helper["image"],
        annotation("multus-ipmgr.io/image").unwrap_or(image)
    );
    assert_eq!(helper["command"], json!([command]));
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
            let flags = [
                "--helper-image=registry.example.com/ipmgr-helper:0.1.0",
                "--pod-client-image=registry.example.com/ipmgr-pod:0.1.0",
            ];
            common::settings_from(&[&flags[..], backend].concat())
        };
        check(&pod, &uid, &settings, overrides);
    }
}
