//! The AWS adapters, shared by the pod helper and the node agent and importing neither:
//! one rustls/ring HTTPS client for instance metadata ([`metadata`]) and EC2 ([`ec2`]), the
//! SDK configured from the standard AWS environment.

pub mod ec2;
pub mod metadata;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::Region;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use ipmgr_eni::NodeFacts;

use crate::config::AwsSettings;
pub use ec2::{Ec2, Ec2Failure, Unassigned};
pub use metadata::{Metadata, MetadataError};

/// Reads the node from instance metadata and builds the EC2 client (standard AWS
/// environment: AWS_REGION, AWS_ENDPOINT_URL(_EC2), the default credential chain; the region
/// from metadata otherwise) with the SDK's own retries off: ours count, bound and log them.
pub async fn connect(settings: &AwsSettings) -> Result<(Metadata, Ec2, NodeFacts), MetadataError> {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let metadata = Metadata::new(http_client.clone(), settings.metadata_retry());
    let node = metadata.node_facts().await?;
    let region = RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(Region::new(node.region.clone()));
    let sdk_config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
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
