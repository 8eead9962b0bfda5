//! The pod loop with the agent backend over in-memory adapters: what `init` and `sidecar`
//! make of the agent's answers, how they wait for an agent that cannot answer yet, and
//! how the sidecar spaces its asks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipmgr_eni::Reason;
use pretty_assertions::assert_eq;
use tokio::time::Instant;

use crate::agent_client::{AgentApi, AskError};
use crate::api::{RoutableAnswer, Routed};
use crate::fake::{FakeNetwork, pod_address};
use crate::routing::AgentRouting;
use crate::run;
use crate::settings::{Cli, Command, PodSettings};

/// An agent that gives the scripted answers in turn (then says routable), and records
/// what it was asked and when.
#[derive(Debug, Clone, Default)]
struct FakeAgent {
    answers: Arc<Mutex<VecDeque<Result<RoutableAnswer, AskError>>>>,
    asked: Arc<Mutex<Vec<(Reason, Instant)>>>,
}

impl FakeAgent {
    fn answering(answers: Vec<Result<RoutableAnswer, AskError>>) -> Self {
        FakeAgent {
            answers: Arc::new(Mutex::new(answers.into())),
            ..FakeAgent::default()
        }
    }

    fn asked(&self) -> Vec<Reason> {
        let asked = self.asked.lock().expect("asked");
        asked.iter().map(|(reason, _)| *reason).collect()
    }

    /// Seconds between one ask and the next.
    fn gaps(&self) -> Vec<u64> {
        let asked = self.asked.lock().expect("asked");
        asked
            .windows(2)
            .map(|pair| pair[1].1.duration_since(pair[0].1).as_secs())
            .collect()
    }
}

