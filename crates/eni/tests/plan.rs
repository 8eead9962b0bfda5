//! Table tests of the ENI planner on a node shaped like the original how-to's: a primary ENI
//! in the node subnet, two Multus ENIs sharing one subnet, and one in a second subnet (with
//! a delegated prefix).

use std::net::IpAddr;

use ipmgr_eni::{
    Assignment, Eni, EniChange, MacAddr, MatchedBy, MultusInterfaces, NodeFacts, PlanOptions,
    PodAddress, RejectReason, multus_candidates, plan, unconfirmed,
};
use pretty_assertions::assert_eq;
use rstest::{fixture, rstest};

fn mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, last])
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn eni(
    id: &str,
    device_number: u32,
    last: u8,
    subnet4: &str,
    subnet6: &[&str],
    ipv4: &[&str],
) -> Eni {
    Eni {
        mac: mac(last),
        id: id.to_owned(),
        device_number,
        vpc_id: "vpc-1".to_owned(),
        subnet_ipv4: Some(subnet4.parse().expect("subnet")),
        subnet_ipv6: subnet6
            .iter()
            .map(|net| net.parse().expect("subnet"))
            .collect(),
        ipv4: ipv4
            .iter()
            .map(|address| address.parse().expect("address"))
            .collect(),
        ipv6: Vec::new(),
        network_card: 0,
        ipv4_prefixes: Vec::new(),
        ipv6_prefixes: Vec::new(),
    }
}

#[fixture]
fn node() -> NodeFacts {
    let mut eni_b = eni(
        "eni-b",
        2,
        0x0b,
        "10.10.1.0/24",
        &["2600:1f14:1:1::/64"],
        &["10.10.1.11", "10.10.1.81"],
    );
    eni_b.ipv4_prefixes = vec!["10.10.1.192/28".parse().expect("prefix")];
    eni_b.ipv6_prefixes = vec!["2600:1f14:1:1:9::/80".parse().expect("prefix")];
    let mut with_prefix = eni("eni-c", 3, 0x0c, "10.10.2.0/24", &[], &["10.10.2.10"]);
    with_prefix.ipv4_prefixes = vec!["10.10.2.128/28".parse().expect("prefix")];
    NodeFacts {
        instance_id: "i-0123".to_owned(),
        region: "us-east-2".to_owned(),
        primary_mac: Some(mac(0x00)),
        enis: vec![
            eni(
                "eni-primary",
                0,
                0x00,
                "10.0.0.0/24",
                &[],
                &["10.0.0.10", "10.0.0.11"],
            ),
            eni(
                "eni-a",
                1,
                0x0a,
                "10.10.1.0/24",
                &["2600:1f14:1:1::/64"],
                &["10.10.1.10"],
            ),
            eni_b,
            with_prefix,
        ],
    }
}

fn address(interface: &str, mac_last: u8, text: &str) -> PodAddress {
    PodAddress {
        interface: interface.to_owned(),
        mac: mac(mac_last),
        address: ip(text),
        prefix_len: if text.contains(':') { 64 } else { 24 },
    }
}

const UNKNOWN_MAC: u8 = 0xee;

#[rstest]
#[case::mac_decides_between_two_enis_in_one_subnet_a(
    address("net1", 0x0a, "10.10.1.80"),
    "eni-a",
    MatchedBy::Mac
)]
#[case::mac_decides_between_two_enis_in_one_subnet_b(
    address("net1", 0x0b, "10.10.1.80"),
    "eni-b",
    MatchedBy::Mac
)]
#[case::ipv6_by_mac(address("net1", 0x0a, "2600:1f14:1:1::80"), "eni-a", MatchedBy::Mac)]
#[case::subnet_fallback(address("net2", UNKNOWN_MAC, "10.10.2.50"), "eni-c", MatchedBy::Subnet)]
fn places_addresses(
    node: NodeFacts,
    #[case] pod: PodAddress,
    #[case] eni_id: &str,
    #[case] matched_by: MatchedBy,
) {
    let result = plan(&node, std::slice::from_ref(&pod), &PlanOptions::default());
    assert_eq!(result.rejections, vec![]);
    assert_eq!(result.placements.len(), 1);
    assert_eq!(result.placements[0].eni_id, eni_id);
    assert_eq!(result.placements[0].matched_by, matched_by);
    assert_eq!(
        result.changes.len(),
        1,
        "one call for the one missing address"
    );
}

