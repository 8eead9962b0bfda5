//! The node's Multus address capacity, as the node agent advertises it on its Node: one
//! extended resource per Multus ENI, `multus-ipmgr.io/<node interface>` (the name the
//! ipvlan `master` of a NetworkAttachmentDefinition gives the ENI, so it stays the same
//! when another ENI is attached at that device; when no interface carries the ENI's MAC,
//! `eth<device-number>`, the name AWS gives the device), worth the secondary IPv4 addresses
//! the ENI can hold. The scheduler then places no more pods requesting it on the node than the ENI
//! holds (Kubernetes "Advertise Extended Resources for a Node"; the kubelet copies an
//! extended resource of `status.capacity` into `status.allocatable`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::{MacAddr, NodeFacts};

pub use ipmgr_contract::RESOURCE_PREFIX;

/// Longest name part of a qualified name (Kubernetes `IsQualifiedName`: 63 characters).
const MAX_NAME_PART: usize = 63;

/// The capacity of one Multus ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniCapacity {
    /// The ENI's id.
    pub eni_id: String,
    /// Its interface on the node, e.g. `eth1`.
    pub interface: String,
    /// The extended resource, `multus-ipmgr.io/<interface>`.
    pub resource: String,
    /// How many secondary IPv4 addresses it can hold.
    pub capacity: u32,
    /// How many it holds now (by instance metadata; delegated prefixes not counted).
    pub held: u32,
}

/// Why a Multus ENI has no resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unadvertised {
    /// No interface of the node carries the ENI's MAC, and the ENI is on another network
    /// card than the first, whose device numbers name no `eth<N>` of their own.
    #[error(
        "Multus ENI {eni_id} ({mac}) on network card {network_card} is no interface of the node's network namespace; its capacity is not advertised until one carries its MAC"
    )]
    NoInterface {
        /// The ENI.
        eni_id: String,
        /// Its MAC.
        mac: MacAddr,
        /// Its network card.
        network_card: u32,
    },
    /// No interface of the node carries the ENI's MAC, and its device name is the name of
    /// another interface: which one the name means cannot be told.
    #[error(
        "Multus ENI {eni_id} ({mac}) is no interface of the node's network namespace, and its device name {device_name} is another interface's; its capacity is not advertised until an interface carries its MAC"
    )]
    DeviceNameTaken {
        /// The ENI.
        eni_id: String,
        /// Its MAC.
        mac: MacAddr,
        /// `eth<device-number>`.
        device_name: String,
    },
    /// The interface's name cannot be part of a resource name.
    #[error(
        "Multus ENI {eni_id} is interface {interface:?}, which cannot name the extended resource {RESOURCE_PREFIX}<interface> (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit); its capacity is not advertised"
    )]
    InvalidName {
        /// The ENI.
        eni_id: String,
        /// The interface's name.
        interface: String,
    },
}

/// The extended resource of the Multus ENI that is node interface `interface`, when the
/// name is a valid name part of a qualified name (Kubernetes `IsQualifiedName`).
pub fn resource_name(interface: &str) -> Option<String> {
    let valid = !interface.is_empty()
        && interface.len() <= MAX_NAME_PART
        && interface
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        && interface
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && interface
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    valid.then(|| format!("{RESOURCE_PREFIX}{interface}"))
}

/// How many secondary IPv4 addresses an ENI can hold: the instance type's
/// `Ipv4AddressesPerInterface` (DescribeInstanceTypes) less its primary address and less
/// one for each delegated IPv4 prefix, each of which EC2 counts as one address against the
/// same limit (EC2 user guide, "Assign prefixes to Amazon EC2 network interfaces").
/// Addresses inside a prefix are not counted: whether a pod's IPAM hands them
/// out cannot be known here.
pub fn secondary_ipv4_capacity(addresses_per_interface: u32, ipv4_prefixes: usize) -> u32 {
    let prefixes = u32::try_from(ipv4_prefixes).unwrap_or(u32::MAX);
    addresses_per_interface
        .saturating_sub(1)
        .saturating_sub(prefixes)
}

