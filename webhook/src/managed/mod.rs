//! Managed certificates: the webhook keeps its CA and serving certificate in a Secret,
//! writes the caBundle of its own MutatingWebhookConfiguration, serves the certificate from
//! memory and renews it before it expires, rotating the CA with an overlap in which both
//! CAs are trusted ([`plan`] has the steps). Replicas agree through the Secret's
//! resourceVersion: every change is a write conditioned on the version read, and a replica
//! that loses a race reads again.

pub mod args;
pub mod plan;
pub mod secret;
pub mod steps;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use self::plan::{Observed, Policy, next_step};
use self::secret::{CertState, GENERATION, InvalidSecret, ack_name};
use self::steps::{Issuing, StepError};
use self::store::{KubeStore, StoreError, Written};
use crate::certs::ServiceIdentity;
use crate::tls::{CertificateError, ServingCertificate};

/// What the managed certificates need to know.
#[derive(Clone, Debug)]
pub struct ManagedSettings {
    /// The Service the certificate is for.
    pub identity: ServiceIdentity,
    /// This replica's name (its pod's).
    pub replica: String,
    /// Lifetimes and pacing.
    pub policy: Policy,
    /// Time between checks of the Secret and the caBundle.
    pub check: Duration,
}

impl ManagedSettings {
    /// How long a replica stays ready without a settled pass: half the time after which
    /// the others count it as gone (its acknowledgement stale), so it leaves its Service
    /// before they may stop trusting the CA it serves.
    pub fn ready_while_confirmed_within(&self) -> Duration {
        Duration::from_secs(
            u64::try_from(self.policy.ack_stale / 2)
                .unwrap_or(u64::MAX)
                .max(1),
        )
    }
}

/// One pass could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Secret holds something unusable.
    #[error("Secret {secret}: {source}")]
    Invalid {
        /// `namespace/name`.
        secret: String,
        /// What is wrong.
        source: InvalidSecret,
    },
    /// New keys could not be made.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The certificate in the Secret cannot be served.
    #[error("cannot serve the certificate of Secret {secret}: {source}")]
    Serve {
        /// `namespace/name`.
        secret: String,
        /// Why.
        source: Box<CertificateError>,
    },
}

/// What a pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Nothing left to do until the next check.
    Settled,
    /// It wrote, or lost a race: pass again at once.
    Again,
}

/// Passes that may follow each other without waiting for the next check.
const PASSES_PER_CHECK: usize = 16;

/// Keeps the certificates for ever: a pass every `settings.check`, passes in a row while
/// there is something to write.
pub async fn keep(settings: ManagedSettings, store: KubeStore, serving: Arc<ServingCertificate>) {
    let mut keeper = Keeper {
        settings,
        store,
        serving,
        served: None,
        next_seen: None,
        last_error: None,
    };
    loop {
        let mut passes = 0;
        loop {
            passes += 1;
            match keeper.pass().await {
                Ok(Pass::Again) if passes < PASSES_PER_CHECK => continue,
                Ok(Pass::Again) => tracing::warn!(
                    passes,
                    "managed certificates did not settle in one check; going on at the next"
                ),
                Ok(Pass::Settled) => {
                    keeper.serving.confirm();
                    keeper.last_error = None;
                }
                Err(error) => keeper.report(&error),
            }
            break;
        }
        tokio::time::sleep(keeper.settings.check).await;
    }
}

struct Keeper {
    settings: ManagedSettings,
    store: KubeStore,
    serving: Arc<ServingCertificate>,
    /// The served certificate's PEM and its CA's id.
    served: Option<(String, String)>,
    /// The next CA's id, and when this replica first saw the caBundle hold it.
    next_seen: Option<(String, Instant)>,
    last_error: Option<String>,
}

impl Keeper {
    /// Logs an error once, and again when it changes.
    fn report(&mut self, error: &ManagedError) {
        let message = error.to_string();
        if self.last_error.as_deref() != Some(message.as_str()) {
            tracing::error!(
                error = %message,
                serving = self.served.is_some(),
                "managed certificates: pass failed; retrying every check"
            );
            self.last_error = Some(message);
        }
    }

