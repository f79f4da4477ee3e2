//! The command line of `airlock-connected`, and what each command prints.

use std::path::PathBuf;

use airlock_cli::registry_args::{AuthFileArgs, DestTlsArgs};
use airlock_cli::{LogArgs, OutputFormat, print_json, table};
use airlock_common::size::ByteSize;
use airlock_registry::RegistryOptions;
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::create::{self, CreateOptions, ImagesetFormat};
use crate::error::Error;
use crate::mirror::{self, MirrorOptions};
use crate::policy::{Detection, PolicyOptions};
use crate::release::ReleaseOptions;

/// Airlock's connected side: builds sequenced imagesets of container images, cut into
/// chunk files no larger than a transfer limit, for carrying across an air gap.
#[derive(Debug, Parser)]
#[command(name = "airlock-connected", version, max_term_width = 100)]
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
    /// Build the next imageset of a workspace into a directory.
    Create(CreateArgs),
    /// Build a delete imageset: the next sequence, without what a
    /// DeleteImageSetConfiguration selects, for the disconnected side to delete.
    Delete(DeleteArgs),
    /// Mirror the configuration's images straight to a reachable mirror registry.
    Mirror(MirrorArgs),
    /// Write a signing key pair (minisign format): PREFIX.key and PREFIX.pub.
    Keygen(KeygenArgs),
    /// Run as a service: create imagesets on a schedule (and on SIGUSR1) into an
    /// outbox, keeping the last few.
    Run(airlock_cli::RunArgs),
    /// Show what a configuration selects, without mirroring anything.
    #[command(subcommand)]
    List(ListCommand),
    #[command(flatten)]
    Shell(airlock_cli::ShellVerb),
}

/// `list`.
#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// The OpenShift releases `mirror.platform` selects (one per architecture), from
    /// the update graph; no release image is pulled unless `platform.release` names one.
    /// JSON keys: `channel`, `arch`, `version`, `image`.
    Releases(ListArgs),
    /// The operator bundles `mirror.operators` selects, one per channel they are in;
    /// only the catalog images are pulled. JSON keys: `catalog`, `package`, `channel`,
    /// `bundle`, `version`, `image`, `relatedImages`.
    Bundles(ListArgs),
    /// The Helm charts `mirror.helm` names, each rendered with its default values,
    /// with the images it would carry and where it is published. JSON keys:
    /// `entry`, `name`, `version`, `origin`, `publishedAs`, `images`, `notImages`.
    Charts(ListArgs),
}

/// `list releases`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The ImageSetConfiguration file.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: PathBuf,
    /// Output format: a table, or a JSON array of objects (keys as the command says).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path prefix of the key files.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// Encrypt the secret key with the password in this file (first line); without
    /// it the key is unencrypted and protected by its file mode (0600), for agents
    /// that sign unattended.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

