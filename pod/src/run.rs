//! The one pod-side loop, over the pod's addresses ([`PodAddresses`]) and a backend
//! ([`Routing`]): `init` asks once; `sidecar` asks at start, on every change of the pod's
//! addresses and every `--recheck-seconds`, until SIGTERM or SIGINT, and writes the ready
//! file after the first ask that says routable. An ask that fails is made again after 2 s,
//! then twice as long each time, up to `--error-backoff-max-seconds`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ipmgr_eni::{PodAddress, Reason};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::error::RunError;
use crate::netlink::{PodAddresses, PodNetwork};
use crate::routing::{AgentError, AgentRouting, Ask, Routing};
use crate::settings::PodSettings;

/// `init`: wait for the addresses, ask once; an error unless the pod is routable.
pub async fn init<N, R>(
    settings: &PodSettings,
    network: &mut N,
    routing: &mut R,
) -> Result<(), RunError<R::Error>>
where
    N: PodAddresses,
    R: Routing,
{
    let addresses = wait_for_addresses(settings, network, routing).await?;
    let ask = Ask {
        reason: Reason::Start,
        addresses: &addresses,
        gained: &[],
    };
    routing
        .make_routable(ask)
        .await
        .map_err(RunError::Routing)?;
    routing.settle().await;
    Ok(())
}

/// `sidecar`: ask at start, on every change of the pod's addresses and periodically, until
/// SIGTERM or SIGINT; then the backend's [`Routing::stop`].
pub async fn sidecar<N, R>(
    settings: &PodSettings,
    network: &mut N,
    routing: &mut R,
) -> Result<(), RunError<R::Error>>
where
    N: PodAddresses,
    R: Routing,
{
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut seen = wait_for_addresses(settings, network, routing).await?;
    let mut ask = Some((Reason::Start, Vec::new()));
    let (mut failing, mut ready) = (0, false);
    let mut next = Instant::now() + settings.recheck();
    loop {
        if let Some((reason, gained)) = ask.take() {
            let finish = routing.finish_on_stop();
            let (outcome, stopping) = {
                let pass = routing.make_routable(Ask {
                    reason,
                    addresses: &seen,
                    gained: &gained,
                });
                tokio::pin!(pass);
                // Stopping mid-ask: the ask may finish within the backend's window, so
                // that its stop knows what the ask changed.
                let finish = async |pass| tokio::time::timeout(finish, pass).await.ok();
                tokio::select! {
                    outcome = &mut pass => (Some(outcome), false),
                    _ = terminate.recv() => (finish(&mut pass).await, true),
                    _ = tokio::signal::ctrl_c() => (finish(&mut pass).await, true),
                }
            };
            match outcome {
                Some(Ok(())) => {
                    failing = 0;
                    if !ready && let Some(path) = &settings.ready_file {
                        write_ready_file(path)?;
                    }
                    ready = true;
                    next = Instant::now() + settings.recheck();
                }
                Some(Err(error)) => {
                    failing += 1;
                    let delay = settings.error_backoff().ceiling(failing);
                    tracing::error!(%error, failing, retry_in_s = delay.as_secs(), "the pod's addresses are not routable; trying again later");
                    next = Instant::now() + delay;
                }
                None => {}
            }
            if stopping {
                break;
            }
        }
        tokio::select! {
            change = network.changed() => {
                let Some(gained) = change else {
                    break;
                };
                let current = network.addresses().await?;
                if !gained.is_empty() || current.iter().any(|address| !seen.contains(address)) {
                    ask = Some((Reason::Change, gained));
                }
                seen = current;
            }
            () = tokio::time::sleep_until(next) => {
                let reason = if failing > 0 { Reason::Change } else { Reason::Recheck };
                ask = Some((reason, Vec::new()));
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    routing.stop(network).await.map_err(RunError::Routing)
}

/// The agent backend: `init` (`once`) or `sidecar` against the node agent at `url`, asked
/// again for up to `retry` while it cannot answer.
pub async fn with_agent(
    settings: &PodSettings,
    url: &str,
    retry: Duration,
    once: bool,
) -> Result<(), RunError<AgentError>> {
    let mut routing = AgentRouting::connect(url, retry, settings.plan_options())
        .map_err(|error| RunError::Routing(error.into()))?;
    let mut network = PodNetwork::connect()?;
    if once {
        init(settings, &mut network, &mut routing).await
    } else {
        sidecar(settings, &mut network, &mut routing).await
    }
}

/// The native-sidecar startup probe: success once the ready file exists.
pub fn ready(ready_file: &Path, program: &str) -> ExitCode {
    if ready_file.exists() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{program}: not ready: {} does not exist yet",
            ready_file.display()
        );
        ExitCode::FAILURE
    }
}

/// Waits (bounded by `--wait-seconds`) until the backend counts at least
/// `--expect-addresses` (at least one) Multus addresses among the pod's (the VPC CNI's
/// interfaces and link-local addresses do not count).
pub async fn wait_for_addresses<N: PodAddresses, R: Routing>(
    settings: &PodSettings,
    network: &mut N,
    routing: &R,
) -> Result<Vec<PodAddress>, RunError<R::Error>> {
    let expected = settings.expect_addresses.max(1);
    let deadline = Instant::now() + settings.wait();
    loop {
        let addresses = network.addresses().await?;
        let found = routing.multus_addresses(&addresses);
        if found >= expected {
            return Ok(addresses);
        }
        if Instant::now() >= deadline {
            return Err(RunError::NoAddresses {
                primary: settings.primary_interface.clone(),
                waited: settings.wait(),
                found,
                expected,
            });
        }
        let recheck = (Instant::now() + Duration::from_secs(1)).min(deadline);
        tokio::select! {
            _ = network.changed() => {}
            () = tokio::time::sleep_until(recheck) => {}
        }
    }
}

/// Creates the ready file (native-sidecar readiness) after the first successful ask.
fn write_ready_file<E: std::error::Error>(path: &Path) -> Result<(), RunError<E>> {
    std::fs::write(path, b"ready\n").map_err(|source| RunError::ReadyFile {
        path: path.display().to_string(),
        source,
    })?;
    tracing::info!(file = %path.display(), "first pass done; ready");
    Ok(())
}
