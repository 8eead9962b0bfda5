//! The ValidatingAdmissionPolicy of `manifests/policy/` (and the chart's, with other
//! writers), evaluated with kube-cel as the API server evaluates it (see `common/cel.rs`):
//! its resource rules, matchConditions (without `variables`, which the API server does not
//! give them), variables (in order, each seeing the ones before), validations and the
//! message the API server would show, over tables of requests: who may write a pod's
//! `k8s.v1.cni.cncf.io/network-status`, which `multus-ipmgr.io/floating-ips` its
//! namespace's grant allows, and that an injected pod's `k8s.v1.cni.cncf.io/networks` stay
//! those it was created with.

#[path = "common/cel.rs"]
mod cel;
#[path = "common/kube_tools.rs"]
mod kube_tools;

use std::collections::HashMap;

use cel::{Cel, Context, Expression, cel, find, items, text};
use rstest::rstest;
use serde_json::{Map, Value, json};

use ipmgr_injector::HELPER_CONTAINER_NAME;
use kube_tools::{helm, template, values_file};

const POLICY: &str = include_str!("../../manifests/policy/validatingadmissionpolicy.yaml");

const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const FLOATING_IPS: &str = "multus-ipmgr.io/floating-ips";
const GRANT: &str = "multus-ipmgr.io/floating-ip-cidrs";

/// The longest message the API server takes from a messageExpression
/// (`MaxEvaluatedMessageExpressionSizeBytes`).
const MAX_MESSAGE_BYTES: usize = 5 * 1024;

/// A write of a pod, as the policy sees it.
struct Request {
    operation: &'static str,
    /// `""` for the pod itself, `"status"` for pods/status.
    subresource: &'static str,
    username: String,
    groups: Vec<String>,
    object: Value,
    old_object: Option<Value>,
    namespace: Value,
}

impl Request {
    /// The CEL variables of an admission request: `object`, `oldObject` (null on CREATE),
    /// `request` and `namespaceObject`, with kube-cel's functions.
    fn context(&self) -> Context<'static> {
        let request = json!({
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": self.subresource,
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "requestSubResource": self.subresource,
            "name": self.object["metadata"]["name"],
            "namespace": self.namespace["metadata"]["name"],
            "operation": self.operation,
            "userInfo": {"username": self.username, "groups": self.groups},
            "dryRun": false,
        });
        cel::context(&[
            ("object", cel(&self.object)),
            ("oldObject", self.old_object.as_ref().map_or(Cel::Null, cel)),
            ("request", cel(&request)),
            ("namespaceObject", cel(&self.namespace)),
        ])
    }

    /// `pods` or `pods/status`.
    fn resource(&self) -> String {
        match self.subresource {
            "" => "pods".to_owned(),
            subresource => format!("pods/{subresource}"),
        }
    }
}

/// A validation of the policy.
struct Validation {
    expression: Expression,
    message: Option<String>,
    message_expression: Option<Expression>,
}

impl Validation {
    /// The message of a failed validation, chosen as the API server chooses it: the
    /// messageExpression's string, trimmed, unless longer than 5 KiB or multi-line; else the
    /// message; else the expression.
    fn message(&self, context: &Context) -> String {
        let evaluated =
            self.message_expression
                .as_ref()
                .map(|expression| match expression.value(context) {
                    Cel::String(message) => message.trim().to_owned(),
                    other => panic!("{} is not a string: {other:?}", expression.name),
                });
        evaluated
            .filter(|message| {
                !message.is_empty() && message.len() <= MAX_MESSAGE_BYTES && !message.contains('\n')
            })
            .or_else(|| {
                self.message
                    .as_ref()
                    .map(|message| message.trim().to_owned())
            })
            .unwrap_or_else(|| format!("failed expression: {}", self.expression.source.trim()))
    }
}

/// What the policy answers.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Its rules or matchConditions leave the request alone.
    NotMatched,
    Allowed,
    /// The messages of the failed validations, in order (the API server shows the first).
    Denied(Vec<String>),
}

/// A ValidatingAdmissionPolicy, ready to evaluate.
struct Policy {
    rules: Vec<Value>,
    conditions: Vec<Expression>,
    variables: Vec<Expression>,
    validations: Vec<Validation>,
}

