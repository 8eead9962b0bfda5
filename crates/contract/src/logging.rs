use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};
use tracing_subscriber::filter::{ParseError, Targets};

use crate::env;

/// The log flags of both binaries: `--log` and `--log-format`.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log filter: a level, and `target=level` pairs, comma-separated (e.g. info, debug or
    /// info,ipmgr_helper=debug).
    #[arg(long, global = true, env = env::LOG, default_value = "info")]
    pub log: String,

    /// Log format: JSON lines (the default) or text.
    #[arg(long, global = true, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line, event fields flattened, with the current span's fields.
    Json,
    /// Human-readable lines.
    Text,
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid log filter {filter:?} (--log / {variable}): {reason}; use e.g. info, debug or ipmgr_helper=debug"
)]
pub struct InvalidLogFilter {
    /// The filter given.
    pub filter: String,
    /// The variable it may have come from.
    pub variable: &'static str,
    /// Why it does not parse.
    pub reason: String,
}

impl LogArgs {
    /// Installs the global subscriber writing to standard error.
    pub fn init(&self) -> Result<(), InvalidLogFilter> {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let filter: Targets = self
            .log
            .parse()
            .map_err(|error: ParseError| InvalidLogFilter {
                filter: self.log.clone(),
                variable: env::LOG,
                reason: error.to_string(),
            })?;
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        match self.log_format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish()
                .with(filter)
                .init(),
            LogFormat::Text => builder.finish().with(filter).init(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_filter_is_an_error_naming_it_and_the_variable() {
        let args = LogArgs {
            log: "info,=[".to_owned(),
            log_format: LogFormat::Json,
        };
        let error = args.init().expect_err("invalid filter");
        let text = error.to_string();
        assert!(text.contains("\"info,=[\""), "{text}");
        assert!(text.contains("IPMGR_LOG"), "{text}");
    }
}
