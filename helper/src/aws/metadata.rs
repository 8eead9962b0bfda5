//! Node facts from instance metadata (IMDSv2, token cached by the SDK client).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use aws_config::imds::Client;
use aws_config::imds::client::error::ImdsError;
use aws_config::provider_config::ProviderConfig;
use aws_sdk_ec2::config::SharedHttpClient;
use futures::future::try_join_all;
use ipmgr_eni::{Backoff, Eni, EniMetadata, FactsError, MacAddr, NodeFacts};

use super::NodeMetadata;

/// Reading instance metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The IMDS did not answer or refused, within the retry budget.
    #[error(
        "instance metadata {path} unavailable (tried for {waited:?}): {source}; check that the node's metadata options allow IMDSv2 from pods (HttpPutResponseHopLimit 2: aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2), or set AWS_EC2_METADATA_SERVICE_ENDPOINT; in a service mesh that redirects from the pod's start (Istio CNI, Linkerd CNI) the helper must run as the proxy's UID, which the webhook sets when it sees the mesh on the pod (IPMGR_MESH_EXCLUSIONS=istio|linkerd for namespace-level injection); pods need no instance metadata with the agent backend (the webhook's IPMGR_HELPER_BACKEND=agent, the default)"
    )]
    Unavailable {
        /// The metadata path.
        path: String,
        /// How long the helper kept trying.
        waited: Duration,
        /// The SDK error.
        source: Box<ImdsError>,
    },
    /// A value every EC2 instance has was not there.
    #[error(
        "instance metadata {path} is missing (404); the endpoint does not look like EC2 instance metadata: check AWS_EC2_METADATA_SERVICE_ENDPOINT"
    )]
    Missing {
        /// The metadata path.
        path: String,
    },
    /// A value did not parse.
    #[error(transparent)]
    Invalid(#[from] FactsError),
    /// A MAC the IMDS gave did not parse.
    #[error("instance metadata {path} has {value:?}, which is not a MAC")]
    InvalidMac {
        /// The metadata path.
        path: &'static str,
        /// What it held.
        value: String,
    },
}

/// Instance metadata of the node the pod runs on.
#[derive(Debug, Clone)]
pub struct Metadata {
    client: Client,
    retry: Duration,
}

/// Spacing of metadata retries (full jitter within each ceiling).
const METADATA_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(200),
    factor: 2,
    max: Duration::from_secs(2),
};

const MACS: &str = "/latest/meta-data/network/interfaces/macs/";