    async fn pass(&mut self) -> Result<Pass, ManagedError> {
        let secret_path = self.store.secret_path.clone();
        let Some(view) = self.store.read_secret().await? else {
            if self.store.create_secret().await? == Written::Done {
                tracing::info!(secret = %secret_path, "created the certificate Secret");
            }
            return Ok(Pass::Again);
        };
        let dns_name = self.settings.identity.service_name();
        let state = view
            .state(&dns_name)
            .map_err(|source| ManagedError::Invalid {
                secret: secret_path.clone(),
                source,
            })?;
        let bundle = self.store.read_bundle().await?;
        if let Some(state) = &state
            && !bundle.is(&state.bundle())
        {
            if let Some(newer) = bundle.generation.filter(|newer| *newer > state.generation) {
                // The bundle is from a newer generation than the Secret read: either the
                // Secret changed since (the write below conflicts and we read again) or its
                // generation was lost (an edit by hand): count on from the bundle's.
                let renumbered = CertState {
                    generation: newer + 1,
                    ..state.clone()
                };
                self.store
                    .write_secret(&view, &renumbered.written_over(&view))
                    .await?;
                return Ok(Pass::Again);
            }
            if self
                .store
                .write_bundle(&bundle, &state.bundle(), state.generation)
                .await?
                == Written::Done
            {
                tracing::info!(
                    generation = state.generation,
                    cas = ca_ids(state),
                    "caBundle of the webhook configuration written"
                );
            }
            return Ok(Pass::Again);
        }
        if let Some(state) = &state
            && bundle.holds(&state.ca.pem.cert_pem)
        {
            self.serve(state, &secret_path)?;
        }
        let next = state.as_ref().and_then(|state| state.next.as_ref());
        self.next_seen =
            next.filter(|next| bundle.holds(&next.pem.cert_pem))
                .map(|next| match self.next_seen.take() {
                    Some((id, since)) if id == next.id => (id, since),
                    _ => (next.id.clone(), Instant::now()),
                });
        let replica = ack_name(&self.settings.replica);
        let now = unix_now();
        let observed = Observed {
            replica,
            serving_ca: self.served.as_ref().map(|(_, ca)| ca.as_str()),
            next_trusted_for: self
                .next_seen
                .as_ref()
                .map(|(_, since)| i64::try_from(since.elapsed().as_secs()).unwrap_or(i64::MAX)),
            now,
        };
        let Some(step) = next_step(state.as_ref(), observed, &self.settings.policy) else {
            return Ok(Pass::Settled);
        };
        let generation_floor = view
            .annotations
            .get(GENERATION)
            .and_then(|generation| generation.parse().ok())
            .unwrap_or(0)
            .max(bundle.generation.unwrap_or(0));
        let issuing = Issuing {
            identity: &self.settings.identity,
            policy: &self.settings.policy,
            replica,
            now,
            generation_floor,
        };
        let next = issuing.apply(step, state.as_ref())?;
        let outcome = self
            .store
            .write_secret(&view, &next.written_over(&view))
            .await?;
        match outcome {
            Written::Done => tracing::info!(
                ?step,
                generation = next.generation,
                cas = ca_ids(&next),
                "certificate Secret updated"
            ),
            Written::Conflict => tracing::debug!(
                ?step,
                "another replica wrote the Secret first; reading it again"
            ),
        }
        Ok(Pass::Again)
    }

    /// Serves the Secret's certificate, once its CA is in the caBundle.
    fn serve(&mut self, state: &CertState, secret_path: &str) -> Result<(), ManagedError> {
        let pem = &state.served.pem;
        if self
            .served
            .as_ref()
            .is_some_and(|(served, _)| *served == pem.cert_pem)
        {
            return Ok(());
        }
        self.serving
            .install(&pem.cert_pem, &pem.key_pem, secret_path)
            .map_err(|source| ManagedError::Serve {
                secret: secret_path.to_owned(),
                source: Box::new(source),
            })?;
        tracing::info!(
            ca = %state.ca.id,
            not_after = state.served.not_after,
            generation = state.generation,
            "serving the certificate of the Secret"
        );
        self.served = Some((pem.cert_pem.clone(), state.ca.id.clone()));
        Ok(())
    }
}

/// The ids of the CAs a state trusts, for logs.
fn ca_ids(state: &CertState) -> String {
    let mut ids = vec![format!("signing {}", state.ca.id)];
    ids.extend(state.next.iter().map(|next| format!("next {}", next.id)));
    ids.extend(
        state
            .previous
            .iter()
            .map(|previous| format!("previous {}", previous.id)),
    );
    ids.join(", ")
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests;
