//! The disconnected agent's configuration file (`run --config AGENT.yaml`).
//!
//! Checked completely before the agent touches anything: an unknown field, a wrong
//! type, a missing directory, an unreadable key or a malformed registry is an error
//! naming the file, the line and the field, and the agent does not start (exit 64).
//! The format is documented in `docs/agent-config.md`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_common::duration::Span;
use airlock_config::{self as config, ConfigError, Positions, Problem};
use airlock_imageset::signing::TrustStore;
use airlock_oci::reference::Destination;
use serde::Deserialize;

use crate::{cluster_api, control};

/// What to do with the chunk files of an imageset once it is published everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AfterPublish {
    /// Remove them.
    #[default]
    Delete,
    /// Move them to `archiveDir`.
    Archive,
}

/// One cluster whose registry the agent publishes to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// A short name, used in logs, reports and the cluster-resources directory.
    pub name: String,
    /// The cluster's mirror registry: `docker://HOST[:PORT][/PREFIX]`.
    pub registry: String,
    /// The most path components the registry allows in a repository name (Quay,
    /// GitLab, GHCR): deeper names are flattened as oc-mirror's
    /// `--max-nested-paths` does. 0 or none: no limit.
    #[serde(default)]
    pub max_nested_paths: usize,
    /// Require HTTPS with a trusted certificate (false: plain HTTP or untrusted allowed).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Directory of CA certificates (`*.crt`) for this registry.
    #[serde(default)]
    pub cert_dir: Option<PathBuf>,
    /// Credentials file (containers auth.json) for this registry.
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// The cluster's API, through a kubeconfig file (its current context).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's API, by URL and token (instead of `kubeconfig`).
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Prune this cluster's registry (none: the agent's `pruning`).
    #[serde(default)]
    pub pruning: Option<bool>,
}

/// A cluster's API by URL, bearer token and CA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiConfig {
    /// `https://api.cluster.example:6443`.
    pub url: String,
    /// A file holding the bearer token (a service account's).
    pub token_file: PathBuf,
    /// PEM CA of the API server; none: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn eight() -> usize {
    8
}

/// The control plane's TLS files; there is no plaintext mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// PEM certificate chain of the agent.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// PEM CA certificate(s) every client certificate must be signed by.
    #[serde(rename = "clientCA")]
    pub client_ca: PathBuf,
}

/// The control plane (`airlockctl`'s server).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// `HOST:PORT` to listen on (`0.0.0.0:9443`, `[::]:9443`, `10.0.0.5:9443`).
    pub listen: String,
    /// Mutual TLS.
    pub tls: GrpcTls,
}