impl Policy {
    /// The policy of a YAML stream, with its binding checked: it denies, everywhere.
    fn from_yaml(yaml: &str) -> Self {
        let policy = find(yaml, "ValidatingAdmissionPolicy");
        let binding = find(yaml, "ValidatingAdmissionPolicyBinding");
        assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
        assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        assert!(binding["spec"].get("matchResources").is_none(), "{binding}");
        assert!(binding["spec"].get("paramRef").is_none(), "{binding}");
        let spec = &policy["spec"];
        assert_eq!(spec["failurePolicy"], "Fail");
        let named = |item: &Value, key: &str| Expression::new(text(item, "name"), text(item, key));
        Policy {
            rules: items(&spec["matchConstraints"], "resourceRules").to_vec(),
            conditions: items(spec, "matchConditions")
                .iter()
                .map(|condition| named(condition, "expression"))
                .collect(),
            variables: items(spec, "variables")
                .iter()
                .map(|variable| named(variable, "expression"))
                .collect(),
            validations: items(spec, "validations")
                .iter()
                .enumerate()
                .map(|(index, validation)| Validation {
                    expression: Expression::new(
                        &format!("validations[{index}]"),
                        text(validation, "expression"),
                    ),
                    message: validation["message"].as_str().map(|message| {
                        // The API server refuses a policy whose message has a line break.
                        assert!(!message.trim().contains('\n'), "{message:?}");
                        message.to_owned()
                    }),
                    message_expression: validation["messageExpression"].as_str().map(|source| {
                        Expression::new(&format!("validations[{index}].messageExpression"), source)
                    }),
                })
                .collect(),
        }
    }

    /// The shipped policy.
    fn shipped() -> Self {
        Self::from_yaml(POLICY)
    }

    /// The shipped policy with these variables' expressions replaced, as the kustomize
    /// patch of docs/security.md, "What a pod may claim: the admission policy", replaces
    /// them.
    fn with_variables(replaced: &[(&str, &str)]) -> Self {
        let mut policy = Self::shipped();
        for (name, source) in replaced {
            let variable = policy
                .variables
                .iter_mut()
                .find(|variable| variable.name == *name)
                .unwrap_or_else(|| panic!("no variable {name}"));
            *variable = Expression::new(name, source);
        }
        policy
    }

    /// Whether a resource rule names the request's operation and resource.
    fn matches(&self, request: &Request) -> bool {
        let has = |rule: &Value, key: &str, wanted: &str| {
            items(rule, key)
                .iter()
                .any(|item| item == wanted || item == "*")
        };
        self.rules.iter().any(|rule| {
            has(rule, "apiGroups", "")
                && has(rule, "apiVersions", "v1")
                && has(rule, "operations", request.operation)
                && has(rule, "resources", &request.resource())
        })
    }

    /// The policy's answer to `request`. Its matchConditions see no `variables` (so they
    /// must not use them), its variables are evaluated in order, each seeing the ones before.
    fn review(&self, request: &Request) -> Verdict {
        if !self.matches(request) {
            return Verdict::NotMatched;
        }
        let mut context = request.context();
        if !self
            .conditions
            .iter()
            .all(|condition| condition.holds(&context))
        {
            return Verdict::NotMatched;
        }
        let mut variables: HashMap<String, Cel> = HashMap::new();
        for variable in &self.variables {
            context.add_variable_from_value("variables", variables.clone());
            variables.insert(variable.name.clone(), variable.value(&context));
        }
        context.add_variable_from_value("variables", variables);
        let denials: Vec<String> = self
            .validations
            .iter()
            .filter(|validation| !validation.expression.holds(&context))
            .map(|validation| validation.message(&context))
            .collect();
        if denials.is_empty() {
            Verdict::Allowed
        } else {
            Verdict::Denied(denials)
        }
    }
}

/// What a table expects of the policy.
#[derive(Debug)]
enum Expect {
    NotMatched,
    Allowed,
    /// Denied, the first message (the one shown) containing each of these.
    Denied(&'static [&'static str]),
}

