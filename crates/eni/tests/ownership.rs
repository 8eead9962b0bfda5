//! Table tests of the ownership rules: which ENIs the helper may use, and from which it may
//! take an address (a Multus ENI, never another workload's).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipmgr_eni::{
    Assignment, EniChange, EniRecord, MacAddr, MatchedBy, NO_MANAGE_TAG, NotMultus,
    OwnershipPolicy, Placement, Plan, PodAddress, RejectReason, Vetted, still_assigned, vet,
};
use pretty_assertions::assert_eq;
use rstest::rstest;

const STRICT: OwnershipPolicy = OwnershipPolicy {
    allow_untagged: false,
};
const RELAXED: OwnershipPolicy = OwnershipPolicy {
    allow_untagged: true,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn record(id: &str, tags: &[(&str, &str)], description: &str, held: &[&str]) -> EniRecord {
    let ipv4: Vec<Ipv4Addr> = held.iter().filter_map(|text| text.parse().ok()).collect();
    EniRecord {
        id: id.to_owned(),
        description: description.to_owned(),
        tags: tags
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned()))
            .collect::<BTreeMap<_, _>>(),
        instance_id: Some("i-other".to_owned()),
        attachment: Some((0, 1)),
        primary_ipv4: ipv4.first().copied(),
        ipv4,
        ipv6: held.iter().filter_map(|text| text.parse().ok()).collect(),
    }
}

fn multus(id: &str, held: &[&str]) -> EniRecord {
    record(id, &[(NO_MANAGE_TAG, "true")], "", held)
}

/// The instance every record is attached to.
const INSTANCE: &str = "i-other";

/// [`vet`] with no recent address, EC2 listing `holders` and the target ENI `eni-here` (a
/// Multus ENI of the instance) when the holders do not include it.
fn vet_against(plan: Plan, holders: &[EniRecord], policy: OwnershipPolicy) -> Vetted {
    let mut records = holders.to_vec();
    if !records.iter().any(|record| record.id == "eni-here") {
        records.push(multus("eni-here", &["10.0.1.10"]));
    }
    vet(plan, &records, &[], INSTANCE, policy)
}

/// A plan that puts `addresses` on `eni` (none of them there yet).
fn planned(eni: &str, addresses: &[&str]) -> Plan {
    let assignments: Vec<Assignment> = addresses
        .iter()
        .map(|text| Assignment {
            eni_id: eni.to_owned(),
            address: ip(text),
        })
        .collect();
    Plan {
        placements: assignments
            .iter()
            .map(|assignment| Placement {
                address: PodAddress {
                    interface: "net1".to_owned(),
                    mac: MacAddr([2, 0, 0, 0, 0, 1]),
                    address: assignment.address,
                    prefix_len: 24,
                },
                eni_id: eni.to_owned(),
                matched_by: MatchedBy::Mac,
                prefix: None,
            })
            .collect(),
        changes: EniChange::group(assignments),
        ..Plan::default()
    }
}

#[rstest]
#[case::tagged(multus("eni-m", &["10.0.1.10"]), STRICT, Ok(()))]
#[case::untagged(record("eni-u", &[], "", &["10.0.1.11"]), STRICT, Err(NotMultus::Untagged))]
#[case::untagged_relaxed(record("eni-u", &[], "", &["10.0.1.11"]), RELAXED, Ok(()))]
#[case::tag_false(record("eni-f", &[(NO_MANAGE_TAG, "false")], "", &["10.0.1.12"]), STRICT, Err(NotMultus::Untagged))]
#[case::vpc_cni_description(record("eni-v", &[], "aws-K8S-i-0123", &["10.0.0.11"]), RELAXED, Err(NotMultus::CreatedByVpcCni))]
#[case::vpc_cni_tag(record("eni-v", &[("node.k8s.amazonaws.com/instance_id", "i-0123")], "", &["10.0.0.11"]), RELAXED, Err(NotMultus::CreatedByVpcCni))]
fn tells_multus_enis_from_the_vpc_cnis(
    #[case] eni: EniRecord,
    #[case] policy: OwnershipPolicy,
    #[case] expected: Result<(), NotMultus>,
) {
    assert_eq!(eni.multus(policy), expected);
}

