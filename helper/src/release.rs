//! Releasing one ENI's addresses through EC2: how the plain unassign calls of
//! [`Ec2Api`] are batched, split and bounded in time (the policy above the adapter, as the
//! VPC CNI keeps it in `awsutils` above its `ec2wrapper`). The direct backend releases on
//! exit; the agent releases what pods that are gone left.

use std::time::Instant;

use ipmgr_eni::{EniChange, ErrorClass};

use crate::aws::{Ec2Api, Ec2Failure, Unassigned};

/// Releases one ENI's addresses: an unassign call per family, and per address when EC2
/// refuses a batch for good (an address left the ENI between a lookup and the call): each
/// call with what became of its addresses. An address EC2 says is no longer on the ENI is
/// not a failure: it stays with its new holder. No call starts after `valid_until`, when
/// given (the view that decided the release is too old by then).
pub async fn release(
    ec2: &impl Ec2Api,
    change: &EniChange,
    valid_until: Option<Instant>,
) -> Vec<(EniChange, Unassigned)> {
    let in_time = || valid_until.is_none_or(|until| Instant::now() <= until);
    let mut outcomes = Vec::new();
    for call in change.calls() {
        if !in_time() {
            outcomes.push((call, Unassigned::Stale));
            continue;
        }
        match unassign(ec2, &call).await {
            Err(failure) if call.len() > 1 && failure.class == ErrorClass::Persistent => {
                tracing::warn!(%failure, "EC2 refused the release batch; releasing the addresses one by one");
                for single in call.singles() {
                    let outcome = if in_time() {
                        Unassigned::from(unassign(ec2, &single).await)
                    } else {
                        Unassigned::Stale
                    };
                    outcomes.push((single, outcome));
                }
            }
            result => outcomes.push((call, Unassigned::from(result))),
        }
    }
    outcomes
}

/// One unassign call (a change of one family).
async fn unassign(ec2: &impl Ec2Api, call: &EniChange) -> Result<(), Ec2Failure> {
    if call.ipv6.is_empty() {
        ec2.unassign_ipv4(&call.eni_id, &call.ipv4).await?;
    } else {
        ec2.unassign_ipv6(&call.eni_id, &call.ipv6).await?;
    }
    tracing::info!(eni = call.eni_id, ipv4 = ?call.ipv4, ipv6 = ?call.ipv6, "released");
    Ok(())
}

#[cfg(test)]
#[path = "release_tests.rs"]
mod tests;
