//! The edge both binaries share (`ipmgr-pod`, `ipmgr-helper`): logging, a current-thread
//! runtime, the work in the pod's span, and its error as one line on standard error (the
//! termination log) and in the logs.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use ipmgr_contract::LogArgs;
use tracing::Instrument as _;

use crate::settings::PodIdentity;

/// Runs `work` to its end as `program`, logging as `log` says, every line in `pod`'s span:
/// the exit code, with the error said once on standard error and once in the logs.
pub fn run_to_exit<E: Display>(
    program: &str,
    log: &LogArgs,
    pod: &PodIdentity,
    work: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    if let Err(error) = log.init() {
        eprintln!("{program}: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{program}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let span = pod.span();
    match runtime.block_on(work.instrument(span.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            span.in_scope(|| tracing::error!(%error, "{program} failed"));
            eprintln!("{program}: {error}");
            ExitCode::FAILURE
        }
    }
}
