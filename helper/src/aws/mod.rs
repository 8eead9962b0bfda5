//! The AWS adapters, shared by the direct backend and the node agent and importing neither:
//! rustls/ring HTTPS clients for instance metadata ([`metadata`], never through a proxy) and
//! EC2 ([`ec2`], through the environment's proxies: [`proxy`]), the SDK configured from the
//! standard AWS environment. Their traits mirror the calls and nothing more (as the VPC
//! CNI's `ec2wrapper`): how calls are split, retried, bounded in time or polled is decided
//! above them ([`crate::release`], [`crate::direct::confirm`], [`crate::place`]).

pub mod ec2;
mod failure;
pub mod metadata;
pub mod proxy;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::Region;
use ipmgr_eni::{EniRecord, MacAddr, NodeFacts};

use crate::config::AwsSettings;
pub use ec2::{Ec2, Unassigned};
pub use failure::Ec2Failure;
pub use metadata::{Metadata, MetadataError};
pub use proxy::{Proxies, ProxyError};

/// Reads the node from instance metadata and builds the EC2 client (standard AWS
/// environment: AWS_REGION, AWS_ENDPOINT_URL(_EC2), the default credential chain; the region
/// from metadata otherwise) with the SDK's own retries off: ours count, bound and log them.
/// Every AWS client the SDK makes (EC2, and STS or SSO for credentials) goes through
/// `proxies` (the caller reads them first, [`Proxies::from_env`], so that a malformed one
/// fails at once rather than being waited out).
pub async fn connect(
    settings: &AwsSettings,
    proxies: &Proxies,
) -> Result<(Metadata, Ec2, NodeFacts), MetadataError> {
    let direct = proxy::direct();
    let metadata = Metadata::new(direct.clone(), settings.metadata_retry());
    let node = metadata.node_facts().await?;
    proxies.log();
    let region = RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(Region::new(node.region.clone()));
    let sdk_config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(proxies.client(&direct))
        .region(region)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    let ec2 = Ec2::new(aws_sdk_ec2::Client::new(&sdk_config), settings.ec2_retry());
    Ok((metadata, ec2, node))
}

/// The EC2 calls the programs make: the seam between them and EC2 ([`Ec2`] calls it through
/// the AWS SDK; tests put an in-memory EC2 behind it).
pub trait Ec2Api: Sync {
    /// AssignPrivateIpAddresses with AllowReassignment: one call for all `addresses`.
    fn assign_ipv4(
        &self,
        eni_id: &str,
        addresses: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send;

    /// AssignIpv6Addresses (the addresses must be free: see [`Ec2Api::holders`]).
    fn assign_ipv6(
        &self,
        eni_id: &str,
        addresses: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send;

    /// UnassignPrivateIpAddresses.
    fn unassign_ipv4(
        &self,
        eni_id: &str,
        addresses: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send;

    /// UnassignIpv6Addresses.
    fn unassign_ipv6(
        &self,
        eni_id: &str,
        addresses: &[Ipv6Addr],
    ) -> impl Future<Output = Result<(), Ec2Failure>> + Send;

    /// The ENIs attached to `instance_id`, with their tags (one DescribeNetworkInterfaces).
    fn node_enis(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Vec<EniRecord>, Ec2Failure>> + Send;

    /// The ENIs with these ids, as EC2 has them now (one DescribeNetworkInterfaces).
    fn enis(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<EniRecord>, Ec2Failure>> + Send;

    /// The ENIs of `vpc_id` that hold any of the addresses now: one DescribeNetworkInterfaces
    /// per family that has addresses, both at once.
    fn holders(
        &self,
        vpc_id: &str,
        ipv4: &[Ipv4Addr],
        ipv6: &[Ipv6Addr],
    ) -> impl Future<Output = Result<Vec<EniRecord>, Ec2Failure>> + Send;
}

/// What the programs read of instance metadata: the seam between them and the IMDS
/// ([`Metadata`]; tests put a lagging in-memory node behind it).
pub trait NodeMetadata: Clone + Send + Sync + 'static {
    /// The node's instance, region, primary MAC and every ENI.
    fn node_facts(&self) -> impl Future<Output = Result<NodeFacts, MetadataError>> + Send;

    /// The addresses one ENI holds now (`local-ipv4s`, `ipv6s`).
    fn addresses(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), MetadataError>> + Send;
}
