//! `ipmgr-pod`: parse arguments, set up logging, run the pod loop against the node agent.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use ipmgr_pod::run;
use ipmgr_pod::settings::{Cli, Command};
use tracing::Instrument as _;

fn main() -> ExitCode {
    let Cli { command, log, pod } = Cli::parse();
    let (settings, once) = match command {
        Command::Ready(file) => return run::ready(&file.ready_file, "ipmgr-pod"),
        Command::Init(settings) => (settings, true),
        Command::Sidecar(settings) => (settings, false),
    };
    if let Err(error) = log.init() {
        eprintln!("ipmgr-pod: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ipmgr-pod: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let span = pod.span();
    let retry = Duration::from_secs(settings.retry_seconds);
    let asking = run::with_agent(&settings.pod, &settings.agent_url, retry, once);
    match runtime.block_on(asking.instrument(span.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            span.in_scope(|| tracing::error!(%error, "ipmgr-pod failed"));
            eprintln!("ipmgr-pod: {error}");
            ExitCode::FAILURE
        }
    }
}