impl Metadata {
    /// A client over `http_client` (one without a proxy: metadata is the node's own); honours
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`. A value that cannot be read is retried for
    /// `retry` (metadata that is briefly unreachable must not fail a pod).
    pub fn new(http_client: SharedHttpClient, retry: Duration) -> Self {
        let provider = ProviderConfig::default().with_http_client(http_client);
        let client = Client::builder()
            .configure(&provider)
            .max_attempts(1)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build();
        Metadata { client, retry }
    }

    /// `instance-type`, e.g. `m5.large`.
    pub async fn instance_type(&self) -> Result<String, MetadataError> {
        self.get_required("/latest/meta-data/instance-type".to_owned())
            .await
    }

    async fn get(&self, path: String) -> Result<Option<String>, MetadataError> {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            let source = match self.client.get(path.clone()).await {
                Ok(value) => return Ok(Some(value.as_ref().to_owned())),
                Err(ImdsError::ErrorResponse(response)) => {
                    match response.response().status().as_u16() {
                        404 => return Ok(None),
                        429 | 500.. => ImdsError::ErrorResponse(response),
                        _ => {
                            return Err(MetadataError::Unavailable {
                                path,
                                waited: started.elapsed(),
                                source: Box::new(ImdsError::ErrorResponse(response)),
                            });
                        }
                    }
                }
                Err(source) => source,
            };
            failures += 1;
            let left = self.retry.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(MetadataError::Unavailable {
                    path,
                    waited: started.elapsed(),
                    source: Box::new(source),
                });
            }
            if failures == 1 {
                tracing::warn!(path, error = %aws_sdk_ec2::error::DisplayErrorContext(&source), "instance metadata unreachable, retrying");
            }
            tokio::time::sleep(
                METADATA_BACKOFF
                    .jittered(failures, fastrand::f64())
                    .min(left),
            )
            .await;
        }
    }

    async fn get_required(&self, path: String) -> Result<String, MetadataError> {
        match self.get(path.clone()).await? {
            Some(value) => Ok(value),
            None => Err(MetadataError::Missing { path }),
        }
    }

    async fn eni(&self, mac: MacAddr) -> Result<Eni, MetadataError> {
        let field = |name: &str| self.get(format!("{MACS}{mac}/{name}"));
        let (interface_id, device_number, network_card, vpc_id, subnet4, subnet6) = futures::try_join!(
            field("interface-id"),
            field("device-number"),
            field("network-card"),
            field("vpc-id"),
            field("subnet-ipv4-cidr-block"),
            field("subnet-ipv6-cidr-blocks"),
        )?;
        let (ipv4s, ipv6s, ipv4_prefix, ipv6_prefix) = futures::try_join!(
            field("local-ipv4s"),
            field("ipv6s"),
            field("ipv4-prefix"),
            field("ipv6-prefix"),
        )?;
        Ok(Eni::from_metadata(
            mac,
            EniMetadata {
                interface_id: interface_id.as_deref().unwrap_or_default(),
                device_number: device_number.as_deref().unwrap_or_default(),
                network_card: network_card.as_deref(),
                vpc_id: vpc_id.as_deref().unwrap_or_default(),
                subnet_ipv4_cidr_block: subnet4.as_deref(),
                subnet_ipv6_cidr_blocks: subnet6.as_deref(),
                local_ipv4s: ipv4s.as_deref(),
                ipv6s: ipv6s.as_deref(),
                ipv4_prefix: ipv4_prefix.as_deref(),
                ipv6_prefix: ipv6_prefix.as_deref(),
            },
        )?)
    }
}

impl NodeMetadata for Metadata {
    /// The node's instance, region, primary MAC and every ENI, read concurrently.
    async fn node_facts(&self) -> Result<NodeFacts, MetadataError> {
        let (instance_id, region, primary_mac, macs) = futures::try_join!(
            self.get_required("/latest/meta-data/instance-id".to_owned()),
            self.get_required("/latest/meta-data/placement/region".to_owned()),
            self.get("/latest/meta-data/mac".to_owned()),
            self.get_required(MACS.to_owned()),
        )?;
        let primary_mac = primary_mac
            .map(|mac| {
                mac.trim()
                    .parse::<MacAddr>()
                    .map_err(|_| MetadataError::InvalidMac {
                        path: "/latest/meta-data/mac",
                        value: mac.clone(),
                    })
            })
            .transpose()?;
        let macs = macs
            .lines()
            .map(|line| line.trim().trim_end_matches('/'))
            .filter(|line| !line.is_empty())
            .map(|mac| {
                mac.parse::<MacAddr>()
                    .map_err(|_| MetadataError::InvalidMac {
                        path: MACS,
                        value: mac.to_owned(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let enis = try_join_all(macs.into_iter().map(|mac| self.eni(mac))).await?;
        Ok(NodeFacts {
            instance_id,
            region,
            primary_mac,
            enis,
        })
    }

    /// The addresses one ENI holds now (`local-ipv4s`, `ipv6s`).
    async fn addresses(
        &self,
        mac: MacAddr,
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), MetadataError> {
        let (ipv4s, ipv6s) = futures::try_join!(
            self.get(format!("{MACS}{mac}/local-ipv4s")),
            self.get(format!("{MACS}{mac}/ipv6s")),
        )?;
        Ok((parse_addresses(ipv4s), parse_addresses(ipv6s)))
    }
}

/// The addresses of a metadata list, one per line (a line that does not parse is skipped:
/// confirmation only looks for the addresses it expects).
fn parse_addresses<T: std::str::FromStr>(text: Option<String>) -> Vec<T> {
    text.unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}
