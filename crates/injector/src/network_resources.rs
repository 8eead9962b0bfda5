//! The pod's requests of `multus-ipmgr.io/<interface>` extended resources, for
//! capacity-aware scheduling.
//!
//! The node agent advertises on each Node, per Multus ENI, how many secondary IPv4 addresses
//! the ENI can hold, as the extended resource `multus-ipmgr.io/<node interface>`. A
//! NetworkAttachmentDefinition opts in by naming one in its `k8s.v1.cni.cncf.io/resourceName`
//! annotation (Multus' convention, which the network-resources-injector reads too). Each
//! selection of such a network needs as many of the resource as it gives the pod IPv4
//! addresses ([`NetworkSelection::ipv4_addresses`]); the sums, per resource, go to the first
//! app container as requests and equal limits (extended resources are never overcommitted),
//! never below what its author set. Resources of other domains are left alone.

use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::{Pointer, PointerBuf};
use json_patch::{AddOperation, PatchOperation};
use serde_json::{Map, Value};

use crate::template::{ContainerResources, OwnResources};
use crate::{NetworkSelection, Quantity, QuantityError};

/// The NetworkAttachmentDefinition annotation that names the resource its network uses.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

pub use ipmgr_contract::RESOURCE_PREFIX;

/// The [`RESOURCE_NAME_ANNOTATION`] of NetworkAttachmentDefinitions by (namespace, name):
/// `None` when a definition has none. A definition not in the map does not exist.
pub type NetworkDefinitions = BTreeMap<(String, String), Option<String>>;

/// How many of each [`RESOURCE_PREFIX`] resource a pod's networks need, by resource name.
pub type NetworkRequests = BTreeMap<String, u64>;

/// A NetworkAttachmentDefinition a pod's networks annotation names, with the first
/// selection that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedDefinition {
    /// Its namespace (the pod's when the selection names none).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The position of the selection in the annotation, from 1.
    pub position: usize,
    /// The selection, `[NAMESPACE/]NAME[@INTERFACE]`.
    pub selection: String,
}

impl fmt::Display for NamedDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod network {:?} ({} selection {}) names NetworkAttachmentDefinition {}/{}",
            crate::excerpt(&self.selection),
            crate::annotations::NETWORKS,
            self.position,
            crate::excerpt(&self.namespace),
            crate::excerpt(&self.name)
        )
    }
}

/// The definitions `selections` name, each once, in the order they are first named; a
/// selection without a namespace names one in `namespace`, the pod's.
pub(crate) fn named_definitions(
    selections: &[NetworkSelection],
    namespace: &str,
) -> Vec<NamedDefinition> {
    let mut named: Vec<NamedDefinition> = Vec::new();
    for (index, selection) in selections.iter().enumerate() {
        let namespace = selection.namespace.as_deref().unwrap_or(namespace);
        if !named
            .iter()
            .any(|known| known.namespace == namespace && known.name == selection.name)
        {
            named.push(NamedDefinition {
                namespace: namespace.to_owned(),
                name: selection.name.clone(),
                position: index + 1,
                selection: selection.to_string(),
            });
        }
    }
    named
}

/// The requests of `selections` (a pod in `namespace`) given `definitions`, or the first
/// definition they name that is not in it. Resources outside [`RESOURCE_PREFIX`] are not
/// counted, nor sums of zero (networks that give only IPv6 addresses).
pub(crate) fn network_requests(
    selections: &[NetworkSelection],
    namespace: &str,
    definitions: &NetworkDefinitions,
) -> Result<NetworkRequests, NamedDefinition> {
    let mut requests = NetworkRequests::new();
    for definition in named_definitions(selections, namespace) {
        let key = (definition.namespace.clone(), definition.name.clone());
        let Some(resource) = definitions.get(&key) else {
            return Err(definition);
        };
        let Some(resource) = resource
            .as_deref()
            .filter(|r| r.starts_with(RESOURCE_PREFIX))
        else {
            continue;
        };
        let addresses: u64 = selections
            .iter()
            .filter(|selection| {
                selection.name == definition.name
                    && selection.namespace.as_deref().unwrap_or(namespace) == definition.namespace
            })
            .map(NetworkSelection::ipv4_addresses)
            .sum();
        if addresses > 0 {
            *requests.entry(resource.to_owned()).or_default() += addresses;
        }
    }
    Ok(requests)
}

