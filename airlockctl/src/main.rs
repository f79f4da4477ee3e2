//! `airlockctl`: parse the command line, run, map the outcome to an exit code.

use airlockctl::cli::{self, Cli};
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log = cli.log.clone();
    airlock_cli::main(&log, cli::run(cli))
}