/// Checks `verdict` against `expect`; a denial must also be the only one (each case breaks
/// one rule).
fn check(verdict: &Verdict, expect: &Expect) {
    match (verdict, expect) {
        (Verdict::NotMatched, Expect::NotMatched) | (Verdict::Allowed, Expect::Allowed) => {}
        (Verdict::Denied(messages), Expect::Denied(parts)) => {
            assert_eq!(
                messages.len(),
                1,
                "one rule broken, one denial: {messages:#?}"
            );
            for part in *parts {
                assert!(
                    messages[0].contains(part),
                    "{part:?} not in {:?}",
                    messages[0]
                );
            }
        }
        _ => panic!("expected {expect:?}, got {verdict:?}"),
    }
}

/// A pod of namespace `tenant` with these annotations, on `node` when given.
fn pod(annotations: &[(&str, &str)], node: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "vip", "namespace": "tenant"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    });
    if !annotations.is_empty() {
        let annotations: Map<String, Value> = annotations
            .iter()
            .map(|(key, value)| ((*key).to_owned(), Value::String((*value).to_owned())))
            .collect();
        pod["metadata"]["annotations"] = Value::Object(annotations);
    }
    if let Some(node) = node {
        pod["spec"]["nodeName"] = json!(node);
    }
    pod
}

/// The namespace `tenant`, with this floating-IP grant when given.
fn namespace(grant: Option<&str>) -> Value {
    let mut namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "tenant", "labels": {"kubernetes.io/metadata.name": "tenant"}},
    });
    if let Some(grant) = grant {
        namespace["metadata"]["annotations"] = json!({ GRANT: grant });
    }
    namespace
}

/// Multus' record of a pod's networks, as multus-cni writes it.
const RECORD: &str = r#"[{"name": "tenant/ipvlan-multus", "interface": "net1", "ips": ["10.0.1.50"], "mac": "02:11:22:33:44:55", "dns": {}}]"#;
/// The same record claiming another pod's address.
const FORGED: &str = r#"[{"name": "tenant/ipvlan-multus", "interface": "net1", "ips": ["10.0.1.60"], "mac": "02:11:22:33:44:55", "dns": {}}]"#;

const MULTUS: &str = "system:serviceaccount:kube-system:multus";
const TENANT: &str = "system:serviceaccount:tenant:default";

/// A write of a pod by `username` (groups as the API server gives that kind of user), from
/// the annotations `old` (`None`: CREATE) to `new`, on node `node-a`.
fn write(
    username: &str,
    subresource: &'static str,
    old: Option<&[(&str, &str)]>,
    new: &[(&str, &str)],
    grant: Option<&str>,
) -> Request {
    write_on(username, subresource, old, new, grant, Some("node-a"))
}

fn write_on(
    username: &str,
    subresource: &'static str,
    old: Option<&[(&str, &str)]>,
    new: &[(&str, &str)],
    grant: Option<&str>,
    node: Option<&str>,
) -> Request {
    let groups = match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", namespace, _] => vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".to_owned(),
        ],
        ["system", "node", _] => vec!["system:nodes".to_owned(), "system:authenticated".to_owned()],
        ["system", "multus", _] => vec![
            "system:multus".to_owned(),
            "system:authenticated".to_owned(),
        ],
        _ => vec!["tenant-devs".to_owned(), "system:authenticated".to_owned()],
    };
    Request {
        operation: if old.is_some() { "UPDATE" } else { "CREATE" },
        subresource,
        username: username.to_owned(),
        groups,
        object: pod(new, node),
        old_object: old.map(|old| pod(old, node)),
        namespace: namespace(grant),
    }
}

