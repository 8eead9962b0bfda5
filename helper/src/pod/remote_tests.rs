//! The pod helper with the agent backend over in-memory adapters: what `init` makes of the
//! agent's answers, and how it waits for an agent that cannot answer yet.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use pretty_assertions::assert_eq;

use super::agent_client::{AgentApi, AskError};
use super::remote::RemoteHelper;
use crate::fakes::{FakeNetwork, pod_address, settings};
use crate::pod_api::{Reason, RoutableAnswer, Routed};

/// An agent that gives the scripted answers in turn, and records what it was asked.
#[derive(Debug, Clone, Default)]
struct FakeAgent {
    answers: Arc<Mutex<VecDeque<Result<RoutableAnswer, AskError>>>>,
    asked: Arc<Mutex<Vec<Reason>>>,
}

impl FakeAgent {
    fn answering(answers: Vec<Result<RoutableAnswer, AskError>>) -> Self {
        FakeAgent {
            answers: Arc::new(Mutex::new(answers.into())),
            ..FakeAgent::default()
        }
    }

    fn asked(&self) -> Vec<Reason> {
        self.asked.lock().expect("asked").clone()
    }
}

impl AgentApi for FakeAgent {
    async fn ask(&self, reason: Reason) -> Result<RoutableAnswer, AskError> {
        self.asked.lock().expect("asked").push(reason);
        self.answers
            .lock()
            .expect("answers")
            .pop_front()
            .expect("an answer for every question")
    }
}

fn routable() -> RoutableAnswer {
    RoutableAnswer {
        pod: "default/a".to_owned(),
        routable: vec![Routed {
            address: "10.0.1.50".parse().expect("ip"),
            interface: "net1".to_owned(),
            eni: "eni-multus".to_owned(),
        }],
        ..RoutableAnswer::default()
    }
}

fn helper(agent: &FakeAgent) -> RemoteHelper<FakeNetwork, FakeAgent> {
    let network = FakeNetwork::carrying(vec![
        pod_address("eth0", 9, "192.168.0.5"),
        pod_address("net1", 1, "10.0.1.50"),
    ]);
    RemoteHelper::new(
        settings(&["--ec2-retry-seconds", "60"]),
        network,
        agent.clone(),
    )
}

#[tokio::test]
async fn init_succeeds_when_the_agent_says_routable() {
    let agent = FakeAgent::answering(vec![Ok(routable())]);
    helper(&agent).init().await.expect("routable");
    assert_eq!(agent.asked(), vec![Reason::Start]);
}

#[tokio::test]
async fn init_fails_with_the_agents_reasons() {
    let refused = RoutableAnswer {
        failures: vec!["10.0.1.60 on net1: not an address Multus recorded for the pod (k8s.v1.cni.cncf.io/network-status) nor one it declares in multus-ipmgr.io/floating-ips".to_owned()],
        ..routable()
    };
    let agent = FakeAgent::answering(vec![Ok(refused)]);
    let error = helper(&agent)
        .init()
        .await
        .expect_err("not routable")
        .to_string();
    assert!(
        error.contains("10.0.1.60") && error.contains("multus-ipmgr.io/floating-ips"),
        "{error}"
    );
}

#[tokio::test]
async fn init_fails_at_once_on_a_refusal() {
    let forbidden = AskError::Refused {
        status: 403,
        error: "192.168.0.5 is the pod IP of no live pod on node node1".to_owned(),
    };
    let agent = FakeAgent::answering(vec![Err(forbidden)]);
    let error = helper(&agent)
        .init()
        .await
        .expect_err("forbidden")
        .to_string();
    assert!(
        error.contains("HTTP 403") && error.contains("no live pod"),
        "{error}"
    );
    assert_eq!(agent.asked().len(), 1, "a refusal is final");
}

#[tokio::test(start_paused = true)]
async fn init_asks_again_while_the_agent_cannot_answer_yet() {
    let unreachable = AskError::Unreachable {
        url: "http://10.0.0.10:9472".to_owned(),
        reason: "connection refused".to_owned(),
    };
    let not_yet = AskError::Unavailable("has not listed the node's pods yet".to_owned());
    let agent = FakeAgent::answering(vec![Err(unreachable), Err(not_yet), Ok(routable())]);
    helper(&agent).init().await.expect("routable in the end");
    assert_eq!(agent.asked().len(), 3);
}

#[tokio::test]
async fn init_waits_for_a_multus_address_before_asking() {
    let agent = FakeAgent::default();
    let mut helper = RemoteHelper::new(
        settings(&["--wait-seconds", "0"]),
        FakeNetwork::carrying(vec![pod_address("eth0", 9, "192.168.0.5")]),
        agent.clone(),
    );
    let error = helper.init().await.expect_err("no address").to_string();
    assert!(
        error.contains("no address on the pod's interfaces besides eth0"),
        "{error}"
    );
    assert_eq!(agent.asked(), Vec::<Reason>::new());
}