/// Reads a password from the first line of a file.
fn read_password(path: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Source registry access, as skopeo spells it.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Require HTTPS and verify certificates of source registries (`--src-tls-verify=false`
    /// allows plain HTTP and untrusted certificates).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    pub src_tls_verify: bool,
    /// Directory of CA certificates (*.crt) to trust for source registries, instead of
    /// /etc/containers/certs.d/HOST[:PORT]/.
    #[arg(long, value_name = "DIR")]
    pub src_cert_dir: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthFileArgs,
    /// Update service (Cincinnati) graph URL for every release channel, instead of
    /// Red Hat's (OCP) and OKD's; file:///PATH reads a saved graph (a directory:
    /// CHANNEL-ARCH.json in it); default: the UPDATE_URL_OVERRIDE environment variable.
    #[arg(long, value_name = "URL")]
    pub update_url: Option<String>,
    /// HTTP proxy (http://HOST:PORT) for every registry the command talks to,
    /// CONNECT for TLS ones, instead of HTTPS_PROXY/HTTP_PROXY; NO_PROXY still
    /// exempts hosts.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// containers-registries.conf(5) whose [[registry]] mirrors, locations and
    /// blocked entries apply to reads of source images [default:
    /// CONTAINERS_REGISTRIES_CONF, else ~/.config/containers/registries.conf or
    /// /etc/containers/registries.conf, with their registries.conf.d/*.conf].
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
}

impl SourceArgs {
    /// Sends this process's registry requests through `--proxy`, if given.
    fn use_proxy(&self) -> Result<(), Error> {
        match &self.proxy {
            Some(p) => {
                airlock_registry::use_proxy(p).map_err(|e| Error::Usage(format!("--proxy {e}")))
            }
            None => Ok(()),
        }
    }
}

/// Release signatures and update-graph data (`mirror.platform`).
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// OpenPGP public keys (armoured or binary) release signatures must be made with
    /// [default: OCP_SIGNATURE_VERIFICATION_PK, else Red Hat's release keys].
    #[arg(long, value_name = "FILE")]
    pub release_keyring: Option<PathBuf>,
    /// Release signature store, instead of Red Hat's
    /// (https://mirror.openshift.com/pub/openshift-v4/signatures/openshift/release/).
    #[arg(
        long,
        value_name = "URL",
        env = "OCP_SIGNATURE_URL",
        hide_env_values = true
    )]
    pub signature_url: Option<String>,
    /// Mirror releases without their signatures: nothing is fetched or verified, and
    /// no signature ConfigMap is written, so clusters cannot verify the releases.
    #[arg(long)]
    pub ignore_release_signature: bool,
    /// Update-graph data tarball for `platform.graph`, instead of Red Hat's
    /// (https://api.openshift.com/api/upgrades_info/graph-data).
    #[arg(long, value_name = "URL")]
    pub graph_data_url: Option<String>,
    /// Base image of the graph-data image [default: registry.access.redhat.com/ubi9/ubi:latest].
    #[arg(long, value_name = "IMAGE")]
    pub graph_base_image: Option<String>,
}

/// Signatures and referrers.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Leave cosign signatures, attestations and SBOMs (`sha256-<digest>.sig|.att|.sbom`
    /// tags) and OCI referrers of the images behind (oc-mirror v2's flag); by default
    /// they travel with their images.
    #[arg(long)]
    pub remove_signatures: bool,
    /// Refuse to go on unless every image has a valid cosign signature
    /// (`sha256-<digest>.sig`, key-based) by one of these ECDSA P-256 public keys
    /// (cosign.pub); see docs/policy.md for what is verified.
    #[arg(long, value_name = "KEY", num_args = 1..)]
    pub require_signatures: Vec<PathBuf>,
    /// Refuse to go on unless every image meets a containers policy.json (as
    /// oc-mirror's flag): sigstoreSigned cosign keys, reject and
    /// insecureAcceptAnything per scope; see docs/policy.md.
    #[arg(long)]
    pub secure_policy: bool,
    /// The policy.json for --secure-policy [default: ~/.config/containers/policy.json,
    /// else /etc/containers/policy.json].
    #[arg(long, value_name = "FILE", requires = "secure_policy")]
    pub policy: Option<PathBuf>,
    /// Directory of containers-registries.d(5) files naming the lookaside stores
    /// of signedBy (GPG) signatures, as oc-mirror takes it [default:
    /// ~/.config/containers/registries.d, else /etc/containers/registries.d].
    #[arg(long = "registries.d", value_name = "DIR", requires = "secure_policy")]
    pub registries_d: Option<PathBuf>,
}

impl PolicyArgs {
    fn options(&self) -> PolicyOptions {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        PolicyOptions {
            remove_signatures: self.remove_signatures,
            require_signatures: self.require_signatures.clone(),
            registries_d: self.registries_d.clone(),
            secure_policy: self.secure_policy.then(|| {
                self.policy
                    .clone()
                    .unwrap_or_else(|| crate::secure_policy::default_path(home.as_deref()))
            }),
        }
    }
}

