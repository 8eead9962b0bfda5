//! `ipmgr-helper`: parse arguments, set up logging, run the mode.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use ipmgr_helper::agent;
use ipmgr_helper::config::{AgentSettings, Cli, Command, Settings};
use ipmgr_helper::pod::{PodError, PodHelper, RemoteHelper};
use tracing::Instrument as _;

/// The modes that talk to instance metadata, netlink and EC2.
#[derive(Debug)]
enum Work {
    Init(Settings),
    Sidecar(Settings),
    Plan(Settings),
    Agent(AgentSettings),
}

fn main() -> ExitCode {
    let Cli { command, log, pod } = Cli::parse();
    let work = match command {
        Command::Ready { ready_file } => return ready(&ready_file),
        Command::Init(settings) => Work::Init(settings),
        Command::Sidecar(settings) => Work::Sidecar(settings),
        Command::Plan(settings) => Work::Plan(settings),
        Command::Agent(settings) => Work::Agent(settings),
    };
    if let Err(error) = log.init() {
        eprintln!("ipmgr-helper: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ipmgr-helper: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let span = pod.span();
    match runtime.block_on(run(work, pod.node_name.clone()).instrument(span.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            span.in_scope(|| tracing::error!(%error, "ipmgr-helper failed"));
            eprintln!("ipmgr-helper: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The native-sidecar startup probe.
fn ready(ready_file: &Path) -> ExitCode {
    if ready_file.exists() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "ipmgr-helper: not ready: {} does not exist yet",
            ready_file.display()
        );
        ExitCode::FAILURE
    }
}

/// Runs the mode; its error as the one line for the termination log.
async fn run(work: Work, node_name: Option<String>) -> Result<(), String> {
    match work {
        Work::Agent(settings) => agent::run(settings, node_name)
            .await
            .map_err(|error| error.to_string()),
        Work::Init(settings) => pod(settings, PodMode::Init).await,
        Work::Sidecar(settings) => pod(settings, PodMode::Sidecar).await,
        Work::Plan(settings) => pod(settings, PodMode::Plan).await,
    }
}

/// The pod helper with the agent backend: no AWS, its node's agent does the work.
async fn agent_backend(settings: Settings, url: &str, mode: PodMode) -> Result<(), String> {
    let run = async {
        let mut helper = RemoteHelper::connect(settings, url)?;
        match mode {
            PodMode::Init => helper.init().await,
            PodMode::Sidecar => helper.sidecar().await,
            PodMode::Plan => Err(PodError::PlanNeedsDirect),
        }
    };
    run.await.map_err(|error: PodError| error.to_string())
}

/// What the pod helper does.
#[derive(Debug, Clone, Copy)]
enum PodMode {
    Init,
    Sidecar,
    Plan,
}

async fn pod(settings: Settings, mode: PodMode) -> Result<(), String> {
    if let Some(url) = settings.agent_url.clone() {
        return agent_backend(settings, &url, mode).await;
    }
    let run = async {
        let (mut helper, node) = PodHelper::connect(settings).await?;
        match mode {
            PodMode::Init => helper.init(&node).await,
            PodMode::Sidecar => helper.sidecar(node).await,
            PodMode::Plan => {
                for line in helper.plan_report(&node).await? {
                    println!("{line}");
                }
                Ok(())
            }
        }
    };
    run.await.map_err(|error: PodError| error.to_string())
}
