//! `run`: the connected agent as a service. It runs `create` on a schedule (an
//! interval or a cron expression, in UTC) and on demand (SIGUSR1), writing each
//! imageset into its own directory of an outbox that a diode or a transfer station
//! picks up, and keeps the last `keep` of them.
//!
//! An imageset is written into a hidden `.creating-*` directory of the outbox and
//! renamed to `<sequence>-<uuid>` only when complete, so a transfer station that
//! ignores hidden entries never takes a partial set. A run that finds nothing
//! changed makes no set. A run that fails is logged and the schedule goes on; the
//! workspace records a sequence only once its files are complete, so nothing is
//! lost or skipped.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use airlock_cli::metrics::Endpoint;
use airlock_cli::service::{self, NotifyState};
use airlock_common::duration::Span;
use airlock_common::size::ByteSize;
use airlock_config::{self as config, ConfigError, Problem};
use serde::Deserialize;

use crate::create::{self, CreateOptions, CreateReport};
use crate::error::Error;
use crate::metrics::Metrics;

/// When to create imagesets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Every so long (`30m`, `6h`, `1d`); the first run is at start.
    #[serde(default)]
    pub interval: Option<Span>,
    /// A cron expression (`0 2 * * *`), in UTC.
    #[serde(default)]
    pub cron: Option<String>,
}

/// How to reach the source registries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceConfig {
    /// Require HTTPS with trusted certificates (default true).
    #[serde(default)]
    pub tls_verify: Option<bool>,
    /// Directory of CA certificates.
    #[serde(default)]
    pub cert_dir: Option<PathBuf>,
    /// Credentials file (containers auth.json, a pull secret).
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// HTTP proxy (`http://HOST:PORT`) for the source registries, instead of
    /// the service's HTTPS_PROXY/HTTP_PROXY.
    #[serde(default)]
    pub proxy: Option<String>,
    /// containers-registries.conf(5) for reads of source images (mirrors,
    /// locations, blocked entries), instead of the containers default files.
    #[serde(default)]
    pub registries_conf: Option<PathBuf>,
}

/// The connected agent's configuration (`docs/agent-config.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// The ImageSetConfiguration, read again at every run.
    pub image_set_config: PathBuf,
    /// The connected workspace.
    pub workspace: PathBuf,
    /// Where each imageset's directory is written.
    pub outbox: PathBuf,
    /// Imageset directories kept in the outbox (oldest removed first).
    #[serde(default = "five")]
    pub keep: usize,
    /// When to run.
    pub schedule: ScheduleConfig,
    /// Largest chunk file (`700MiB`); default `archiveSize`, then oc-mirror's.
    #[serde(default)]
    pub limit: Option<ByteSize>,
    /// Parity files per imageset.
    #[serde(default)]
    pub parity: u32,
    /// The imageset format to write (`v2`; `v1` for an older disconnected agent).
    #[serde(default)]
    pub imageset_format: create::ImagesetFormat,
    /// Minisign secret key to sign imagesets with.
    #[serde(default)]
    pub sign_key: Option<PathBuf>,
    /// File holding the key's password.
    #[serde(default)]
    pub sign_password_file: Option<PathBuf>,
    /// Blobs of 1 MiB or more downloaded at once; smaller ones up to four
    /// times as many.
    #[serde(default = "eight")]
    pub parallel: usize,
    /// Source registry access.
    #[serde(default)]
    pub source: SourceConfig,
    /// Leave out images that cannot be pulled, naming them in the imageset
    /// directory's `missing.txt` (oc-mirror's `--continue-on-error`); those the
    /// last imageset listed are carried over. Default: a run stops on the first.
    #[serde(default)]
    pub continue_on_error: bool,
    /// A containers policy.json every image must meet (`--secure-policy`).
    #[serde(default)]
    pub secure_policy: Option<PathBuf>,
    /// `/metrics`, `/healthz` and `/readyz` over HTTP (docs/operations.md);
    /// none: not served.
    #[serde(default)]
    pub metrics: Option<airlock_cli::metrics::MetricsConfig>,
}

fn five() -> usize {
    5
}
fn eight() -> usize {
    8
}

/// When the next run is due.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every so long, from the start.
    Every(Duration),
    /// At the times a cron expression names, UTC.
    Cron(Box<croner::Cron>),
}

impl Schedule {
    /// How long from `now` to the next run.
    pub fn wait(&self, now: chrono::DateTime<chrono::Utc>) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron(c) => c
                .find_next_occurrence(&now, false)
                .ok()
                .and_then(|next| (next - now).to_std().ok())
                .unwrap_or(Duration::from_secs(60)),
        }
    }
}