#[test]
fn a_primary_eni_is_never_multus_even_tagged() {
    let mut primary = record("eni-p", &[], "", &["10.0.0.10"]);
    primary.attachment = Some((0, 0));
    assert_eq!(primary.multus(RELAXED), Err(NotMultus::Primary));
    let mut tagged_primary = multus("eni-tp", &["10.0.0.10"]);
    tagged_primary.attachment = Some((0, 0));
    assert_eq!(
        tagged_primary.multus(STRICT),
        Err(NotMultus::Primary),
        "a no_manage tag on the primary ENI changes nothing"
    );
    let mut card_one = primary.clone();
    card_one.attachment = Some((1, 0));
    assert_eq!(card_one.multus(RELAXED), Ok(()));
}

#[test]
fn nothing_is_planned_or_vetted_onto_a_tagged_primary_eni() {
    let mut tagged_primary = multus("eni-here", &["10.0.0.10"]);
    tagged_primary.attachment = Some((0, 0));
    let vetted = vet(
        planned("eni-here", &["10.0.1.50"]),
        &[tagged_primary],
        &[],
        INSTANCE,
        RELAXED,
    )
    .plan;
    assert_eq!(vetted.changes, vec![]);
    assert_eq!(vetted.placements, vec![]);
    assert!(
        vetted.rejections[0].to_string().contains("primary ENI"),
        "{}",
        vetted.rejections[0]
    );
}

#[test]
fn changes_on_an_untagged_eni_are_refused_naming_the_tag_and_the_setting() {
    let plan = planned("eni-u", &["10.0.1.50", "10.0.1.51"]);
    let vetted = vet(
        plan,
        &[record("eni-u", &[], "", &["10.0.1.11"])],
        &[],
        INSTANCE,
        STRICT,
    )
    .plan;
    assert_eq!(vetted.changes, vec![]);
    assert_eq!(vetted.placements, vec![]);
    assert_eq!(vetted.rejections.len(), 2);
    let text = vetted.rejections[0].to_string();
    for part in [
        "ENI eni-u",
        "node.k8s.amazonaws.com/no_manage=true",
        "aws ec2 create-tags",
        "--allow-untagged-enis",
        "MANAGE_UNTAGGED_ENI=false",
    ] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
    assert!(vetted.rejections[0].is_failure());
}

#[test]
fn changes_on_a_multus_eni_pass_and_one_ec2_does_not_list_here_is_refused() {
    let plan = planned("eni-m", &["10.0.1.50"]);
    let vetted = vet(
        plan.clone(),
        &[multus("eni-m", &["10.0.1.10"])],
        &[],
        INSTANCE,
        STRICT,
    );
    assert_eq!(vetted.plan, plan);
    let elsewhere = vet(
        plan.clone(),
        &[multus("eni-m", &["10.0.1.10"])],
        &[],
        "i-this",
        STRICT,
    )
    .plan;
    assert_eq!(
        elsewhere.rejections[0].reason,
        RejectReason::NotMultusEni {
            eni: "eni-m".into(),
            why: NotMultus::Missing
        },
        "attached to another instance"
    );
    let gone = vet(plan, &[], &[], INSTANCE, STRICT).plan;
    assert_eq!(
        gone.rejections[0].reason,
        RejectReason::NotMultusEni {
            eni: "eni-m".into(),
            why: NotMultus::Missing
        }
    );
}