/// The capacity of each of the node's Multus ENIs (`multus`, their ids), and why the
/// others have none. An ENI is named by the interface of the node that carries its MAC
/// (`interfaces`: MAC to name). When none does (the link is not there yet, or the agent
/// cannot see it), an ENI of the first network card is named `eth<device-number>`, as AWS
/// names the device ("a device-number of 2 is for the eth2 device", instance metadata
/// categories), unless an interface of the node has that name.
pub fn advertised(
    node: &NodeFacts,
    multus: &[String],
    interfaces: &BTreeMap<MacAddr, String>,
    addresses_per_interface: u32,
) -> (Vec<EniCapacity>, Vec<Unadvertised>) {
    let mut capacities = Vec::new();
    let mut unadvertised = Vec::new();
    for eni in node.enis.iter().filter(|eni| multus.contains(&eni.id)) {
        let interface = match interfaces.get(&eni.mac) {
            Some(interface) => interface.clone(),
            None if eni.network_card != 0 => {
                unadvertised.push(Unadvertised::NoInterface {
                    eni_id: eni.id.clone(),
                    mac: eni.mac,
                    network_card: eni.network_card,
                });
                continue;
            }
            None => {
                let device_name = format!("eth{}", eni.device_number);
                if interfaces.values().any(|name| *name == device_name) {
                    unadvertised.push(Unadvertised::DeviceNameTaken {
                        eni_id: eni.id.clone(),
                        mac: eni.mac,
                        device_name,
                    });
                    continue;
                }
                device_name
            }
        };
        let Some(resource) = resource_name(&interface) else {
            unadvertised.push(Unadvertised::InvalidName {
                eni_id: eni.id.clone(),
                interface,
            });
            continue;
        };
        capacities.push(EniCapacity {
            eni_id: eni.id.clone(),
            interface,
            resource,
            capacity: secondary_ipv4_capacity(addresses_per_interface, eni.ipv4_prefixes.len()),
            held: u32::try_from(eni.ipv4.len().saturating_sub(1)).unwrap_or(u32::MAX),
        });
    }
    (capacities, unadvertised)
}

/// The JSON Patch (RFC 6902) of `nodes/NAME/status` that makes the agent's resources in
/// `current` (the Node's `status.capacity`) exactly `wanted`: `add` for each one missing or
/// of another value (an `add` replaces an existing member), `remove` for each of ours no
/// longer wanted (an ENI detached), nothing for any other name. Empty when nothing is to
/// change.
pub fn capacity_patch(current: Option<&Map<String, Value>>, wanted: &[EniCapacity]) -> Vec<Value> {
    let mut operations = Vec::new();
    if current.is_none() && !wanted.is_empty() {
        operations.push(json!({"op": "add", "path": "/status/capacity", "value": {}}));
    }
    let current_value = |resource: &str| current.and_then(|map| map.get(resource));
    for eni in wanted {
        let value = eni.capacity.to_string();
        if current_value(&eni.resource).and_then(Value::as_str) != Some(value.as_str()) {
            operations.push(json!({
                "op": "add",
                "path": capacity_path(&eni.resource),
                "value": value,
            }));
        }
    }
    for name in current.into_iter().flat_map(Map::keys) {
        if name.starts_with(RESOURCE_PREFIX) && !wanted.iter().any(|eni| eni.resource == *name) {
            operations.push(json!({"op": "remove", "path": capacity_path(name)}));
        }
    }
    operations
}

/// The JSON Pointer (RFC 6901) of `resource` in `status.capacity`: `~` and `/` escaped.
fn capacity_path(resource: &str) -> String {
    format!(
        "/status/capacity/{}",
        resource.replace('~', "~0").replace('/', "~1")
    )
}

