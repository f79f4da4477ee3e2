//! Logging and progress display shared by the binaries.
//!
//! Logs go to stderr through `tracing`, as structured key/value events: journald
//! and log shippers read them, and `--log-format json` gives one JSON object per
//! line. A progress bar is drawn only when stderr is a terminal; under systemd or in
//! a pipe the periodic log events carry the same information.

use std::io::IsTerminal;

use airlock_registry::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How much is logged: `--log-level`. A closed set, so that a typo is an error at
/// the command line rather than a filter that silently matches nothing; finer
/// filters (per module) go in `RUST_LOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and what an operator should look at.
    Warn,
    /// What the command does, step by step.
    #[default]
    Info,
    /// Requests and decisions, for a bug report.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides `level` when set.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.directive()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A byte-progress bar that exists only on a terminal: how the binaries show the
/// [`Progress`] libraries report.
#[derive(Debug, Clone)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar for `total` bytes labelled `what`, or a silent stand-in off a terminal.
    pub fn bytes(what: &str, total: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Bar { bar: Some(bar) }
    }
}

impl Progress for Bar {
    fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn sub(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_position(b.position().saturating_sub(n));
        }
    }

    /// Removes the bar.
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
