//! What a pod may have the agent assign: its addresses less what it is not entitled to
//! ([`Claimant::entitled`]), and the check before an address moves from another node's
//! Multus ENI ([`HolderCheck`]).

use hyper::StatusCode;
use ipmgr_eni::{
    Assignment, Claimant, Claims, Grants, Move, MultusInterfaces, NodeFacts, Plan, PlanOptions,
    RejectReason, plan,
};

use super::cluster::PodRecord;
use super::holders::HolderPods;
use super::netns::{PodNamespace, PodScanner};
use super::refused::Refused;
use super::serve::PodService;
use crate::aws::Ec2Api;
use crate::config::ClaimsMode;
use crate::place::MoveCheck;

impl<E, S, H> PodService<E, S, H>
where
    E: Ec2Api + Clone + Send + Sync + 'static,
    S: PodScanner + 'static,
    H: HolderPods + 'static,
{
    /// The pod's addresses planned on `node`, less what it is not entitled to. When Multus'
    /// record does not cover the namespace's addresses yet (the watch lags the API server),
    /// a newer record is waited for, within [`super::identify::CATCH_UP`].
    pub(super) async fn claimed_plan(
        &self,
        pod: &PodRecord,
        namespace: &PodNamespace,
        node: &NodeFacts,
    ) -> Result<(Claims, Plan), Refused> {
        let claims = match self.claims {
            ClaimsMode::Any => Claims::default(),
            ClaimsMode::Recorded => self.current_claims(pod, namespace).await?,
        };
        let options = PlanOptions {
            interfaces: match self.claims {
                ClaimsMode::Recorded => MultusInterfaces::Named(claims.interfaces.clone()),
                ClaimsMode::Any => MultusInterfaces::Any,
            },
            ..self.placer.options.clone()
        };
        let planned = plan(node, &namespace.addresses, &options);
        let planned = match self.claims {
            ClaimsMode::Recorded => self.pods.judge(|neighbours, grants| {
                claimant(pod, &claims).restrict(planned, grants, neighbours)
            }),
            ClaimsMode::Any => planned,
        };
        Ok((claims, planned))
    }

    /// The pod's claims, once its record covers what its namespace shows (or
    /// [`super::identify::CATCH_UP`] has passed); 422 when its annotations do not parse.
    pub(super) async fn current_claims(
        &self,
        pod: &PodRecord,
        namespace: &PodNamespace,
    ) -> Result<Claims, Refused> {
        let covers = |claims: &Claims| {
            !claims.interfaces.is_empty()
                && namespace
                    .addresses
                    .iter()
                    .filter(|address| claims.interfaces.contains(&address.interface))
                    .all(|address| claims.mentions(address.address))
        };
        if let Ok(claims) = &pod.claims
            && covers(claims)
        {
            return Ok(claims.clone());
        }
        let newer = || {
            let record = self.pods.by_key(&pod.key)?;
            record.claims.ok().filter(covers)
        };
        if let Some(claims) = self.caught_up(newer).await {
            return Ok(claims);
        }
        self.pods
            .by_key(&pod.key)
            .map_or_else(|| pod.claims.clone(), |record| record.claims)
            .map_err(|error| {
                Refused::with(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unreadable_claims",
                    format!("pod {}: {error}", pod.key),
                )
            })
    }
}

/// `pod` as a claimant with `claims` (its current ones).
pub(super) fn claimant<'a>(pod: &'a PodRecord, claims: &'a Claims) -> Claimant<'a> {
    Claimant {
        pod: &pod.key,
        namespace: &pod.namespace,
        claims,
    }
}

/// The check of a pass's moves from other nodes' Multus ENIs: an address the pod's
/// namespace is not granted moves only when no live pod of another namespace on the
/// holder's node claims it (invariant I1). Moves between this node's own ENIs were judged
/// against this node's pods already.
pub(super) struct HolderCheck<'a, H> {
    pub(super) pod: &'a PodRecord,
    pub(super) claims: &'a Claims,
    pub(super) grants: Grants,
    pub(super) instance_id: &'a str,
    pub(super) holders: &'a H,
    /// Off with `--claims any`: then every pod is trusted.
    pub(super) enforced: bool,
}

impl<H: HolderPods> MoveCheck for HolderCheck<'_, H> {
    async fn refused(&self, moves: &[Move]) -> Vec<(Assignment, RejectReason)> {
        let mut refused = Vec::new();
        if !self.enforced {
            return refused;
        }
        let claimant = claimant(self.pod, self.claims);
        for taken in moves {
            let Some(instance) = taken.from_instance.as_deref() else {
                continue;
            };
            let address = taken.assignment.address;
            if instance == self.instance_id || self.grants.of(&self.pod.namespace).covers(address) {
                continue;
            }
            let verdict = match self.holders.pods_of_instance(instance).await {
                Ok(pods) => {
                    let neighbours: Vec<Claimant<'_>> =
                        pods.iter().filter_map(PodRecord::claimant).collect();
                    claimant
                        .entitled(address, &self.grants, &neighbours)
                        .map_err(RejectReason::Claim)
                }
                Err(error) => Err(RejectReason::Claim(ipmgr_eni::ClaimRefusal::Unverified {
                    holder: format!("ENI {} of instance {instance}", taken.from_eni),
                    error,
                })),
            };
            if let Err(reason) = verdict {
                refused.push((taken.assignment.clone(), reason));
            }
        }
        refused
    }
}