#[rstest]
// Multus writes its record with UpdateStatus, as the ServiceAccount of its DaemonSet.
#[case::multus_records_a_pod(MULTUS, "status", Some(&[][..]), &[(NETWORK_STATUS, RECORD)][..], Expect::Allowed)]
#[case::multus_rewrites_its_record(MULTUS, "status", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, FORGED)][..], Expect::Allowed)]
#[case::multus_through_the_pod(MULTUS, "", Some(&[][..]), &[(NETWORK_STATUS, RECORD)][..], Expect::Allowed)]
// The thick daemon's per-node certificate: its own node's pods only.
#[case::multus_of_the_pods_node("system:multus:node-a", "status", Some(&[][..]), &[(NETWORK_STATUS, RECORD)][..], Expect::Allowed)]
#[case::multus_of_another_node("system:multus:node-b", "status", Some(&[][..]), &[(NETWORK_STATUS, RECORD)][..], Expect::Denied(&["system:multus:node-b may not set annotation k8s.v1.cni.cncf.io/network-status"]))]
// A tenant, however it writes.
#[case::tenant_adds(TENANT, "", Some(&[][..]), &[(NETWORK_STATUS, FORGED)][..], Expect::Denied(&["system:serviceaccount:tenant:default may not set annotation k8s.v1.cni.cncf.io/network-status", "only Multus writes it", "leave it out of the pod and its template", "policy.networkStatusWriters"]))]
#[case::tenant_changes(TENANT, "", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, FORGED)][..], Expect::Denied(&["may not change annotation k8s.v1.cni.cncf.io/network-status"]))]
#[case::tenant_removes(TENANT, "", Some(&[(NETWORK_STATUS, RECORD)][..]), &[][..], Expect::Denied(&["may not remove annotation k8s.v1.cni.cncf.io/network-status"]))]
#[case::tenant_changes_the_status(TENANT, "status", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, FORGED)][..], Expect::Denied(&["may not change annotation k8s.v1.cni.cncf.io/network-status"]))]
#[case::tenant_empties_it(TENANT, "", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, "")][..], Expect::Denied(&["may not change"]))]
#[case::user_creates_with_it("alice", "", None, &[(NETWORK_STATUS, FORGED)][..], Expect::Denied(&["alice may not set annotation k8s.v1.cni.cncf.io/network-status"]))]
#[case::controller_creates_from_a_template("system:serviceaccount:kube-system:replicaset-controller", "", None, &[(NETWORK_STATUS, FORGED)][..], Expect::Denied(&["may not set"]))]
// Nodes are not writers by default, not even of their own pods.
#[case::kubelet_changes_it("system:node:node-a", "status", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, FORGED)][..], Expect::Denied(&["system:node:node-a may not change"]))]
// Writes that leave the record alone never reach the validations.
#[case::kubelet_updates_status(TENANT, "status", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, RECORD)][..], Expect::NotMatched)]
#[case::tenant_updates_another_annotation(TENANT, "", Some(&[(NETWORK_STATUS, RECORD)][..]), &[(NETWORK_STATUS, RECORD), ("team", "blue")][..], Expect::NotMatched)]
#[case::tenant_creates_a_plain_pod(TENANT, "", None, &[("team", "blue")][..], Expect::NotMatched)]
#[case::tenant_creates_without_annotations(TENANT, "", None, &[][..], Expect::NotMatched)]
fn only_multus_writes_network_status(
    #[case] username: &str,
    #[case] subresource: &'static str,
    #[case] old: Option<&[(&str, &str)]>,
    #[case] new: &[(&str, &str)],
    #[case] expect: Expect,
) {
    let verdict = Policy::shipped().review(&write(username, subresource, old, new, None));
    check(&verdict, &expect);
}

#[test]
fn a_node_bound_writer_needs_the_pods_node() {
    let policy = Policy::shipped();
    let unscheduled = write_on(
        "system:multus:",
        "status",
        Some(&[][..]),
        &[(NETWORK_STATUS, RECORD)],
        None,
        None,
    );
    check(
        &policy.review(&unscheduled),
        &Expect::Denied(&["may not set"]),
    );
}

