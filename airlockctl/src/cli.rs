//! The command line of `airlockctl`, and what each command prints.

use std::path::PathBuf;

use airlock_cli::{LogArgs, OutputFormat};
use airlock_common::exit_codes;
use airlock_proto::tls::ClientFiles;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::client::Client;
use crate::error::Error;
use crate::output::{self, Cluster, Imageset};

/// Airlock's admin CLI: shows and drives a disconnected agent over its gRPC control
/// plane, with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "airlockctl", version, max_term_width = 100)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// The agent and this client's credentials.
    #[command(flatten)]
    pub connection: Connection,
    /// Output: aligned columns, or JSON (keys in docs/airlockctl.md).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the agent is, and who this client is.
#[derive(Debug, Args)]
pub struct Connection {
    /// The agent's control plane, `https://HOST:PORT` (its `grpc.listen`).
    #[arg(long, env = "AIRLOCK_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// PEM CA certificate the agent's certificate must be signed by.
    #[arg(long, env = "AIRLOCK_CA", value_name = "FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, signed by the agent's `grpc.tls.clientCA`.
    #[arg(long, env = "AIRLOCK_CERT", value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "AIRLOCK_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The agent at a glance: what it follows, how many clusters are current, what it
    /// is doing.
    Status,
    /// Every imageset accepted, with the clusters it is published to.
    Imagesets,
    /// Every cluster with the sequence published to it and its state.
    Clusters,
    /// Send chunk files to the agent; they go through the checks of the drop
    /// directory, and the answer says what became of their imagesets. Exit 65 when
    /// something was refused or quarantined, 75 when an imageset waits for more.
    Ingest(IngestArgs),
    /// Publish now to every cluster, or one, without waiting for backoff. Exit 69
    /// when a cluster could not be published to (with --dry-run: could not be read).
    Publish(PublishArgs),
    /// Re-apply the cluster resources through each cluster's API (or one's),
    /// taking back fields changed on the cluster and restoring deleted objects. Exit
    /// 75 when drift remains, 69 when a cluster's API could not be used.
    Reconcile(ClusterArgs),
    /// Follow the agent's events until it stops (Ctrl-C to quit).
    Watch,
    #[command(flatten)]
    Shell(airlock_cli::ShellVerb),
}

/// `ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Chunk (and parity) files.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// `reconcile`, and which clusters `publish` works on.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Only this cluster.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

/// `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub clusters: ClusterArgs,
    /// Change nothing: per cluster, the sequences that would be published and what
    /// pruning (or a delete imageset) would then delete, and keep and why, read
    /// from the workspace, the registries and the clusters. JSON (-o json): an
    /// array of objects with `cluster`, `destination`, `wouldPublish`, `deletes`
    /// (`manifest`, `role`, `image`), `kept` (`manifest`, `reason`), `notPruned`,
    /// `problems`.
    #[arg(long)]
    pub dry_run: bool,
}

impl Connection {
    async fn connect(&self) -> Result<Client, Error> {
        let missing = |flag: &str, env: &str| {
            Error::Usage(format!(
                "--{flag} is required (or set {env}); the control plane accepts mutual TLS only"
            ))
        };
        let server = self
            .server
            .clone()
            .ok_or_else(|| missing("server", "AIRLOCK_SERVER"))?;
        let files = ClientFiles {
            ca: self.ca.clone().ok_or_else(|| missing("ca", "AIRLOCK_CA"))?,
            cert: self
                .cert
                .clone()
                .ok_or_else(|| missing("cert", "AIRLOCK_CERT"))?,
            key: self
                .key
                .clone()
                .ok_or_else(|| missing("key", "AIRLOCK_KEY"))?,
        };
        Client::connect(&server, &files).await
    }
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print(format: OutputFormat, value: &impl Serialize, text: impl FnOnce() -> String) {
    match format {
        OutputFormat::Json => airlock_cli::print_json(value),
        OutputFormat::Table => print!("{}", text()),
    }
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32, Error> {
    // `completion` and `man` need no agent: answered before connecting.
    if let Command::Shell(verb) = &cli.command {
        verb.run(<Cli as clap::CommandFactory>::command())
            .map_err(|(path, source)| Error::Read { path, source })?;
        return Ok(exit_codes::OK);
    }
    let mut client = cli.connection.connect().await?;
    let format = cli.output;
    match cli.command {
        Command::Shell(_) => {}
        Command::Status => {
            let s = output::Status::from(client.status().await?);
            print(format, &s, || output::status_table(&s));
        }
        Command::Imagesets => {
            let list: Vec<Imageset> = client
                .imagesets()
                .await?
                .into_iter()
                .map(Imageset::from)
                .collect();
            print(format, &list, || output::imagesets_table(&list));
        }
        Command::Clusters => {
            let list: Vec<Cluster> = client
                .clusters()
                .await?
                .into_iter()
                .map(Cluster::from)
                .collect();
            print(format, &list, || output::clusters_table(&list));
        }
        Command::Ingest(args) => {
            let r = output::Ingest::from(client.ingest(&args.files).await?);
            print(format, &r, || output::ingest_text(&r));
            let bad = !r.quarantined.is_empty()
                || r.imagesets
                    .iter()
                    .any(|i| matches!(i.outcome, "refused" | "damaged"));
            if bad {
                return Ok(exit_codes::DATA);
            }
            if r.imagesets.is_empty() || r.imagesets.iter().any(|i| i.outcome == "waiting") {
                return Ok(exit_codes::INCOMPLETE);
            }
        }
        Command::Publish(args) if args.dry_run => {
            let plans: Vec<output::Plan> = client
                .publish(args.clusters.cluster.as_deref(), true)
                .await?
                .plans
                .into_iter()
                .map(output::Plan::from)
                .collect();
            print(format, &plans, || output::plans_text(&plans));
            if plans.iter().any(|p| !p.problems.is_empty()) {
                return Ok(exit_codes::UNAVAILABLE);
            }
        }
        Command::Publish(args) => {
            let r = output::Publish::from(
                client
                    .publish(args.clusters.cluster.as_deref(), false)
                    .await?,
            );
            print(format, &r, || {
                let mut text = output::clusters_table(&r.clusters);
                for p in &r.published {
                    text.push_str(&format!(
                        "published sequence {} to cluster {}\n",
                        p.sequence, p.cluster
                    ));
                }
                text
            });
            if r.clusters.iter().any(|c| c.state == "retrying") {
                return Ok(exit_codes::UNAVAILABLE);
            }
        }
        Command::Reconcile(args) => {
            let list: Vec<Cluster> = client
                .reconcile(args.cluster.as_deref())
                .await?
                .into_iter()
                .map(Cluster::from)
                .collect();
            print(format, &list, || output::clusters_table(&list));
            if list.iter().any(|c| c.api_error.is_some()) {
                return Ok(exit_codes::UNAVAILABLE);
            }
            if list.iter().any(|c| !c.drift.is_empty()) {
                return Ok(exit_codes::INCOMPLETE);
            }
        }
        Command::Watch => {
            #[allow(clippy::print_stdout, reason = "the events are the command's output")]
            client
                .watch(|e| {
                    let e = output::Event::from(e);
                    match format {
                        OutputFormat::Json => {
                            println!("{}", serde_json::to_string(&e).expect("events serialise"))
                        }
                        OutputFormat::Table => println!("{}", output::event_line(&e)),
                    }
                })
                .await?;
        }
    }
    Ok(exit_codes::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line is a contract (scripts call it); a change must be deliberate.
    #[test]
    fn help_text_is_stable() {
        airlock_cli::assert_help_snapshots!(Cli);
    }
}