#[rstest]
#[case::ambiguous(address("net1", UNKNOWN_MAC, "10.10.1.50"), RejectReason::Ambiguous { enis: vec!["eni-a".into(), "eni-b".into()] }, "several ENIs contain the address (eni-a, eni-b)")]
#[case::in_another_enis_prefix(address("net1", 0x0a, "10.10.1.195"), RejectReason::OtherEnisPrefix { eni: "eni-b".into(), prefix: "10.10.1.192/28".parse().expect("prefix") }, "lies in prefix 10.10.1.192/28, delegated to ENI eni-b")]
#[case::primary_by_mac(address("net1", 0x00, "10.0.0.50"), RejectReason::PrimaryEni { eni: "eni-primary".into() }, "primary ENI eni-primary")]
#[case::primary_by_subnet(address("net1", UNKNOWN_MAC, "10.0.0.50"), RejectReason::PrimaryEni { eni: "eni-primary".into() }, "--allow-primary-eni")]
#[case::outside_the_mac_enis_subnet(address("net1", 0x0a, "10.10.2.5"), RejectReason::OutsideSubnet { eni: "eni-a".into() }, "outside that ENI's subnet")]
fn refuses_to_guess(
    node: NodeFacts,
    #[case] pod: PodAddress,
    #[case] reason: RejectReason,
    #[case] message: &str,
) {
    let result = plan(&node, std::slice::from_ref(&pod), &PlanOptions::default());
    assert_eq!(result.placements, vec![]);
    assert_eq!(result.changes, vec![]);
    assert_eq!(result.rejections.len(), 1);
    let rejection = &result.rejections[0];
    assert_eq!(rejection.reason, reason);
    assert!(rejection.is_failure());
    let text = rejection.to_string();
    assert!(
        text.starts_with(&format!("{} on net1 (", pod.address)),
        "{text}"
    );
    assert!(text.contains(message), "{text}");
}

#[rstest]
fn primary_eni_only_when_allowed(node: NodeFacts) {
    let options = PlanOptions {
        allow_primary_eni: true,
        ..PlanOptions::default()
    };
    let result = plan(&node, &[address("net1", 0x00, "10.0.0.50")], &options);
    assert_eq!(
        result.changes,
        vec![EniChange {
            eni_id: "eni-primary".into(),
            ipv4: vec!["10.0.0.50".parse().expect("ip")],
            ipv6: vec![]
        }]
    );
}

#[rstest]
fn allow_list_skips_without_failing(node: NodeFacts) {
    let options = PlanOptions {
        allowed: vec!["10.10.1.0/25".parse().expect("cidr")],
        ..PlanOptions::default()
    };
    let result = plan(
        &node,
        &[
            address("net1", 0x0a, "10.10.1.80"),
            address("net1", 0x0a, "10.10.1.200"),
        ],
        &options,
    );
    assert_eq!(result.placements.len(), 1);
    assert_eq!(result.rejections[0].reason, RejectReason::NotAllowed);
    assert!(!result.rejections[0].is_failure());
    assert_eq!(result.failures().count(), 0);
}

#[rstest]
fn one_change_per_eni_sorted_and_nothing_for_held_addresses(node: NodeFacts) {
    let pod = [
        address("net1", 0x0b, "10.10.1.85"),
        address("net1", 0x0b, "10.10.1.81"), // already on eni-b
        address("net1", 0x0b, "2600:1f14:1:1::9"),
        address("net2", 0x0a, "10.10.1.83"),
        address("net1", 0x0b, "10.10.1.82"),
        address("net3", 0x0b, "10.10.1.82"), // the same address twice counts once
    ];
    let result = plan(&node, &pod, &PlanOptions::default());
    assert_eq!(result.placements.len(), 5);
    assert_eq!(
        result.changes,
        vec![
            EniChange {
                eni_id: "eni-a".into(),
                ipv4: vec!["10.10.1.83".parse().expect("ip")],
                ipv6: vec![]
            },
            EniChange {
                eni_id: "eni-b".into(),
                ipv4: vec![
                    "10.10.1.82".parse().expect("ip"),
                    "10.10.1.85".parse().expect("ip")
                ],
                ipv6: vec!["2600:1f14:1:1::9".parse().expect("ip")],
            },
        ]
    );
}

