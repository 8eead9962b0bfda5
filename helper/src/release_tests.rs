//! Releasing an ENI's addresses over the in-memory EC2: batches split when EC2 refuses one
//! for good, never when it throttles, and no call on a view that is too old.

use ipmgr_eni::{EniChange, ErrorClass};
use pretty_assertions::assert_eq;

use super::release;
use crate::aws::Unassigned;
use crate::fakes::{FakeEc2, INSTANCE, node, record};

/// EC2 with the Multus ENI alone, holding `held`; and the release of 10.0.1.50 and
/// 10.0.1.51 from it.
fn multus_eni_holding(held: &[&str]) -> (FakeEc2, EniChange) {
    let mut multus = node().enis[1].clone();
    multus.ipv4.extend(
        held.iter()
            .map(|a| a.parse::<std::net::Ipv4Addr>().expect("ip")),
    );
    let change = EniChange {
        eni_id: multus.id.clone(),
        ipv4: vec![
            "10.0.1.50".parse().expect("ip"),
            "10.0.1.51".parse().expect("ip"),
        ],
        ipv6: Vec::new(),
    };
    (FakeEc2::with(vec![record(&multus, INSTANCE, true)]), change)
}

#[tokio::test]
async fn a_batch_ec2_refuses_for_good_goes_address_by_address() {
    let (ec2, change) = multus_eni_holding(&["10.0.1.50"]);
    let outcomes = release(&ec2, &change, None).await;
    let outcomes: Vec<(String, &str)> = outcomes
        .iter()
        .map(|(call, outcome)| {
            let what = match outcome {
                Unassigned::Released => "released",
                Unassigned::NotOnEni => "not on the ENI",
                Unassigned::Stale => "stale",
                Unassigned::Failed(_) => "failed",
            };
            (call.ipv4[0].to_string(), what)
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("10.0.1.50".to_owned(), "released"),
            ("10.0.1.51".to_owned(), "not on the ENI"),
        ]
    );
    assert_eq!(ec2.calls().len(), 3, "the batch, then one call per address");
}

#[tokio::test]
async fn a_throttled_batch_is_not_split_and_a_stale_view_makes_no_call() {
    let (ec2, change) = multus_eni_holding(&["10.0.1.50", "10.0.1.51"]);
    ec2.fail_next(
        "UnassignPrivateIpAddresses",
        "RequestLimitExceeded",
        ErrorClass::Throttling,
    );
    let outcomes = release(&ec2, &change, None).await;
    assert!(
        matches!(outcomes[..], [(_, Unassigned::Failed(_))]),
        "{outcomes:?}"
    );
    let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let outcomes = release(&ec2, &change, Some(past)).await;
    assert!(
        matches!(outcomes[..], [(_, Unassigned::Stale)]),
        "{outcomes:?}"
    );
    assert_eq!(ec2.calls().len(), 1, "one throttled call, none stale");
    assert!(ec2.holds("eni-multus", "10.0.1.50"));
}