/// Other writers, as a kustomize patch of the first three variables (or the chart's values)
/// names them: the node itself for its own pods, and a group.
#[rstest]
#[case::node_of_the_pod("system:node:node-a", &[][..], Expect::Allowed)]
#[case::another_node("system:node:node-b", &[][..], Expect::Denied(&["system:node:node-b may not set"]))]
#[case::group_member("carol", &["multus-writers"][..], Expect::Allowed)]
#[case::other_group("dave", &["tenant-devs"][..], Expect::Denied(&["dave may not set"]))]
#[case::default_writer_replaced(MULTUS, &["system:serviceaccounts"][..], Expect::Denied(&["may not set"]))]
fn the_writers_are_configurable(
    #[case] username: &str,
    #[case] groups: &[&str],
    #[case] expect: Expect,
) {
    let policy = Policy::with_variables(&[
        (
            "networkStatusWriterUsernames",
            r#"["system:serviceaccount:multus:multus"]"#,
        ),
        ("networkStatusWriterGroups", r#"["multus-writers"]"#),
        ("networkStatusWriterNodePrefixes", r#"["system:node:"]"#),
    ]);
    let mut request = write(
        username,
        "status",
        Some(&[][..]),
        &[(NETWORK_STATUS, RECORD)],
        None,
    );
    request.groups = groups.iter().map(|group| (*group).to_owned()).collect();
    check(&policy.review(&request), &expect);
}

/// The chart renders the writers of its values into the same policy (`helm template`;
/// skipped without helm).
#[test]
fn the_charts_writers_are_its_values() {
    let Some(helm) = helm() else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let values = values_file(
        home.path(),
        "writers.yaml",
        "policy:\n  networkStatusWriters:\n    usernames: [\"o'brien\", 'say \"multus\"']\n    groups: []\n    nodeUsernamePrefixes: [\"system:node:\"]\n",
    );
    let rendered = template(&helm, home.path(), &[&values]).expect("renders");
    let policy = Policy::from_yaml(&rendered);
    for (username, expect) in [
        ("o'brien", Expect::Allowed),
        ("say \"multus\"", Expect::Allowed),
        ("system:node:node-a", Expect::Allowed),
        ("system:node:node-b", Expect::Denied(&["may not set"])),
        (MULTUS, Expect::Denied(&["may not set"])),
    ] {
        let request = write(
            username,
            "status",
            Some(&[][..]),
            &[(NETWORK_STATUS, RECORD)],
            None,
        );
        check(&policy.review(&request), &expect);
    }
    let shipped = template(&helm, home.path(), &[]).expect("renders");
    let request = write(
        MULTUS,
        "status",
        Some(&[][..]),
        &[(NETWORK_STATUS, RECORD)],
        None,
    );
    check(
        &Policy::from_yaml(&shipped).review(&request),
        &Expect::Allowed,
    );
}

/// The grant of the cases below: an IPv4 and an IPv6 range, spaced as admins write.
const DUAL_STACK: &str = "10.0.9.0/24, 2600:1f14:abc::/64";

#[rstest]
#[case::an_address(DUAL_STACK, "10.0.9.7", Expect::Allowed)]
#[case::addresses_spaced_with_empty_entries(DUAL_STACK, " 10.0.9.7 , ,10.0.9.8,", Expect::Allowed)]
#[case::a_cidr_inside(DUAL_STACK, "10.0.9.0/28", Expect::Allowed)]
#[case::the_whole_grant(DUAL_STACK, "10.0.9.0/24", Expect::Allowed)]
#[case::a_cidr_with_host_bits(DUAL_STACK, "10.0.9.5/30", Expect::Allowed)]
#[case::an_ipv6_address(DUAL_STACK, "2600:1f14:abc::10", Expect::Allowed)]
#[case::an_ipv6_cidr(DUAL_STACK, "2600:1f14:abc:0:1::/80", Expect::Allowed)]
#[case::both_families(DUAL_STACK, "10.0.9.7,2600:1f14:abc::10/128", Expect::Allowed)]
#[case::malformed_grant_entries_grant_nothing_else(
    "bogus, 10.0.9.0/24,10.0.8.1",
    "10.0.9.7",
    Expect::Allowed
)]
#[case::an_address_outside(DUAL_STACK, "10.0.8.1", Expect::Denied(&["annotation multus-ipmgr.io/floating-ips has 10.0.8.1, outside what namespace tenant grants in its annotation multus-ipmgr.io/floating-ip-cidrs (10.0.9.0/24, 2600:1f14:abc::/64)", "kubectl annotate namespace tenant --overwrite multus-ipmgr.io/floating-ip-cidrs="]))]
#[case::a_cidr_larger_than_the_grant(DUAL_STACK, "10.0.9.0/23", Expect::Denied(&["has 10.0.9.0/23, outside"]))]
#[case::a_cidr_overlapping_the_grant(DUAL_STACK, "10.0.9.128/24", Expect::Allowed)]
#[case::an_ipv6_address_outside(DUAL_STACK, "2600:1f14:abd::1", Expect::Denied(&["has 2600:1f14:abd::1, outside"]))]
#[case::an_ipv6_cidr_larger_than_the_grant(DUAL_STACK, "2600:1f14:abc::/48", Expect::Denied(&["has 2600:1f14:abc::/48, outside"]))]
#[case::the_other_family("10.0.9.0/24", "2600:1f14:abc::10", Expect::Denied(&["has 2600:1f14:abc::10, outside", "(10.0.9.0/24)"]))]
#[case::several_outside(DUAL_STACK, "10.0.9.7,10.0.8.1,10.0.7.1", Expect::Denied(&["has 10.0.8.1 (and 1 more), outside"]))]
#[case::a_grant_of_only_malformed_entries("10.0.9.0/33, eth1", "10.0.9.7", Expect::Denied(&["(nothing)"]))]
#[case::not_an_address(DUAL_STACK, "eth1", Expect::Denied(&["annotation multus-ipmgr.io/floating-ips has \"eth1\", which is neither an IP address nor a CIDR; list addresses or CIDRs separated by commas, e.g. \"10.0.1.100,2600:1f14::100/128\""]))]
#[case::an_octet_too_large(DUAL_STACK, "10.0.9.256", Expect::Denied(&["has \"10.0.9.256\", which is neither"]))]
#[case::leading_zeros(DUAL_STACK, "10.0.9.07", Expect::Denied(&["has \"10.0.9.07\", which is neither"]))]
#[case::a_prefix_too_long(DUAL_STACK, "10.0.9.0/33", Expect::Denied(&["has \"10.0.9.0/33\", which is neither"]))]
#[case::ipv4_mapped_ipv6(DUAL_STACK, "::ffff:10.0.9.7", Expect::Denied(&["has \"::ffff:10.0.9.7\", which is neither"]))]
#[case::a_zone(DUAL_STACK, "fe80::1%eth0", Expect::Denied(&["has \"fe80::1%eth0\", which is neither"]))]
#[case::newline_separated(DUAL_STACK, "10.0.9.7\n10.0.9.8", Expect::Denied(&["has \"10.0.9.7\\n10.0.9.8\", which is neither"]))]
fn floating_ips_stay_inside_the_namespaces_grant(
    #[case] grant: &str,
    #[case] floating: &str,
    #[case] expect: Expect,
) {
    let request = write(TENANT, "", None, &[(FLOATING_IPS, floating)], Some(grant));
    check(&Policy::shipped().review(&request), &expect);
}