/// A checked configuration.
#[derive(Debug)]
pub struct Checked {
    /// As written.
    pub config: AgentConfig,
    /// The schedule, parsed.
    pub schedule: Schedule,
    /// Where `/metrics` is served, the address parsed.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Reads and checks the configuration, and the ImageSetConfiguration it names.
pub fn load(path: &Path) -> Result<Checked, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        Error::Config(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let mut docs = config::parse_documents::<AgentConfig>(path, &text, |m| m)?;
    let one = |message: String| {
        Error::Config(config::problems_error(
            path,
            vec![Problem {
                pos: None,
                field: String::new(),
                message,
            }],
        ))
    };
    if docs.len() != 1 {
        return Err(one(format!(
            "expected one YAML document, found {}",
            docs.len()
        )));
    }
    let (config, positions) = docs.remove(0);
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(Problem {
            pos: positions.of(field),
            field: field.into(),
            message,
        })
    };
    let schedule = match (&config.schedule.interval, &config.schedule.cron) {
        (Some(i), None) if i.get() >= Duration::from_secs(1) => Some(Schedule::Every(i.get())),
        (Some(i), None) => {
            problem("schedule.interval", format!("{i}: at least 1s"));
            None
        }
        (None, Some(c)) => match croner::Cron::from_str(c) {
            Ok(cron) => Some(Schedule::Cron(Box::new(cron))),
            Err(e) => {
                problem(
                    "schedule.cron",
                    format!("{c:?}: {e}; expected five fields such as \"0 2 * * *\""),
                );
                None
            }
        },
        _ => {
            problem("schedule", "set interval or cron, one of them".into());
            None
        }
    };
    if config.keep == 0 {
        problem("keep", "must be at least 1".into());
    }
    if !(1..=airlock_cli::MAX_PARALLEL).contains(&config.parallel) {
        problem(
            "parallel",
            format!("must be from 1 to {}", airlock_cli::MAX_PARALLEL),
        );
    }
    for (field, file) in [
        ("signKey", &config.sign_key),
        ("signPasswordFile", &config.sign_password_file),
        ("source.authFile", &config.source.auth_file),
        ("source.registriesConf", &config.source.registries_conf),
    ] {
        if let Some(f) = file
            && !f.is_file()
        {
            problem(field, format!("{} is not a file", f.display()));
        }
    }
    if let Err(e) =
        crate::create::source_options(true, None, None, config.source.registries_conf.as_deref())
    {
        problem("source.registriesConf", e.to_string());
    }
    if let Some(p) = &config.secure_policy
        && let Err(e) = crate::secure_policy::SecurePolicy::load(p, None)
    {
        problem("securePolicy", e.to_string());
    }
    if let Some(p) = &config.source.proxy
        && let Err(e) = airlock_registry::check_proxy(p)
    {
        problem("source.proxy", e.to_string());
    }
    let metrics = match config.metrics.as_ref().map(|m| m.address()) {
        Some(Err(e)) => {
            problem("metrics.listen", e);
            None
        }
        Some(Ok(a)) => Some(a),
        None => None,
    };
    if !problems.is_empty() {
        return Err(Error::Config(config::problems_error(path, problems)));
    }
    // The ImageSetConfiguration is checked now too: a mistake there is found at
    // start, not at the first run hours later.
    create::load_config(&config.image_set_config)?;
    Ok(Checked {
        schedule: schedule.expect("checked"),
        metrics,
        config,
    })
}

const CREATING: &str = ".creating-";

