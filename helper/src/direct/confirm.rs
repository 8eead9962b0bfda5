//! After a pass (bounded, advisory): wait for instance metadata to show what EC2 accepted.

use std::time::Duration;

use ipmgr_eni::{Assignment, NodeFacts, unconfirmed};
use tokio::time::Instant;

use crate::aws::{MetadataError, NodeMetadata};

/// Waits up to `window` for instance metadata to show `accepted` (EC2 accepted them, so
/// they are assigned; metadata only tells when the node sees it), and says how that went:
/// a warning per assignment metadata never showed. Metadata errors are warnings too.
pub async fn confirm(
    metadata: &impl NodeMetadata,
    node: &NodeFacts,
    accepted: &[Assignment],
    window: Duration,
) {
    if accepted.is_empty() {
        return;
    }
    let started = Instant::now();
    match wait_to_show(metadata, node, accepted, window).await {
        Ok(missing) if missing.is_empty() => tracing::info!(
            addresses = accepted.len(),
            after_ms = started.elapsed().as_millis() as u64,
            "instance metadata shows the assignments: traffic flows"
        ),
        Ok(missing) => {
            for assignment in missing {
                tracing::warn!(
                    address = %assignment.address,
                    eni = assignment.eni_id,
                    waited_ms = window.as_millis() as u64,
                    "EC2 accepted the assignment, but instance metadata does not show it yet (it lags EC2); traffic should flow once it does"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot confirm the assignments in instance metadata"),
    }
}

/// Polls instance metadata's address lists of the ENIs of `expected` until they show it,
/// within `window` (20 ms apart at first, doubling up to 500 ms); what they never showed.
pub(crate) async fn wait_to_show(
    metadata: &impl NodeMetadata,
    node: &NodeFacts,
    expected: &[Assignment],
    window: Duration,
) -> Result<Vec<Assignment>, MetadataError> {
    let deadline = Instant::now() + window;
    let enis: Vec<&str> = expected
        .iter()
        .map(|assignment| assignment.eni_id.as_str())
        .collect();
    let mut delay = Duration::from_millis(20);
    let mut current = node.clone();
    loop {
        for eni in current
            .enis
            .iter_mut()
            .filter(|eni| enis.contains(&eni.id.as_str()))
        {
            (eni.ipv4, eni.ipv6) = metadata.addresses(eni.mac).await?;
        }
        let missing = unconfirmed(expected, &current);
        if missing.is_empty() || Instant::now() + delay > deadline {
            return Ok(missing);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

#[cfg(test)]
#[path = "confirm_tests.rs"]
mod tests;