/// The agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// The site workspace (state and content store).
    pub workspace: PathBuf,
    /// Where imageset files arrive (a diode's output, a mounted share).
    pub drop_dir: PathBuf,
    /// Where files that can never be used are moved, each with a `.reason` file.
    pub quarantine_dir: PathBuf,
    /// What to do with files of published imagesets.
    #[serde(default)]
    pub after_publish: AfterPublish,
    /// Where published files go with `afterPublish: archive`.
    #[serde(default)]
    pub archive_dir: Option<PathBuf>,
    /// Public keys (minisign) imagesets must be signed with. Required unless
    /// `allowUnsigned` is set: a service left unattended must not publish whatever
    /// lands in its drop folder.
    #[serde(default)]
    pub trust: Vec<PathBuf>,
    /// Accept unsigned imagesets (no `trust`); logged as a warning at every start.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// A file is taken once its size and modification time held this long
    /// (default 5s), or at once when it was renamed into the drop directory.
    #[serde(default)]
    pub settle: Option<Span>,
    /// A file shorter than its own first entries say (a writer that paused, not
    /// renamed in) is waited for until it has not changed for this long (default
    /// 1h), then quarantined as truncated.
    #[serde(default)]
    pub stall: Option<Span>,
    /// The drop directory is rescanned this often (default 30s), for shares and
    /// diode proxies that produce no file-system events.
    #[serde(default)]
    pub rescan_interval: Option<Span>,
    /// How long the agent's loop may go without coming round before `/healthz`
    /// says it is stuck; default 3 × `rescanInterval` + 15 minutes.
    #[serde(default)]
    pub healthz_stall: Option<Span>,
    /// Blob transfers at once, per cluster.
    #[serde(default = "eight")]
    pub parallel: usize,
    /// Other registries to fetch layers from that no imageset carries.
    #[serde(default)]
    pub fetch_from: Vec<String>,
    /// Clusters with API access are checked for drift and their versions read this
    /// often (default 5m).
    #[serde(default)]
    pub reconcile_interval: Option<Span>,
    /// On SIGTERM, blob uploads under way are given this long to finish (default
    /// 90s); keep it below systemd's `TimeoutStopSec`.
    #[serde(default)]
    pub stop_grace: Option<Span>,
    /// The durations' first names, in seconds: still read, so that a site's
    /// file keeps working (`settleSeconds: 5` is `settle: 5s`).
    #[serde(default)]
    pub settle_seconds: Option<u64>,
    /// `stall` in seconds.
    #[serde(default)]
    pub stall_seconds: Option<u64>,
    /// `rescanInterval` in seconds.
    #[serde(default)]
    pub rescan_seconds: Option<u64>,
    /// `healthzStall` in seconds.
    #[serde(default)]
    pub healthz_stall_seconds: Option<u64>,
    /// `reconcileInterval` in seconds.
    #[serde(default)]
    pub reconcile_seconds: Option<u64>,
    /// `stopGrace` in seconds.
    #[serde(default)]
    pub stop_grace_seconds: Option<u64>,
    /// Empty the content store once everything is published to every cluster.
    #[serde(default)]
    pub empty_store: bool,
    /// Delete from each registry what the imageset published there no longer lists
    /// (oc-mirror v1's pruning); a cluster's own `pruning` overrides it.
    #[serde(default = "yes")]
    pub pruning: bool,
    /// The old name of `emptyStore`, refused with a pointer to the new names so that
    /// nobody empties the store believing they prune registries, or the reverse.
    #[serde(default)]
    pub prune: Option<serde::de::IgnoredAny>,
    /// The control plane; none: the agent is fed by the drop directory only.
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
    /// `/metrics`, `/healthz` and `/readyz` over HTTP (docs/operations.md);
    /// none: not served.
    #[serde(default)]
    pub metrics: Option<airlock_cli::metrics::MetricsConfig>,
    /// The clusters to publish to.
    pub clusters: Vec<ClusterConfig>,
}

/// One duration under its name and its first name, in seconds.
struct Setting {
    name: &'static str,
    first_name: &'static str,
    span: Option<Span>,
    seconds: Option<u64>,
}

impl Setting {
    /// Its value as written, under either name (the checks refuse both).
    fn written(&self) -> Option<Duration> {
        self.span
            .map(Span::get)
            .or(self.seconds.map(Duration::from_secs))
    }

    /// The name it was given under, for messages.
    fn named(&self) -> &'static str {
        if self.seconds.is_some() {
            self.first_name
        } else {
            self.name
        }
    }
}

impl AgentConfig {
    fn settings(&self) -> [Setting; 6] {
        let s = |name, first_name, span, seconds| Setting {
            name,
            first_name,
            span,
            seconds,
        };
        [
            s("settle", "settleSeconds", self.settle, self.settle_seconds),
            s("stall", "stallSeconds", self.stall, self.stall_seconds),
            s(
                "rescanInterval",
                "rescanSeconds",
                self.rescan_interval,
                self.rescan_seconds,
            ),
            s(
                "healthzStall",
                "healthzStallSeconds",
                self.healthz_stall,
                self.healthz_stall_seconds,
            ),
            s(
                "reconcileInterval",
                "reconcileSeconds",
                self.reconcile_interval,
                self.reconcile_seconds,
            ),
            s(
                "stopGrace",
                "stopGraceSeconds",
                self.stop_grace,
                self.stop_grace_seconds,
            ),
        ]
    }

    fn setting(&self, name: &str) -> Setting {
        self.settings()
            .into_iter()
            .find(|s| s.name == name)
            .expect("a listed setting")
    }

