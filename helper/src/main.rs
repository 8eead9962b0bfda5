//! `ipmgr-helper`: the container the webhook injects. The ENI assignment itself lands with
//! the helper issue; until then `init` and `sidecar` refuse to run rather than pretend.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ipmgr-helper",
    version,
    about = "Makes a Multus pod's secondary IPs routable on the node's ENIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Assign the pod's addresses once and exit.
    Init,
    /// Assign the pod's addresses, then keep them assigned.
    Sidecar,
    /// Exit 0 when the ready file exists (the native-sidecar startup probe).
    Ready {
        /// File written after the first successful pass.
        #[arg(
            long,
            env = "IPMGR_READY_FILE",
            default_value = "/run/ipmgr-helper/ready"
        )]
        ready_file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Init | Command::Sidecar => {
            eprintln!("ipmgr-helper: address assignment is not implemented in this build yet");
            ExitCode::from(2)
        }
        Command::Ready { ready_file } => {
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
    }
}