#[test]
fn nobody_holds_it_or_a_multus_eni_does_the_address_moves() {
    let plan = planned("eni-here", &["10.0.1.50", "10.0.1.51"]);
    let holders = [multus("eni-there", &["10.0.1.20", "10.0.1.51"])];
    let vetted = vet_against(plan.clone(), &holders, STRICT);
    assert_eq!(
        vetted.plan, plan,
        "both still assigned, 10.0.1.51 moves back"
    );
    assert_eq!(vetted.ipv6_unassign_first, vec![]);
}

#[test]
fn an_ipv6_address_on_another_multus_eni_is_unassigned_there_first() {
    let plan = planned("eni-here", &["2600::50"]);
    let holders = [multus("eni-there", &["10.0.1.20", "2600::50"])];
    let vetted = vet_against(plan.clone(), &holders, STRICT);
    assert_eq!(vetted.plan, plan);
    assert_eq!(
        vetted.ipv6_unassign_first,
        vec![EniChange {
            eni_id: "eni-there".into(),
            ipv4: vec![],
            ipv6: vec!["2600::50".parse().expect("ip")],
        }]
    );
}

#[test]
fn an_address_already_on_its_eni_needs_no_call() {
    let plan = planned("eni-here", &["10.0.1.50", "10.0.1.51"]);
    let holders = [multus("eni-here", &["10.0.1.10", "10.0.1.51"])];
    let vetted = vet_against(plan, &holders, STRICT);
    assert_eq!(vetted.plan.placements.len(), 2, "both placed");
    assert_eq!(
        vetted.plan.changes,
        vec![EniChange {
            eni_id: "eni-here".into(),
            ipv4: vec!["10.0.1.50".parse().expect("ip")],
            ipv6: vec![],
        }]
    );
}

#[rstest]
#[case::vpc_cni_pool(record("eni-pool", &[], "aws-K8S-i-0abc", &["10.0.1.20", "10.0.1.51"]), "was created by the VPC CNI")]
#[case::adopted_untagged(record("eni-adopted", &[], "", &["10.0.1.20", "10.0.1.51"]), "lacks the tag node.k8s.amazonaws.com/no_manage=true")]
#[case::a_primary_address(multus("eni-other", &["10.0.1.51"]), "primary address, which never moves")]
fn an_address_another_workload_holds_is_refused_the_rest_goes_through(
    #[case] holder: EniRecord,
    #[case] why: &str,
) {
    let plan = planned("eni-here", &["10.0.1.50", "10.0.1.51"]);
    let vetted = vet_against(plan, std::slice::from_ref(&holder), STRICT);
    assert_eq!(
        vetted.plan.changes,
        vec![EniChange {
            eni_id: "eni-here".into(),
            ipv4: vec!["10.0.1.50".parse().expect("ip")],
            ipv6: vec![],
        }]
    );
    assert_eq!(vetted.plan.rejections.len(), 1);
    let text = vetted.plan.rejections[0].to_string();
    for part in ["10.0.1.51 on net1", holder.id.as_str(), "i-other", why] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
    if !holder.description.is_empty() {
        assert!(text.contains(&holder.description), "{text}");
    }
}

#[test]
fn relaxed_an_untagged_holder_gives_the_address_up_but_the_vpc_cnis_never() {
    let plan = planned("eni-here", &["10.0.1.51", "10.0.1.52"]);
    let holders = [
        record("eni-untagged", &[], "", &["10.0.1.20", "10.0.1.51"]),
        record(
            "eni-cni",
            &[],
            "aws-K8S-i-0abc",
            &["10.0.1.21", "10.0.1.52"],
        ),
    ];
    let vetted = vet_against(plan, &holders, RELAXED);
    assert_eq!(
        vetted.plan.changes[0].ipv4,
        vec!["10.0.1.51".parse::<Ipv4Addr>().expect("ip")]
    );
    assert_eq!(vetted.plan.rejections.len(), 1);
    assert_eq!(vetted.plan.rejections[0].address.address, ip("10.0.1.52"));
}