impl AgentApi for FakeAgent {
    async fn ask(&self, reason: Reason) -> Result<RoutableAnswer, AskError> {
        self.asked
            .lock()
            .expect("asked")
            .push((reason, Instant::now()));
        let next = self.answers.lock().expect("answers").pop_front();
        next.unwrap_or_else(|| Ok(routable()))
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

fn unroutable() -> Result<RoutableAnswer, AskError> {
    Ok(RoutableAnswer {
        failures: vec!["10.0.1.50 on net1: EC2 throttled".to_owned()],
        ..routable()
    })
}

/// Settings as `ipmgr-pod sidecar --agent-url http://10.0.0.10:9472 ARGS...` gives them.
fn settings(args: &[&str]) -> PodSettings {
    let fixed = [
        "ipmgr-pod",
        "sidecar",
        "--agent-url",
        "http://10.0.0.10:9472",
    ];
    let cli = <Cli as clap::Parser>::try_parse_from(fixed.iter().chain(args))
        .unwrap_or_else(|error| panic!("{error}"));
    match cli.command {
        Command::Sidecar(client) => client.pod,
        _ => unreachable!("sidecar"),
    }
}

fn pod() -> FakeNetwork {
    FakeNetwork::carrying(vec![
        pod_address("eth0", 9, "192.168.0.5"),
        pod_address("net1", 1, "10.0.1.50"),
    ])
}

fn routing(agent: &FakeAgent, settings: &PodSettings) -> AgentRouting<FakeAgent> {
    AgentRouting::new(
        agent.clone(),
        Duration::from_secs(60),
        settings.plan_options(),
    )
}

async fn init(agent: &FakeAgent, args: &[&str], mut network: FakeNetwork) -> Result<(), String> {
    let settings = settings(args);
    let mut routing = routing(agent, &settings);
    run::init(&settings, &mut network, &mut routing)
        .await
        .map_err(|error| error.to_string())
}

/// Runs the sidecar for `seconds` of (paused) time.
async fn sidecar_for(agent: &FakeAgent, args: &[&str], network: FakeNetwork, seconds: u64) {
    let settings = settings(args);
    let mut routing = routing(agent, &settings);
    let mut network = network;
    let run = run::sidecar(&settings, &mut network, &mut routing);
    let outcome = tokio::time::timeout(Duration::from_secs(seconds), run).await;
    assert!(
        outcome.is_err(),
        "the sidecar runs until stopped: {outcome:?}"
    );
}

#[tokio::test]
async fn init_succeeds_when_the_agent_says_routable() {
    let agent = FakeAgent::answering(vec![Ok(routable())]);
    init(&agent, &[], pod()).await.expect("routable");
    assert_eq!(agent.asked(), vec![Reason::Start]);
}

#[tokio::test]
async fn init_fails_with_the_agents_reasons() {
    let refused = RoutableAnswer {
        failures: vec!["10.0.1.60 on net1: not an address Multus recorded for the pod (k8s.v1.cni.cncf.io/network-status) nor one it declares in multus-ipmgr.io/floating-ips".to_owned()],
        ..routable()
    };
    let agent = FakeAgent::answering(vec![Ok(refused)]);
    let error = init(&agent, &[], pod()).await.expect_err("not routable");
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
    let error = init(&agent, &[], pod()).await.expect_err("forbidden");
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
    init(&agent, &[], pod()).await.expect("routable in the end");
    assert_eq!(agent.asked().len(), 3);
}

#[tokio::test]
async fn init_waits_for_a_multus_address_before_asking() {
    let agent = FakeAgent::default();
    let only_eth0 = FakeNetwork::carrying(vec![pod_address("eth0", 9, "192.168.0.5")]);
    let error = init(&agent, &["--wait-seconds", "0"], only_eth0)
        .await
        .expect_err("no address");
    assert!(
        error.contains("no address on the pod's interfaces besides eth0"),
        "{error}"
    );
    assert_eq!(agent.asked(), Vec::<Reason>::new());
}

#[tokio::test(start_paused = true)]
async fn failing_asks_back_off_doubling_up_to_the_cap_and_a_clean_one_resets() {
    let mut answers: Vec<_> = (0..5).map(|_| unroutable()).collect();
    answers.push(Ok(routable()));
    answers.push(unroutable());
    let agent = FakeAgent::answering(answers);
    sidecar_for(&agent, &["--error-backoff-max-seconds", "10"], pod(), 75).await;
    assert_eq!(agent.gaps(), vec![2, 4, 8, 10, 10, 30, 2]);
    let reasons = agent.asked();
    assert_eq!(reasons[0], Reason::Start);
    assert!(
        reasons[1..6].iter().all(|reason| *reason == Reason::Change),
        "an ask after a failure checks against EC2: {reasons:?}"
    );
    assert_eq!(reasons[6], Reason::Recheck, "the periodic check");
}

#[tokio::test(start_paused = true)]
async fn the_ready_file_comes_after_the_first_routable_answer_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ready");
    let path = file.to_str().expect("UTF-8");
    let agent = FakeAgent::answering(vec![unroutable(), unroutable(), Ok(routable())]);
    sidecar_for(&agent, &["--ready-file", path], pod(), 3).await;
    assert!(!file.exists(), "not after failing asks");
    sidecar_for(&agent, &["--ready-file", path], pod(), 1).await;
    assert!(file.exists());
}

#[tokio::test(start_paused = true)]
async fn an_address_the_pod_gains_is_asked_about_at_once() {
    let agent = FakeAgent::default();
    let network = pod();
    let pod = network.handle();
    let settings = settings(&[]);
    let mut routing = routing(&agent, &settings);
    let mut network = network;
    let sidecar = run::sidecar(&settings, &mut network, &mut routing);
    let gain = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        pod.gain(pod_address("net1", 1, "10.0.1.51"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::select! {
        outcome = sidecar => panic!("stopped: {outcome:?}"),
        () = gain => {}
    }
    assert_eq!(agent.asked(), vec![Reason::Start, Reason::Change]);
    assert_eq!(agent.gaps(), vec![5]);
}
