//! Table tests of the node agent's decisions: what no pod carries for long enough, and what
//! EC2 still lets it release.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipmgr_eni::{
    Absences, AfterFailure, Assignment, Backoff, Eni, EniChange, EniRecord, ErrorClass, Keep,
    MacAddr, NO_MANAGE_TAG, NodeFacts, OwnershipPolicy, ReleaseOptions, RetryPolicy, ScanVerdict,
    secondary_addresses, verify_release,
};
use pretty_assertions::assert_eq;
use rstest::{fixture, rstest};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn eni(id: &str, last: u8, ipv4: &[&str], ipv6: &[&str]) -> Eni {
    Eni {
        mac: MacAddr([2, 0, 0, 0, 0, last]),
        id: id.to_owned(),
        device_number: u32::from(last),
        network_card: 0,
        vpc_id: "vpc-1".to_owned(),
        subnet_ipv4: Some("10.0.1.0/24".parse().expect("subnet")),
        subnet_ipv6: vec!["2600::/64".parse().expect("subnet")],
        ipv4: ipv4.iter().map(|a| a.parse().expect("ip")).collect(),
        ipv6: ipv6.iter().map(|a| a.parse().expect("ip")).collect(),
        ipv4_prefixes: Vec::new(),
        ipv6_prefixes: Vec::new(),
    }
}

/// The primary ENI (with the VPC CNI's pool), a Multus ENI, and an untagged ENI.
#[fixture]
fn node() -> NodeFacts {
    NodeFacts {
        instance_id: "i-1".to_owned(),
        region: "us-east-2".to_owned(),
        primary_mac: Some(MacAddr([2, 0, 0, 0, 0, 0])),
        enis: vec![
            eni("eni-primary", 0, &["10.0.0.10", "10.0.0.12"], &[]),
            eni(
                "eni-multus",
                1,
                &["10.0.1.10", "10.0.1.50", "10.0.1.51"],
                &["2600::50"],
            ),
            eni("eni-untagged", 2, &["10.0.1.11", "10.0.1.60"], &[]),
        ],
    }
}

fn multus() -> BTreeSet<String> {
    ["eni-multus".to_owned(), "eni-primary".to_owned()].into()
}

/// Retries: throttles wait between 12 s and the time waited (at most 24 s), within 300 s.
const RETRY: RetryPolicy = RetryPolicy {
    transient: Backoff {
        initial: Duration::from_secs(1),
        factor: 2,
        max: Duration::from_secs(24),
    },
    throttle_min: Duration::from_secs(12),
    max: Duration::from_secs(24),
    budget: Duration::from_secs(300),
};

fn options() -> ReleaseOptions {
    ReleaseOptions {
        grace: Duration::from_secs(60),
        scans: 2,
        allowed: Vec::new(),
        kept: Vec::new(),
        retry: RETRY,
    }
}

fn on(eni: &str, address: &str) -> Assignment {
    Assignment {
        eni_id: eni.to_owned(),
        address: ip(address),
    }
}

#[rstest]
fn only_secondary_addresses_of_multus_enis_in_no_pod_after_the_grace_and_two_scans(
    node: NodeFacts,
) {
    let mut absences = Absences::default();
    let in_use: BTreeSet<IpAddr> = [ip("10.0.1.51")].into();
    let start = Instant::now();
    assert_eq!(absences.next_due(&options()), None);
    let due = absences.observe(&node, &multus(), &in_use, &options(), start);
    assert_eq!(due, vec![], "first scan: nothing is due");
    assert_eq!(absences.waiting(), 2, "10.0.1.50 and 2600::50");
    assert_eq!(
        absences.next_due(&options()),
        Some(start + Duration::from_secs(60)),
        "the next scan that can give them back"
    );
    let due = absences.observe(
        &node,
        &multus(),
        &in_use,
        &options(),
        start + Duration::from_secs(30),
    );
    assert_eq!(due, vec![], "two scans, but within the grace");
    let due = absences.observe(
        &node,
        &multus(),
        &in_use,
        &options(),
        start + Duration::from_secs(61),
    );
    assert_eq!(
        due,
        vec![on("eni-multus", "10.0.1.50"), on("eni-multus", "2600::50")]
    );
}

#[rstest]
fn an_address_a_pod_carries_again_starts_over(node: NodeFacts) {
    let mut absences = Absences::default();
    let start = Instant::now();
    let none = BTreeSet::new();
    absences.observe(&node, &multus(), &none, &options(), start);
    let back: BTreeSet<IpAddr> = [ip("10.0.1.50")].into();
    absences.observe(
        &node,
        &multus(),
        &back,
        &options(),
        start + Duration::from_secs(40),
    );
    let due = absences.observe(
        &node,
        &multus(),
        &none,
        &options(),
        start + Duration::from_secs(70),
    );
    assert_eq!(
        due,
        vec![on("eni-multus", "10.0.1.51"), on("eni-multus", "2600::50")],
        "10.0.1.50's grace restarted at 70 s"
    );
}