impl ReleaseArgs {
    fn options(&self, update_url: Option<String>) -> ReleaseOptions {
        ReleaseOptions {
            update_url,
            signature_url: self.signature_url.clone(),
            keyring: self.release_keyring.clone(),
            ignore_signatures: self.ignore_release_signature,
            graph_data_url: self.graph_data_url.clone(),
            graph_base: self.graph_base_image.clone(),
        }
    }
}

impl SourceArgs {
    fn options(&self) -> Result<RegistryOptions, Error> {
        crate::create::source_options(
            self.src_tls_verify,
            self.src_cert_dir.clone(),
            self.auth.authfile.clone(),
            self.registries_conf.as_deref(),
        )
    }
}

/// Where and how an imageset is written (`create`, `delete`).
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// Directory for the chunk files.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Workspace directory [default: storageConfig.local.path, else ~/.airlock/connected].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Largest chunk file, tar overhead included (B, KiB, MiB, GiB, KB, MB, GB)
    /// [default: archiveSize GiB from the configuration, else 500GiB].
    #[arg(long, value_name = "SIZE")]
    pub limit: Option<ByteSize>,
    /// Sign the imageset manifest with this minisign secret key (see `keygen`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Password of an encrypted signing key, first line of this file
    /// [default: AIRLOCK_SIGN_PASSWORD, if set].
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    pub sign_password_file: Option<PathBuf>,
    /// Add N Reed-Solomon parity files: any N of the imageset's files lost or damaged
    /// in transfer are rebuilt on the disconnected side.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub parity: u32,
    /// Imageset format to write: v2, or v1 for a disconnected agent that reads
    /// only v1 (it refuses v2 before publishing anything).
    #[arg(long, value_name = "VERSION", value_enum, default_value_t = ImagesetFormat::V2)]
    pub imageset_format: ImagesetFormat,
}

