//! The command line of `airlock-disconnected`, and what each command prints.

use std::path::PathBuf;

use airlock_cli::registry_args::{AuthFileArgs, DestTlsArgs};
use airlock_cli::{LogArgs, OutputFormat, print_json};
use airlock_common::exit_codes;
use airlock_common::size::ByteSize;
use airlock_oci::reference::Destination;
use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::publish::{self, PublishOptions, PublishReport};

/// Airlock's disconnected side: verifies imagesets carried across an air gap and
/// publishes them to mirror registries.
#[derive(Debug, Parser)]
#[command(name = "airlock-disconnected", version, max_term_width = 100)]
pub struct Cli {
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify every complete imageset in a directory, in sequence order, and publish
    /// the workspace's content to a registry.
    Publish(PublishArgs),
    /// Run as a service: take imagesets from a drop directory as their files arrive,
    /// and publish them to every cluster's registry.
    Run(airlock_cli::RunArgs),
    /// Check every imageset in a directory completely (signatures, chunk and blob
    /// hashes), without a workspace or a registry.
    Verify(VerifyArgs),
    /// Say what the imagesets of a directory (or one chunk file) hold, from the
    /// chunk files' heads: no workspace, no registry, no hashing.
    Describe(DescribeArgs),
    #[command(flatten)]
    Shell(airlock_cli::ShellVerb),
}

/// `describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// A directory of chunk files, or one chunk file.
    #[arg(value_name = "DIR|FILE")]
    pub path: PathBuf,
    /// Output format: `table`, or `json` (an array with, per imageset, `uuid`,
    /// `sequence`, `full`, `created`, `limit`, `signer`, `chunks` and `parity`
    /// (`listed`, `found`), `files`, `images` (`source`, `digest`, `kind`),
    /// `releases`, `deletes`, `blobs` (`listed`, `carried`, `carriedBytes`)).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Directory holding the chunk files.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Require imagesets to be signed by one of these minisign public keys.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub trust: Vec<PathBuf>,
    /// Output format of the report: lines for people (table), or one JSON object
    /// with `verified` (per imageset: `uuid`, `sequence`, `files`, `bytes`),
    /// `seconds` and `problems` (`code`, `message`).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
}

/// Destination registry access, as skopeo spells it.
#[derive(Debug, Args)]
pub struct DestinationArgs {
    #[command(flatten)]
    pub tls: DestTlsArgs,
    #[command(flatten)]
    pub auth: AuthFileArgs,
}

/// `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Directory holding the chunk files (any names, any order).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Mirror registry and path prefix: docker://HOST[:PORT][/PREFIX].
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// For registries that allow only N path components in a repository name
    /// (Quay, GitLab, GHCR): components past the (N-1)th are joined with '-', as
    /// oc-mirror's --max-nested-paths does, and mirror sets name each repository
    /// [default: 0, no limit].
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub max_nested_paths: usize,
    /// Workspace directory [default: ~/.airlock/site].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Blob uploads at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = airlock_cli::parallel)]
    pub parallel: usize,
    /// Another mirror (docker://HOST[:PORT][/PREFIX], same naming rule) to fetch layers
    /// from that no imageset carries and neither the content store nor the destination
    /// holds. May be repeated.
    #[arg(long, value_name = "DEST")]
    pub fetch_from: Vec<String>,
    /// Empty the content store once everything accepted is published (later imagesets
    /// fetch the layers they do not carry from the destination).
    #[arg(long)]
    pub empty_store: bool,
    /// Keep in the registry what the published imageset no longer lists (by default
    /// it is deleted, as oc-mirror v1 does; space returns with the registry's
    /// garbage collection). What a delete imageset names is deleted all the same.
    #[arg(long)]
    pub skip_pruning: bool,
    /// Change nothing: print what would be published and what pruning would delete
    /// and keep (read from the workspace, the chunk files and the registry).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of the report: lines for people (table), or one JSON object
    /// with `accepted` (`uuid`, `sequence`), `published`, `wouldPublish` (with
    /// --dry-run), `pruned` (per destination: `destination`, `deletes` with
    /// `manifest`, `role`, `image`; `kept` with `manifest`, `reason`; `untagged`;
    /// `refused`), `notPruned` (`destination`, `reason`) and `problems` (`code`,
    /// `message`).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
    /// The old name of --empty-store, refused so that nobody empties the store
    /// believing they prune the registry, or the other way round.
    #[arg(long, hide = true)]
    pub prune: bool,
    /// Require imagesets to be signed by one of these minisign public keys. May be
    /// repeated (during a key rotation, trust the old and the new key).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub trust: Vec<PathBuf>,
    #[command(flatten)]
    pub destination: DestinationArgs,
}

