//! The next step of the certificate life cycle: a pure decision over the Secret's state,
//! the clock and what this replica serves.
//!
//! A CA rotation has three steps, each one conditioned write of the Secret, so replicas that
//! race agree through its resourceVersion:
//! 1. [`Step::BeginCaRotation`]: a new CA is added next to the signing one; it enters the
//!    caBundle before it signs anything.
//! 2. [`Step::SwitchToNextCa`]: once the replica deciding has seen the caBundle of the
//!    MutatingWebhookConfiguration hold it for the overlap, on its own monotonic clock (the
//!    API servers' view of the configuration lags the write), it signs a new served
//!    certificate; the old CA stays trusted as the previous one.
//! 3. [`Step::DropPreviousCa`]: once every live replica said it serves a certificate of the
//!    new CA and the overlap has passed again, the old CA leaves the bundle.

use std::collections::BTreeMap;

use super::secret::{Ack, CertState};

/// Lifetimes and pacing, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Validity of a new CA.
    pub ca_valid: i64,
    /// Validity of a new served certificate (never beyond its CA's).
    pub cert_valid: i64,
    /// How long both CAs stay trusted before the next step of a rotation.
    pub overlap: i64,
    /// How often a replica renews its acknowledgement.
    pub ack_refresh: i64,
    /// An acknowledgement older than this is from a replica that is gone; each replica
    /// writes its own into its acknowledgement, so readers with other settings agree.
    pub ack_stale: i64,
}

impl Policy {
    /// With acknowledgements renewed every ten checks and stale after thirty.
    pub fn new(ca_valid: i64, cert_valid: i64, overlap: i64, check: i64) -> Self {
        Policy {
            ca_valid,
            cert_valid,
            overlap,
            ack_refresh: 10 * check,
            ack_stale: 30 * check,
        }
    }
}

/// What to write next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The Secret holds nothing: a new CA and served certificate.
    Initialize,
    /// A new served certificate from the same CA (a third of its validity left, or not valid
    /// for the Service's name).
    ReissueServing,
    /// Add a new CA to trust (a third of the CA's validity left, or an admin asked).
    BeginCaRotation,
    /// Sign the served certificate with the new CA; keep trusting the old one.
    SwitchToNextCa,
    /// Stop trusting the old CA.
    DropPreviousCa,
    /// Say which CA's certificate this replica serves.
    Acknowledge,
}

/// What this replica knows beyond the Secret.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// Its name, as it acknowledges ([`super::secret::ack_name`]).
    pub replica: &'a str,
    /// The id of the CA whose certificate it serves now.
    pub serving_ca: Option<&'a str>,
    /// Seconds this replica has seen the MutatingWebhookConfiguration's caBundle hold the
    /// next CA, by its monotonic clock (`None`: not seen).
    pub next_trusted_for: Option<i64>,
    /// Unix seconds.
    pub now: i64,
}

/// The step to take, or `None` when the Secret is as it should be.
pub fn next_step(
    state: Option<&CertState>,
    observed: Observed<'_>,
    policy: &Policy,
) -> Option<Step> {
    let Some(state) = state else {
        return Some(Step::Initialize);
    };
    let now = observed.now;
    let overlap_passed = state
        .phase_since
        .is_none_or(|since| now >= since.saturating_add(policy.overlap));
    if observed.serving_ca == Some(state.ca.id.as_str())
        && state.acks.get(observed.replica).is_none_or(|ack| {
            ack.ca_id != state.ca.id || now >= ack.at.saturating_add(policy.ack_refresh)
        })
    {
        return Some(Step::Acknowledge);
    }
    if state.previous.is_some() {
        let every_live_replica_switched = live_acks(state, now)
            .values()
            .all(|ack| ack.ca_id == state.ca.id);
        return (overlap_passed && every_live_replica_switched).then_some(Step::DropPreviousCa);
    }
    if state.next.is_some() {
        return observed
            .next_trusted_for
            .is_some_and(|seconds| seconds >= policy.overlap)
            .then_some(Step::SwitchToNextCa);
    }
    if state.rotate_requested || remaining(state.ca.not_before, state.ca.not_after, now) {
        return Some(Step::BeginCaRotation);
    }
    if !state.served.names_match
        || state.served.not_after > state.ca.not_after
        || remaining(state.served.not_before, state.served.not_after, now)
    {
        return Some(Step::ReissueServing);
    }
    None
}

/// Whether a third or less of the validity is left.
fn remaining(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = not_after.saturating_sub(not_before);
    not_after.saturating_sub(now) <= lifetime / 3
}

/// The acknowledgements of replicas that are still there (each by the staleness its
/// replica wrote).
pub fn live_acks(state: &CertState, now: i64) -> BTreeMap<String, Ack> {
    state
        .acks
        .iter()
        .filter(|(_, ack)| ack.at.saturating_add(ack.stale_after) > now)
        .map(|(replica, ack)| (replica.clone(), ack.clone()))
        .collect()
}
