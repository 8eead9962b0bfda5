//! The MutatingWebhookConfiguration's matchConditions (`manifests/base/`, and the chart's)
//! against the injector's own decision, evaluated with kube-cel as the API server evaluates
//! them (see `common/cel.rs`), over a table and the property test's generated pods: the
//! conditions must send the webhook exactly the pods the injector injects or denies, never
//! one it skips (no_multus_networks, host_network, disabled, already_injected,
//! helper_present).

#[path = "common/cel.rs"]
mod cel;
mod common;
#[path = "common/kube_tools.rs"]
mod kube_tools;
#[path = "common/pods.rs"]
mod pods;

use cel::{Cel, Expression, cel, find, items, text, without_nulls};
use ipmgr_injector::{Decision, PodTemplate, SkipReason, plan};
use json_patch::jsonptr::Pointer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rstest::rstest;
use serde_json::{Map, Value, json};

use kube_tools::{helm, template};

const WEBHOOK: &str = include_str!("../../manifests/base/mutatingwebhookconfiguration.yaml");

/// A user that creates pods.
const TENANT: &str = "system:serviceaccount:tenant:default";

/// The matchConditions of the webhook `inject.multus-ipmgr.io` of a YAML stream.
fn webhook_conditions(yaml: &str) -> Vec<Expression> {
    let configuration = find(yaml, "MutatingWebhookConfiguration");
    let webhooks = items(&configuration, "webhooks");
    assert_eq!(webhooks.len(), 1);
    items(&webhooks[0], "matchConditions")
        .iter()
        .map(|condition| Expression::new(text(condition, "name"), text(condition, "expression")))
        .collect()
}

/// Whether the conditions send the creation of `pod` to the webhook.
fn sent_to_webhook(conditions: &[Expression], pod: &Value) -> bool {
    let context = cel::context(&[
        ("object", cel(&without_nulls(pod))),
        ("oldObject", Cel::Null),
        (
            "request",
            cel(&json!({"operation": "CREATE", "userInfo": {"username": TENANT}})),
        ),
    ]);
    // Every condition is evaluated (so none may fail), as they may be in any order.
    let results: Vec<bool> = conditions
        .iter()
        .map(|condition| condition.holds(&context))
        .collect();
    results.into_iter().all(|holds| holds)
}

/// The injector's decision on `pod` with the webhook's default settings.
fn injector_decision(pod: &Value) -> Decision {
    let template: PodTemplate = serde_json::from_value(pod.clone()).expect("a readable pod");
    plan(Pointer::root(), &template, &common::settings())
}

/// The conditions let `pod` through exactly when the injector would inject or deny it.
fn agree(conditions: &[Expression], pod: &Value) -> Result<(), String> {
    let sent = sent_to_webhook(conditions, pod);
    match injector_decision(pod) {
        Decision::Skip(reason) if sent => Err(format!(
            "the matchConditions send a pod the injector skips ({}): {pod}",
            reason.label()
        )),
        Decision::Inject(_) | Decision::Deny(_) if !sent => Err(format!(
            "the matchConditions keep from the webhook a pod the injector would inject or deny: {pod}"
        )),
        _ => Ok(()),
    }
}

/// A pod as the property test's generator makes them.
fn generated(
    networks: Option<&str>,
    mode: Option<&str>,
    containers: &[&str],
    init: &[&str],
) -> Value {
    let mut annotations = Map::new();
    for (key, value) in [
        ("k8s.v1.cni.cncf.io/networks", networks),
        ("multus-ipmgr.io/mode", mode),
    ] {
        if let Some(value) = value {
            annotations.insert(key.to_owned(), json!(value));
        }
    }
    let named = |names: &[&str]| -> Vec<Value> {
        names
            .iter()
            .map(|name| json!({"name": name, "image": "busybox"}))
            .collect()
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "multus", "annotations": annotations},
        "spec": {"containers": named(containers), "initContainers": named(init)},
    })
}