#[rstest]
fn already_assigned_means_no_change(node: NodeFacts) {
    let result = plan(
        &node,
        &[address("net1", 0x0b, "10.10.1.81")],
        &PlanOptions::default(),
    );
    assert_eq!(result.placements.len(), 1);
    assert_eq!(result.changes, vec![]);
    assert_eq!(
        unconfirmed(&result.assignments().collect::<Vec<_>>(), &node),
        vec![]
    );
}

#[rstest]
fn unconfirmed_until_metadata_shows_the_address(mut node: NodeFacts) {
    let result = plan(
        &node,
        &[
            address("net1", 0x0a, "10.10.1.80"),
            address("net1", 0x0a, "2600:1f14:1:1::80"),
        ],
        &PlanOptions::default(),
    );
    assert_eq!(
        unconfirmed(&result.assignments().collect::<Vec<_>>(), &node),
        vec![
            Assignment {
                eni_id: "eni-a".into(),
                address: ip("10.10.1.80")
            },
            Assignment {
                eni_id: "eni-a".into(),
                address: ip("2600:1f14:1:1::80")
            },
        ]
    );
    node.enis[1].ipv4.push("10.10.1.80".parse().expect("ip"));
    assert_eq!(
        unconfirmed(&result.assignments().collect::<Vec<_>>(), &node).len(),
        1
    );
    node.enis[1]
        .ipv6
        .push("2600:1f14:1:1::80".parse().expect("ip"));
    assert_eq!(
        unconfirmed(&result.assignments().collect::<Vec<_>>(), &node),
        vec![]
    );
}

#[rstest]
#[case::primary_interface(address("eth0", 0x00, "10.0.0.50"), RejectReason::PrimaryInterface)]
#[case::vpc_cni_ipv4_egress(
    address("v4if0", UNKNOWN_MAC, "169.254.172.9"),
    RejectReason::VpcCniInterface
)]
#[case::vpc_cni_ipv6_egress(
    address("v6if0", UNKNOWN_MAC, "fd00::ac:5"),
    RejectReason::VpcCniInterface
)]
#[case::link_local_v4(address("net1", 0x0a, "169.254.10.5"), RejectReason::LinkLocal)]
#[case::link_local_v6(address("net1", 0x0a, "fe80::1"), RejectReason::LinkLocal)]
#[case::not_a_vpc_address(address("net2", UNKNOWN_MAC, "192.168.77.5"), RejectReason::NotVpc)]
fn leaves_alone_what_is_not_a_multus_vpc_address(
    node: NodeFacts,
    #[case] pod: PodAddress,
    #[case] reason: RejectReason,
) {
    let result = plan(&node, std::slice::from_ref(&pod), &PlanOptions::default());
    assert_eq!(result.placements, vec![]);
    assert_eq!(result.changes, vec![]);
    assert_eq!(result.rejections.len(), 1);
    assert_eq!(result.rejections[0].reason, reason);
    assert!(
        !result.rejections[0].is_failure(),
        "left alone, not a failure"
    );
    assert!(result.rejections[0].to_string().contains("left alone"));
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|&name| name.to_owned()).collect()
}

/// A pod on a cluster with a `defaultNetworks` bridge: Multus named the bridge's interface
/// `net1` (its MAC is no ENI's, its address lies in eni-c's subnet) and the annotated network
/// `net2`, an ipvlan child of eni-a; the VPC CNI gave `eth0` and `v4if0`.
fn bridge_then_ipvlan() -> Vec<PodAddress> {
    vec![
        address("eth0", UNKNOWN_MAC, "10.0.0.50"),
        address("v4if0", UNKNOWN_MAC, "169.254.172.9"),
        address("net1", UNKNOWN_MAC, "10.10.2.50"),
        address("net2", 0x0a, "10.10.1.80"),
    ]
}

