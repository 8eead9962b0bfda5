//! `ipmgr-helper`: parse arguments, wire the adapters, run the mode.

use std::process::ExitCode;

use clap::Parser;
use ipmgr_helper::config::{Cli, Command, Settings};
use ipmgr_helper::run::{Helper, RunError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (work, settings) = match &cli.command {
        Command::Ready { ready_file } => {
            return if ready_file.exists() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "ipmgr-helper: not ready: {} does not exist yet",
                    ready_file.display()
                );
                ExitCode::FAILURE
            };
        }
        Command::Init(settings) => (Work::Init, settings.clone()),
        Command::Sidecar(settings) => (Work::Sidecar, settings.clone()),
        Command::Plan(settings) => (Work::Plan, settings.clone()),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(run(work, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "ipmgr-helper failed");
            eprintln!("ipmgr-helper: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The modes that talk to instance metadata, netlink and EC2.
#[derive(Clone, Copy, Debug)]
enum Work {
    Init,
    Sidecar,
    Plan,
}

async fn run(work: Work, settings: Settings) -> Result<(), RunError> {
    let (mut helper, node) = Helper::connect(settings).await?;
    match work {
        Work::Init => helper.init(&node).await.map(drop),
        Work::Sidecar => helper.sidecar(node).await,
        Work::Plan => {
            let addresses = helper.wait_for_addresses().await?;
            let planned = helper.plan(&node, &addresses);
            for placement in &planned.placements {
                let held = node
                    .eni(&placement.eni_id)
                    .is_some_and(|eni| eni.holds(placement.address.address));
                println!(
                    "{} {} ({}) on {} [matched by {:?}]",
                    if held { "keep  " } else { "assign" },
                    placement.address.address,
                    placement.address.interface,
                    placement.eni_id,
                    placement.matched_by
                );
            }
            for rejection in &planned.rejections {
                println!("skip   {rejection}");
            }
            Ok(())
        }
    }
}
