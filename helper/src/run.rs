//! The helper's modes: wiring the adapters around [`ipmgr_eni::plan`].

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::Region;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use ipmgr_eni::{
    Assignment, Backoff, EniChange, NodeFacts, Plan, PlanOptions, PodAddress, plan, release,
};
use tokio::time::Instant;

use crate::config::Settings;
use crate::ec2::{Ec2, Ec2Failure};
use crate::metadata::{Metadata, MetadataError};
use crate::netlink::{NetlinkError, PodNetwork};

/// Why a mode ended unsuccessfully; each variant is one line for the pod's termination log.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Instance metadata failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Netlink failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// No address appeared in time.
    #[error(
        "no address on the pod's interfaces besides {primary} after {waited:?} (found {found}, waiting for {expected}); check the Multus network attachment, or raise --wait-seconds"
    )]
    NoAddresses {
        /// The excluded primary interface.
        primary: String,
        /// How long it waited.
        waited: Duration,
        /// How many it found.
        found: usize,
        /// How many it waited for.
        expected: usize,
    },
    /// Some addresses could not be made routable.
    #[error("{} address(es) not routable: {}", .0.len(), .0.join("; "))]
    Unroutable(Vec<String>),
    /// The ready file could not be written.
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
}

/// The adapters and settings of one helper process.
#[derive(Debug)]
pub struct Helper {
    settings: Settings,
    options: PlanOptions,
    metadata: Metadata,
    ec2: Ec2,
    network: PodNetwork,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Addresses this pass assigned (and metadata confirmed).
    pub assigned: Vec<Assignment>,
    /// One line per address left unroutable.
    pub failures: Vec<String>,
}