    /// The name duration `name` was given under in the file (its first name,
    /// `...Seconds`, or its name), for messages.
    pub fn named(&self, name: &str) -> &'static str {
        self.setting(name).named()
    }

    fn or(&self, name: &str, default: u64) -> Duration {
        self.setting(name)
            .written()
            .unwrap_or(Duration::from_secs(default))
    }

    /// `settle` as written (or under its first name), else 5s.
    pub fn settle(&self) -> Duration {
        self.or("settle", 5)
    }

    /// `stall` as written (or under its first name), else 1h.
    pub fn stall(&self) -> Duration {
        self.or("stall", 3600)
    }

    /// `rescanInterval` as written (or under its first name), else 30s.
    pub fn rescan_interval(&self) -> Duration {
        self.or("rescanInterval", 30)
    }

    /// `healthzStall` as written (or under its first name), else 3 × rescanInterval + 15m.
    pub fn healthz_stall(&self) -> Duration {
        self.setting("healthzStall").written().unwrap_or_else(|| {
            self.rescan_interval()
                .saturating_mul(3)
                .saturating_add(Duration::from_secs(15 * 60))
        })
    }

    /// `reconcileInterval` as written (or under its first name), else 5m.
    pub fn reconcile_interval(&self) -> Duration {
        self.or("reconcileInterval", 300)
    }

    /// `stopGrace` as written (or under its first name), else 90s.
    pub fn stop_grace(&self) -> Duration {
        self.or("stopGrace", 90)
    }
}

/// A checked configuration, with what it names already resolved.
#[derive(Debug)]
pub struct Checked {
    /// The configuration as written.
    pub config: AgentConfig,
    /// The clusters' destinations, in order.
    pub destinations: Vec<Destination>,
    /// `fetchFrom`, parsed.
    pub fetch_from: Vec<Destination>,
    /// The trusted keys, loaded.
    pub trust: TrustStore,
    /// Where `/metrics` is served, the address parsed.
    pub metrics: Option<std::net::SocketAddr>,
    /// The control plane, its address parsed and TLS files checked.
    pub grpc: Option<control::Server>,
    /// Each cluster's API access, in order (none: registry only).
    pub apis: Vec<Option<cluster_api::Access>>,
}

struct Checker<'a> {
    positions: &'a Positions,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            pos: self.positions.of(field),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn file(&mut self, field: &str, path: &Path) {
        if !path.is_file() {
            self.problem(field, format!("{} is not a file", path.display()));
        }
    }

    fn dir(&mut self, field: &str, path: &Path, must_exist: bool) {
        if path.as_os_str().is_empty() {
            self.problem(field, "must not be empty");
        } else if must_exist && !path.is_dir() {
            self.problem(field, format!("{} is not a directory", path.display()));
        }
    }
}