/// A pod whose `defaultNetworks` attachment is an ipvlan child of eni-b (`net1`) and whose
/// annotated network one of eni-a (`net2`).
fn ipvlan_then_ipvlan() -> Vec<PodAddress> {
    vec![
        address("net1", 0x0b, "10.10.1.90"),
        address("net2", 0x0a, "10.10.1.80"),
    ]
}

/// Where each address of `pod` went: its ENI, or why not.
fn outcomes(
    node: &NodeFacts,
    pod: &[PodAddress],
    options: &PlanOptions,
) -> Vec<(String, Result<String, RejectReason>)> {
    let result = plan(node, pod, options);
    pod.iter()
        .map(|address| {
            let placed = result
                .placements
                .iter()
                .find(|placement| placement.address == *address)
                .map(|placement| placement.eni_id.clone());
            let rejected = result
                .rejections
                .iter()
                .find(|rejection| rejection.address == *address)
                .map(|rejection| rejection.reason.clone());
            let outcome = match (placed, rejected) {
                (Some(eni), None) => Ok(eni),
                (None, Some(reason)) => Err(reason),
                other => panic!("{address:?} is both placed and rejected, or neither: {other:?}"),
            };
            (address.interface.clone(), outcome)
        })
        .collect()
}

const PRIMARY: Result<&str, RejectReason> = Err(RejectReason::PrimaryInterface);
const VPC_CNI: Result<&str, RejectReason> = Err(RejectReason::VpcCniInterface);
const NOT_MULTUS: Result<&str, RejectReason> = Err(RejectReason::NotMultusInterface);

#[rstest]
#[case::unknown_every_interface_but_the_vpc_cnis(
    bridge_then_ipvlan(),
    MultusInterfaces::Any,
    [PRIMARY, VPC_CNI, Ok("eni-c"), Ok("eni-a")]
)]
#[case::the_old_webhooks_guess_net1_manages_the_bridge_and_leaves_the_multus_interface_alone(
    bridge_then_ipvlan(),
    MultusInterfaces::Named(names(&["net1"])),
    [PRIMARY, NOT_MULTUS, Ok("eni-c"), NOT_MULTUS]
)]
#[case::named_only_those(
    bridge_then_ipvlan(),
    MultusInterfaces::Named(names(&["net2"])),
    [PRIMARY, NOT_MULTUS, NOT_MULTUS, Ok("eni-a")]
)]
#[case::by_mac_the_multus_enis_child_not_the_bridge_nor_by_subnet(
    bridge_then_ipvlan(),
    MultusInterfaces::NamedOrByMac(Vec::new()),
    [PRIMARY, VPC_CNI, NOT_MULTUS, Ok("eni-a")]
)]
#[case::by_mac_a_named_interface_whatever_its_mac(
    bridge_then_ipvlan(),
    MultusInterfaces::NamedOrByMac(names(&["net1"])),
    [PRIMARY, VPC_CNI, Ok("eni-c"), Ok("eni-a")]
)]
#[case::by_mac_the_primary_interface_even_named(
    bridge_then_ipvlan(),
    MultusInterfaces::NamedOrByMac(names(&["eth0"])),
    [PRIMARY, VPC_CNI, NOT_MULTUS, Ok("eni-a")]
)]
#[case::default_networks_on_multus_enis_by_mac_both(
    ipvlan_then_ipvlan(),
    MultusInterfaces::NamedOrByMac(Vec::new()),
    [Ok("eni-b"), Ok("eni-a")]
)]
#[case::default_networks_on_multus_enis_the_old_guess_only_the_first(
    ipvlan_then_ipvlan(),
    MultusInterfaces::Named(names(&["net1"])),
    [Ok("eni-b"), NOT_MULTUS]
)]
fn manages_the_pods_multus_interfaces<const N: usize>(
    node: NodeFacts,
    #[case] pod: Vec<PodAddress>,
    #[case] interfaces: MultusInterfaces,
    #[case] expected: [Result<&str, RejectReason>; N],
) {
    let options = PlanOptions {
        interfaces,
        ..PlanOptions::default()
    };
    let expected: Vec<(String, Result<String, RejectReason>)> = pod
        .iter()
        .zip(expected)
        .map(|(address, outcome)| (address.interface.clone(), outcome.map(str::to_owned)))
        .collect();
    assert_eq!(outcomes(&node, &pod, &options), expected);
    assert_eq!(
        plan(&node, &pod, &options).failures().count(),
        0,
        "what is not a Multus interface is left alone, not a failure"
    );
}

