//! What every Airlock binary does the same way: logging flags, the async runtime,
//! and turning the outcome into an exit code and an error message.

use std::fmt::Display;
use std::future::Future;

use crate::exit_codes::{self, ExitCode};
use crate::telemetry::{self, LogFormat};

/// Logging flags shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs logging, runs `work` on a multi-threaded runtime, and returns the exit
/// code: the one `work` returned, or its error's, with the error printed on stderr
/// as plain text (it is the answer to the user's command, not a log event, and must
/// read the same under a terminal, a pipe or systemd).
pub fn main<E, F>(log: &LogArgs, work: F) -> std::process::ExitCode
where
    E: Display + ExitCode,
    F: Future<Output = Result<i32, E>>,
{
    telemetry::init(&log.log_level, log.log_format);
    let code = match tokio::runtime::Runtime::new() {
        Err(e) => {
            report(&format!("cannot start the async runtime: {e}"));
            exit_codes::FAILURE
        }
        Ok(runtime) => match runtime.block_on(work) {
            Ok(code) => code,
            Err(e) => {
                report(&e.to_string());
                e.exit_code()
            }
        },
    };
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[allow(
    clippy::print_stderr,
    reason = "the error report is the command's output"
)]
fn report(message: &str) {
    eprintln!("error: {message}");
}