/// Reads and checks the configuration file; creates nothing.
pub fn load(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut docs = config::parse_documents::<AgentConfig>(path, &text, |m| m)?;
    if docs.len() != 1 {
        return Err(config::problems_error(
            path,
            vec![Problem {
                pos: None,
                field: String::new(),
                message: format!("expected one YAML document, found {}", docs.len()),
            }],
        ));
    }
    let (config, positions) = docs.remove(0);
    let mut c = Checker {
        positions: &positions,
        problems: Vec::new(),
    };
    c.dir("workspace", &config.workspace, false);
    c.dir("dropDir", &config.drop_dir, true);
    c.dir("quarantineDir", &config.quarantine_dir, false);
    if config.drop_dir == config.quarantine_dir {
        c.problem("quarantineDir", "must differ from dropDir");
    }
    match (config.after_publish, &config.archive_dir) {
        (AfterPublish::Archive, None) => {
            c.problem("archiveDir", "afterPublish: archive needs an archiveDir")
        }
        (AfterPublish::Archive, Some(a)) if *a == config.drop_dir => {
            c.problem("archiveDir", "must differ from dropDir")
        }
        (AfterPublish::Delete, Some(_)) => c.problem(
            "archiveDir",
            "is set, but afterPublish is delete; set afterPublish: archive",
        ),
        _ => {}
    }
    if config.prune.is_some() {
        c.problem(
            "prune",
            "was renamed emptyStore (it empties the content store once everything is published everywhere); \
             deleting from registries what imagesets no longer list is pruning (true by default)",
        );
    }
    let named = |name: &str| config.setting(name).named();
    for d in config.settings() {
        if d.span.is_some() && d.seconds.is_some() {
            c.problem(
                d.first_name,
                format!("is the first name of {}; set one of them", d.name),
            );
        }
    }
    if config.stall() < config.settle() {
        c.problem(
            named("stall"),
            format!(
                "{} is less than {} ({}); a paused writer is waited for at least as long as a file settles",
                Span(config.stall()),
                named("settle"),
                Span(config.settle())
            ),
        );
    }
    for name in ["rescanInterval", "healthzStall", "reconcileInterval"] {
        let d = config.setting(name);
        if d.written().is_some_and(|d| d < Duration::from_secs(1)) {
            c.problem(d.named(), "must be at least 1 second");
        }
    }
    // A healthy loop waits up to rescanInterval idle, and about 6 minutes after a
    // failed round before it retries.
    let healthy = config.rescan_interval().max(Duration::from_secs(360));
    let stall = config.healthz_stall();
    if stall >= Duration::from_secs(1) && stall < healthy {
        tracing::warn!(
            healthz_stall_seconds = stall.as_secs(),
            "{} is below what a healthy agent may take between rounds ({}, and about 6m after a failed round): /healthz may say stuck when it is not",
            named("healthzStall"),
            named("rescanInterval")
        );
    }
    if !(1..=airlock_cli::MAX_PARALLEL).contains(&config.parallel) {
        c.problem(
            "parallel",
            format!("must be from 1 to {}", airlock_cli::MAX_PARALLEL),
        );
    }
    let trust = match TrustStore::load(&config.trust) {
        Ok(t) => t,
        Err(e) => {
            c.problem("trust", e.to_string());
            TrustStore::default()
        }
    };
    match (config.trust.is_empty(), config.allow_unsigned) {
        (true, false) => c.problem(
            "trust",
            "is empty: the agent would publish any imageset placed in the drop folder, forged ones included; \
             list the public keys imagesets are signed with (airlock-connected keygen, create --sign-key), \
             or set allowUnsigned: true to accept unsigned imagesets",
        ),
        (false, true) => c.problem(
            "allowUnsigned",
            "is true, but trust lists keys, which require every imageset to be signed; remove one of the two",
        ),
        _ => {}
    }
    if config.clusters.is_empty() {
        c.problem("clusters", "at least one cluster is needed");
    }
    let mut names = HashSet::new();
    let mut destinations = Vec::new();
    let mut apis = Vec::new();
    for (i, cl) in config.clusters.iter().enumerate() {
        let at = format!("clusters[{i}]");
        let name_ok = !cl.name.is_empty()
            && cl.name.len() <= 63
            && cl
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            c.problem(
                &format!("{at}.name"),
                format!(
                    "{:?} must be 1 to 63 lower-case letters, digits or '-'",
                    cl.name
                ),
            );
        } else if !names.insert(cl.name.as_str()) {
            c.problem(
                &format!("{at}.name"),
                format!("duplicate cluster name {:?}", cl.name),
            );
        }
        match cl.registry.parse::<Destination>() {
            Ok(d) => destinations.push(d.with_max_nested_paths(cl.max_nested_paths)),
            Err(e) => c.problem(&format!("{at}.registry"), e.to_string()),
        }
        if let Some(d) = &cl.cert_dir {
            c.dir(&format!("{at}.certDir"), d, true);
        }
        if let Some(f) = &cl.auth_file {
            c.file(&format!("{at}.authFile"), f);
        }
        apis.push(match (&cl.kubeconfig, &cl.api) {
            (Some(_), Some(_)) => {
                c.problem(&format!("{at}.api"), "set kubeconfig or api, not both");
                None
            }
            (Some(k), None) => {
                c.file(&format!("{at}.kubeconfig"), k);
                Some(cluster_api::Access::Kubeconfig(k.clone()))
            }
            (None, Some(a)) => {
                if !a.url.starts_with("https://") {
                    c.problem(
                        &format!("{at}.api.url"),
                        format!("{:?}: expected https://HOST:PORT", a.url),
                    );
                }
                c.file(&format!("{at}.api.tokenFile"), &a.token_file);
                if let Some(ca) = &a.ca {
                    c.file(&format!("{at}.api.ca"), ca);
                }
                Some(cluster_api::Access::Direct {
                    url: a.url.clone(),
                    token_file: a.token_file.clone(),
                    ca: a.ca.clone(),
                })
            }
            (None, None) => None,
        });
    }
    let mut fetch_from = Vec::new();
    for (i, f) in config.fetch_from.iter().enumerate() {
        match f.parse::<Destination>() {
            Ok(d) => fetch_from.push(d),
            Err(e) => c.problem(&format!("fetchFrom[{i}]"), e.to_string()),
        }
    }
    let grpc = config.grpc.as_ref().and_then(|g| {
        let listen = g
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                c.problem(
                    "grpc.listen",
                    format!(
                        "{:?}: {e}; expected HOST:PORT, such as 0.0.0.0:9443",
                        g.listen
                    ),
                )
            })
            .ok();
        let files = airlock_proto::tls::ServerFiles {
            cert: g.tls.cert.clone(),
            key: g.tls.key.clone(),
            client_ca: g.tls.client_ca.clone(),
        };
        let tls = files
            .load()
            .map_err(|e| {
                let field = match &e {
                    airlock_proto::tls::TlsError::Read { path, .. }
                    | airlock_proto::tls::TlsError::Invalid { path, .. } => {
                        if *path == g.tls.client_ca {
                            "grpc.tls.clientCA"
                        } else if *path == g.tls.key {
                            "grpc.tls.key"
                        } else {
                            "grpc.tls.cert"
                        }
                    }
                };
                c.problem(field, e.to_string())
            })
            .ok();
        Some(control::Server {
            listen: listen?,
            tls: tls?,
        })
    });
    let metrics = config
        .metrics
        .as_ref()
        .and_then(|m| m.address().map_err(|e| c.problem("metrics.listen", e)).ok());
    if !c.problems.is_empty() {
        return Err(config::problems_error(path, c.problems));
    }
    Ok(Checked {
        config,
        destinations,
        fetch_from,
        trust,
        metrics,
        grpc,
        apis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Checked, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("drop")).unwrap();
        let text = text.replace("DIR", dir.path().to_str().unwrap());
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        load(&path).map_err(|e| e.to_string())
    }

    const GOOD: &str = "workspace: DIR/ws\ndropDir: DIR/drop\nquarantineDir: DIR/q\nallowUnsigned: true\nclusters:\n- name: prod\n  registry: docker://mirror.example:5000/m\n";

    #[test]
    fn a_minimal_configuration_is_complete_with_defaults() {
        let c = check(GOOD).unwrap();
        assert_eq!(c.config.settle(), Duration::from_secs(5));
        assert_eq!(c.config.rescan_interval(), Duration::from_secs(30));
        assert_eq!(c.config.stall(), Duration::from_secs(3600));
        assert_eq!(c.config.reconcile_interval(), Duration::from_secs(300));
        assert_eq!(c.config.stop_grace(), Duration::from_secs(90));
        assert_eq!(c.config.healthz_stall(), Duration::from_secs(90 + 900));
        assert!(c.config.clusters[0].tls_verify);
        assert_eq!(c.destinations[0].registry(), "mirror.example:5000");
        assert_eq!(c.config.after_publish, AfterPublish::Delete);
        assert_eq!(c.destinations[0].repository_for("ns/app"), "m/ns/app");
        let c = check(&format!("{GOOD}  maxNestedPaths: 2\n")).unwrap();
        assert_eq!(c.destinations[0].repository_for("ns/app"), "m/ns-app");
    }

    #[test]
    fn durations_are_written_with_units_and_their_first_names_still_read_as_seconds() {
        for written in [
            "settle: 10s\nstall: 2h\nrescanInterval: 1m\nhealthzStall: 20m\nreconcileInterval: 90s\nstopGrace: 2m\n",
            "settleSeconds: 10\nstallSeconds: 7200\nrescanSeconds: 60\nhealthzStallSeconds: 1200\nreconcileSeconds: 90\nstopGraceSeconds: 120\n",
        ] {
            let c = check(&format!("{GOOD}{written}")).unwrap().config;
            assert_eq!(
                [
                    c.settle(),
                    c.stall(),
                    c.rescan_interval(),
                    c.healthz_stall(),
                    c.reconcile_interval(),
                    c.stop_grace()
                ],
                [10, 7200, 60, 1200, 90, 120].map(Duration::from_secs),
                "{written}"
            );
        }
        // Without healthzStall, its default follows the rescan interval.
        let c = check(&format!("{GOOD}rescanInterval: 1m\n"))
            .unwrap()
            .config;
        assert_eq!(c.healthz_stall(), Duration::from_secs(3 * 60 + 900));
    }

    #[test]
    fn every_mistake_is_named_with_its_line() {
        let cases = [
            (
                GOOD.replace("dropDir: DIR/drop", "dropDir: DIR/nope"),
                "agent.yaml:2:1: dropDir: ",
            ),
            (
                format!("{GOOD}  tlsVerfy: false\n"),
                "agent.yaml:8:3: clusters[0]: unknown field `tlsVerfy`",
            ),
            (
                GOOD.replace("docker://mirror.example:5000/m", "mirror.example"),
                "agent.yaml:7:3: clusters[0].registry: invalid destination",
            ),
            (
                format!("{GOOD}- name: prod\n  registry: docker://b:1\n"),
                "agent.yaml:8:3: clusters[1].name: duplicate cluster name",
            ),
            (
                format!("{GOOD}trust: [DIR/missing.pub]\n"),
                "agent.yaml:8:1: trust: ",
            ),
            (
                format!("{GOOD}afterPublish: archive\n"),
                "archiveDir: afterPublish: archive needs an archiveDir",
            ),
            (
                format!("{GOOD}settleSeconds: soon\n"),
                "agent.yaml:8:16: settleSeconds: invalid type",
            ),
            (
                format!("{GOOD}settle: soon\n"),
                "agent.yaml:8:9: settle: \"soon\": ",
            ),
            (
                format!("{GOOD}settle: 10s\nsettleSeconds: 10\n"),
                "agent.yaml:9:1: settleSeconds: is the first name of settle; set one of them",
            ),
            (
                format!("{GOOD}settle: 1h\nstall: 5m\n"),
                "agent.yaml:9:1: stall: 5m is less than settle (1h)",
            ),
            (
                format!("{GOOD}settleSeconds: 60\nstallSeconds: 30\n"),
                "stallSeconds: 30s is less than settleSeconds (1m)",
            ),
            (
                format!("{GOOD}rescanInterval: 500ms\n"),
                "agent.yaml:8:1: rescanInterval: must be at least 1 second",
            ),
            (
                format!("{GOOD}reconcileSeconds: 0\n"),
                "agent.yaml:8:1: reconcileSeconds: must be at least 1 second",
            ),
            (
                format!("{GOOD}parallel: 0\n"),
                "agent.yaml:8:1: parallel: must be from 1 to 256",
            ),
            (
                format!("{GOOD}parallel: 100000\n"),
                "agent.yaml:8:1: parallel: must be from 1 to 256",
            ),
            ("workspace: DIR/ws\n".to_string(), "missing field `dropDir`"),
            (
                GOOD.replace("allowUnsigned: true\n", ""),
                "trust: is empty: the agent would publish any imageset placed in the drop folder",
            ),
            (
                format!("{GOOD}trust: [DIR/agent.yaml]\n"),
                "agent.yaml:4:1: allowUnsigned: is true, but trust lists keys",
            ),
            (
                format!("{GOOD}  kubeconfig: DIR/nope\n"),
                "clusters[0].kubeconfig: ",
            ),
            (
                format!(
                    "{GOOD}  kubeconfig: DIR/agent.yaml\n  api:\n    url: https://api:6443\n    tokenFile: DIR/agent.yaml\n"
                ),
                "clusters[0].api: set kubeconfig or api, not both",
            ),
            (
                format!("{GOOD}metrics:\n  listen: localhost\n"),
                "metrics.listen: \"localhost\": invalid socket address syntax; expected IP:PORT",
            ),
            (
                format!("{GOOD}  api:\n    url: http://api:6443\n    tokenFile: DIR/agent.yaml\n"),
                "clusters[0].api.url: \"http://api:6443\": expected https://HOST:PORT",
            ),
            (
                format!(
                    "{GOOD}grpc:\n  listen: 127.0.0.1:9443\n  tls:\n    cert: DIR/none.crt\n    key: DIR/none.key\n    clientCA: DIR/ca.crt\n"
                ),
                "grpc.tls.cert: ",
            ),
        ];
        for (text, want) in cases {
            let err = check(&text).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }
}

#[cfg(test)]
mod example {
    /// The example shipped in deploy/ must stay valid: its directories are made
    /// relative to a temporary root, the rest is checked as written.
    #[test]
    fn the_deploy_example_is_valid() {
        let text = include_str!("../../deploy/disconnected-agent.yaml");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let text = text
            .replace("/var/lib/airlock", root)
            .replace("/etc/airlock", root);
        std::fs::create_dir_all(dir.path().join("drop")).unwrap();
        std::fs::create_dir_all(dir.path().join("certs/mirror-b")).unwrap();
        std::fs::create_dir_all(dir.path().join("trusted")).unwrap();
        airlock_imageset::signing::generate(&dir.path().join("trusted/site-a"), None).unwrap();
        // The certificates, as the documented script makes them.
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/make-certs.sh");
        let made = std::process::Command::new(script)
            .arg(dir.path().join("tls"))
            .arg("airlock.example,10.0.0.5")
            .arg("admin")
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        let checked = super::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checked.destinations.len(), 2);
        assert!(!checked.trust.is_empty());
        assert_eq!(checked.grpc.unwrap().listen.port(), 9443);
    }
}