/// The addresses on an ENI that no scheduled pod's request accounts for: held by pods the
/// webhook never saw (on a network whose NAD names no resource, or admitted before), by
/// floating IPs, or by other tools. Zero when the requests cover them.
pub fn unaccounted(held: u32, requested: u64) -> u64 {
    u64::from(held).saturating_sub(requested)
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use rstest::rstest;

    use super::*;
    use crate::Eni;

    fn mac(last: u8) -> MacAddr {
        format!("02:00:00:00:00:{last:02x}").parse().expect("a MAC")
    }

    /// ENI `id` at device `last` of the first network card, with a MAC ending in `last`.
    fn eni(id: &str, last: u8, secondaries: usize, prefixes: usize) -> Eni {
        Eni {
            mac: mac(last),
            id: id.to_owned(),
            device_number: u32::from(last),
            network_card: 0,
            vpc_id: "vpc-1".to_owned(),
            subnet_ipv4: None,
            subnet_ipv6: Vec::new(),
            ipv4: (0..=secondaries)
                .map(|host| {
                    std::net::Ipv4Addr::new(
                        10,
                        0,
                        last,
                        u8::try_from(host + 4).expect("a small host"),
                    )
                })
                .collect(),
            ipv6: Vec::new(),
            ipv4_prefixes: (0..prefixes)
                .map(|index| {
                    format!("10.1.{last}.{}/28", index * 16)
                        .parse()
                        .expect("a prefix")
                })
                .collect(),
            ipv6_prefixes: Vec::new(),
        }
    }

    #[rstest]
    #[case::m5_large(10, 0, 9)]
    #[case::c5_4xlarge(30, 0, 29)]
    #[case::one_prefix(10, 1, 8)]
    #[case::prefixes_fill_it(10, 12, 0)]
    #[case::no_limit_read(0, 0, 0)]
    fn capacity_is_the_limit_less_the_primary_and_the_prefixes(
        #[case] per_interface: u32,
        #[case] prefixes: usize,
        #[case] expected: u32,
    ) {
        assert_eq!(secondary_ipv4_capacity(per_interface, prefixes), expected);
    }

    #[rstest]
    #[case::eth("eth1", Some("multus-ipmgr.io/eth1"))]
    #[case::predictable("ens6", Some("multus-ipmgr.io/ens6"))]
    #[case::vlan("eth1.100", Some("multus-ipmgr.io/eth1.100"))]
    #[case::empty("", None)]
    #[case::starts_with_dash("-eth1", None)]
    #[case::ends_with_dot("eth1.", None)]
    #[case::at_sign("eth1@if2", None)]
    #[case::colon("eth1:0", None)]
    fn resource_names_are_qualified_names(#[case] interface: &str, #[case] expected: Option<&str>) {
        assert_eq!(resource_name(interface).as_deref(), expected);
    }

    #[test]
    fn each_multus_eni_is_named_by_its_interface_else_by_its_device_number() {
        let mut other_card = eni("eni-other-card", 6, 0, 0);
        other_card.network_card = 1;
        let node = NodeFacts {
            instance_id: "i-1".to_owned(),
            region: "us-east-1".to_owned(),
            primary_mac: Some(mac(0)),
            enis: vec![
                eni("eni-primary", 0, 3, 0),
                eni("eni-multus", 1, 2, 1),
                eni("eni-unlinked", 2, 1, 0),
                eni("eni-badname", 3, 0, 0),
                eni("eni-vpc-cni", 4, 5, 0),
                eni("eni-renamed", 5, 0, 0),
                other_card,
                eni("eni-name-taken", 7, 0, 0),
            ],
        };
        let interfaces = BTreeMap::from([
            (mac(0), "eth0".to_owned()),
            (mac(1), "eth1".to_owned()),
            (mac(3), "eth3:x".to_owned()),
            (mac(4), "eth4".to_owned()),
            (mac(5), "multus0".to_owned()),
            // Another interface (a bond, a VLAN's parent) took the name eth7.
            (mac(0x70), "eth7".to_owned()),
        ]);
        let multus = [
            "eni-multus",
            "eni-unlinked",
            "eni-badname",
            "eni-renamed",
            "eni-other-card",
            "eni-name-taken",
        ]
        .map(str::to_owned);
        let (capacities, unadvertised) = advertised(&node, &multus, &interfaces, 10);
        let named = |eni_id: &str, interface: &str, capacity, held| EniCapacity {
            eni_id: eni_id.to_owned(),
            interface: interface.to_owned(),
            resource: format!("multus-ipmgr.io/{interface}"),
            capacity,
            held,
        };
        assert_eq!(
            capacities,
            vec![
                named("eni-multus", "eth1", 8, 2),
                // No interface carries its MAC: the device's name.
                named("eni-unlinked", "eth2", 9, 1),
                // The interface's name wins over the device's.
                named("eni-renamed", "multus0", 9, 0),
            ]
        );
        assert_eq!(
            unadvertised,
            vec![
                Unadvertised::InvalidName {
                    eni_id: "eni-badname".to_owned(),
                    interface: "eth3:x".to_owned(),
                },
                Unadvertised::NoInterface {
                    eni_id: "eni-other-card".to_owned(),
                    mac: mac(6),
                    network_card: 1,
                },
                Unadvertised::DeviceNameTaken {
                    eni_id: "eni-name-taken".to_owned(),
                    mac: mac(7),
                    device_name: "eth7".to_owned(),
                },
            ]
        );
    }

    fn wanted(pairs: &[(&str, u32)]) -> Vec<EniCapacity> {
        pairs
            .iter()
            .map(|(interface, capacity)| EniCapacity {
                eni_id: format!("eni-{interface}"),
                interface: (*interface).to_owned(),
                resource: resource_name(interface).expect("a valid name"),
                capacity: *capacity,
                held: 0,
            })
            .collect()
    }

    #[rstest]
    #[case::fresh_node(
        json!({"cpu": "2", "pods": "29"}),
        &[("eth1", 9)],
        json!([{"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eth1", "value": "9"}]),
    )]
    #[case::already_there(
        json!({"cpu": "2", "multus-ipmgr.io/eth1": "9"}),
        &[("eth1", 9)],
        json!([]),
    )]
    #[case::changed_by_a_prefix(
        json!({"multus-ipmgr.io/eth1": "9"}),
        &[("eth1", 8)],
        json!([{"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eth1", "value": "8"}]),
    )]
    #[case::detached_eni_removed_others_left_alone(
        json!({"multus-ipmgr.io/eth1": "9", "multus-ipmgr.io/eth2": "9", "example.com/dongle": "4", "vpc.amazonaws.com/pod-eni": "9"}),
        &[("eth1", 9)],
        json!([{"op": "remove", "path": "/status/capacity/multus-ipmgr.io~1eth2"}]),
    )]
    #[case::no_multus_eni_left(
        json!({"multus-ipmgr.io/eth1": "9"}),
        &[],
        json!([{"op": "remove", "path": "/status/capacity/multus-ipmgr.io~1eth1"}]),
    )]
    fn the_patch_brings_our_resources_and_no_other(
        #[case] current: Value,
        #[case] wanted_pairs: &[(&str, u32)],
        #[case] expected: Value,
    ) {
        let patch = capacity_patch(current.as_object(), &wanted(wanted_pairs));
        assert_eq!(Value::Array(patch), expected);
    }

    #[test]
    fn a_node_without_capacity_gets_the_object_first() {
        let patch = capacity_patch(None, &wanted(&[("eth1", 9)]));
        assert_eq!(
            Value::Array(patch),
            json!([
                {"op": "add", "path": "/status/capacity", "value": {}},
                {"op": "add", "path": "/status/capacity/multus-ipmgr.io~1eth1", "value": "9"},
            ])
        );
        assert!(capacity_patch(None, &[]).is_empty());
    }

    #[rstest]
    #[case::covered(3, 3, 0)]
    #[case::over_requested(1, 4, 0)]
    #[case::unseen_pods(5, 2, 3)]
    fn unaccounted_addresses(#[case] held: u32, #[case] requested: u64, #[case] expected: u64) {
        assert_eq!(unaccounted(held, requested), expected);
    }
}