/// The command line `args` (program name first) in Airlock's words when it is in
/// oc-mirror v2's disk-to-mirror form: `-c ISC --from file://DIR
/// docker://HOST[/PREFIX]` is `publish --from DIR --to docker://…` (the
/// imagesets say what they hold; the configuration must exist). `--v2` is
/// dropped; flags oc-mirror has and Airlock does not act on are refused by name.
pub fn from_oc_mirror(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    airlock_cli::oc_mirror::rewrite(args, &<Cli as clap::CommandFactory>::command(), |m| {
        if m.rest_without(&["--secure-policy", "--policy", "--registries.d"])
            .len()
            != m.rest.len()
        {
            return Err(
                "--secure-policy, --policy, --registries.d: a policy.json is checked where images are pulled (airlock-connected --secure-policy); here imagesets are verified with --trust KEY, and oc-mirror checks no policy in disk to mirror either".into(),
            );
        }
        let Some(from) = m.from else {
            return Err(format!(
                "{}: the disconnected side publishes imagesets: -c ISC.yaml --from file://DIR docker://HOST[/PREFIX] (mirror to disk is airlock-connected's)",
                m.destination
            ));
        };
        if !m.destination.starts_with("docker://") {
            return Err(format!(
                "{}: disk to mirror publishes to docker://HOST[:PORT][/PREFIX]",
                m.destination
            ));
        }
        if !std::path::Path::new(&m.config).is_file() {
            return Err(format!("-c {}: no such file", m.config));
        }
        let mut out: Vec<String> = ["publish", "--from", &from, "--to", &m.destination]
            .map(String::from)
            .to_vec();
        if let Some(w) = m.workspace {
            out.extend(["--workspace".to_string(), w]);
        }
        out.extend(m.rest);
        Ok(out)
    })
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32, Error> {
    match cli.command {
        Command::Shell(verb) => {
            verb.run(<Cli as clap::CommandFactory>::command())
                .map_err(|(path, e)| Error::io(&path, e))?;
            Ok(exit_codes::OK)
        }
        Command::Verify(args) => {
            let trust = airlock_imageset::signing::TrustStore::load(&args.trust)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let from = args.from.clone();
            let report = tokio::task::spawn_blocking(move || crate::verify::verify(&from, &trust))
                .await
                .expect("verify does not panic")?;
            match args.output {
                OutputFormat::Table => print_verify(&report),
                OutputFormat::Json => print_json(&serde_json::json!({
                    "verified": report.verified.iter().map(|v| serde_json::json!({"uuid": v.uuid, "sequence": v.sequence, "files": v.files, "bytes": v.bytes})).collect::<Vec<_>>(),
                    "seconds": report.elapsed.as_secs_f64(),
                    "problems": problems_json(report.problems()),
                })),
            }
            Ok(report.problems.exit_code())
        }
        Command::Describe(args) => {
            let described = crate::describe::describe(&args.path)?;
            match args.output {
                OutputFormat::Table => print_describe(&described),
                OutputFormat::Json => print_json(&described),
            }
            Ok(exit_codes::OK)
        }
        Command::Run(args) => {
            // The whole configuration is checked before anything is opened or watched.
            let checked = crate::agent_config::load(&args.config)?;
            if args.check {
                airlock_cli::print_checked(&args.config);
                return Ok(exit_codes::OK);
            }
            crate::daemon::Daemon::new(checked)?
                .reload_from(&args.config)
                .run(airlock_cli::shutdown_signal())
                .await?;
            Ok(exit_codes::OK)
        }
        Command::Publish(args) => {
            let parse = |s: &str| {
                s.parse::<Destination>()
                    .map_err(|e| Error::Usage(e.to_string()))
            };
            let to = parse(&args.to)?.with_max_nested_paths(args.max_nested_paths);
            let fetch_from = args
                .fetch_from
                .iter()
                .map(|s| parse(s))
                .collect::<Result<_, _>>()?;
            if args.prune {
                return Err(Error::Usage(
                    "--prune was renamed --empty-store (it empties the content store); the registry is pruned of what the imageset no longer lists by default, and --skip-pruning keeps it".into(),
                ));
            }
            let opts = PublishOptions {
                from: args.from,
                to,
                workspace: args.workspace,
                parallel: args.parallel,
                fetch_from,
                empty_store: args.empty_store,
                skip_pruning: args.skip_pruning,
                dry_run: args.dry_run,
                trust: args.trust,
                registry: args.destination.tls.options(args.destination.auth.source()),
            };
            if opts.trust.is_empty() {
                warn_unsigned(&opts.from);
            }
            let report = publish::publish(&opts).await?;
            match args.output {
                OutputFormat::Table => print_publish(&report),
                OutputFormat::Json => print_publish_json(&report),
            }
            Ok(report.exit_code())
        }
    }
}

#[allow(clippy::print_stderr, reason = "a warning to the user at the terminal")]
fn warn_unsigned(from: &std::path::Path) {
    eprintln!(
        "warning: no --trust key given: imagesets in {} are published without checking who made them (each is still checked field by field). Give --trust KEY.pub, the key create --sign-key signed them with",
        from.display()
    );
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command's report is its output"
)]
fn print_verify(r: &crate::verify::VerifyReport) {
    for v in &r.verified {
        println!(
            "verified {}: {} files, {}",
            v.label,
            v.files,
            ByteSize(v.bytes)
        );
    }
    println!("{:.2}s", r.elapsed.as_secs_f64());
    for p in r.problems() {
        let label = if p.code == exit_codes::INCOMPLETE {
            "incomplete"
        } else {
            "error"
        };
        eprintln!("{label}: {}", p.message);
    }
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the command's report is its output"
)]
fn print_publish(p: &PublishReport) {
    let r = &p.site;
    if let Some(from) = &r.continued_from {
        println!("continued from the workspace state at {from}");
    }
    for (uuid, seq, stored) in &r.accepted {
        println!("accepted imageset {uuid} sequence {seq} ({stored} blobs stored)");
    }
    if !r.published.is_empty() {
        let [uploaded, bytes, mounted, present, manifests, retries] = r.stats;
        println!(
            "published sequence {}: {uploaded} blobs uploaded ({}), {mounted} mounted, {present} already present, {manifests} manifests, {retries} retries, {:.1}s",
            r.published
                .iter()
                .map(|(_, s)| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            ByteSize(bytes),
            p.elapsed.as_secs_f64()
        );
    }
    for f in &r.resources {
        println!("wrote {}", f.display());
    }
    for f in &r.rebuilt {
        println!("rebuilt {} from parity", f.display());
    }
    for f in &r.set_aside {
        println!("set aside damaged file {}", f.display());
    }
    for f in &r.ignored {
        println!("ignored {}: not an Airlock imageset chunk", f.display());
    }
    if let Some(sequences) = &p.would_publish {
        let list: Vec<String> = sequences.iter().map(u64::to_string).collect();
        println!(
            "dry run, nothing changed: would publish sequence {}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        );
    }
    let words = if p.would_publish.is_some() {
        ("would prune", "to delete")
    } else {
        ("pruned", "deleted")
    };
    for (dest, pruned) in &r.pruned {
        print_pruned(words, dest, pruned);
    }
    for (dest, why) in &r.not_pruned {
        println!("not pruned {dest}: {why}");
    }
    if let Some(freed) = p.emptied {
        println!("emptied the content store ({} freed)", ByteSize(freed));
    }
    for problem in &r.problems {
        let label = if problem.code == exit_codes::INCOMPLETE {
            "waiting"
        } else {
            "error"
        };
        eprintln!("{label}: {}", problem.message);
    }
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_describe(described: &[crate::describe::Description]) {
    for d in described {
        println!(
            "imageset {} sequence {} ({}), created {}, format {}",
            d.uuid,
            d.sequence,
            if d.full { "full" } else { "differential" },
            d.created,
            d.format
        );
        match &d.signer {
            Some(key) => println!("  signed by key {key} (checked by verify --trust)"),
            None => println!("  unsigned"),
        }
        println!(
            "  chunks: {} of {} found, parity: {} of {}, limit {}",
            d.chunks.found,
            d.chunks.listed,
            d.parity.found,
            d.parity.listed,
            ByteSize(d.limit)
        );
        println!(
            "  blobs: {} listed, {} carried here ({}), the rest carried by earlier imagesets",
            d.blobs.listed,
            d.blobs.carried,
            ByteSize(d.blobs.carried_bytes)
        );
        for r in &d.releases {
            println!("  release {r}");
        }
        if d.deletes > 0 {
            println!("  deletes {} images", d.deletes);
        }
        println!("  images: {}", d.images.len());
        for i in &d.images {
            match i.platforms.as_slice() {
                [] => println!("    {} {}", i.source, i.digest),
                kept => println!("    {} {} (only {})", i.source, i.digest, kept.join(", ")),
            }
        }
    }
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_publish_json(p: &PublishReport) {
    let r = &p.site;
    let doc = serde_json::json!({
        "accepted": r.accepted.iter().map(|(uuid, sequence, _)| serde_json::json!({"uuid": uuid, "sequence": sequence})).collect::<Vec<_>>(),
        "published": r.published.iter().map(|(d, s)| serde_json::json!({"destination": d, "sequence": s})).collect::<Vec<_>>(),
        "wouldPublish": p.would_publish,
        "pruned": r.pruned.iter().map(|(dest, pruned)| serde_json::json!({
            "destination": dest,
            "deletes": pruned.deleted.iter().map(|d| serde_json::json!({"manifest": d.at.to_string(), "role": d.role, "image": d.image})).collect::<Vec<_>>(),
            "kept": pruned.kept.iter().map(|(at, why)| serde_json::json!({"manifest": at.to_string(), "reason": why})).collect::<Vec<_>>(),
            "untagged": pruned.untagged.iter().map(|(repo, tag)| format!("{repo}:{tag}")).collect::<Vec<_>>(),
            "refused": pruned.refused,
        })).collect::<Vec<_>>(),
        "notPruned": r.not_pruned.iter().map(|(d, why)| serde_json::json!({"destination": d, "reason": why})).collect::<Vec<_>>(),
        "problems": problems_json(&r.problems),
    });
    print_json(&doc);
}

/// `problems` of the JSON reports.
fn problems_json<'a>(
    problems: impl IntoIterator<Item = &'a crate::site::Problem>,
) -> serde_json::Value {
    problems
        .into_iter()
        .map(|p| serde_json::json!({"code": p.code, "message": p.message}))
        .collect()
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_pruned((verb, deleted): (&str, &str), dest: &str, p: &airlock_registry::prune::Pruned) {
    if let Some(answer) = &p.refused {
        println!(
            "not pruned {dest}: the registry refuses deletes ({answer}); enable deletes (storage.delete.enabled: true for distribution) or publish with --skip-pruning"
        );
        return;
    }
    println!(
        "{verb} {dest}: {} manifests {deleted}, {} kept in use, {} tags removed",
        p.deleted.len(),
        p.kept.len(),
        p.untagged.len()
    );
    for d in &p.deleted {
        println!("  {deleted} {} ({} of {})", d.at, d.role, d.image);
    }
    for (at, why) in &p.kept {
        println!("  kept {at}: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line is a contract (scripts call it); a change must be deliberate.
    #[test]
    fn help_text_is_stable() {
        airlock_cli::assert_help_snapshots!(Cli);
    }

    /// A huge `--parallel` would overflow the publisher's semaphore.
    #[test]
    fn parallel_is_from_1_to_256() {
        let publish = |n: &str| {
            let to = "docker://m.example";
            let args = ["publish", "--from", "d", "--to", to, "--parallel", n];
            Cli::try_parse_from(std::iter::once("airlock-disconnected").chain(args))
        };
        assert!(publish("256").is_ok());
        for bad in ["0", "257", "18446744073709551615"] {
            let e = publish(bad).expect_err(bad).to_string();
            assert!(e.contains("expected a number from 1 to 256"), "{bad}: {e}");
        }
    }
}
