//! After a pass (bounded, advisory): wait for instance metadata to show what EC2 accepted.

use std::time::Duration;

use ipmgr_eni::{Assignment, NodeFacts};
use tokio::time::Instant;

use crate::aws::NodeMetadata;

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
    match metadata.wait_to_show(node, accepted, window).await {
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