#[rstest]
#[case::not_allowed_left_alone(false, NOT_MULTUS)]
#[case::allowed_placed(true, Ok("eni-primary"))]
fn by_mac_the_primary_enis_mac_counts_only_where_the_primary_eni_may_be_used(
    node: NodeFacts,
    #[case] allow_primary_eni: bool,
    #[case] expected: Result<&str, RejectReason>,
) {
    let pod = [address("net1", 0x00, "10.0.0.60")];
    let options = PlanOptions {
        interfaces: MultusInterfaces::NamedOrByMac(Vec::new()),
        allow_primary_eni,
        ..PlanOptions::default()
    };
    assert_eq!(
        outcomes(&node, &pod, &options),
        vec![("net1".to_owned(), expected.map(str::to_owned))]
    );
}

#[test]
fn by_mac_a_rejection_names_both_settings() {
    let rejection = plan(
        &node(),
        &[address("net1", UNKNOWN_MAC, "10.10.2.50")],
        &PlanOptions {
            interfaces: MultusInterfaces::NamedOrByMac(Vec::new()),
            ..PlanOptions::default()
        },
    )
    .rejections
    .remove(0)
    .to_string();
    for part in ["IPMGR_INTERFACES", "IPMGR_INTERFACES_BY_MAC", "left alone"] {
        assert!(rejection.contains(part), "{part}: {rejection}");
    }
}

#[rstest]
#[case::unknown(MultusInterfaces::Any, 2)]
#[case::named(MultusInterfaces::Named(names(&["net2"])), 1)]
#[case::named_missing(MultusInterfaces::Named(names(&["net3"])), 0)]
#[case::by_mac_without_the_nodes_macs_every_candidate(
    MultusInterfaces::NamedOrByMac(Vec::new()),
    2
)]
fn without_a_view_of_the_node_the_candidates_are_counted_by_name_alone(
    #[case] interfaces: MultusInterfaces,
    #[case] expected: usize,
) {
    let mut pod = bridge_then_ipvlan();
    pod.push(address("net2", 0x0a, "fe80::1"));
    let options = PlanOptions {
        interfaces,
        ..PlanOptions::default()
    };
    assert_eq!(multus_candidates(&pod, &options), expected);
}

#[rstest]
fn with_the_webhooks_interface_list_only_those_interfaces_are_managed(node: NodeFacts) {
    let options = PlanOptions {
        interfaces: MultusInterfaces::Named(vec!["net1".to_owned(), "v4if0".to_owned()]),
        ..PlanOptions::default()
    };
    let pod = [
        address("net1", 0x0a, "10.10.1.80"),
        address("net2", 0x0b, "10.10.1.82"),
        address("v4if0", 0x0a, "10.10.1.83"),
    ];
    let result = plan(&node, &pod, &options);
    let placed: Vec<&str> = result
        .placements
        .iter()
        .map(|placement| placement.address.interface.as_str())
        .collect();
    assert_eq!(
        placed,
        ["net1", "v4if0"],
        "a listed name is managed, whatever it is"
    );
    assert_eq!(
        result.rejections[0].reason,
        RejectReason::NotMultusInterface
    );
    assert_eq!(result.failures().count(), 0);
}

