//! Table tests of the ENI planner on a node shaped like the original how-to's: a primary ENI
//! in the node subnet, two Multus ENIs sharing one subnet, and one in a second subnet (with
//! a delegated prefix).

use std::net::IpAddr;

use ipmgr_eni::{
    Assignment, Eni, EniChange, MacAddr, MatchedBy, NodeFacts, PlanOptions, PodAddress,
    RejectReason, plan, unconfirmed,
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

#[rstest]
fn with_the_webhooks_interface_list_only_those_interfaces_are_managed(node: NodeFacts) {
    let options = PlanOptions {
        interfaces: Some(vec!["net1".to_owned(), "v4if0".to_owned()]),
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
fn fresh_addresses_are_looked_up_even_where_metadata_shows_them(node: NodeFacts) {
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