impl Helper {
    /// Opens netlink, reads the node's region from metadata, and builds the EC2 client
    /// (standard AWS environment: AWS_REGION, AWS_ENDPOINT_URL(_EC2), the default credential
    /// chain) on one rustls/ring HTTPS client shared with the metadata client.
    pub async fn connect(settings: Settings) -> Result<(Self, NodeFacts), RunError> {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let metadata = Metadata::new(http_client.clone());
        let network = PodNetwork::connect(&settings.primary_interface)?;
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
        let backoff = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            retries: settings.ec2_retries,
        };
        let options = PlanOptions {
            allow_primary_eni: settings.allow_primary_eni,
            allowed: settings.allow_cidrs.clone(),
        };
        let helper = Helper {
            ec2: Ec2::new(aws_sdk_ec2::Client::new(&sdk_config), backoff),
            settings,
            options,
            metadata,
            network,
        };
        Ok((helper, node))
    }

    /// Waits (bounded) until the pod's secondary interfaces carry enough addresses.
    pub async fn wait_for_addresses(&mut self) -> Result<Vec<PodAddress>, RunError> {
        let expected = self.settings.expect_addresses.max(1);
        let started = Instant::now();
        let deadline = started + self.settings.wait();
        loop {
            let addresses = self.network.addresses().await?;
            if addresses.len() >= expected {
                return Ok(addresses);
            }
            let recheck = (Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = self.network.changed() => {}
                () = tokio::time::sleep_until(recheck) => {}
            }
            if Instant::now() >= deadline {
                let found = self.network.addresses().await?.len();
                if found >= expected {
                    continue;
                }
                return Err(RunError::NoAddresses {
                    primary: self.settings.primary_interface.clone(),
                    waited: self.settings.wait(),
                    found,
                    expected,
                });
            }
        }
    }

    /// The plan for `addresses` on `node`, logged.
    pub fn plan(&self, node: &NodeFacts, addresses: &[PodAddress]) -> Plan {
        let planned = plan(node, addresses, &self.options);
        for rejection in &planned.rejections {
            if rejection.is_failure() {
                tracing::error!(%rejection, "address not routable");
            } else {
                tracing::info!(%rejection, "address skipped");
            }
        }
        planned
    }

    /// Plans against `node`, carries out the changes and confirms them.
    pub async fn pass(
        &self,
        node: &NodeFacts,
        addresses: &[PodAddress],
    ) -> Result<PassReport, RunError> {
        let planned = self.plan(node, addresses);
        let mut report = PassReport {
            failures: planned.failures().map(ToString::to_string).collect(),
            ..PassReport::default()
        };
        let mut changed = Vec::new();
        for change in &planned.changes {
            match self.apply(node, change).await {
                Ok(()) => changed.push(change),
                Err(failure) => {
                    tracing::error!(%failure, "assignment failed");
                    report.failures.push(failure.to_string());
                }
            }
        }
        let expected: Vec<Assignment> = changed
            .iter()
            .flat_map(|change| {
                let ipv4 = change.ipv4.iter().map(|ip| std::net::IpAddr::V4(*ip));
                let ipv6 = change.ipv6.iter().map(|ip| std::net::IpAddr::V6(*ip));
                ipv4.chain(ipv6).map(|address| Assignment {
                    eni_id: change.eni_id.clone(),
                    address,
                })
            })
            .collect();
        if !expected.is_empty() {
            let unconfirmed = self.confirm(node, &expected).await?;
            report.failures.extend(unconfirmed.iter().map(|assignment| {
                format!(
                    "{} on {}: assigned, but instance metadata did not show it within {:?}",
                    assignment.address,
                    assignment.eni_id,
                    self.settings.confirm()
                )
            }));
            report.assigned = expected
                .into_iter()
                .filter(|assignment| !unconfirmed.contains(assignment))
                .collect();
        }
        tracing::info!(
            addresses = addresses.len(),
            placed = planned.placements.len(),
            assigned = report.assigned.len(),
            failures = report.failures.len(),
            "pass done"
        );
        Ok(report)
    }

    /// One ENI's change: one IPv4 call; for IPv6, unassign from the current holders first.
    async fn apply(&self, node: &NodeFacts, change: &EniChange) -> Result<(), Ec2Failure> {
        if !change.ipv4.is_empty() {
            self.ec2.assign_ipv4(&change.eni_id, &change.ipv4).await?;
            tracing::info!(eni = change.eni_id, addresses = ?change.ipv4, "IPv4 assigned");
        }
        if !change.ipv6.is_empty() {
            let vpc_id = node
                .eni(&change.eni_id)
                .map(|eni| eni.vpc_id.as_str())
                .unwrap_or_default();
            let mut missing = change.ipv6.clone();
            for holder in self.ec2.ipv6_holders(vpc_id, &change.ipv6).await? {
                if holder.eni_id == change.eni_id {
                    missing.retain(|address| !holder.addresses.contains(address));
                    continue;
                }
                self.ec2
                    .unassign_ipv6(&holder.eni_id, &holder.addresses)
                    .await?;
                tracing::info!(from = holder.eni_id, addresses = ?holder.addresses, "IPv6 unassigned from its previous holder");
            }
            if !missing.is_empty() {
                self.ec2.assign_ipv6(&change.eni_id, &missing).await?;
                tracing::info!(eni = change.eni_id, addresses = ?missing, "IPv6 assigned");
            }
        }
        Ok(())
    }

    /// Polls the changed ENIs' metadata until it shows `expected`, within the confirm bound;
    /// returns what it never showed.
    async fn confirm(
        &self,
        node: &NodeFacts,
        expected: &[Assignment],
    ) -> Result<Vec<Assignment>, RunError> {
        let deadline = Instant::now() + self.settings.confirm();
        let mut delay = Duration::from_millis(20);
        let mut current = node.clone();
        loop {
            let enis: BTreeSet<&str> = expected
                .iter()
                .map(|assignment| assignment.eni_id.as_str())
                .collect();
            for eni in current
                .enis
                .iter_mut()
                .filter(|eni| enis.contains(eni.id.as_str()))
            {
                (eni.ipv4, eni.ipv6) = self.metadata.addresses(eni.mac).await?;
            }
            let missing: Vec<Assignment> = expected
                .iter()
                .filter(|assignment| {
                    !current
                        .eni(&assignment.eni_id)
                        .is_some_and(|eni| eni.holds(assignment.address))
                })
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() + delay > deadline {
                return Ok(missing);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// `init`: wait, assign, confirm; an error when any address stays unroutable. Returns
    /// what it assigned and the addresses it worked on.
    pub async fn init(
        &mut self,
        node: &NodeFacts,
    ) -> Result<(PassReport, Vec<PodAddress>), RunError> {
        let addresses = self.wait_for_addresses().await?;
        let report = self.pass(node, &addresses).await?;
        if report.failures.is_empty() {
            Ok((report, addresses))
        } else {
            Err(RunError::Unroutable(report.failures))
        }
    }

    /// `sidecar`: `init`, then follow netlink events and re-check metadata periodically;
    /// on SIGTERM or SIGINT release what it assigned (if enabled) and return.
    pub async fn sidecar(&mut self, mut node: NodeFacts) -> Result<(), RunError> {
        // Changes from here on are judged against what the first pass worked on, so an
        // address that appeared during that pass is still seen as new.
        let (first, mut seen) = self.init(&node).await?;
        let mut assigned: BTreeSet<Assignment> = first.assigned.into_iter().collect();
        if let Some(path) = &self.settings.ready_file {
            std::fs::write(path, b"ready\n").map_err(|source| RunError::ReadyFile {
                path: path.display().to_string(),
                source,
            })?;
        }
        tracing::info!("first pass done; watching address changes");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(NetlinkError::Socket)?;
        let mut next_check = Instant::now() + self.settings.recheck();
        loop {
            let full_check = tokio::select! {
                change = self.network.changed() => {
                    let Some(address_added) = change else {
                        break;
                    };
                    let current = self.network.addresses().await?;
                    let new = address_added || current.iter().any(|address| !seen.contains(address));
                    seen = current;
                    if !new {
                        continue;
                    }
                    false
                }
                () = tokio::time::sleep_until(next_check) => true,
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            next_check = Instant::now() + self.settings.recheck();
            // A new address needs only the address lists of the ENIs it goes to; the
            // periodic check re-reads everything (and so notices ENI changes).
            let refreshed = if full_check {
                self.metadata.node_facts().await.map(|fresh| node = fresh)
            } else {
                self.refresh_addresses(&mut node, &seen).await
            };
            if let Err(error) = refreshed {
                tracing::error!(%error, "cannot read instance metadata; retrying soon");
                next_check = Instant::now() + Duration::from_secs(2);
                continue;
            }
            match self.pass(&node, &seen).await {
                Ok(report) => {
                    if !report.failures.is_empty() {
                        next_check = Instant::now() + Duration::from_secs(2);
                    }
                    assigned.extend(report.assigned);
                }
                Err(error) => {
                    tracing::error!(%error, "pass failed; retrying soon");
                    next_check = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        if self.settings.release_on_exit {
            self.release(&assigned).await?;
        }
        Ok(())
    }

    /// Re-reads the address lists of the ENIs that `addresses` go to.
    async fn refresh_addresses(
        &self,
        node: &mut NodeFacts,
        addresses: &[PodAddress],
    ) -> Result<(), MetadataError> {
        let targets: BTreeSet<String> = plan(node, addresses, &self.options)
            .placements
            .into_iter()
            .map(|placement| placement.eni_id)
            .collect();
        for eni in node.enis.iter_mut().filter(|eni| targets.contains(&eni.id)) {
            (eni.ipv4, eni.ipv6) = self.metadata.addresses(eni.mac).await?;
        }
        Ok(())
    }

    /// Unassigns what this helper assigned that is still on the pod and on its ENI.
    async fn release(&self, assigned: &BTreeSet<Assignment>) -> Result<(), RunError> {
        let current: BTreeSet<_> = self
            .network
            .addresses()
            .await?
            .into_iter()
            .map(|address| address.address)
            .collect();
        let ours: Vec<Assignment> = assigned
            .iter()
            .filter(|assignment| current.contains(&assignment.address))
            .cloned()
            .collect();
        if ours.is_empty() {
            return Ok(());
        }
        let node = self.metadata.node_facts().await?;
        let mut failures = Vec::new();
        for item in release(&ours, &node) {
            if !item.ipv4.is_empty()
                && let Err(failure) = self.ec2.unassign_ipv4(&item.eni_id, &item.ipv4).await
            {
                failures.push(failure.to_string());
            }
            if !item.ipv6.is_empty()
                && let Err(failure) = self.ec2.unassign_ipv6(&item.eni_id, &item.ipv6).await
            {
                failures.push(failure.to_string());
            }
            tracing::info!(eni = item.eni_id, ipv4 = ?item.ipv4, ipv6 = ?item.ipv6, "released");
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(RunError::Unroutable(failures))
        }
    }
}