#[rstest]
fn a_single_scan_is_not_enough_even_after_the_grace(node: NodeFacts) {
    let mut absences = Absences::default();
    let due = absences.observe(
        &node,
        &multus(),
        &BTreeSet::new(),
        &ReleaseOptions {
            grace: Duration::ZERO,
            ..options()
        },
        Instant::now(),
    );
    assert_eq!(due, vec![]);
}

#[rstest]
fn the_allow_list_bounds_what_is_ever_released(node: NodeFacts) {
    let mut absences = Absences::default();
    let options = ReleaseOptions {
        grace: Duration::ZERO,
        scans: 1,
        allowed: vec!["10.0.1.48/29".parse().expect("cidr")],
        ..options()
    };
    let due = absences.observe(&node, &multus(), &BTreeSet::new(), &options, Instant::now());
    assert_eq!(
        due,
        vec![on("eni-multus", "10.0.1.50"), on("eni-multus", "10.0.1.51")]
    );
}

fn record(id: &str, instance: &str, tagged: bool, held: &[&str]) -> EniRecord {
    EniRecord {
        id: id.to_owned(),
        description: String::new(),
        tags: if tagged {
            BTreeMap::from([(NO_MANAGE_TAG.to_owned(), "true".to_owned())])
        } else {
            BTreeMap::new()
        },
        instance_id: Some(instance.to_owned()),
        attachment: Some((0, 1)),
        primary_ipv4: held.first().and_then(|first| first.parse().ok()),
        ipv4: held.iter().filter_map(|a| a.parse().ok()).collect(),
        ipv6: held.iter().filter_map(|a| a.parse().ok()).collect(),
    }
}

#[rstest]
#[case::still_there(record("eni-multus", "i-1", true, &["10.0.1.10", "10.0.1.50"]), BTreeSet::new(), None)]
#[case::a_pod_carries_it_again(record("eni-multus", "i-1", true, &["10.0.1.10", "10.0.1.50"]), [ip("10.0.1.50")].into(), Some(Keep::InUse))]
#[case::moved_away(record("eni-multus", "i-1", true, &["10.0.1.10"]), BTreeSet::new(), Some(Keep::Moved))]
#[case::attached_elsewhere(record("eni-multus", "i-2", true, &["10.0.1.10", "10.0.1.50"]), BTreeSet::new(), Some(Keep::OtherInstance))]
#[case::tag_removed(record("eni-multus", "i-1", false, &["10.0.1.10", "10.0.1.50"]), BTreeSet::new(), Some(Keep::NotMultus))]
#[case::its_primary_address(record("eni-multus", "i-1", true, &["10.0.1.50"]), BTreeSet::new(), Some(Keep::Primary))]
fn ec2_has_the_last_word_just_before_the_call(
    #[case] eni: EniRecord,
    #[case] in_use: BTreeSet<IpAddr>,
    #[case] keep: Option<Keep>,
) {
    let due = [on("eni-multus", "10.0.1.50")];
    let (released, kept) = verify_release(&due, "i-1", &[eni], &in_use, OwnershipPolicy::default());
    match keep {
        None => {
            assert_eq!(
                released,
                vec![EniChange {
                    eni_id: "eni-multus".into(),
                    ipv4: vec!["10.0.1.50".parse().expect("ip")],
                    ipv6: vec![],
                }]
            );
            assert_eq!(kept, vec![]);
        }
        Some(keep) => {
            assert_eq!(released, vec![]);
            assert_eq!(kept, vec![(due[0].clone(), keep)]);
        }
    }
}

#[test]
fn a_primary_eni_is_never_released_from_even_when_tagged() {
    let mut primary = record("eni-primary", "i-1", true, &["10.0.0.10", "10.0.0.12"]);
    primary.attachment = Some((0, 0));
    let due = [on("eni-primary", "10.0.0.12")];
    let (released, kept) = verify_release(
        &due,
        "i-1",
        &[primary],
        &BTreeSet::new(),
        OwnershipPolicy::default(),
    );
    assert_eq!(released, vec![]);
    assert_eq!(kept[0].1, Keep::Primary);
}

#[rstest]
fn kept_cidrs_are_never_released_even_inside_the_allow_list(node: NodeFacts) {
    let mut absences = Absences::default();
    let options = ReleaseOptions {
        grace: Duration::ZERO,
        scans: 1,
        allowed: vec!["10.0.1.0/24".parse().expect("cidr")],
        kept: vec![
            "10.0.1.51/32".parse().expect("cidr"),
            "2600::/64".parse().expect("cidr"),
        ],
        ..options()
    };
    let due = absences.observe(&node, &multus(), &BTreeSet::new(), &options, Instant::now());
    assert_eq!(due, vec![on("eni-multus", "10.0.1.50")]);
    assert_eq!(absences.waiting(), 1, "kept addresses do not even wait");
}

