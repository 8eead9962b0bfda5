//! Taking a [`Step`]: the Secret's next state, with new keys where the step needs them.

use time::OffsetDateTime;

use super::plan::{Policy, Step, live_acks};
use super::secret::{
    Ack, Authority, CA_CERT, CA_KEY, CertState, InvalidSecret, NEXT_CA_CERT, NEXT_CA_KEY, Retired,
    Served,
};
use crate::certs::{CertsError, ServiceIdentity};

/// Making new keys or certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// rcgen refused.
    #[error(transparent)]
    Certs(#[from] CertsError),
    /// What rcgen made does not read back (a bug).
    #[error("a certificate just made does not read back: {0}")]
    Unreadable(#[from] InvalidSecret),
    /// A time out of range.
    #[error("{0} is not a time a certificate can end at")]
    Time(i64),
}

/// Who issues, and when.
#[derive(Clone, Copy, Debug)]
pub struct Issuing<'a> {
    /// The Service the certificate names.
    pub identity: &'a ServiceIdentity,
    /// Lifetimes and pacing.
    pub policy: &'a Policy,
    /// This replica's acknowledgement name.
    pub replica: &'a str,
    /// Unix seconds.
    pub now: i64,
    /// The highest generation seen anywhere (Secret or webhook configuration): a new
    /// state counts on from it.
    pub generation_floor: u64,
}

impl Issuing<'_> {
    /// The state after `step`. `state` is `None` only for [`Step::Initialize`].
    pub fn apply(&self, step: Step, state: Option<&CertState>) -> Result<CertState, StepError> {
        let generation = self
            .generation_floor
            .max(state.map_or(0, |state| state.generation))
            + 1;
        let Some(state) = state.filter(|_| step != Step::Initialize) else {
            return self.initial(generation);
        };
        let mut next = state.clone();
        match step {
            Step::Initialize => return self.initial(generation),
            Step::ReissueServing => next.served = self.issue(&state.ca)?,
            Step::BeginCaRotation => {
                next.next = Some(self.new_authority(NEXT_CA_CERT, NEXT_CA_KEY)?);
                next.phase_since = Some(self.now);
                next.rotate_requested = false;
            }
            Step::SwitchToNextCa => {
                let Some(incoming) = &state.next else {
                    return Ok(next);
                };
                next.served = self.issue(incoming)?;
                next.previous = Some(Retired {
                    cert_pem: state.ca.pem.cert_pem.clone(),
                    id: state.ca.id.clone(),
                });
                next.ca = incoming.clone();
                next.next = None;
                next.phase_since = Some(self.now);
            }
            Step::DropPreviousCa => {
                next.previous = None;
                next.phase_since = None;
                next.acks = live_acks(state, self.now);
            }
            Step::Acknowledge => {
                next.acks = live_acks(state, self.now);
                next.acks.insert(
                    self.replica.to_owned(),
                    Ack {
                        ca_id: state.ca.id.clone(),
                        at: self.now,
                        stale_after: self.policy.ack_stale,
                    },
                );
                return Ok(next);
            }
        }
        next.generation = generation;
        Ok(next)
    }

    fn initial(&self, generation: u64) -> Result<CertState, StepError> {
        let ca = self.new_authority(CA_CERT, CA_KEY)?;
        let served = self.issue(&ca)?;
        Ok(CertState {
            ca,
            served,
            next: None,
            previous: None,
            generation,
            phase_since: None,
            rotate_requested: false,
            acks: Default::default(),
        })
    }

    fn new_authority(&self, cert_key: &str, key_key: &str) -> Result<Authority, StepError> {
        let pem = self
            .identity
            .new_authority(at(self.now.saturating_add(self.policy.ca_valid))?)?;
        Ok(Authority::from_pem(pem, cert_key, key_key)?)
    }

    /// A served certificate from `ca`, ending no later than it.
    fn issue(&self, ca: &Authority) -> Result<Served, StepError> {
        let not_after = self
            .now
            .saturating_add(self.policy.cert_valid)
            .min(ca.not_after);
        let pem = self.identity.issue_serving(&ca.pem, at(not_after)?)?;
        Ok(Served::from_pem(pem, ca, &self.identity.service_name())?)
    }
}

fn at(unix: i64) -> Result<OffsetDateTime, StepError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| StepError::Time(unix))
}
