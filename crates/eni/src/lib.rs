//! Pure ENI assignment logic of multus-ipmgr.
//!
//! Everything here is a function of plain data: the node's ENIs as instance metadata
//! describes them ([`NodeFacts`]), the pod's addresses as netlink lists them
//! ([`PodAddress`]), what EC2 says about ENIs ([`EniRecord`]), and the options. [`plan`]
//! decides which address goes to which ENI; [`vet`] keeps the plan to Multus ENIs and off
//! other workloads' addresses; [`unconfirmed`] tells which assignments
//! metadata does not show yet; [`still_assigned`] what to release on exit; [`Absences`] and
//! [`verify_release`] what the node agent releases; [`Claims`] and [`Grants`] which addresses a pod
//! may have the agent assign ([`Claimant::entitled`]); [`RetryPolicy`] when a failed call is
//! tried again; [`advertised`] and [`capacity_patch`] the Multus address capacity the agent
//! advertises on its Node. The helper binary supplies the data and carries out the result against
//! IMDS, EC2 and netlink.

mod capacity;
mod change;
mod claims;
mod facts;
mod grants;
mod mac;
mod ownership;
mod plan;
mod reason;
mod release;
mod retry;

pub use capacity::{
    EniCapacity, RESOURCE_PREFIX, Unadvertised, advertised, capacity_patch, resource_name,
    secondary_ipv4_capacity, unaccounted,
};
pub use change::{Assignment, EniChange};
pub use claims::{
    ClaimRefusal, Claimant, Claims, ClaimsError, FLOATING_IPS_ANNOTATION, NETWORK_STATUS_ANNOTATION,
};
pub use facts::{Eni, EniMetadata, FactsError, NodeFacts, PodAddress};
pub use grants::{FLOATING_IP_CIDRS_ANNOTATION, Grant, GrantError, Grants, Overlap};
pub use mac::{InvalidMac, MacAddr};
pub use ownership::{
    EniRecord, Holder, Move, NO_MANAGE_TAG, NotMultus, OwnershipPolicy, VPC_CNI_DESCRIPTION_PREFIX,
    VPC_CNI_INSTANCE_TAG, Vetted, primary_attachment, still_assigned, vet,
};
pub use plan::{
    MatchedBy, MultusInterfaces, Placement, Plan, PlanOptions, RejectReason, Rejection,
    VPC_CNI_INTERFACES, multus_candidates, plan, unconfirmed,
};
pub use reason::Reason;
pub use release::{
    Absences, AfterFailure, Keep, ReleaseOptions, ScanVerdict, secondary_addresses, verify_release,
};
pub use retry::{Backoff, ErrorClass, RetryPolicy};
