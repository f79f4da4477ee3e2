//! What every Airlock binary does the same way: logging flags, the async runtime,
//! turning the outcome into an exit code and an error message, completions and man
//! pages, oc-mirror's command lines, logging and the terminal progress bar
//! ([`telemetry`]), systemd notifications ([`service`]) and the metrics endpoint
//! ([`metrics`]).
//!
//! Invariant: only the agent crates (the binaries and their command layers)
//! depend on this crate; no library does. Everything a terminal, a service
//! manager or a scraper sees is decided here, so libraries stay free of clap,
//! indicatif, sd-notify and the HTTP server.

mod alloc;
pub mod metrics;
pub mod oc_mirror;
pub mod registry_args;
pub mod service;
pub mod telemetry;

use std::fmt::Display;
use std::future::Future;

use crate::telemetry::{LogFormat, LogLevel};
use airlock_common::exit_codes::{self, ExitCode};

/// Logging flags shared by every command.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log level; RUST_LOG (tracing's filter syntax) overrides it.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `run`, the same in both agents: the service and its configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The agent configuration (docs/agent-config.md).
    #[arg(long, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Check the configuration and the files it names, print `configuration OK`
    /// and exit without opening or binding anything (as `sshd -t` does): exit 0
    /// when it is valid, 64 with the mistake otherwise. Run it as the agent's
    /// user (`runuser -u airlock --`): it reads the files as the user running it.
    #[arg(long)]
    pub check: bool,
}

/// `completion SHELL`, the same in every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct CompletionArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man --out DIR`, the same in every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (made if missing).
    #[arg(long, value_name = "DIR")]
    pub out: std::path::PathBuf,
}

/// `completion` and `man`, which every binary has.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ShellVerb {
    /// Print a completion script for a shell (bash, zsh, fish, ...), made from
    /// this command's own definitions: `source <(COMMAND completion bash)`.
    Completion(CompletionArgs),
    /// Write man pages for this command and its subcommands into a directory.
    Man(ManArgs),
}

impl ShellVerb {
    /// Does it for `command`; the completion goes to stdout, the pages' paths
    /// are printed. Errors carry the path concerned (`-` for stdout).
    #[allow(
        clippy::print_stdout,
        reason = "the pages written are the command's output"
    )]
    pub fn run(&self, command: clap::Command) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        match self {
            ShellVerb::Completion(args) => {
                let script = completion(command, args.shell);
                std::io::Write::write_all(&mut std::io::stdout(), &script)
                    .map_err(|e| (std::path::PathBuf::from("-"), e))
            }
            ShellVerb::Man(args) => {
                for page in man_pages(command, &args.out).map_err(|e| (args.out.clone(), e))? {
                    println!("{}", page.display());
                }
                Ok(())
            }
        }
    }
}

/// `run --check`'s answer, the same for both agents, for scripts that test it.
#[allow(clippy::print_stdout, reason = "the answer to the user's command")]
pub fn print_checked(config: &std::path::Path) {
    println!("configuration OK: {}", config.display());
}

/// The completion script of `command` for `shell`, read from the parser itself,
/// so that it never lags behind a flag.
pub fn completion(mut command: clap::Command, shell: clap_complete::Shell) -> Vec<u8> {
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, name.clone(), &mut out);
    if shell != clap_complete::Shell::Bash || !name.contains('-') {
        return out;
    }
    // clap_complete 4.6 spells a hyphenated binary's name one way where bash
    // tracks the subcommand typed (`airlock__connected__subcmd__create`) and
    // another in the case labels it matches (`airlock__subcmd__connected__...`),
    // so no subcommand's flags ever complete (clap-rs/clap#6421, open). The
    // labels are respelled as the tracking spells them.
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    String::from_utf8_lossy(&out)
        .replace(&wrong, &right)
        .into_bytes()
}

/// Writes the man pages of `command` and every subcommand (`NAME.1`,
/// `NAME-SUB.1`, ...) into `dir`, from the parser itself; returns them (not
/// other pages `dir` holds).
pub fn man_pages(
    command: clap::Command,
    dir: &std::path::Path,
) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let command_name = command.get_name().to_string();
    clap_mangen::generate_to(command, dir)?;
    let name = command_name.as_str();
    let mut written: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
                f == format!("{name}.1")
                    || (f.starts_with(&format!("{name}-")) && f.ends_with(".1"))
            })
        })
        .collect();
    written.sort();
    Ok(written)
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
    alloc::cap_arenas();
    telemetry::init(log.log_level, log.log_format);
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

/// Snapshots the long help of a clap command and of each subcommand (nested one
/// level) as `help`, `help-SUB` and `help-SUB-NESTED`: a command line is a contract
/// scripts call, so a change must show up in review. A macro, so that insta files
/// the snapshots beside the calling crate's test.
#[macro_export]
macro_rules! assert_help_snapshots {
    ($cli:ty) => {{
        use clap::CommandFactory as _;
        let mut cli = <$cli>::command();
        insta::assert_snapshot!("help", cli.render_long_help().to_string());
        for sub in cli.get_subcommands_mut().filter(|s| s.get_name() != "help") {
            let name = sub.get_name().to_string();
            insta::assert_snapshot!(format!("help-{name}"), sub.render_long_help().to_string());
            for nested in sub.get_subcommands_mut().filter(|s| s.get_name() != "help") {
                let nested_name = nested.get_name().to_string();
                insta::assert_snapshot!(
                    format!("help-{name}-{nested_name}"),
                    nested.render_long_help().to_string()
                );
            }
        }
    }};
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
}

/// How a listing prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// The most blob transfers at once that `--parallel` (and an agent's
/// `parallel`) may ask for, in every command: more only burden the registry,
/// and far more would overflow the semaphore that bounds them.
pub const MAX_PARALLEL: usize = 256;

/// Parses `--parallel`: from 1 to [`MAX_PARALLEL`].
pub fn parallel(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ 1..=MAX_PARALLEL) => Ok(n),
        _ => Err(format!("expected a number from 1 to {MAX_PARALLEL}")),
    }
}

/// A report as `-o json` prints it, the same for every command: pretty JSON.
#[allow(clippy::print_stdout, reason = "the command's report is its output")]
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a report serialises")
    );
}

/// Aligned columns under `titles`, two spaces apart, one line per row, without
/// trailing blanks.
pub fn table<const N: usize>(titles: [&str; N], rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(titles[i].len())
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(titles.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    /// A misspelt level is refused at the command line with the levels there
    /// are, instead of becoming a filter that logs nothing.
    #[test]
    fn an_unknown_log_level_is_refused_with_the_levels_there_are() {
        use clap::{Args, FromArgMatches};
        let command = super::LogArgs::augment_args(clap::Command::new("x"));
        let err = command
            .clone()
            .try_get_matches_from(["x", "--log-level", "verbose"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(
            err.to_string()
                .contains("[possible values: error, warn, info, debug, trace]"),
            "{err}"
        );
        let matches = command
            .try_get_matches_from(["x", "--log-level", "debug"])
            .unwrap();
        let args = super::LogArgs::from_arg_matches(&matches).unwrap();
        assert_eq!(args.log_level, super::LogLevel::Debug);
    }

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let t = super::table(
            ["NAME", "STATE"],
            &[
                ["prod-east".to_string(), "current".to_string()],
                ["lab".to_string(), String::new()],
            ],
        );
        assert_eq!(t, "NAME       STATE\nprod-east  current\nlab\n");
    }
}
