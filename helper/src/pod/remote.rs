//! The pod helper with the agent backend: it holds no AWS credentials and reads no instance
//! metadata; it waits for the pod's Multus addresses (netlink), then asks its node's agent
//! to make them routable ([`AgentApi`]) and says what the agent answered. The sidecar asks
//! again on every address change and periodically, and gives nothing back on exit: the
//! agent does once the pod's namespace is gone, so a draining app keeps its addresses.

use std::time::Duration;

use ipmgr_eni::{Backoff, PodAddress, multus_candidates};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::agent_client::{AgentApi, AgentClient};
use super::error::PodError;
use super::{wait_for_multus_addresses, write_ready_file};
use crate::config::Settings;
use crate::netlink::{PodAddresses, PodNetwork};
use crate::pod_api::{Reason, RoutableAnswer};

/// Spacing of the questions while the agent cannot be reached or cannot answer yet.
const ASK_AGAIN: Backoff = Backoff {
    initial: Duration::from_millis(250),
    factor: 2,
    max: Duration::from_secs(5),
};

/// How much longer than the agent's EC2 retry budget one question may wait for its answer
/// (the webhook's startup probe counts it too).
const ANSWER_MARGIN: Duration =
    Duration::from_secs(ipmgr_contract::budget::AGENT_ANSWER_MARGIN_SECONDS);

/// The pod helper over the pod's addresses (`N`) and its node's agent (`A`).
#[derive(Debug)]
pub struct RemoteHelper<N = PodNetwork, A = AgentClient> {
    settings: Settings,
    network: N,
    agent: A,
}

impl RemoteHelper {
    /// Opens netlink and addresses the agent of `url`.
    pub fn connect(settings: Settings, url: &str) -> Result<Self, PodError> {
        let network = PodNetwork::connect()?;
        let timeout = Duration::from_secs(settings.aws.ec2_retry_seconds) + ANSWER_MARGIN;
        let agent = AgentClient::new(url, timeout)?;
        Ok(RemoteHelper::new(settings, network, agent))
    }
}

impl<N: PodAddresses, A: AgentApi> RemoteHelper<N, A> {
    /// A helper over these adapters.
    pub fn new(settings: Settings, network: N, agent: A) -> Self {
        RemoteHelper {
            settings,
            network,
            agent,
        }
    }

    /// `init`: wait for the addresses, then ask the agent until it answers; an error unless
    /// it says every managed address is on its ENI in EC2.
    pub async fn init(&mut self) -> Result<(), PodError> {
        self.wait_for_addresses().await?;
        let answer = self.ask(Reason::Start).await?;
        routable(answer)
    }

    /// `sidecar`: ask at start, on every change of the pod's addresses and every
    /// `--recheck-seconds`, until SIGTERM or SIGINT; the ready file after the first answer
    /// that says routable. A failing answer is asked again after 2 s, then twice as long
    /// each time, up to `--error-backoff-max-seconds`.
    pub async fn sidecar(&mut self) -> Result<(), PodError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(PodError::Signal)?;
        let mut seen = self.wait_for_addresses().await?;
        let (mut reason, mut failing, mut ready) = (Some(Reason::Start), 0, false);
        let mut next = Instant::now() + self.settings.recheck();
        loop {
            if let Some(why) = reason.take() {
                let outcome = tokio::select! {
                    outcome = self.ask(why) => outcome.and_then(routable),
                    _ = terminate.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match outcome {
                    Ok(()) => {
                        failing = 0;
                        if !ready && let Some(path) = &self.settings.ready_file {
                            write_ready_file(path)?;
                        }
                        ready = true;
                        next = Instant::now() + self.settings.recheck();
                    }
                    Err(error) => {
                        failing += 1;
                        let delay = self.settings.error_backoff().ceiling(failing);
                        tracing::error!(%error, failing, retry_in_s = delay.as_secs(), "the pod's addresses are not routable; asking the agent again later");
                        next = Instant::now() + delay;
                    }
                }
            }
            tokio::select! {
                change = self.network.changed() => {
                    let Some(added) = change else {
                        break;
                    };
                    let current = self.network.addresses().await?;
                    if !added.is_empty() || current.iter().any(|address| !seen.contains(address)) {
                        reason = Some(Reason::Change);
                    }
                    seen = current;
                }
                () = tokio::time::sleep_until(next) => {
                    reason = Some(if failing > 0 { Reason::Change } else { Reason::Recheck });
                }
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tracing::info!(
            "stopping; the node agent gives the pod's addresses back once its network namespace is gone"
        );
        Ok(())
    }

    /// Waits (bounded) until the pod's Multus interfaces carry enough addresses.
    async fn wait_for_addresses(&mut self) -> Result<Vec<PodAddress>, PodError> {
        let options = self.settings.plan_options();
        let (addresses, ()) =
            wait_for_multus_addresses(&mut self.network, &self.settings, |addresses| {
                (multus_candidates(addresses, &options), ())
            })
            .await?;
        Ok(addresses)
    }

    /// Asks the agent, again while it cannot be reached or cannot answer yet, within
    /// `--ec2-retry-seconds`.
    async fn ask(&self, reason: Reason) -> Result<RoutableAnswer, PodError> {
        let deadline = Instant::now() + Duration::from_secs(self.settings.aws.ec2_retry_seconds);
        let mut attempts = 0;
        loop {
            match self.agent.ask(reason).await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_transient() && Instant::now() < deadline => {
                    attempts += 1;
                    let delay = ASK_AGAIN.jittered(attempts, fastrand::f64());
                    tracing::warn!(%error, attempts, retry_in_ms = delay.as_millis() as u64, "asking the node agent again");
                    tokio::time::sleep(
                        delay.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                Err(error) => return Err(PodError::Agent(error)),
            }
        }
    }
}

/// `Ok` when the agent says every managed address is routable; its reasons otherwise.
fn routable(answer: RoutableAnswer) -> Result<(), PodError> {
    for left in &answer.left_alone {
        tracing::info!(address = left, "address left alone");
    }
    if !answer.failures.is_empty() {
        return Err(PodError::AgentUnroutable(answer.failures));
    }
    for routed in &answer.routable {
        tracing::info!(address = %routed.address, interface = routed.interface, eni = routed.eni, "routable");
    }
    tracing::info!(
        pod = answer.pod,
        addresses = answer.routable.len(),
        "the node agent says the pod's addresses are routable"
    );
    Ok(())
}
