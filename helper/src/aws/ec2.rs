//! EC2 calls, retried with full-jitter exponential backoff within a time budget on the
//! errors the AWS SDK classes as throttling or transient. The account's token buckets are
//! shared by every node's VPC CNI and every helper: a reschedule of hundreds of pods must
//! wait its turn patiently rather than give up. The SDK's own retries are off so that every
//! attempt is ours to count, bound and log.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, InstanceType, NetworkInterface};
use ipmgr_eni::{EniRecord, RetryPolicy};

use super::Ec2Api;
use super::failure::{Ec2Failure, classify};

/// The EC2 client of the helper.
#[derive(Debug, Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    retry: RetryPolicy,
}

impl Ec2 {
    /// Wraps an SDK client (built with retries disabled).
    pub fn new(client: aws_sdk_ec2::Client, retry: RetryPolicy) -> Self {
        Ec2 { client, retry }
    }

    async fn call<T, E, F, Fut>(
        &self,
        action: &'static str,
        target: &str,
        addresses: &[String],
        send: F,
    ) -> Result<T, Ec2Failure>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        F: Fn() -> Fut,
        Fut: std::future::Future<
                Output = Result<T, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>,
            >,
    {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            let error = match send().await {
                Ok(output) => {
                    if failures > 0 {
                        tracing::info!(
                            action,
                            target,
                            attempts = failures + 1,
                            "EC2 call went through"
                        );
                    }
                    return Ok(output);
                }
                Err(error) => error,
            };
            failures += 1;
            let (code, message, class) = classify(&error);
            let delay = self
                .retry
                .next_delay(class, failures, started.elapsed(), fastrand::f64());
            let Some(delay) = delay else {
                return Err(Ec2Failure {
                    action,
                    target: target.to_owned(),
                    addresses: addresses.to_vec(),
                    code,
                    message,
                    class,
                    attempts: failures,
                });
            };
            tracing::warn!(
                action,
                target,
                code,
                class = class.label(),
                attempt = failures,
                delay_ms = delay.as_millis() as u64,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "EC2 call failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// DescribeNetworkInterfaces with `filters`, as records; `scope` names what was asked
    /// about in logs and errors (an instance, ENIs, a VPC).
    async fn describe(
        &self,
        scope: &str,
        addresses: &[String],
        filters: Vec<Filter>,
    ) -> Result<Vec<EniRecord>, Ec2Failure> {
        let output = self
            .call("DescribeNetworkInterfaces", scope, addresses, || {
                self.client
                    .describe_network_interfaces()
                    .set_filters(Some(filters.clone()))
                    .send()
            })
            .await?;
        Ok(output.network_interfaces().iter().map(record).collect())
    }

    /// The instance type's `NetworkInfo.Ipv4AddressesPerInterface`: how many IPv4 addresses
    /// (the primary included) each of its network interfaces can hold (one
    /// DescribeInstanceTypes); `None` when EC2 does not list the type or the value.
    pub async fn ipv4_addresses_per_interface(
        &self,
        instance_type: &str,
    ) -> Result<Option<u32>, Ec2Failure> {
        let output = self
            .call("DescribeInstanceTypes", instance_type, &[], || {
                self.client
                    .describe_instance_types()
                    .instance_types(InstanceType::from(instance_type))
                    .send()
            })
            .await?;
        Ok(output
            .instance_types()
            .iter()
            .filter_map(|info| info.network_info()?.ipv4_addresses_per_interface())
            .find_map(|limit| u32::try_from(limit).ok()))
    }

    /// The same client, making every call once: the node agent decides again, from a
    /// fresh scan and a fresh read of EC2, before it tries a failed unassign again.
    pub fn single_attempt(&self) -> Ec2 {
        self.retrying(RetryPolicy {
            budget: Duration::ZERO,
            ..self.retry
        })
    }

    /// The same client, retrying throttled calls from a smaller ceiling: for one client
    /// whose calls stand for many pods (the node agent's batches), which need not spread
    /// out like a crowd of helpers.
    pub fn throttle_min(&self, throttle_min: Duration) -> Ec2 {
        self.retrying(RetryPolicy {
            throttle_min,
            ..self.retry
        })
    }

    /// How this client retries a failed call.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    fn retrying(&self, retry: RetryPolicy) -> Ec2 {
        Ec2 {
            client: self.client.clone(),
            retry,
        }
    }
}

impl Ec2Api for Ec2 {
    /// AssignPrivateIpAddresses with AllowReassignment: one call for all `addresses`.
    async fn assign_ipv4(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Failure> {
        let texts = strings(addresses);
        self.call("AssignPrivateIpAddresses", eni_id, &texts, || {
            self.client
                .assign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_private_ip_addresses(Some(texts.clone()))
                .allow_reassignment(true)
                .send()
        })
        .await
        .map(drop)
    }

    /// UnassignPrivateIpAddresses.
    async fn unassign_ipv4(&self, eni_id: &str, addresses: &[Ipv4Addr]) -> Result<(), Ec2Failure> {
        let texts = strings(addresses);
        self.call("UnassignPrivateIpAddresses", eni_id, &texts, || {
            self.client
                .unassign_private_ip_addresses()
                .network_interface_id(eni_id)
                .set_private_ip_addresses(Some(texts.clone()))
                .send()
        })
        .await
        .map(drop)
    }

    /// AssignIpv6Addresses (the addresses must be free: see [`Self::holders`]).
    async fn assign_ipv6(&self, eni_id: &str, addresses: &[Ipv6Addr]) -> Result<(), Ec2Failure> {
        let texts = strings(addresses);
        self.call("AssignIpv6Addresses", eni_id, &texts, || {
            self.client
                .assign_ipv6_addresses()
                .network_interface_id(eni_id)
                .set_ipv6_addresses(Some(texts.clone()))
                .send()
        })
        .await
        .map(drop)
    }

    /// UnassignIpv6Addresses.
    async fn unassign_ipv6(&self, eni_id: &str, addresses: &[Ipv6Addr]) -> Result<(), Ec2Failure> {
        let texts = strings(addresses);
        self.call("UnassignIpv6Addresses", eni_id, &texts, || {
            self.client
                .unassign_ipv6_addresses()
                .network_interface_id(eni_id)
                .set_ipv6_addresses(Some(texts.clone()))
                .send()
        })
        .await
        .map(drop)
    }

    /// The ENIs attached to `instance_id`, with their tags (one DescribeNetworkInterfaces).
    async fn node_enis(&self, instance_id: &str) -> Result<Vec<EniRecord>, Ec2Failure> {
        let attached = Filter::builder()
            .name("attachment.instance-id")
            .values(instance_id)
            .build();
        self.describe(instance_id, &[], vec![attached]).await
    }

    /// The ENIs with these ids, as EC2 has them now (one DescribeNetworkInterfaces).
    async fn enis(&self, ids: &[String]) -> Result<Vec<EniRecord>, Ec2Failure> {
        let by_id = Filter::builder()
            .name("network-interface-id")
            .set_values(Some(ids.to_vec()))
            .build();
        self.describe(&ids.join(","), &[], vec![by_id]).await
    }

    /// The ENIs of `vpc_id` that hold any of the addresses now: one DescribeNetworkInterfaces
    /// per family that has addresses, both at once.
    async fn holders(
        &self,
        vpc_id: &str,
        ipv4: &[Ipv4Addr],
        ipv6: &[Ipv6Addr],
    ) -> Result<Vec<EniRecord>, Ec2Failure> {
        let lookup = |filter: &'static str, addresses: Vec<String>| async move {
            if addresses.is_empty() {
                return Ok(Vec::new());
            }
            let by_address = Filter::builder()
                .name(filter)
                .set_values(Some(addresses.clone()))
                .build();
            let in_vpc = Filter::builder().name("vpc-id").values(vpc_id).build();
            self.describe(vpc_id, &addresses, vec![by_address, in_vpc])
                .await
        };
        let (mut found, holders6) = futures::try_join!(
            lookup("addresses.private-ip-address", strings(ipv4)),
            lookup("ipv6-addresses.ipv6-address", strings(ipv6)),
        )?;
        found.extend(holders6);
        Ok(found)
    }
}

/// What became of the addresses of one unassign call.
#[derive(Debug)]
pub enum Unassigned {
    /// EC2 took them back.
    Released,
    /// EC2 says they are no longer on the ENI: they stay with their new holder.
    NotOnEni,
    /// Not called: the view that decided the release was too old by then.
    Stale,
    /// The call failed.
    Failed(Ec2Failure),
}

impl From<Result<(), Ec2Failure>> for Unassigned {
    fn from(result: Result<(), Ec2Failure>) -> Self {
        match result {
            Ok(()) => Unassigned::Released,
            Err(failure) if not_on_the_eni(&failure) => {
                tracing::info!(addresses = ?failure.addresses, eni = failure.target, "no longer on the ENI: left with its new holder");
                Unassigned::NotOnEni
            }
            Err(failure) => Unassigned::Failed(failure),
        }
    }
}

/// Whether EC2 refused because the address is no longer on the ENI (it moved to its new
/// holder, which keeps it): EC2 answers InvalidParameterValue, "... not assigned to
/// interface ...".
fn not_on_the_eni(failure: &Ec2Failure) -> bool {
    failure.code == "InvalidParameterValue" && failure.message.contains("not assigned")
}

/// What the helper needs of one DescribeNetworkInterfaces entry.
fn record(interface: &NetworkInterface) -> EniRecord {
    let attachment = interface.attachment();
    EniRecord {
        id: interface
            .network_interface_id()
            .unwrap_or_default()
            .to_owned(),
        description: interface.description().unwrap_or_default().to_owned(),
        tags: interface
            .tag_set()
            .iter()
            .filter_map(|tag| Some((tag.key()?.to_owned(), tag.value()?.to_owned())))
            .collect(),
        instance_id: attachment
            .and_then(|attachment| attachment.instance_id())
            .map(str::to_owned),
        attachment: attachment.map(|attachment| {
            let index = |value: Option<i32>| u32::try_from(value.unwrap_or(0)).unwrap_or(0);
            (
                index(attachment.network_card_index()),
                index(attachment.device_index()),
            )
        }),
        primary_ipv4: interface
            .private_ip_address()
            .and_then(|address| address.parse().ok()),
        ipv4: interface
            .private_ip_addresses()
            .iter()
            .filter_map(|address| address.private_ip_address()?.parse().ok())
            .collect(),
        ipv6: interface
            .ipv6_addresses()
            .iter()
            .filter_map(|address| address.ipv6_address()?.parse().ok())
            .collect(),
    }
}

fn strings<T: ToString>(addresses: &[T]) -> Vec<String> {
    addresses.iter().map(ToString::to_string).collect()
}
