//! `ipmgr-helper`: parse arguments, set up logging, run the mode.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use ipmgr_helper::config::{AgentSettings, Cli, Command, Settings};
use ipmgr_helper::{Helper, RunError, agent};
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
    match runtime.block_on(run(work).instrument(span.clone())) {
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

async fn run(work: Work) -> Result<(), RunError> {
    match work {
        Work::Init(settings) => {
            let (mut helper, node) = Helper::connect(settings).await?;
            helper.init(&node).await
        }
        Work::Sidecar(settings) => {
            let (mut helper, node) = Helper::connect(settings).await?;
            helper.sidecar(node).await
        }
        Work::Plan(settings) => {
            let (mut helper, node) = Helper::connect(settings).await?;
            for line in helper.plan_report(&node).await? {
                println!("{line}");
            }
            Ok(())
        }
        Work::Agent(settings) => agent::run(settings).await,
    }
}