impl WriteArgs {
    /// The signing key and its password: from `--sign-password-file`, else
    /// `AIRLOCK_SIGN_PASSWORD`.
    fn sign_key(&self) -> Result<Option<(PathBuf, Option<String>)>, Error> {
        let Some(key) = &self.sign_key else {
            return Ok(None);
        };
        let password = match &self.sign_password_file {
            Some(f) => Some(read_password(f)?),
            None => std::env::var("AIRLOCK_SIGN_PASSWORD").ok(),
        };
        Ok(Some((key.clone(), password)))
    }
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// ImageSetConfiguration file (oc-mirror's schema, v1alpha2 or v2alpha1).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Start a new workspace UUID at sequence 1 and ship everything.
    #[arg(long)]
    pub full: bool,
    /// Write DIR/mapping.txt and DIR/to-ship.txt and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave out images that cannot be pulled (404, refused, unreachable after
    /// retries), naming each in DIR/missing.txt, and exit 3; those the last
    /// imageset listed are carried over as they were, so the site keeps them.
    #[arg(long)]
    pub continue_on_error: bool,
    /// Blobs of 1 MiB or more downloaded at once; smaller blobs, whose cost
    /// is the round trip more than the bytes, up to four times as many.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = airlock_cli::parallel)]
    pub parallel: usize,
    /// Output format of the report: lines for people (table), or one JSON object
    /// with `uuid`, `sequence` (null when nothing changed), `images`, `blobs`,
    /// `carriedBytes`, `chunks` (the files written), `seconds`, `unchangedSince`
    /// (the sequence nothing changed since, else null), `dryRunFiles`, `blocked` (`image`, `field`, `pattern`,
    /// `platform`), `missing` (`image`, `reason`, `carriedFrom`) and `missingFile`.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub releases: ReleaseArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// DeleteImageSetConfiguration file (oc-mirror v2's schema: a delete: section
    /// shaped like mirror:), applied to the workspace's last imageset.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub write: WriteArgs,
    /// Print what would be deleted and what is kept because something else needs
    /// it; write and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of the report: lines for people (table), or one JSON object
    /// (keys `uuid`, `sequence`, `dryRun`, `selected`, `deletes`, `kept`, `chunks`).
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `mirror`.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// ImageSetConfiguration file (oc-mirror's schema, v1alpha2 or v2alpha1).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: PathBuf,
    /// Mirror registry and path prefix: docker://HOST[:PORT][/PREFIX].
    #[arg(long, value_name = "DEST")]
    pub to: String,
    /// For registries that allow only N path components in a repository name
    /// (Quay, GitLab, GHCR): components past the (N-1)th are joined with '-', as
    /// oc-mirror's --max-nested-paths does, and mirror sets name each repository
    /// [default: 0, no limit].
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub max_nested_paths: usize,
    /// Workspace directory, where cluster-resources/ is written [default: storageConfig.local.path,
    /// else ~/.airlock/connected].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Leave out images that cannot be pulled, naming each in WORKSPACE/missing.txt,
    /// and exit 3 (the mirror sets written do not name them).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Blob transfers at once.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = airlock_cli::parallel)]
    pub parallel: usize,
    /// Output format of the report: lines for people (table), or one JSON object
    /// with `images`, `blobsUploaded`, `uploadedBytes`, `blobsMounted`,
    /// `blobsPresent`, `manifests`, `retries`, `resources` (the files written),
    /// `seconds`, `missing` (`image`, `reason`, `carriedFrom`) and `missingFile`.
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub dest: DestTlsArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub releases: ReleaseArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// The command line `args` (program name first) in Airlock's words when it is in
/// oc-mirror v2's: `-c ISC file://DIR` is `create --out DIR` with the workspace in
/// `DIR/working-dir` (unless `--workspace file://W`), and `-c ISC --workspace
/// file://W docker://HOST/PREFIX` is `mirror`. `--v2` is dropped; flags oc-mirror
/// has and Airlock does not act on are refused by name (docs/cli.md).
pub fn from_oc_mirror(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    airlock_cli::oc_mirror::rewrite(args, &<Cli as clap::CommandFactory>::command(), |m| {
        if m.from.is_some() {
            return Err("--from file://DIR is oc-mirror's disk to mirror: run it on the disconnected side, airlock-disconnected -c ISC.yaml --from file://DIR docker://HOST[/PREFIX]".into());
        }
        // Mirror to disk has no destination registry: its flags do nothing there.
        let rest = match m.destination.starts_with("file://") {
            true => m.rest_without(airlock_cli::oc_mirror::DESTINATION_FLAGS),
            false => m.rest.clone(),
        };
        let mut out: Vec<String> = match m.destination.strip_prefix("file://") {
            Some(dir) => {
                let workspace = m
                    .workspace
                    .unwrap_or_else(|| format!("{}/working-dir", dir.trim_end_matches('/')));
                [
                    "create",
                    "--config",
                    &m.config,
                    "--out",
                    dir,
                    "--workspace",
                    &workspace,
                ]
                .map(String::from)
                .to_vec()
            }
            None => {
                let mut out: Vec<String> =
                    ["mirror", "--config", &m.config, "--to", &m.destination]
                        .map(String::from)
                        .to_vec();
                if let Some(w) = m.workspace {
                    out.extend(["--workspace".to_string(), w]);
                }
                out
            }
        };
        out.extend(rest);
        Ok(out)
    })
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32, Error> {
    let source = match &cli.command {
        Command::Create(a) => Some(&a.source),
        Command::Delete(a) => Some(&a.source),
        Command::Mirror(a) => Some(&a.source),
        Command::List(
            ListCommand::Releases(a) | ListCommand::Bundles(a) | ListCommand::Charts(a),
        ) => Some(&a.source),
        Command::Keygen(_) | Command::Run(_) | Command::Shell(_) => None,
    };
    if let Some(source) = source {
        source.use_proxy()?;
    }
    match cli.command {
        Command::Shell(verb) => {
            verb.run(<Cli as clap::CommandFactory>::command())
                .map_err(|(path, e)| Error::io(&path, e))?;
            Ok(airlock_common::exit_codes::OK)
        }
        Command::Create(args) => {
            let opts = CreateOptions {
                sign_key: args.write.sign_key()?,
                config: args.config,
                out: args.write.out,
                workspace: args.write.workspace,
                limit: args.write.limit,
                full: args.full,
                dry_run: args.dry_run,
                parallel: args.parallel,
                registry: args.source.options()?,
                parity: args.write.parity,
                imageset_format: args.write.imageset_format,
                releases: args.releases.options(args.source.update_url.clone()),
                policy: args.policy.options(),
                continue_on_error: args.continue_on_error,
            };
            let report = create::create(&opts).await?;
            match args.output {
                OutputFormat::Table => print_create(&report),
                OutputFormat::Json => print_json(&create_json(&report)),
            }
            Ok(match report.missing_file {
                Some(_) => airlock_common::exit_codes::PARTIAL,
                None => airlock_common::exit_codes::OK,
            })
        }
        Command::Delete(args) => {
            let opts = crate::delete::DeleteOptions {
                sign_key: args.write.sign_key()?,
                config: args.config,
                out: args.write.out,
                workspace: args.write.workspace,
                limit: args.write.limit,
                dry_run: args.dry_run,
                registry: args.source.options()?,
                parity: args.write.parity,
                imageset_format: args.write.imageset_format,
            };
            let report = crate::delete::delete(&opts).await?;
            print_delete(&report, args.output);
            Ok(airlock_common::exit_codes::OK)
        }
        Command::Run(args) => {
            // Everything is checked before the agent reports ready.
            let checked = crate::agent::load(&args.config)?;
            if args.check {
                airlock_cli::print_checked(&args.config);
                return Ok(airlock_common::exit_codes::OK);
            }
            if let Some(p) = &checked.config.source.proxy {
                airlock_registry::use_proxy(p).map_err(|e| Error::Usage(e.to_string()))?;
            }
            crate::agent::Agent::new(checked)
                .run(airlock_cli::shutdown_signal())
                .await?;
            Ok(airlock_common::exit_codes::OK)
        }
        Command::Keygen(args) => {
            let password = args
                .password_file
                .as_deref()
                .map(read_password)
                .transpose()?;
            let (secret, public, id) = airlock_imageset::signing::generate(&args.out, password)?;
            print_keygen(&secret, &public, &id.to_string());
            Ok(airlock_common::exit_codes::OK)
        }
        Command::List(ListCommand::Releases(args)) => {
            let (loaded, _) = create::load_config(&args.config)?;
            let pool = airlock_registry::Pool::new(args.source.options()?);
            let updates = crate::cincinnati::UpdateService::new(args.source.update_url.clone())
                .map_err(Error::Registry)?;
            let selected = crate::release::list(&loaded, &pool, &updates).await?;
            print_releases(&selected, args.output);
            Ok(airlock_common::exit_codes::OK)
        }
        Command::List(ListCommand::Bundles(args)) => {
            let loaded = airlock_config::load(&args.config)?;
            loaded.validate()?;
            let operators = loaded
                .config
                .mirror
                .as_ref()
                .map(|m| m.operators.clone())
                .unwrap_or_default();
            if operators.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: the configuration has no mirror.operators",
                    args.config.display()
                )));
            }
            let pool = airlock_registry::Pool::new(args.source.options()?);
            let listed = crate::catalog::image::list(&pool, &operators).await?;
            print_bundles(&listed, args.output);
            Ok(airlock_common::exit_codes::OK)
        }
        Command::List(ListCommand::Charts(args)) => {
            let (loaded, _) = create::load_config(&args.config)?;
            if !crate::helm::any(&loaded) {
                return Err(Error::Usage(format!(
                    "{}: the configuration has no mirror.helm charts",
                    args.config.display()
                )));
            }
            let pool = airlock_registry::Pool::new(args.source.options()?);
            let charts = crate::helm::gather(&loaded, &pool).await?;
            print_charts(&charts.charts, args.output);
            Ok(airlock_common::exit_codes::OK)
        }
        Command::Mirror(args) => {
            let output = args.output;
            let to = args
                .to
                .parse::<airlock_oci::reference::Destination>()
                .map_err(|e| Error::Usage(e.to_string()))?
                .with_max_nested_paths(args.max_nested_paths);
            let source = args.source.options()?;
            let dest = args.dest.options(source.auth.clone());
            let opts = MirrorOptions {
                config: args.config,
                to,
                workspace: args.workspace,
                parallel: args.parallel,
                source,
                dest,
                releases: args.releases.options(args.source.update_url.clone()),
                policy: args.policy.options(),
                continue_on_error: args.continue_on_error,
            };
            let report = mirror::mirror(&opts).await?;
            match output {
                OutputFormat::Table => print_mirror(&report),
                OutputFormat::Json => print_json(&mirror_json(&report)),
            }
            Ok(match report.missing_file {
                Some(_) => airlock_common::exit_codes::PARTIAL,
                None => airlock_common::exit_codes::OK,
            })
        }
    }
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_keygen(secret: &std::path::Path, public: &std::path::Path, id: &str) {
    println!("key id {id}");
    println!(
        "secret key: {} (keep it on the connected side)",
        secret.display()
    );
    println!(
        "public key: {} (give it to the disconnected side: --trust)",
        public.display()
    );
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_releases(selected: &[crate::select::Selected], format: OutputFormat) {
    if format == OutputFormat::Json {
        return print_json(selected);
    }
    let rows: Vec<[String; 4]> = selected
        .iter()
        .map(|s| {
            [
                s.channel.clone(),
                s.arch.clone(),
                s.version.clone(),
                s.image.to_string(),
            ]
        })
        .collect();
    print!("{}", table(["CHANNEL", "ARCH", "VERSION", "IMAGE"], &rows));
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_bundles(listed: &[crate::catalog::image::Listed], format: OutputFormat) {
    if format == OutputFormat::Json {
        return print_json(listed);
    }
    let rows: Vec<[String; 5]> = listed
        .iter()
        .map(|l| {
            [
                l.package.clone(),
                l.channel.clone(),
                l.bundle.clone(),
                l.version.clone(),
                (l.related_images.len()).to_string(),
            ]
        })
        .collect();
    let titles = ["PACKAGE", "CHANNEL", "BUNDLE", "VERSION", "RELATED"];
    let mut start = 0;
    while start < listed.len() {
        let catalog = &listed[start].catalog;
        let end = start
            + listed[start..]
                .iter()
                .take_while(|l| l.catalog == *catalog)
                .count();
        println!("catalog {catalog}");
        print!("{}", table(titles, &rows[start..end]));
        start = end;
    }
}

/// `missing` of the JSON reports.
fn missing_json(missing: &[crate::collect::Missing]) -> serde_json::Value {
    missing
        .iter()
        .map(|m| serde_json::json!({"image": m.image, "reason": m.reason, "carriedFrom": m.carried_from}))
        .collect()
}

/// `create -o json`; the keys are documented on `--output`.
fn create_json(r: &create::CreateReport) -> serde_json::Value {
    let m = &r.manifest;
    let blocked: Vec<serde_json::Value> = r
        .blocked
        .iter()
        .map(|b| {
            let platform = match &b.detection {
                Detection::Name => None,
                Detection::Layers { platform } | Detection::Annotation { platform, .. } => {
                    Some(platform)
                }
            };
            serde_json::json!({"image": b.image, "field": b.field, "pattern": b.pattern, "platform": platform})
        })
        .collect();
    // With nothing to ship, no imageset was made: no sequence to name.
    let sequence = r.unchanged_since.is_none().then_some(m.sequence);
    serde_json::json!({
        "uuid": m.uuid,
        "sequence": sequence,
        "images": m.images.len(),
        "blobs": m.blobs.len(),
        "carriedBytes": r.blob_bytes,
        "chunks": r.chunks,
        "seconds": r.elapsed.as_secs_f64(),
        "unchangedSince": r.unchanged_since,
        "dryRunFiles": r.dry_run_files,
        "blocked": blocked,
        "missing": missing_json(&r.missing),
        "missingFile": r.missing_file,
    })
}

/// `mirror -o json`; the keys are documented on `--output`.
fn mirror_json(r: &mirror::MirrorReport) -> serde_json::Value {
    let [
        uploaded,
        uploaded_bytes,
        mounted,
        present,
        manifests,
        retries,
    ] = r.stats;
    serde_json::json!({
        "images": r.images,
        "blobsUploaded": uploaded,
        "uploadedBytes": uploaded_bytes,
        "blobsMounted": mounted,
        "blobsPresent": present,
        "manifests": manifests,
        "retries": retries,
        "resources": r.resources,
        "seconds": r.elapsed.as_secs_f64(),
        "missing": missing_json(&r.missing),
        "missingFile": r.missing_file,
    })
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_charts(charts: &[crate::helm::ChartImages], format: OutputFormat) {
    if format == OutputFormat::Json {
        return print_json(charts);
    }
    let rows: Vec<[String; 4]> = charts
        .iter()
        .flat_map(|c| {
            let head = [c.name.clone(), c.version.clone(), c.published_as.clone()];
            let images = c
                .images
                .iter()
                .map(String::as_str)
                .chain((c.images.is_empty()).then_some("(none)"));
            images.enumerate().map(move |(i, image)| match i {
                0 => [
                    head[0].clone(),
                    head[1].clone(),
                    head[2].clone(),
                    image.to_string(),
                ],
                _ => [
                    String::new(),
                    String::new(),
                    String::new(),
                    image.to_string(),
                ],
            })
        })
        .collect();
    print!(
        "{}",
        table(["CHART", "VERSION", "PUBLISHED AS", "IMAGES"], &rows)
    );
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_mirror(r: &mirror::MirrorReport) {
    let [uploaded, bytes, mounted, present, manifests, retries] = r.stats;
    println!(
        "mirrored {} images: {uploaded} blobs uploaded ({}), {mounted} mounted, {present} already present, {manifests} manifests, {retries} retries, {:.1}s",
        r.images,
        ByteSize(bytes),
        r.elapsed.as_secs_f64()
    );
    for f in &r.resources {
        println!("wrote {}", f.display());
    }
    print_missing(&r.missing, r.missing_file.as_deref());
}

/// The images left out, and where they are listed.
#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_missing(missing: &[crate::collect::Missing], file: Option<&std::path::Path>) {
    for m in missing {
        match m.carried_from {
            Some(seq) => println!(
                "missing: {} (carried over as it was in sequence {seq}): {}",
                m.image, m.reason
            ),
            None => println!("missing: {}: {}", m.image, m.reason),
        }
    }
    if let Some(file) = file {
        println!(
            "{} images failed and were left out (see {}); the next run tries them again",
            missing.len(),
            file.display()
        );
    }
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_create(r: &create::CreateReport) {
    let m = &r.manifest;
    for b in &r.blocked {
        match &b.detection {
            Detection::Name => println!("blocked: {} ({} {:?})", b.image, b.field, b.pattern),
            Detection::Layers { platform } => println!(
                "blocked: {} {platform}: built on base {} ({}; its layers begin with the base's)",
                b.image, b.pattern, b.field
            ),
            Detection::Annotation { platform, key } => println!(
                "blocked: {} {platform}: built on base {} ({}; annotation {key})",
                b.image, b.pattern, b.field
            ),
        }
    }
    print_missing(&r.missing, r.missing_file.as_deref());
    if let Some(seq) = r.unchanged_since {
        println!(
            "no updates since imageset {} sequence {seq}: nothing to ship, no imageset created",
            m.uuid
        );
        return;
    }
    if !r.dry_run_files.is_empty() {
        println!(
            "dry run: {} images, {} blobs, {} would ship",
            m.images.len(),
            m.blobs.len(),
            ByteSize(r.blob_bytes)
        );
        for f in &r.dry_run_files {
            println!("wrote {}", f.display());
        }
        return;
    }
    println!(
        "imageset {} sequence {}: {} images, {} blobs ({}) in {} chunks, {:.1}s",
        m.uuid,
        m.sequence,
        m.images.len(),
        m.blobs.len(),
        ByteSize(r.blob_bytes),
        r.chunks.len(),
        r.elapsed.as_secs_f64()
    );
    for (path, c) in r.chunks.iter().zip(&m.chunks) {
        println!("  {} ({})", path.display(), ByteSize(c.size));
    }
}

#[allow(clippy::print_stdout, reason = "the command's report is its output")]
fn print_delete(r: &crate::delete::DeleteReport, output: OutputFormat) {
    let m = &r.manifest;
    if output == OutputFormat::Json {
        let image = |i: &airlock_imageset::ImageRecord| {
            serde_json::json!({
                "source": i.source,
                "repository": i.repository,
                "tag": i.tag,
                "digest": i.digest,
                "kind": i.kind,
            })
        };
        let doc = serde_json::json!({
            "uuid": m.uuid,
            "sequence": m.sequence,
            "dryRun": r.dry_run,
            "selected": r.selected.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "deletes": m.deletes.iter().map(image).collect::<Vec<_>>(),
            "kept": r.kept.iter().map(|(i, owners)| {
                let mut v = image(i);
                v["neededBy"] = owners.iter().map(ToString::to_string).collect();
                v
            }).collect::<Vec<_>>(),
            "chunks": r.chunks.iter().map(|c| c.display().to_string()).collect::<Vec<_>>(),
        });
        println!("{doc:#}");
        return;
    }
    let verb = if r.dry_run { "would delete" } else { "deletes" };
    for o in &r.selected {
        println!("selected: {o}");
    }
    for i in &m.deletes {
        println!("{verb}: {} ({})", i.source, i.digest);
    }
    for (i, owners) in &r.kept {
        let by: Vec<String> = owners.iter().map(ToString::to_string).collect();
        println!(
            "kept: {} ({}): still needed by {}",
            i.source,
            i.digest,
            by.join(", ")
        );
    }
    if m.deletes.is_empty() {
        println!(
            "nothing to delete: every image the selection names is still needed; no imageset created"
        );
        return;
    }
    if r.dry_run {
        println!(
            "dry run: sequence {} would delete {} images and keep {} listed",
            m.sequence,
            m.deletes.len(),
            m.images.len()
        );
        return;
    }
    println!(
        "delete imageset {} sequence {}: {} images deleted, {} still listed, in {} chunks",
        m.uuid,
        m.sequence,
        m.deletes.len(),
        m.images.len(),
        r.chunks.len()
    );
    for (path, c) in r.chunks.iter().zip(&m.chunks) {
        println!("  {} ({})", path.display(), ByteSize(c.size));
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

    /// Four times `--parallel` small downloads run at once: 0 would start
    /// none, and a huge value would only flood the registry (and overflow
    /// the publisher's semaphore in `mirror`).
    #[test]
    fn parallel_is_from_1_to_256() {
        let commands: [&[&str]; 2] = [
            &["create", "--config", "isc.yaml", "--out", "out"],
            &[
                "mirror",
                "--config",
                "isc.yaml",
                "--to",
                "docker://m.example",
            ],
        ];
        for command in commands {
            let with = |n: &str| {
                let args = [&["airlock-connected"], command, &["--parallel", n]];
                Cli::try_parse_from(args.concat())
            };
            for good in ["1", "256"] {
                assert!(with(good).is_ok(), "{command:?} {good}");
            }
            for bad in ["0", "257", "18446744073709551615", "many"] {
                let e = with(bad).expect_err(bad).to_string();
                assert!(
                    e.contains("expected a number from 1 to 256"),
                    "{command:?} {bad}: {e}"
                );
            }
        }
    }
}