#[test]
fn a_recent_ipv4_address_ec2_has_on_its_eni_is_assigned_again_a_recent_ipv6_not() {
    let plan = planned("eni-here", &["10.0.1.50", "2600::50"]);
    let holders = [multus("eni-here", &["10.0.1.10", "10.0.1.50", "2600::50"])];
    let recent = [ip("10.0.1.50"), ip("2600::50")];
    let vetted = vet(plan, &holders, &recent, INSTANCE, STRICT);
    assert_eq!(
        vetted.plan.changes,
        vec![EniChange {
            eni_id: "eni-here".into(),
            ipv4: vec!["10.0.1.50".parse().expect("ip")],
            ipv6: vec![],
        }],
        "AssignPrivateIpAddresses is idempotent; AssignIpv6Addresses would refuse"
    );
}

#[test]
fn on_exit_only_what_ec2_says_is_still_ours_is_given_back() {
    let assignment = |eni: &str, address: &str| Assignment {
        eni_id: eni.to_owned(),
        address: ip(address),
    };
    let assigned = [
        assignment("eni-b", "10.10.1.81"),    // still on eni-b
        assignment("eni-b", "2600::81"),      // still on eni-b
        assignment("eni-b", "10.10.1.11"),    // eni-b's primary: never
        assignment("eni-a", "10.10.1.90"),    // moved to another node meanwhile
        assignment("eni-gone", "10.10.1.91"), // ENI detached
    ];
    let enis = [
        multus("eni-b", &["10.10.1.11", "10.10.1.81", "2600::81"]),
        multus("eni-a", &["10.10.1.10"]),
    ];
    assert_eq!(
        still_assigned(&assigned, &enis),
        vec![EniChange {
            eni_id: "eni-b".into(),
            ipv4: vec!["10.10.1.81".parse().expect("ip")],
            ipv6: vec!["2600::81".parse().expect("ip")],
        }]
    );
}

#[test]
fn an_address_another_multus_eni_holds_is_a_move_the_agent_can_refuse() {
    let mut elsewhere = multus("eni-there", &["10.0.1.20", "10.0.1.50", "2600:1f14::50"]);
    elsewhere.instance_id = Some("i-node2".to_owned());
    let here = multus("eni-here", &["10.0.1.10", "10.0.1.51"]);
    let plan = planned(
        "eni-here",
        &["10.0.1.50", "10.0.1.51", "10.0.1.52", "2600:1f14::50"],
    );
    let mut vetted = vet_against(plan, &[elsewhere, here], STRICT);
    let moved = |vetted: &Vetted| -> Vec<(String, String, Option<String>)> {
        vetted
            .moves
            .iter()
            .map(|taken| {
                (
                    taken.assignment.address.to_string(),
                    taken.from_eni.clone(),
                    taken.from_instance.clone(),
                )
            })
            .collect()
    };
    let there = || ("eni-there".to_owned(), Some("i-node2".to_owned()));
    // 10.0.1.51 is in place already and 10.0.1.52 held by nobody: neither is a move.
    assert_eq!(
        moved(&vetted),
        vec![
            ("10.0.1.50".to_owned(), there().0, there().1),
            ("2600:1f14::50".to_owned(), there().0, there().1),
        ]
    );
    assert_eq!(vetted.ipv6_unassign_first.len(), 1);

    let ipv6 = Assignment {
        eni_id: "eni-here".to_owned(),
        address: ip("2600:1f14::50"),
    };
    vetted.refuse(&ipv6, RejectReason::LinkLocal);
    assert_eq!(
        vetted.ipv6_unassign_first,
        vec![],
        "a refused move releases nothing"
    );
    assert_eq!(moved(&vetted).len(), 1);
    assert!(
        vetted
            .plan
            .changes
            .iter()
            .all(|change| change.ipv6.is_empty()),
        "{:?}",
        vetted.plan.changes
    );
}