/// An absences table with `10.0.1.50` due at `start + 61 s` (nothing else unused).
fn due_at_61s(node: &NodeFacts, start: Instant) -> Absences {
    let mut absences = Absences::default();
    let others: BTreeSet<IpAddr> = [ip("10.0.1.51"), ip("2600::50")].into();
    absences.observe(node, &multus(), &others, &options(), start);
    let due = absences.observe(
        node,
        &multus(),
        &others,
        &options(),
        start + Duration::from_secs(61),
    );
    assert_eq!(due, vec![on("eni-multus", "10.0.1.50")]);
    absences
}

#[rstest]
fn a_throttled_unassign_is_due_again_only_after_its_delay(node: NodeFacts) {
    let start = Instant::now();
    let mut absences = due_at_61s(&node, start);
    let address = on("eni-multus", "10.0.1.50");
    let others: BTreeSet<IpAddr> = [ip("10.0.1.51"), ip("2600::50")].into();
    let failed_at = start + Duration::from_secs(61);
    let after = absences.failed(&address, ErrorClass::Throttling, &options(), failed_at, 0.5);
    assert_eq!(
        after,
        AfterFailure::RetryIn(Duration::from_secs(6)),
        "half of the 12 s ceiling"
    );
    assert_eq!(
        absences.next_due(&options()),
        Some(failed_at + Duration::from_secs(6))
    );
    let early = absences.observe(
        &node,
        &multus(),
        &others,
        &options(),
        failed_at + Duration::from_secs(5),
    );
    assert_eq!(early, vec![], "not before the delay");
    let again = absences.observe(
        &node,
        &multus(),
        &others,
        &options(),
        failed_at + Duration::from_secs(6),
    );
    assert_eq!(again, vec![address], "due again, to be decided afresh");
}

#[rstest]
fn a_pod_that_takes_the_address_during_a_retry_cancels_it(node: NodeFacts) {
    let start = Instant::now();
    let mut absences = due_at_61s(&node, start);
    let address = on("eni-multus", "10.0.1.50");
    let failed_at = start + Duration::from_secs(61);
    absences.failed(&address, ErrorClass::Throttling, &options(), failed_at, 0.0);
    let everything: BTreeSet<IpAddr> = [ip("10.0.1.50"), ip("10.0.1.51"), ip("2600::50")].into();
    let due = absences.observe(
        &node,
        &multus(),
        &everything,
        &options(),
        failed_at + Duration::from_secs(1),
    );
    assert_eq!(due, vec![]);
    assert_eq!(
        absences.waiting(),
        0,
        "the retry is forgotten with the absence"
    );
    assert_eq!(absences.next_due(&options()), None);
}

#[rstest]
#[case::refused_for_good(ErrorClass::Persistent, Duration::from_secs(61))]
#[case::retries_spent(ErrorClass::Throttling, Duration::from_secs(61 + 300))]
fn a_release_that_cannot_go_through_waits_another_grace_period(
    node: NodeFacts,
    #[case] class: ErrorClass,
    #[case] at: Duration,
) {
    let start = Instant::now();
    let mut absences = due_at_61s(&node, start);
    let address = on("eni-multus", "10.0.1.50");
    if class == ErrorClass::Throttling {
        let first = start + Duration::from_secs(61);
        absences.failed(&address, class, &options(), first, 0.0);
    }
    let after = absences.failed(&address, class, &options(), start + at, 0.5);
    assert_eq!(after, AfterFailure::GraceAgain);
    assert_eq!(
        absences.next_due(&options()),
        Some(start + at + Duration::from_secs(60))
    );
}

#[rstest]
#[case::every_namespace_read(3, 0, 4, ScanVerdict::Trusted)]
#[case::a_node_without_pods_or_addresses(0, 0, 0, ScanVerdict::Trusted)]
#[case::a_sandbox_being_made(3, 1, 4, ScanVerdict::Incomplete { unreadable: 1 })]
#[case::the_wrong_directory(0, 0, 4, ScanVerdict::Blind { held: 4 })]
#[case::unreadable_and_empty(0, 2, 4, ScanVerdict::Incomplete { unreadable: 2 })]
fn only_a_complete_view_of_the_pods_is_acted_on(
    #[case] namespaces: usize,
    #[case] unreadable: usize,
    #[case] held: usize,
    #[case] verdict: ScanVerdict,
) {
    assert_eq!(ScanVerdict::judge(namespaces, unreadable, held), verdict);
}

#[rstest]
fn the_addresses_the_agent_could_release_leave_out_primaries(node: NodeFacts) {
    let held = secondary_addresses(&node, &multus());
    assert_eq!(
        held,
        vec![
            on("eni-multus", "10.0.1.50"),
            on("eni-multus", "10.0.1.51"),
            on("eni-multus", "2600::50"),
        ],
        "not the primary ENI's pool, not eni-multus's primary 10.0.1.10, not the untagged ENI"
    );
}
