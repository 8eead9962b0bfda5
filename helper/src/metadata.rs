//! Node facts from instance metadata (IMDSv2, token cached by the SDK client).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aws_config::imds::Client;
use aws_config::imds::client::error::ImdsError;
use aws_config::provider_config::ProviderConfig;
use aws_sdk_ec2::config::SharedHttpClient;
use futures::future::try_join_all;
use ipmgr_eni::{Eni, EniMetadata, FactsError, MacAddr, NodeFacts};

/// Reading instance metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The IMDS did not answer or refused.
    #[error(
        "instance metadata {path} unavailable: {source}; check that the node allows IMDSv2 from pods (HttpPutResponseHopLimit 2) or set AWS_EC2_METADATA_SERVICE_ENDPOINT"
    )]
    Unavailable {
        /// The metadata path.
        path: String,
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
}

const MACS: &str = "/latest/meta-data/network/interfaces/macs/";

impl Metadata {
    /// A client sharing `http_client` with the EC2 client; honours
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn new(http_client: SharedHttpClient) -> Self {
        let provider = ProviderConfig::default().with_http_client(http_client);
        let client = Client::builder()
            .configure(&provider)
            .max_attempts(3)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .build();
        Metadata { client }
    }

    async fn get(&self, path: String) -> Result<Option<String>, MetadataError> {
        match self.client.get(path.clone()).await {
            Ok(value) => Ok(Some(value.as_ref().to_owned())),
            Err(ImdsError::ErrorResponse(response))
                if response.response().status().as_u16() == 404 =>
            {
                Ok(None)
            }
            Err(source) => Err(MetadataError::Unavailable {
                path,
                source: Box::new(source),
            }),
        }
    }

    async fn get_required(&self, path: String) -> Result<String, MetadataError> {
        match self.get(path.clone()).await? {
            Some(value) => Ok(value),
            None => Err(MetadataError::Missing { path }),
        }
    }

    /// The node's instance, region, primary MAC and every ENI, read concurrently.
    pub async fn node_facts(&self) -> Result<NodeFacts, MetadataError> {
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

    /// The addresses one ENI holds now (`local-ipv4s`, `ipv6s`), for confirmation.
    pub async fn addresses(
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