#[rstest]
#[case::on_create(None, Expect::Denied(&["(nothing)", "kubectl annotate namespace tenant --overwrite multus-ipmgr.io/floating-ip-cidrs=<CIDR>[,<CIDR>...]"]))]
#[case::added_on_update(Some(&[][..]), Expect::Denied(&["has 10.0.9.7, outside"]))]
fn without_a_grant_no_floating_ip(#[case] old: Option<&[(&str, &str)]>, #[case] expect: Expect) {
    let request = write(TENANT, "", old, &[(FLOATING_IPS, "10.0.9.7")], None);
    check(&Policy::shipped().review(&request), &expect);
}

#[rstest]
// The grant shrank after the pod declared its floating IPs: the pod stays (the agent checks
// the grant of now), and other updates of it go through.
#[case::unchanged_outside(Some("10.0.8.1"), Some("10.0.8.1"), Expect::NotMatched)]
#[case::changed_to_outside(Some("10.0.9.7"), Some("10.0.8.1"), Expect::Denied(&["has 10.0.8.1, outside"]))]
#[case::changed_inside(Some("10.0.9.7"), Some("10.0.9.8"), Expect::Allowed)]
#[case::removed(Some("10.0.8.1"), None, Expect::Allowed)]
fn floating_ips_are_checked_when_set_or_changed(
    #[case] old: Option<&'static str>,
    #[case] new: Option<&'static str>,
    #[case] expect: Expect,
) {
    let annotations = |value: Option<&'static str>| -> Vec<(&str, &str)> {
        value
            .map(|value| (FLOATING_IPS, value))
            .into_iter()
            .collect()
    };
    let (old, new) = (annotations(old), annotations(new));
    for subresource in ["", "status"] {
        let request = write(
            TENANT,
            subresource,
            Some(old.as_slice()),
            &new,
            Some("10.0.9.0/24"),
        );
        check(&Policy::shipped().review(&request), &expect);
    }
}

