//! The sidecar: a first pass, then follow the pod's address changes (netlink events, no
//! polling) and re-check the whole node periodically; on SIGTERM, release.

use std::collections::BTreeSet;
use std::time::Duration;

use ipmgr_eni::{Assignment, NodeFacts, PodAddress, plan};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::failure::RunError;
use crate::pass::{Helper, NodeEnis};

/// How soon a pass that failed is tried again.
const RETRY_SOON: Duration = Duration::from_secs(2);

impl Helper {
    /// `sidecar`: `init`, then follow netlink events and re-check metadata periodically;
    /// on SIGTERM or SIGINT release what it assigned (if enabled) and return.
    pub async fn sidecar(&mut self, mut node: NodeFacts) -> Result<(), RunError> {
        // Changes from here on are judged against what the first pass worked on, so an
        // address that appeared during that pass is still seen as new.
        let mut enis = NodeEnis::default();
        let (first, mut seen) = self.init(&node, &mut enis).await?;
        let mut assigned: BTreeSet<Assignment> = first.assigned.into_iter().collect();
        if let Some(path) = &self.settings.ready_file {
            std::fs::write(path, b"ready\n").map_err(|source| RunError::ReadyFile {
                path: path.display().to_string(),
                source,
            })?;
        }
        tracing::info!("first pass done; watching address changes");
        let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
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
            // periodic check re-reads everything (and so notices ENI and tag changes).
            let refreshed = if full_check {
                enis.forget();
                self.metadata
                    .node_facts()
                    .await
                    .map(|fresh| node = fresh)
                    .map_err(RunError::from)
            } else {
                self.refresh_targets(&mut node, &seen).await
            };
            if let Err(error) = refreshed {
                tracing::error!(%error, "cannot read instance metadata; retrying soon");
                next_check = Instant::now() + RETRY_SOON;
                continue;
            }
            match self.pass(&node, &seen, &mut enis).await {
                Ok(report) => {
                    if !report.failures.is_empty() {
                        next_check = Instant::now() + RETRY_SOON;
                    }
                    assigned.extend(report.assigned);
                }
                Err(error) => {
                    tracing::error!(%error, "pass failed; retrying soon");
                    next_check = Instant::now() + RETRY_SOON;
                }
            }
        }
        if self.settings.release_on_exit {
            self.release(&assigned).await?;
        }
        Ok(())
    }

    /// Re-reads the address lists of the ENIs that `addresses` go to.
    async fn refresh_targets(
        &self,
        node: &mut NodeFacts,
        addresses: &[PodAddress],
    ) -> Result<(), RunError> {
        let targets = plan(node, addresses, &self.options).placements;
        let enis = targets
            .iter()
            .map(|placement| placement.eni_id.as_str())
            .collect();
        self.refresh_addresses(node, &enis).await
    }
}
