//! `airlock-disconnected`: parse the command line, run, map the outcome to an exit code.

use airlock_disconnected::cli::{self, Cli};
use clap::{CommandFactory, Parser};

fn main() -> std::process::ExitCode {
    // oc-mirror's disk-to-mirror command line, as users' scripts have it.
    let args = cli::from_oc_mirror(std::env::args_os().collect()).unwrap_or_else(|e| {
        Cli::command()
            .error(clap::error::ErrorKind::InvalidValue, e)
            .exit()
    });
    let cli = Cli::parse_from(args);
    let log = cli.log.clone();
    airlock_cli::main(&log, cli::run(cli))
}