/// An annotation of any size (up to the 256 KiB Kubernetes allows) is refused by its bound
/// alone: no entry is walked, so no other validation answers.
#[rstest]
#[case::sixty_five_entries(
    (1..=65).map(|host| format!("10.0.9.{host}")).collect::<Vec<_>>().join(","),
    "has 65 comma-separated entries, more than the 64 allowed"
)]
#[case::a_quarter_mebibyte_of_junk("x,".repeat(128 * 1024), "has 131073 comma-separated entries")]
fn floating_ips_are_bounded(#[case] floating: String, #[case] message: &str) {
    let request = write(
        TENANT,
        "",
        None,
        &[(FLOATING_IPS, &floating)],
        Some("10.0.8.0/24"),
    );
    match Policy::shipped().review(&request) {
        Verdict::Denied(messages) => {
            assert_eq!(messages.len(), 1, "{messages:#?}");
            assert!(messages[0].contains(message), "{}", messages[0]);
        }
        verdict => panic!("{verdict:?}"),
    }
}

/// A malformed entry and one outside the grant: both refused, the malformed one shown first.
#[test]
fn a_malformed_entry_is_named_before_one_outside_the_grant() {
    let request = write(
        TENANT,
        "",
        None,
        &[(FLOATING_IPS, "10.0.8.1,eth1")],
        Some(DUAL_STACK),
    );
    match Policy::shipped().review(&request) {
        Verdict::Denied(messages) => {
            assert_eq!(messages.len(), 2, "{messages:#?}");
            assert!(messages[0].contains("has \"eth1\", which is neither"));
            assert!(messages[1].contains("has 10.0.8.1, outside"));
        }
        verdict => panic!("{verdict:?}"),
    }
}

#[test]
fn sixty_four_entries_are_read() {
    let floating: Vec<String> = (1..=64).map(|host| format!("10.0.9.{host}")).collect();
    let floating = floating.join(",");
    let request = write(
        TENANT,
        "",
        None,
        &[(FLOATING_IPS, &floating)],
        Some("10.0.9.0/24"),
    );
    check(&Policy::shipped().review(&request), &Expect::Allowed);
}

#[rstest]
#[case::at_the_bound(128, Expect::Allowed)]
#[case::above_it(129, Expect::Denied(&["namespace tenant grants floating IPs in its annotation multus-ipmgr.io/floating-ip-cidrs with 129 entries, more than the 128 read: a cluster admin merges them into fewer CIDRs"]))]
fn the_grant_is_bounded(#[case] entries: u32, #[case] expect: Expect) {
    // The pod's address is in the last CIDR, so the whole grant must be read.
    let grant: Vec<String> = (0..entries)
        .map(|index| format!("10.{}.{}.0/24", 1 + index / 256, index % 256))
        .collect();
    let last = format!("10.{}.{}.9", 1 + (entries - 1) / 256, (entries - 1) % 256);
    let request = write(
        TENANT,
        "",
        None,
        &[(FLOATING_IPS, &last)],
        Some(&grant.join(",")),
    );
    check(&Policy::shipped().review(&request), &expect);
}

#[test]
fn the_policy_leaves_other_resources_and_operations_alone() {
    let policy = Policy::shipped();
    let mut request = write(TENANT, "", None, &[(NETWORK_STATUS, FORGED)], None);
    for (operation, subresource) in [
        ("DELETE", ""),
        ("CREATE", "status"),
        ("UPDATE", "ephemeralcontainers"),
        ("CONNECT", "exec"),
    ] {
        request.operation = operation;
        request.subresource = subresource;
        assert_eq!(
            policy.review(&request),
            Verdict::NotMatched,
            "{operation} pods/{subresource}"
        );
    }
    for rule in &policy.rules {
        assert_eq!(rule["scope"], "Namespaced", "only namespaced pods: {rule}");
        assert_eq!(rule["apiGroups"], json!([""]), "{rule}");
    }
}

/// A write of a pod the webhook injected, its helper container among `place`
/// (`containers` for a sidecar, `initContainers` for init and native-sidecar modes), from
/// the annotations `old` to `new`.
fn write_injected(
    username: &str,
    subresource: &'static str,
    place: &str,
    old: &[(&str, &str)],
    new: &[(&str, &str)],
) -> Request {
    let mut request = write(username, subresource, Some(old), new, None);
    let old_object = request.old_object.as_mut().expect("an UPDATE");
    for pod in [&mut request.object, old_object] {
        let mut containers = pod["spec"][place].as_array().cloned().unwrap_or_default();
        containers.push(json!({"name": HELPER_CONTAINER_NAME, "image": "ipmgr-pod"}));
        pod["spec"][place] = Value::Array(containers);
    }
    request
}