#[rstest]
#[case::own_prefix_by_mac(address("net1", 0x0b, "10.10.1.200"), "eni-b", "10.10.1.192/28")]
#[case::own_ipv6_prefix(
    address("net1", 0x0b, "2600:1f14:1:1:9::5"),
    "eni-b",
    "2600:1f14:1:1:9::/80"
)]
#[case::own_prefix_by_subnet(
    address("net2", UNKNOWN_MAC, "10.10.2.130"),
    "eni-c",
    "10.10.2.128/28"
)]
fn an_address_in_its_enis_prefix_is_routed_without_a_call(
    node: NodeFacts,
    #[case] pod: PodAddress,
    #[case] eni_id: &str,
    #[case] prefix: &str,
) {
    let result = plan(&node, std::slice::from_ref(&pod), &PlanOptions::default());
    assert_eq!(result.rejections, vec![]);
    assert_eq!(result.placements[0].eni_id, eni_id);
    assert_eq!(
        result.placements[0].prefix,
        Some(prefix.parse().expect("prefix"))
    );
    assert_eq!(result.changes, vec![], "no EC2 call");
    assert_eq!(
        unconfirmed(&result.assignments().collect::<Vec<_>>(), &node),
        vec![],
        "routed, so confirmed"
    );
}

#[rstest]
fn the_primary_eni_is_the_one_whose_mac_is_meta_data_mac_not_device_0(mut node: NodeFacts) {
    // A multi-card instance: the Multus ENI eni-a sits at device 0 of card 1.
    node.enis[1].device_number = 0;
    node.enis[1].network_card = 1;
    let result = plan(
        &node,
        &[address("net1", 0x0a, "10.10.1.80")],
        &PlanOptions::default(),
    );
    assert_eq!(result.rejections, vec![]);
    assert_eq!(result.changes[0].eni_id, "eni-a");
    let primary = plan(
        &node,
        &[address("net1", 0x00, "10.0.0.50")],
        &PlanOptions::default(),
    );
    assert_eq!(
        primary.rejections[0].reason,
        RejectReason::PrimaryEni {
            eni: "eni-primary".into()
        }
    );
}

#[rstest]
fn recent_addresses_are_looked_up_even_where_metadata_shows_them(node: NodeFacts) {
    let pod = [
        address("net1", 0x0b, "10.10.1.81"), // eni-b holds it, by metadata
        address("net1", 0x0b, "10.10.1.200"), // in eni-b's prefix
        address("net2", 0x0a, "10.10.1.83"), // not held: a change anyway
    ];
    let result = plan(&node, &pod, &PlanOptions::default());
    assert_eq!(result.changes.len(), 1);
    assert_eq!(
        result.lookups(&[ip("10.10.1.81"), ip("10.10.1.200")]),
        vec![
            EniChange {
                eni_id: "eni-a".into(),
                ipv4: vec!["10.10.1.83".parse().expect("ip")],
                ipv6: vec![]
            },
            EniChange {
                eni_id: "eni-b".into(),
                ipv4: vec!["10.10.1.81".parse().expect("ip")],
                ipv6: vec![]
            },
        ],
        "the prefix routes 10.10.1.200 whatever metadata says"
    );
    assert_eq!(result.changes.len(), 1, "the plan itself is unchanged");
}

#[rstest]
fn a_plan_worked_out_again_against_newer_address_lists_keeps_its_placements(node: NodeFacts) {
    let pod = [address("net2", 0x0a, "10.10.1.83")];
    let before = plan(&node, &pod, &PlanOptions::default());
    assert_eq!(before.changes.len(), 1);
    let mut newer = node.clone();
    let eni_a = newer
        .enis
        .iter_mut()
        .find(|eni| eni.id == "eni-a")
        .expect("eni-a");
    eni_a.ipv4.push("10.10.1.83".parse().expect("ip"));
    let after = before.clone().against(&newer);
    assert_eq!(after.changes, vec![], "metadata shows it in place now");
    assert_eq!(after.placements, before.placements);
    assert_eq!(after, plan(&newer, &pod, &PlanOptions::default()));
}
