//! Table tests of the ENI planner on a node shaped like the original how-to's: a primary ENI
//! in the node subnet, two Multus ENIs sharing one subnet, and one in a second subnet.

use std::net::IpAddr;

use ipmgr_eni::{
    Assignment, Eni, EniChange, MacAddr, MatchedBy, NodeFacts, PlanOptions, PodAddress,
    RejectReason, plan, release, unconfirmed,
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
    }
}

#[fixture]
fn node() -> NodeFacts {
    NodeFacts {
        instance_id: "i-0123".to_owned(),
        region: "us-east-2".to_owned(),
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
            eni(
                "eni-b",
                2,
                0x0b,
                "10.10.1.0/24",
                &["2600:1f14:1:1::/64"],
                &["10.10.1.11", "10.10.1.81"],
            ),
            eni("eni-c", 3, 0x0c, "10.10.2.0/24", &[], &["10.10.2.10"]),
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
#[case::no_eni(
    address("net1", UNKNOWN_MAC, "192.168.5.5"),
    RejectReason::NoEni,
    "no ENI subnet contains the address"
)]
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
fn release_gives_back_only_what_is_still_ours(node: NodeFacts) {
    let assigned = [
        Assignment {
            eni_id: "eni-b".into(),
            address: ip("10.10.1.81"),
        }, // still on eni-b
        Assignment {
            eni_id: "eni-b".into(),
            address: ip("10.10.1.11"),
        }, // eni-b's primary: never
        Assignment {
            eni_id: "eni-a".into(),
            address: ip("10.10.1.90"),
        }, // taken by another node
        Assignment {
            eni_id: "eni-gone".into(),
            address: ip("10.10.1.91"),
        }, // ENI detached
    ];
    let releases = release(&assigned, &node);
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].eni_id, "eni-b");
    assert_eq!(
        releases[0].ipv4,
        vec!["10.10.1.81".parse::<std::net::Ipv4Addr>().expect("ip")]
    );
    assert!(releases[0].ipv6.is_empty());
}