const ONE_NETWORK: &str = "ipvlan-multus";
const TWO_NETWORKS: &str = "ipvlan-multus,late-net@net2";

#[rstest]
// The attack: the webhook sized the pod's requests from one network; a second one added
// later would get an address the scheduler never counted.
#[case::tenant_adds_a_network(TENANT, "", "initContainers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, TWO_NETWORKS)][..], Expect::Denied(&["system:serviceaccount:tenant:default may not change annotation k8s.v1.cni.cncf.io/networks of pod vip: multus-ipmgr injected it", "change the networks in the pod's template and create the pod again"]))]
#[case::a_sidecar_pod(TENANT, "", "containers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, TWO_NETWORKS)][..], Expect::Denied(&["may not change annotation k8s.v1.cni.cncf.io/networks"]))]
#[case::through_the_status(TENANT, "status", "initContainers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, TWO_NETWORKS)][..], Expect::Denied(&["may not change annotation k8s.v1.cni.cncf.io/networks"]))]
#[case::set_where_there_was_none(TENANT, "", "containers", &[][..], &[(NETWORKS, ONE_NETWORK)][..], Expect::Denied(&["may not set annotation k8s.v1.cni.cncf.io/networks"]))]
#[case::removed(TENANT, "", "initContainers", &[(NETWORKS, ONE_NETWORK)][..], &[][..], Expect::Denied(&["may not remove annotation k8s.v1.cni.cncf.io/networks"]))]
#[case::emptied(TENANT, "", "initContainers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, "")][..], Expect::Denied(&["may not remove"]))]
// Nobody changes them, not even Multus' own identity.
#[case::by_multus(MULTUS, "status", "initContainers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, TWO_NETWORKS)][..], Expect::Denied(&["system:serviceaccount:kube-system:multus may not change"]))]
// Writes that leave the networks as they were skip the policy.
#[case::another_annotation(TENANT, "", "initContainers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, ONE_NETWORK), ("team", "blue")][..], Expect::NotMatched)]
#[case::kubelet_status(TENANT, "status", "containers", &[(NETWORKS, ONE_NETWORK)][..], &[(NETWORKS, ONE_NETWORK)][..], Expect::NotMatched)]
#[case::absent_to_empty(TENANT, "", "containers", &[][..], &[(NETWORKS, "")][..], Expect::NotMatched)]
fn an_injected_pods_networks_are_those_it_was_created_with(
    #[case] username: &str,
    #[case] subresource: &'static str,
    #[case] place: &str,
    #[case] old: &[(&str, &str)],
    #[case] new: &[(&str, &str)],
    #[case] expect: Expect,
) {
    let request = write_injected(username, subresource, place, old, new);
    check(&Policy::shipped().review(&request), &expect);
}

/// Pods the webhook did not inject keep Multus' own rules: their networks may change
/// (multus-dynamic-networks-controller attaches and detaches on such changes), and a pod's
/// networks at creation are the webhook's to read.
#[rstest]
#[case::an_uninjected_pod_adds_a_network(Some(&[(NETWORKS, ONE_NETWORK)][..]), &[(NETWORKS, TWO_NETWORKS)][..])]
#[case::an_uninjected_pod_removes_them(Some(&[(NETWORKS, ONE_NETWORK)][..]), &[][..])]
#[case::a_pod_created_with_networks(None, &[(NETWORKS, TWO_NETWORKS)][..])]
fn other_pods_networks_are_left_alone(
    #[case] old: Option<&[(&str, &str)]>,
    #[case] new: &[(&str, &str)],
) {
    let request = write(TENANT, "", old, new, None);
    check(&Policy::shipped().review(&request), &Expect::NotMatched);
}

/// The policy knows an injected pod by the container name the webhook gives its helper.
#[test]
fn the_policy_names_the_injected_container() {
    let quoted = format!("container.name == '{HELPER_CONTAINER_NAME}'");
    for (file, policy) in [
        ("manifests/policy", POLICY),
        (
            "the chart",
            include_str!("../../charts/multus-ipmgr/templates/policy.yaml"),
        ),
    ] {
        assert_eq!(policy.matches(&quoted).count(), 4, "{file}: {quoted}");
    }
}
