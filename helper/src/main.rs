//! `ipmgr-helper`: parse arguments, set up logging, run the mode.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ipmgr_helper::agent;
use ipmgr_helper::config::{Cli, Command, Settings};
use ipmgr_helper::direct::DirectRouting;
use ipmgr_pod::netlink::PodNetwork;
use ipmgr_pod::process::run_to_exit;
use ipmgr_pod::run;

fn main() -> ExitCode {
    let Cli { command, log, pod } = Cli::parse();
    if let Command::Ready(file) = &command {
        return run::ready(&file.ready_file, "ipmgr-helper");
    }
    let node_name = pod.node_name.clone();
    run_to_exit("ipmgr-helper", &log, &pod, work(command, node_name))
}

/// Runs the mode; its error as the one line for the termination log.
async fn work(command: Command, node_name: Option<String>) -> Result<(), String> {
    let text = |error: &dyn std::fmt::Display| error.to_string();
    match command {
        Command::Agent(settings) => agent::run(settings, node_name)
            .await
            .map_err(|error| text(&error)),
        Command::Init(settings) => pod_loop(settings, true).await,
        Command::Sidecar(settings) => pod_loop(settings, false).await,
        Command::Plan(settings) => plan(settings).await.map_err(|error| text(&error)),
        Command::Ready(_) => Ok(()),
    }
}

/// `init` (`once`) or `sidecar`: the pod loop, against the node agent when
/// `IPMGR_AGENT_URL` is set (as `ipmgr-pod` does), else the direct backend.
async fn pod_loop(settings: Settings, once: bool) -> Result<(), String> {
    if let Some(url) = &settings.agent_url {
        let retry = Duration::from_secs(settings.aws.ec2_retry_seconds);
        return run::with_agent(&settings.pod, url, retry, once)
            .await
            .map_err(|error| error.to_string());
    }
    let pod = settings.pod.clone();
    let mut routing = DirectRouting::connect(settings)
        .await
        .map_err(|error| error.to_string())?;
    let mut network = PodNetwork::connect().map_err(|error| error.to_string())?;
    let outcome = if once {
        run::init(&pod, &mut network, &mut routing).await
    } else {
        run::sidecar(&pod, &mut network, &mut routing).await
    };
    outcome.map_err(|error| error.to_string())
}

/// `plan`: what `init` would do, printed; changes nothing.
async fn plan(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    if settings.agent_url.is_some() {
        return Err(ipmgr_helper::direct::DirectError::PlanNeedsDirect.into());
    }
    let pod = settings.pod.clone();
    let routing = DirectRouting::connect(settings).await?;
    let mut network = PodNetwork::connect()?;
    let addresses = run::wait_for_addresses(&pod, &mut network, &routing).await?;
    for line in routing.plan_report(&addresses).await? {
        println!("{line}");
    }
    Ok(())
}