#[rstest]
#[case::injected(Some("ipvlan-multus"), None, &["app"][..], &[][..], None)]
#[case::denied_mode(Some("ipvlan-multus"), Some("sidecars"), &["app"][..], &[][..], None)]
#[case::denied_networks(Some("a@b@c"), None, &["app"][..], &[][..], None)]
#[case::no_networks(None, None, &["app"][..], &[][..], Some(SkipReason::NoMultusNetworks))]
#[case::blank_networks(Some(" \t"), None, &["app"][..], &[][..], Some(SkipReason::NoMultusNetworks))]
#[case::disabled(Some("ipvlan-multus"), Some("disabled"), &["app"][..], &[][..], Some(SkipReason::Disabled))]
#[case::disabled_spaced(Some("ipvlan-multus"), Some(" disabled\n"), &["app"][..], &[][..], Some(SkipReason::Disabled))]
#[case::disabled_with_bad_networks(Some("a@b@c"), Some("disabled"), &["app"][..], &[][..], Some(SkipReason::Disabled))]
#[case::disabled_capitalised(Some("ipvlan-multus"), Some("Disabled"), &["app"][..], &[][..], None)]
#[case::helper_added_by_hand(Some("ipvlan-multus"), None, &["app", "aws-ip-mgmt"][..], &[][..], Some(SkipReason::HelperPresent))]
#[case::helper_as_init_container(Some("ipvlan-multus"), Some("bogus"), &["app"][..], &["aws-ip-mgmt"][..], Some(SkipReason::HelperPresent))]
#[case::selects_nothing(Some("[]"), None, &["app"][..], &[][..], Some(SkipReason::NoMultusNetworks))]
#[case::selects_nothing_spaced(Some(" [\r\n\t] "), Some("sidecar"), &["app"][..], &[][..], Some(SkipReason::NoMultusNetworks))]
#[case::selects_nothing_with_a_bad_mode(Some("[]"), Some("bogus"), &["app"][..], &[][..], None)]
#[case::selects_nothing_disabled(Some("[]"), Some("disabled"), &["app"][..], &[][..], Some(SkipReason::Disabled))]
#[case::nbsp_is_not_json_whitespace(Some("\u{a0}[]"), None, &["app"][..], &[][..], None)]
#[case::an_empty_object(Some("[{}]"), None, &["app"][..], &[][..], None)]
fn webhook_conditions_match_the_injector(
    #[case] networks: Option<&str>,
    #[case] mode: Option<&str>,
    #[case] containers: &[&str],
    #[case] init: &[&str],
    #[case] skipped: Option<SkipReason>,
) {
    let pod = generated(networks, mode, containers, init);
    let decision = injector_decision(&pod);
    match (skipped, &decision) {
        (Some(reason), Decision::Skip(actual)) => assert_eq!(*actual, reason),
        (None, Decision::Inject(_) | Decision::Deny(_)) => {}
        _ => panic!("the table expects {skipped:?}, the injector says {decision:?}"),
    }
    let conditions = webhook_conditions(WEBHOOK);
    agree(&conditions, &pod).unwrap_or_else(|error| panic!("{error}"));
    let host_network = {
        let mut pod = pod.clone();
        pod["spec"]["hostNetwork"] = json!(true);
        pod
    };
    let injected = {
        let mut pod = pod;
        pod["metadata"]["annotations"]["multus-ipmgr.io/status"] = json!("init");
        pod
    };
    for other in [host_network, injected] {
        assert!(matches!(injector_decision(&other), Decision::Skip(_)));
        agree(&conditions, &other).unwrap_or_else(|error| panic!("{error}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn webhook_conditions_match_the_injector_on_generated_pods(pod in pods::pod()) {
        let conditions = webhook_conditions(WEBHOOK);
        agree(&conditions, &pod).map_err(TestCaseError::fail)?;
    }
}

/// The chart's conditions (`helm template`; skipped without helm) agree with the injector
/// as the manifests' do.
#[test]
fn the_charts_webhook_conditions_match_the_injector() {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let rendered = template(&helm, home.path(), &[]).expect("renders");
    let conditions = webhook_conditions(&rendered);
    let mut runner = TestRunner::new(Config::with_cases(256));
    runner
        .run(&pods::pod(), |pod| {
            agree(&conditions, &pod).map_err(TestCaseError::fail)
        })
        .unwrap_or_else(|error| panic!("{error}"));
    for (networks, mode) in [
        ("[]", None),
        ("ipvlan-multus", Some("disabled")),
        ("[]", Some("x")),
    ] {
        let pod = generated(Some(networks), mode, &["app"], &[]);
        agree(&conditions, &pod).unwrap_or_else(|error| panic!("{error}"));
    }
}