/// The outbox's imageset directories, oldest first (names sort by sequence).
fn sets(outbox: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(outbox)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The agent.
pub struct Agent {
    checked: Checked,
    metrics: Metrics,
    endpoint: Endpoint,
}

/// How long the agent may go without coming round before `/healthz` says it
/// is stuck: it comes round every [`BEAT`] while it waits for the schedule, but
/// not during a run, which may take hours on a large configuration.
const STALL: Duration = Duration::from_secs(12 * 3600);
/// How often the waiting agent says it is alive.
const BEAT: Duration = Duration::from_secs(30);

impl Agent {
    /// An agent for a checked configuration.
    pub fn new(checked: Checked) -> Self {
        let metrics = Metrics::default();
        Agent {
            checked,
            endpoint: Endpoint::new(metrics.registry.clone(), STALL),
            metrics,
        }
    }

    fn options(&self, out: PathBuf) -> Result<CreateOptions, Error> {
        let c = &self.checked.config;
        let password = match &c.sign_password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| Error::io(f, e))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => None,
        };
        Ok(CreateOptions {
            continue_on_error: c.continue_on_error,
            config: c.image_set_config.clone(),
            out,
            workspace: Some(c.workspace.clone()),
            limit: self.checked.config.limit,
            full: false,
            dry_run: false,
            parallel: c.parallel,
            registry: crate::create::source_options(
                c.source.tls_verify.unwrap_or(true),
                c.source.cert_dir.clone(),
                c.source.auth_file.clone(),
                c.source.registries_conf.as_deref(),
            )?,
            sign_key: c.sign_key.clone().map(|k| (k, password)),
            parity: c.parity,
            imageset_format: c.imageset_format,
            releases: Default::default(),
            policy: crate::policy::PolicyOptions {
                secure_policy: c.secure_policy.clone(),
                ..Default::default()
            },
        })
    }

    /// One run: creates the next imageset into the outbox, and keeps the last
    /// `keep`. Returns the new set's directory, or `None` when nothing changed.
    pub async fn run_once(&self) -> Result<Option<PathBuf>, Error> {
        let started = std::time::Instant::now();
        let made = self.make().await;
        self.metrics.ran(
            made.as_ref().ok().map(|(_, report)| report),
            started.elapsed(),
        );
        made.map(|(dest, _)| dest)
    }

    /// [`Self::run_once`], with the run's report.
    async fn make(&self) -> Result<(Option<PathBuf>, CreateReport), Error> {
        let outbox = &self.checked.config.outbox;
        let tmp = outbox.join(format!("{CREATING}{}", uuid::Uuid::new_v4()));
        let report = match self.options(tmp.clone()) {
            Ok(options) => create::create(&options).await,
            Err(e) => Err(e),
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        for m in &report.missing {
            tracing::warn!(image = %m.image, reason = %m.reason, carried_from = ?m.carried_from, "image left out: it cannot be pulled; the next run tries it again");
        }
        if let Some(seq) = report.unchanged_since {
            let _ = std::fs::remove_dir_all(&tmp);
            tracing::info!(
                sequence = seq,
                "nothing changed since this sequence; no imageset made"
            );
            return Ok((None, report));
        }
        let m = &report.manifest;
        let uuid = m.uuid.to_string();
        let name = format!("{:06}-{}", m.sequence, &uuid[..8]);
        let dest = outbox.join(&name);
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        tracing::info!(sequence = m.sequence, %uuid, dir = %dest.display(), chunks = report.chunks.len(), bytes = report.blob_bytes, "imageset written to the outbox");
        let all = sets(outbox).map_err(|e| Error::io(outbox, e))?;
        let keep = self.checked.config.keep;
        for old in all.iter().take(all.len().saturating_sub(keep)) {
            match std::fs::remove_dir_all(old) {
                Ok(()) => {
                    tracing::info!(dir = %old.display(), keep, "old imageset removed from the outbox")
                }
                Err(e) => {
                    tracing::warn!(dir = %old.display(), error = %e, "cannot remove an old imageset")
                }
            }
        }
        Ok((Some(dest), report))
    }

    /// Runs until `shutdown` completes: at start (interval schedules), on the
    /// schedule, and on SIGUSR1.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let outbox = self.checked.config.outbox.clone();
        std::fs::create_dir_all(&outbox).map_err(|e| Error::io(&outbox, e))?;
        // What an interrupted run left.
        for e in std::fs::read_dir(&outbox)
            .map_err(|e| Error::io(&outbox, e))?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(CREATING) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        // The last run that ended well before this start: the newest set.
        if let Some(newest) = sets(&outbox).ok().and_then(|all| all.last().cloned())
            && let Ok(at) = std::fs::metadata(&newest).and_then(|m| m.modified())
        {
            self.metrics.succeeded_at(at);
        }
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| Error::Usage(format!("cannot handle SIGUSR1: {e}")))?;
        if let Some(addr) = self.checked.metrics {
            self.endpoint.serve(addr).await.map_err(|e| {
                Error::Usage(format!(
                    "metrics.listen {addr}: {e}; is another agent running, or is the address not this machine's?"
                ))
            })?;
        }
        self.endpoint.health.set_ready();
        service::notify(&[
            NotifyState::Ready,
            NotifyState::Status("waiting for the schedule"),
        ]);
        let watchdog = service::watchdog();
        tracing::info!(outbox = %outbox.display(), keep = self.checked.config.keep, "connected agent running");
        tokio::pin!(shutdown);
        let mut due = match self.checked.schedule {
            Schedule::Every(_) => Duration::ZERO,
            Schedule::Cron(_) => self.checked.schedule.wait(chrono::Utc::now()),
        };
        'runs: loop {
            let until = tokio::time::Instant::now() + due;
            loop {
                self.endpoint.health.beat();
                tokio::select! {
                    _ = &mut shutdown => break 'runs,
                    _ = tokio::time::sleep_until(until) => break,
                    _ = usr1.recv() => {
                        tracing::info!("SIGUSR1: creating an imageset now");
                        break;
                    }
                    _ = tokio::time::sleep(BEAT) => {}
                }
            }
            service::notify(&[NotifyState::Status("creating an imageset")]);
            tokio::select! {
                _ = &mut shutdown => break 'runs,
                result = self.run_once() => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "creating the imageset failed; trying again on the schedule");
                    }
                }
            }
            service::notify(&[NotifyState::Status("waiting for the schedule")]);
            due = self.checked.schedule.wait(chrono::Utc::now());
        }
        service::notify(&[NotifyState::Stopping]);
        if let Some(w) = watchdog {
            w.abort();
        }
        tracing::info!("connected agent stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The example shipped in deploy/ (and in the packages' /etc/airlock), rooted
    /// in `dir`, with the files it names; `edit` changes its text.
    fn example(dir: &std::path::Path, edit: impl Fn(String) -> String) -> std::path::PathBuf {
        let root = dir.to_str().unwrap();
        let text = include_str!("../../deploy/connected-agent.yaml")
            .replace("/etc/airlock", root)
            .replace("/var/lib/airlock", root);
        for f in ["keys/site-a.key", "pull-secret.json"] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "{}").unwrap();
        }
        // The example ImageSetConfiguration the package installs beside it.
        std::fs::write(
            dir.join("imageset-config.yaml"),
            include_str!("../../deploy/imageset-config.yaml"),
        )
        .unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, edit(text)).unwrap();
        path
    }

    /// A registries.conf the agent cannot use stops it at the configuration
    /// check, before any schedule runs.
    #[test]
    fn a_malformed_registries_conf_is_refused_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(&conf, "[[registry]]\nlocation = 'https://quay.io'\n").unwrap();
        let path = example(dir.path(), |t| {
            t.replacen(
                "source:",
                &format!("source:\n  registriesConf: {}", conf.display()),
                1,
            )
        });
        let Err(e) = super::load(&path) else {
            panic!("a malformed registries.conf was accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("source.registriesConf") && e.contains("registry[0].location"),
            "{e}"
        );
    }

    /// A policy the agent cannot use stops it at the configuration check too.
    #[test]
    fn a_malformed_secure_policy_is_refused_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.json");
        std::fs::write(&policy, r#"{"transports": {}}"#).unwrap();
        let path = example(dir.path(), |t| {
            format!("{t}securePolicy: {}\n", policy.display())
        });
        let Err(e) = super::load(&path) else {
            panic!("a policy without default was accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("securePolicy") && e.contains("missing field `default`"),
            "{e}"
        );
    }

    #[test]
    fn a_metrics_address_is_checked_with_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = example(dir.path(), |t| {
            format!("{t}metrics:\n  listen: 127.0.0.1:9464\n")
        });
        assert_eq!(super::load(&path).unwrap().metrics.unwrap().port(), 9464);
        let path = example(dir.path(), |t| format!("{t}metrics:\n  listen: nowhere\n"));
        let Err(e) = super::load(&path) else {
            panic!("a malformed address was accepted")
        };
        let e = e.to_string();
        assert!(
            e.contains("metrics.listen") && e.contains("expected IP:PORT"),
            "{e}"
        );
    }

    /// A site whose disconnected agent reads only version 1 keeps getting it;
    /// a version this build cannot write is refused at the check, by name.
    #[test]
    fn the_imageset_format_is_v2_unless_the_configuration_asks_for_v1() {
        let dir = tempfile::tempdir().unwrap();
        let format = |path: &std::path::Path| {
            let agent = super::Agent::new(super::load(path).unwrap());
            agent.options(dir.path().join("o")).unwrap().imageset_format
        };
        let set = |v: &str| {
            let v = v.to_string();
            move |t: String| {
                assert!(
                    t.contains("imagesetFormat: v2"),
                    "the example shows the key"
                );
                t.replace("imagesetFormat: v2", &v)
            }
        };
        let path = example(dir.path(), set(""));
        assert_eq!(format(&path), crate::create::ImagesetFormat::V2);
        let path = example(dir.path(), set("imagesetFormat: v1"));
        assert_eq!(format(&path), crate::create::ImagesetFormat::V1);
        let path = example(dir.path(), set("imagesetFormat: v3"));
        let Err(e) = super::load(&path) else {
            panic!("an unknown imageset format was accepted")
        };
        let e = e.to_string();
        assert!(e.contains("imagesetFormat") && e.contains("`v1`"), "{e}");
    }

    /// The example shipped in deploy/ must stay valid.
    #[test]
    fn the_deploy_example_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let path = example(dir.path(), |t| t);
        let checked = super::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(checked.schedule, super::Schedule::Cron(_)));
        assert_eq!(checked.config.keep, 5);
        let wait = checked.schedule.wait(chrono::Utc::now());
        assert!(wait <= std::time::Duration::from_secs(86_400), "{wait:?}");
        // Each run's create leaves out what cannot be pulled, as the example says.
        let agent = super::Agent::new(checked);
        assert!(
            agent
                .options(dir.path().join("o"))
                .unwrap()
                .continue_on_error
        );
    }
}
