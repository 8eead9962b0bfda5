//! `ipmgr-pod`: parse arguments, run the pod loop against the node agent.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use ipmgr_pod::process::run_to_exit;
use ipmgr_pod::run;
use ipmgr_pod::settings::{Cli, Command};

fn main() -> ExitCode {
    let Cli { command, log, pod } = Cli::parse();
    let (settings, once) = match command {
        Command::Ready(file) => return run::ready(&file.ready_file, "ipmgr-pod"),
        Command::Init(settings) => (settings, true),
        Command::Sidecar(settings) => (settings, false),
    };
    let url = match settings.agent_url() {
        Ok(url) => url,
        Err(missing) => {
            eprintln!("ipmgr-pod: {missing}");
            return ExitCode::FAILURE;
        }
    };
    let retry = Duration::from_secs(settings.retry_seconds);
    let asking = run::with_agent(&settings.pod, url, retry, once);
    run_to_exit("ipmgr-pod", &log, &pod, asking)
}
