//! The seam of the pod loop: one way of making the pod's addresses routable for a reason
//! ([`Routing`]). The agent backend asks the node agent ([`AgentRouting`]); the direct
//! backend (`ipmgr-helper`) runs the agent's own answer in-process.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use ipmgr_eni::{Backoff, PlanOptions, PodAddress, Reason, multus_candidates};
use tokio::time::Instant;

use crate::agent_client::{AgentApi, AgentClient, AskError, InvalidAgentUrl};
use crate::api::RoutableAnswer;
use crate::netlink::PodAddresses;

/// Why the pod loop asks, and what it saw.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// Why.
    pub reason: Reason,
    /// The pod's addresses as of the last look.
    pub addresses: &'a [PodAddress],
    /// The addresses the pod gained since the last ask (a [`Reason::Change`]'s).
    pub gained: &'a [IpAddr],
}

/// Makes the pod's addresses routable: the pod loop's one seam.
pub trait Routing {
    /// Why an ask failed, one line for the pod's termination log.
    type Error: std::error::Error + Send + Sync + 'static;

    /// How many of `addresses` are on interfaces this backend manages.
    fn multus_addresses(&self, addresses: &[PodAddress]) -> usize;

    /// Makes the pod's addresses routable for this ask: `Ok` once every managed address
    /// is on its ENI in EC2.
    fn make_routable(&mut self, ask: Ask<'_>) -> impl Future<Output = Result<(), Self::Error>>;

    /// How long an ask under way may go on after SIGTERM (what it changes matters to
    /// [`Routing::stop`]); the agent backend stops at once.
    fn finish_on_stop(&self) -> Duration {
        Duration::ZERO
    }

    /// After `init`'s ask succeeded, before the process exits.
    fn settle(&mut self) -> impl Future<Output = ()> {
        async {}
    }

    /// On SIGTERM, with the addresses the pod carries: the direct backend releases what it
    /// assigned; the agent backend leaves that to the agent, once the pod is gone.
    fn stop<N: PodAddresses>(
        &mut self,
        network: &N,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

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

/// Why the node agent did not make the pod routable.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent could not be asked, or refused.
    #[error(transparent)]
    Ask(#[from] AskError),
    /// The agent's URL does not parse.
    #[error(transparent)]
    Url(#[from] InvalidAgentUrl),
    /// The agent says some addresses are not routable.
    #[error("the node agent says {} address(es) are not routable: {}", .0.len(), .0.join("; "))]
    Unroutable(Vec<String>),
}

/// The agent backend: asks the node agent (`A`), again while it cannot be reached or
/// cannot answer yet, within the retry budget.
#[derive(Debug)]
pub struct AgentRouting<A = AgentClient> {
    agent: A,
    options: PlanOptions,
    retry: Duration,
}

impl AgentRouting {
    /// The agent at `url`, asked again for up to `retry` (each question waits that plus a
    /// margin for its answer).
    pub fn connect(
        url: &str,
        retry: Duration,
        options: PlanOptions,
    ) -> Result<Self, InvalidAgentUrl> {
        let agent = AgentClient::new(url, retry + ANSWER_MARGIN)?;
        Ok(AgentRouting::new(agent, retry, options))
    }
}

impl<A: AgentApi> AgentRouting<A> {
    /// Asks `agent`; `options` say which addresses the pod waits for.
    pub fn new(agent: A, retry: Duration, options: PlanOptions) -> Self {
        AgentRouting {
            agent,
            options,
            retry,
        }
    }

    /// Asks the agent, again while it cannot be reached or cannot answer yet.
    async fn ask(&self, reason: Reason) -> Result<RoutableAnswer, AskError> {
        let deadline = Instant::now() + self.retry;
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
                Err(error) => return Err(error),
            }
        }
    }
}

impl<A: AgentApi> Routing for AgentRouting<A> {
    type Error = AgentError;

    fn multus_addresses(&self, addresses: &[PodAddress]) -> usize {
        multus_candidates(addresses, &self.options)
    }

    async fn make_routable(&mut self, ask: Ask<'_>) -> Result<(), AgentError> {
        routable(self.ask(ask.reason).await?)
    }

    async fn stop<N: PodAddresses>(&mut self, _: &N) -> Result<(), AgentError> {
        tracing::info!(
            "stopping; the node agent releases the pod's addresses once its network namespace is gone"
        );
        Ok(())
    }
}

/// `Ok` when the agent says every managed address is routable; its reasons otherwise.
fn routable(answer: RoutableAnswer) -> Result<(), AgentError> {
    for left in &answer.left_alone {
        tracing::info!(address = left, "address left alone");
    }
    if !answer.failures.is_empty() {
        return Err(AgentError::Unroutable(answer.failures));
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