/// An author's request or limit of a [`RESOURCE_PREFIX`] resource that is not a quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the first container's resources.{list}[{resource}]: {source}; write a whole number or remove it (the webhook sets it from the pod's networks)"
)]
pub struct InvalidOwnQuantity {
    /// `requests` or `limits`.
    pub list: &'static str,
    /// The resource name.
    pub resource: String,
    /// What is wrong with the value.
    pub source: QuantityError,
}

/// Where a pod's network requests go, taken when its injection is planned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NetworkPlan {
    /// The pod's network selections.
    pub(crate) selections: Vec<NetworkSelection>,
    /// The first app container's pointer and its resources; `None` when the pod has no
    /// container (the API server refuses it anyway).
    pub(crate) container: Option<(PointerBuf, Option<ContainerResources>)>,
}

impl NetworkPlan {
    /// The operations that set `requests` on the first app container: each resource's
    /// request and limit become the largest of the count and the request and limit its
    /// author set (a request alone is its limit too, as the API server defaults it).
    /// `resources`, `requests` and `limits` are created when absent.
    pub(crate) fn operations(
        &self,
        requests: &NetworkRequests,
    ) -> Result<Vec<PatchOperation>, InvalidOwnQuantity> {
        let Some((container, resources)) = &self.container else {
            return Ok(Vec::new());
        };
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let (set_requests, set_limits) = match resources {
            Some(resources) => (resources.requests.as_ref(), resources.limits.as_ref()),
            None => (None, None),
        };
        let mut values = Map::new();
        for (resource, count) in requests {
            let mut value = count.to_string();
            let mut largest: Quantity = value.parse().expect("a whole number is a quantity");
            for (list, set) in [("requests", set_requests), ("limits", set_limits)] {
                let Some(text) = set.and_then(|own| own.0.get(resource)) else {
                    continue;
                };
                let quantity: Quantity =
                    text.trim().parse().map_err(|source| InvalidOwnQuantity {
                        list,
                        resource: resource.clone(),
                        source,
                    })?;
                if quantity.compare(&largest).is_gt() {
                    value = quantity.as_str().to_owned();
                    largest = quantity;
                }
            }
            values.insert(resource.clone(), Value::String(value));
        }
        let resources_path = child(container, "resources");
        if resources.is_none() {
            let lists = Map::from_iter(
                ["requests", "limits"].map(|list| (list.to_owned(), Value::Object(values.clone()))),
            );
            return Ok(vec![add(resources_path, Value::Object(lists))]);
        }
        let mut operations = Vec::new();
        for (list, set) in [("requests", set_requests), ("limits", set_limits)] {
            let list_path = child(&resources_path, list);
            match set {
                None => operations.push(add(list_path, Value::Object(values.clone()))),
                Some(OwnResources(_)) => operations.extend(
                    values
                        .iter()
                        .map(|(resource, value)| add(child(&list_path, resource), value.clone())),
                ),
            }
        }
        Ok(operations)
    }
}

fn child(parent: &Pointer, token: &str) -> PointerBuf {
    let mut path = parent.to_buf();
    path.push_back(token);
    path
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_networks;
    use rstest::rstest;

    fn definitions(entries: &[(&str, &str, Option<&str>)]) -> NetworkDefinitions {
        entries
            .iter()
            .map(|(namespace, name, resource)| {
                (
                    ((*namespace).to_owned(), (*name).to_owned()),
                    resource.map(str::to_owned),
                )
            })
            .collect()
    }

    fn known() -> NetworkDefinitions {
        definitions(&[
            ("apps", "eth1-a", Some("multus-ipmgr.io/eth1")),
            ("apps", "eth1-b", Some("multus-ipmgr.io/eth1")),
            ("apps", "eth2", Some("multus-ipmgr.io/eth2")),
            ("apps", "sriov", Some("intel.com/sriov_netdevice")),
            ("apps", "plain", None),
            ("shared", "eth1", Some("multus-ipmgr.io/eth1")),
        ])
    }

    #[rstest]
    #[case::one_network("eth1-a", &[("multus-ipmgr.io/eth1", 1)])]
    #[case::two_networks_one_resource("eth1-a, eth1-b", &[("multus-ipmgr.io/eth1", 2)])]
    #[case::one_network_twice("eth1-a@net1, eth1-a@net2", &[("multus-ipmgr.io/eth1", 2)])]
    #[case::two_resources("eth1-a, eth2", &[("multus-ipmgr.io/eth1", 1), ("multus-ipmgr.io/eth2", 1)])]
    #[case::ips_two_v4_one_v6(r#"[{"name": "eth1-a", "ips": ["10.0.1.5/24", "10.0.1.6", "fd00::5"]}]"#, &[("multus-ipmgr.io/eth1", 2)])]
    #[case::ips_v6_only(r#"[{"name": "eth1-a", "ips": ["fd00::5"]}]"#, &[])]
    #[case::another_domain("sriov", &[])]
    #[case::no_annotation("plain", &[])]
    #[case::other_namespace("shared/eth1, eth1-a", &[("multus-ipmgr.io/eth1", 2)])]
    #[case::json_namespace(r#"[{"name": "eth1", "namespace": "shared"}]"#, &[("multus-ipmgr.io/eth1", 1)])]
    fn counts_the_ipv4_addresses_of_our_resources(
        #[case] annotation: &str,
        #[case] expected: &[(&str, u64)],
    ) {
        let selections = parse_networks(annotation).expect("valid");
        let expected: NetworkRequests = expected
            .iter()
            .map(|(resource, count)| ((*resource).to_owned(), *count))
            .collect();
        assert_eq!(
            network_requests(&selections, "apps", &known()),
            Ok(expected)
        );
    }

    #[test]
    fn a_huge_name_is_quoted_shortened() {
        let annotation = format!(r#"[{{"name": "{}"}}]"#, "n".repeat(100_000));
        let selections = parse_networks(&annotation).expect("valid");
        let missing = network_requests(&selections, "apps", &known()).expect_err("missing");
        let message = missing.to_string();
        assert!(message.len() < 500, "{} bytes", message.len());
        assert!(message.contains("(100000 bytes)"), "{message}");
    }

    #[test]
    fn names_each_definition_once_with_its_first_selection() {
        let selections =
            parse_networks("eth1-a@net1, shared/eth1, eth1-a@net2, apps/eth1-a").expect("valid");
        let named = named_definitions(&selections, "apps");
        let shown: Vec<String> = named
            .iter()
            .map(|d| format!("{}/{} {} {}", d.namespace, d.name, d.position, d.selection))
            .collect();
        assert_eq!(
            shown,
            ["apps/eth1-a 1 eth1-a@net1", "shared/eth1 2 shared/eth1"]
        );
    }

    #[rstest]
    #[case::short_form(
        "eth1-a, missing@net1",
        "pod network \"missing@net1\" (k8s.v1.cni.cncf.io/networks selection 2) names NetworkAttachmentDefinition apps/missing"
    )]
    #[case::other_namespace(
        "elsewhere/eth1",
        "pod network \"elsewhere/eth1\" (k8s.v1.cni.cncf.io/networks selection 1) names NetworkAttachmentDefinition elsewhere/eth1"
    )]
    #[case::same_name_other_namespace(
        "shared/eth2",
        "pod network \"shared/eth2\" (k8s.v1.cni.cncf.io/networks selection 1) names NetworkAttachmentDefinition shared/eth2"
    )]
    fn a_definition_that_is_not_known_is_named(#[case] annotation: &str, #[case] message: &str) {
        let selections = parse_networks(annotation).expect("valid");
        let missing = network_requests(&selections, "apps", &known()).expect_err("missing");
        assert_eq!(missing.to_string(), message);
    }

    fn plan(resources: Option<Value>) -> NetworkPlan {
        NetworkPlan {
            selections: Vec::new(),
            container: Some((
                PointerBuf::parse("/spec/containers/0").expect("pointer"),
                resources.and_then(|value| {
                    serde_json::from_value::<Option<ContainerResources>>(value).expect("resources")
                }),
            )),
        }
    }

    fn operations(plan: &NetworkPlan, requests: &[(&str, u64)]) -> Vec<Value> {
        let requests: NetworkRequests = requests
            .iter()
            .map(|(resource, count)| ((*resource).to_owned(), *count))
            .collect();
        plan.operations(&requests)
            .expect("valid")
            .iter()
            .map(|operation| serde_json::to_value(operation).expect("JSON"))
            .collect()
    }

    #[rstest]
    #[case::no_resources(None, &[("multus-ipmgr.io/eth1", 2)], serde_json::json!([
        {"op": "add", "path": "/spec/containers/0/resources", "value": {
            "requests": {"multus-ipmgr.io/eth1": "2"}, "limits": {"multus-ipmgr.io/eth1": "2"}}}]))]
    #[case::null_resources(Some(Value::Null), &[("multus-ipmgr.io/eth1", 1)], serde_json::json!([
        {"op": "add", "path": "/spec/containers/0/resources", "value": {
            "requests": {"multus-ipmgr.io/eth1": "1"}, "limits": {"multus-ipmgr.io/eth1": "1"}}}]))]
    #[case::requests_only(Some(serde_json::json!({"requests": {"cpu": "1"}})), &[("multus-ipmgr.io/eth1", 1)], serde_json::json!([
        {"op": "add", "path": "/spec/containers/0/resources/requests/multus-ipmgr.io~1eth1", "value": "1"},
        {"op": "add", "path": "/spec/containers/0/resources/limits", "value": {"multus-ipmgr.io/eth1": "1"}}]))]
    #[case::author_request_larger(Some(serde_json::json!({"requests": {"multus-ipmgr.io/eth1": "3"}})), &[("multus-ipmgr.io/eth1", 1)], serde_json::json!([
        {"op": "add", "path": "/spec/containers/0/resources/requests/multus-ipmgr.io~1eth1", "value": "3"},
        {"op": "add", "path": "/spec/containers/0/resources/limits", "value": {"multus-ipmgr.io/eth1": "3"}}]))]
    #[case::author_limit_larger(Some(serde_json::json!({"limits": {"multus-ipmgr.io/eth1": 4}, "requests": null})), &[("multus-ipmgr.io/eth1", 2)], serde_json::json!([
        {"op": "add", "path": "/spec/containers/0/resources/requests", "value": {"multus-ipmgr.io/eth1": "4"}},
        {"op": "add", "path": "/spec/containers/0/resources/limits/multus-ipmgr.io~1eth1", "value": "4"}]))]
    #[case::author_smaller(Some(serde_json::json!({"requests": {"multus-ipmgr.io/eth1": "1"}, "limits": {"multus-ipmgr.io/eth1": "1"}})), &[("multus-ipmgr.io/eth1", 2)], serde_json::json!([
        {"op": "add", "path": "/spec/containers/0/resources/requests/multus-ipmgr.io~1eth1", "value": "2"},
        {"op": "add", "path": "/spec/containers/0/resources/limits/multus-ipmgr.io~1eth1", "value": "2"}]))]
    #[case::nothing_to_request(None, &[], serde_json::json!([]))]
    fn requests_on_the_first_container_never_below_its_authors(
        #[case] resources: Option<Value>,
        #[case] requests: &[(&str, u64)],
        #[case] expected: Value,
    ) {
        assert_eq!(
            Value::Array(operations(&plan(resources), requests)),
            expected
        );
    }

    #[test]
    fn an_author_quantity_that_is_not_one_is_refused_naming_it() {
        let plan = plan(Some(
            serde_json::json!({"limits": {"multus-ipmgr.io/eth1": "lots", "other.io/x": {"not": "read"}}}),
        ));
        let requests = NetworkRequests::from([("multus-ipmgr.io/eth1".to_owned(), 1)]);
        let error = plan.operations(&requests).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "the first container's resources.limits[multus-ipmgr.io/eth1]: \"lots\" is not a Kubernetes quantity (examples: 10m, 0.5, 64Mi, 1G); write a whole number or remove it (the webhook sets it from the pod's networks)"
        );
    }
}
