//! `run`: the disconnected agent as a service, fed by a drop directory.
//!
//! One loop, woken by file-system events (`notify`), by a periodic rescan (network
//! shares and diode proxies often produce no events), by the moment a file is due
//! to have settled, and by retries of registries that were down:
//!
//! 1. A file is taken only when complete: its size and modification time held for
//!    `settleSeconds`, or it was renamed into the directory (a writer that writes
//!    `x.part` and renames it). Hidden, `.part` and `.tmp` files are never looked at.
//! 2. Files that can never be used — not a chunk, damaged beyond what parity
//!    repairs, signed by an untrusted key, of another workspace — go to the
//!    quarantine directory with a `.reason` file beside them; the agent carries on.
//! 3. Complete imagesets are verified and accepted in sequence order (interleaved
//!    imagesets and duplicates are fine), exactly as `publish` does.
//! 4. Everything accepted is published to every cluster, each publish a task of
//!    its own that may outlive the round: a registry that is down is retried with
//!    backoff, and one that hangs holds back neither the others nor the rounds
//!    that take new imagesets in meanwhile.
//! 5. The files of an imageset published to every cluster are deleted or archived.
//!
//! Every step commits its state only when done, so a SIGKILL at any point loses
//! nothing and takes nothing twice: after a restart the same files are found, and
//! what was not recorded is done again. On SIGTERM no new blob upload starts and
//! those under way are given `stopGraceSeconds` to finish (a registry keeps a blob
//! only once its upload completes, so abandoning one after that is equally safe).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_cli::metrics::Endpoint;
use airlock_cli::service;
use airlock_common::exit_codes;
use airlock_common::size::ByteSize;
use airlock_imageset::read::ChunkError;
use airlock_oci::digest::Digest;
use airlock_registry::auth::AuthSource;
use airlock_registry::{RegistryClient, RegistryOptions};
use notify::Watcher;

use crate::metrics::{Metrics, Quarantine};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use airlock_oci::reference::Destination;

use crate::agent_config::{self, AfterPublish, AgentConfig, Checked};
use crate::cluster_api::{self, Applied, ClusterApi, Withdrawn};
use crate::control;
use crate::error::Error;
use crate::fanout::SharedReads;
use crate::messages::{ClusterPlan, Command, Commands, Round};
use crate::scan;
use crate::settle::Tracker;
use crate::site::{Outcome, Pass, Report, Site, Target};
use crate::source::Mirror;
use crate::status::{AgentEvent, ApiView, ClusterView, EventKind, PruneView, Refused, Status};

/// Longest wait between retries of a registry that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the loop wakes up for.
pub(crate) enum Event {
    /// Something changed in the drop directory; renamed-in files are complete.
    Changed(Vec<PathBuf>),
    /// Time to look again (rescan, a file settling, a retry).
    Tick,
    /// SIGHUP: read the configuration again.
    Reload,
    /// A request of the control plane.
    Command(Command),
    /// A publish to one cluster ended, after the round that started it.
    Finished(Box<Joined>),
}

/// Whom to answer when the round is done.
enum Reply {
    None,
    Ingest(
        Vec<PathBuf>,
        oneshot::Sender<Result<(Vec<PathBuf>, Round), String>>,
    ),
    Publish(oneshot::Sender<Round>),
}

struct Cluster {
    access: Option<cluster_api::Access>,
    kube: Option<ClusterApi>,
    /// Objects no longer published but left on the cluster (someone else
    /// manages them too), as found at the last apply: noted at every check.
    left: Vec<String>,
    /// When its API is due to be checked again.
    next_check: Instant,
    name: String,
    options: RegistryOptions,
    /// Delete from its registry what the published imageset no longer lists.
    pruning: bool,
    target: Option<Target>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The running agent.
pub struct Daemon {
    config: AgentConfig,
    /// Where the configuration is re-read from on SIGHUP.
    config_path: Option<PathBuf>,
    grpc: Option<control::Server>,
    /// Counted as it happens; served at `metrics_at`.
    metrics: Arc<Metrics>,
    /// What serves `metrics` at `metrics_at`, and `/healthz` and `/readyz`.
    endpoint: Endpoint,
    metrics_at: Option<std::net::SocketAddr>,
    destinations: Vec<Destination>,
    fetch_dests: Vec<Destination>,
    site: Arc<Site>,
    status: Arc<Status>,
    clusters: Vec<Cluster>,
    fetch_from: Vec<Mirror>,
    tracker: Tracker,
    /// Cancelled on SIGTERM: the uploads under way finish, no new one starts.
    stop: CancellationToken,
    /// Publishes under way, one per cluster at most. They outlive the round that
    /// started them, so a registry that hangs holds back no other cluster and no
    /// imageset arriving meanwhile.
    in_flight: tokio::task::JoinSet<Done>,
    /// The clusters publishing, by name (SIGHUP may reorder the list meanwhile).
    publishing: HashMap<String, tokio::task::AbortHandle>,
    /// What the last round said (an imageset waiting, a file missing): a state is
    /// logged when it begins, not at every round while it lasts, which may be days.
    said: HashSet<String>,
    /// Manifests (by digest) accepted, or found the same as one accepted, whose
    /// files wait in the drop directory to be published everywhere: later scans
    /// do not hold them, so a cluster down for long does not make them fill the
    /// bound on manifests held and keep new imagesets out.
    known: HashSet<Digest>,
    /// After a round failed: no round (but for requests and ended publishes)
    /// before this, and the pause that set it, doubled at each failure.
    round_pause: Option<(Instant, Duration)>,
}

/// A publish task that ended, with its task id.
pub(crate) type Joined = Result<(tokio::task::Id, Done), tokio::task::JoinError>;

/// A publish to one cluster that ended.
pub(crate) struct Done {
    cluster: String,
    batch: Arc<Batch>,
    result: Result<(), Error>,
    report: Report,
    took: Duration,
}

/// Clusters whose publishes started together, sharing their store reads.
struct Batch {
    reads: Arc<SharedReads>,
    uploaded: std::sync::atomic::AtomicU64,
}

/// A test hook, as `AIRLOCK_CRASH_AT` is one: once the file that
/// `AIRLOCK_TEST_STALL_WHEN` names exists, a round never ends, as a loop
/// stuck on a hung call would not (what `/healthz` must show).
async fn stall_point() {
    if std::env::var_os("AIRLOCK_TEST_STALL_WHEN").is_some_and(|f| Path::new(&f).exists()) {
        tracing::warn!("AIRLOCK_TEST_STALL_WHEN: the loop stalls here");
        std::future::pending::<()>().await;
    }
}

/// `d` give or take a fifth, at random.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// A copy raises many events; takes them as one change: waits until events stop
/// for a moment (at most two seconds in all). Returns the paths renamed in
/// meanwhile, and an event of another kind that arrived, to be handled next.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<Event>) -> (Vec<PathBuf>, Option<Event>) {
    const QUIET: Duration = Duration::from_millis(200);
    let until = Instant::now() + Duration::from_secs(2);
    let mut renamed = Vec::new();
    loop {
        let wait = QUIET.min(until.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            return (renamed, None);
        }
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Event::Changed(more))) => renamed.extend(more),
            Ok(Some(other)) => return (renamed, Some(other)),
            Ok(None) | Err(_) => return (renamed, None),
        }
    }
}

/// Begins a stop: no new upload starts, and those under way are finished rather
/// than thrown away (over a slow link one may have taken hours). Returns the
/// deadline they are given.
fn begin_stop(stop: &CancellationToken, grace: Duration) -> Instant {
    stop.cancel();
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping: finishing the uploads under way"
    );
    Instant::now() + grace
}

/// Moves `file` into `dir` (a suffix keeps names unique); across file systems, copies.
pub(crate) fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mut target = dir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    if std::fs::rename(file, &target).is_err() {
        std::fs::copy(file, &target)?;
        std::fs::remove_file(file)?;
    }
    Ok(target)
}

/// The clusters of `config` in their initial state, with their views.
fn fresh_clusters(
    config: &AgentConfig,
    destinations: &[Destination],
    apis: Vec<Option<cluster_api::Access>>,
) -> (Vec<Cluster>, Vec<ClusterView>) {
    config
        .clusters
        .iter()
        .zip(destinations)
        .zip(apis)
        .map(|((c, d), access)| {
            let view = ClusterView {
                name: c.name.clone(),
                registry: d.clone(),
                publishing: false,
                last_error: None,
                retry_at: None,
                api: access.as_ref().map(|_| ApiView::default()),
                pruning: None,
            };
            let cluster = Cluster {
                access,
                kube: None,
                left: Vec::new(),
                next_check: Instant::now(),
                name: c.name.clone(),
                options: RegistryOptions {
                    tls_verify: c.tls_verify,
                    cert_dir: c.cert_dir.clone(),
                    auth: AuthSource::new(c.auth_file.clone()),
                    mirrors: None,
                },
                pruning: c.pruning.unwrap_or(config.pruning),
                target: None,
                retry_at: None,
                backoff: Duration::from_secs(1),
            };
            (cluster, view)
        })
        .unzip()
}

impl Daemon {
    /// Re-reads the configuration from `path` on SIGHUP.
    pub fn reload_from(mut self, path: &Path) -> Self {
        self.config_path = Some(path.to_path_buf());
        self
    }

    /// Takes the cluster list (and the settings that need no restart) from the
    /// configuration file again. A cluster whose name, registry and access are
    /// unchanged keeps its state (connection, backoff); a new one starts from
    /// nothing and is brought up to the current state by the next round. A file
    /// that does not check out changes nothing: the agent carries on as it was.
    fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            return;
        };
        let checked = match agent_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; the agent carries on with the one it had");
                return;
            }
        };
        let old = &self.config;
        let new = &checked.config;
        for (field, changed) in [
            ("workspace", old.workspace != new.workspace),
            ("dropDir", old.drop_dir != new.drop_dir),
            ("quarantineDir", old.quarantine_dir != new.quarantine_dir),
            ("trust", old.trust != new.trust),
            ("allowUnsigned", old.allow_unsigned != new.allow_unsigned),
            (
                "grpc",
                old.grpc.as_ref().map(|g| &g.listen) != new.grpc.as_ref().map(|g| &g.listen),
            ),
            ("metrics", old.metrics != new.metrics),
        ] {
            if changed {
                tracing::warn!(
                    field,
                    "this field changed but takes effect only at a restart"
                );
            }
        }
        let (mut clusters, views) =
            fresh_clusters(new, &checked.destinations, checked.apis.clone());
        let mut kept = Vec::new();
        for (i, c) in clusters.iter_mut().enumerate() {
            let same = self
                .config
                .clusters
                .iter()
                .position(|o| *o == new.clusters[i]);
            if let Some(j) = same {
                let pruning = c.pruning;
                std::mem::swap(c, &mut self.clusters[j]);
                // The agent-wide `pruning` may have changed under it.
                c.pruning = pruning;
                kept.push(c.name.clone());
            }
        }
        let added: Vec<&str> = clusters
            .iter()
            .filter(|c| !kept.contains(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        let removed: Vec<&str> = self
            .clusters
            .iter()
            .filter(|o| !clusters.iter().any(|c| c.name == o.name))
            .map(|o| o.name.as_str())
            .collect();
        tracing::info!(added = ?added, removed = ?removed, kept = kept.len(), "configuration reloaded");
        // A publish to a cluster removed or changed is stopped; a registry keeps
        // nothing of an unfinished upload.
        self.publishing.retain(|name, task| {
            let keep = kept.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        let fetch_changed = old.fetch_from != new.fetch_from;
        let grpc_tls = self.config.grpc.clone();
        let (workspace, drop_dir, quarantine_dir, trust, allow_unsigned) = (
            self.config.workspace.clone(),
            self.config.drop_dir.clone(),
            self.config.quarantine_dir.clone(),
            self.config.trust.clone(),
            self.config.allow_unsigned,
        );
        self.config = checked.config;
        // What needs a restart stays as the agent started with it.
        self.config.grpc = grpc_tls;
        self.config.workspace = workspace;
        self.config.drop_dir = drop_dir;
        self.config.quarantine_dir = quarantine_dir;
        self.config.trust = trust;
        self.config.allow_unsigned = allow_unsigned;
        self.destinations = checked.destinations;
        if fetch_changed {
            self.fetch_dests = checked.fetch_from;
            self.fetch_from.clear();
        }
        // Kept clusters keep what was seen of them.
        let before = self.status.clusters();
        let views: Vec<ClusterView> = views
            .into_iter()
            .map(|v| {
                before
                    .iter()
                    .find(|b| kept.contains(&v.name) && b.name == v.name)
                    .cloned()
                    .unwrap_or(v)
            })
            .collect();
        self.clusters = clusters;
        self.status.set_clusters(views);
    }

    /// Opens the workspace and prepares the clusters; contacts no registry yet.
    pub fn new(cfg: Checked) -> Result<Self, Error> {
        let Checked {
            config,
            destinations,
            fetch_from,
            trust,
            metrics: metrics_at,
            grpc,
            apis,
        } = cfg;
        if config.allow_unsigned {
            tracing::warn!(
                drop_dir = %config.drop_dir.display(),
                "allowUnsigned: imagesets are published without a signature; anyone who can place files in the drop folder can publish images to every cluster. Set trust to the keys imagesets are signed with"
            );
        }
        let site = Arc::new(Site::open(&config.workspace, trust)?);
        std::fs::create_dir_all(&config.quarantine_dir)
            .map_err(|e| Error::io(&config.quarantine_dir, e))?;
        control::clear_staging(&config.drop_dir).map_err(|e| Error::io(&config.drop_dir, e))?;
        let (clusters, views) = fresh_clusters(&config, &destinations, apis);
        let status = Arc::new(Status::new(site.clone(), config.drop_dir.clone(), views));
        // A round (verifying a large imageset among them) may keep the loop
        // away this long before it counts as stuck.
        let metrics = Arc::new(Metrics::new(status.clone()));
        let stall = Duration::from_secs(
            config.healthz_stall_seconds.unwrap_or(
                config
                    .rescan_seconds
                    .saturating_mul(3)
                    .saturating_add(15 * 60),
            ),
        );
        Ok(Daemon {
            endpoint: Endpoint::new(metrics.registry.clone(), stall),
            metrics,
            metrics_at,
            config,
            config_path: None,
            grpc,
            destinations,
            fetch_dests: fetch_from,
            site,
            status,
            clusters,
            fetch_from: Vec::new(),
            tracker: Tracker::default(),
            stop: CancellationToken::new(),
            in_flight: tokio::task::JoinSet::new(),
            publishing: HashMap::new(),
            said: HashSet::new(),
            known: HashSet::new(),
            round_pause: None,
        })
    }

    fn settle(&self) -> Duration {
        Duration::from_secs(self.config.settle_seconds)
    }

    /// The shared view of this agent (what the control plane serves).
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let drop_dir = self.config.drop_dir.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::EventKind::{Access, Modify};
                // Reading a file (every round reads chunk heads) is no change; waking
                // for it would spin while an incomplete imageset waits.
                if matches!(ev.kind, Access(_)) {
                    return;
                }
                use notify::event::{ModifyKind, RenameMode};
                let renamed = match ev.kind {
                    Modify(ModifyKind::Name(RenameMode::To)) => ev.paths.clone(),
                    Modify(ModifyKind::Name(RenameMode::Both)) => {
                        ev.paths.last().cloned().into_iter().collect()
                    }
                    _ => Vec::new(),
                };
                let _ = events.send(Event::Changed(renamed));
            }
        });
        match watcher
            .as_mut()
            .map(|w| w.watch(&drop_dir, notify::RecursiveMode::NonRecursive))
        {
            Ok(Ok(())) => tracing::info!(dir = %drop_dir.display(), "watching the drop directory"),
            _ => {
                tracing::warn!(dir = %drop_dir.display(), "file-system events unavailable; relying on rescans")
            }
        }
        // The control plane is bound before readiness is reported, so that a port
        // already in use stops the agent rather than leaving it half up.
        let (stop_grpc, grpc_stopped) = tokio::sync::watch::channel(false);
        let server = match self.grpc.take() {
            Some(server) => Some(
                server
                    .start(
                        self.status.clone(),
                        Commands::new({
                            let tx = tx.clone();
                            move |command| tx.send(Event::Command(command)).is_ok()
                        }),
                        grpc_stopped,
                    )
                    .await?,
            ),
            None => None,
        };
        if let Some(addr) = self.metrics_at {
            self.endpoint
                .serve(addr)
                .await
                .map_err(|source| Error::Bind {
                    field: "metrics.listen",
                    addr,
                    source,
                })?;
        }
        self.endpoint.health.set_ready();
        let rescan = Duration::from_secs(self.config.rescan_seconds);
        tracing::info!(
            workspace = %self.config.workspace.display(),
            clusters = self.clusters.len(),
            settle_seconds = self.config.settle_seconds,
            rescan_seconds = self.config.rescan_seconds,
            "disconnected agent running"
        );
        // Ready for systemd (Type=notify): the configuration was checked, the
        // workspace opened, the drop directory watched and the control plane bound.
        service::notify(&[
            service::NotifyState::Ready,
            service::NotifyState::Status("watching the drop directory"),
        ]);
        let watchdog = service::watchdog();
        let hangups = tx.clone();
        let hangup = tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                if hangups.send(Event::Reload).is_err() {
                    break;
                }
            }
        });
        tokio::pin!(shutdown);
        let _ = tx.send(Event::Tick);
        // When stopping began during a round: the deadline, and whether the round
        // ended by it.
        let mut stopping: Option<(Instant, bool)> = None;
        // An event that ended a debounce, handled next.
        let mut held: Option<Event> = None;
        loop {
            self.endpoint.health.beat();
            self.show_publishing();
            let wake = self.next_wake(rescan);
            let event = match held.take() {
                Some(e) => e,
                None => tokio::select! {
                    _ = &mut shutdown => break,
                    ev = rx.recv() => ev.unwrap_or(Event::Tick),
                    Some(done) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => Event::Finished(Box::new(done)),
                    _ = tokio::time::sleep_until(wake.into()) => Event::Tick,
                },
            };
            if matches!(event, Event::Changed(_)) {
                let (renamed, next) = debounce(&mut rx).await;
                self.tracker.renamed.extend(renamed);
                held = next;
            }
            let mut reply = Reply::None;
            let mut finished = None;
            match event {
                Event::Finished(done) => finished = Some(*done),
                Event::Changed(renamed) => self.tracker.renamed.extend(renamed),
                Event::Tick => {}
                Event::Reload => self.reload(),
                Event::Command(Command::Ingest { staged, reply: r }) => match self.place(&staged) {
                    Ok(placed) => reply = Reply::Ingest(placed, r),
                    Err(e) => {
                        let _ = r.send(Err(e.to_string()));
                        continue;
                    }
                },
                Event::Command(Command::Reconcile { cluster, reply: r }) => {
                    for i in 0..self.clusters.len() {
                        if cluster.as_ref().is_none_or(|n| *n == self.clusters[i].name) {
                            self.reconcile(i, true).await;
                        }
                    }
                    let _ = r.send(());
                    continue;
                }
                Event::Command(Command::Plan { cluster, reply: r }) => {
                    let mut plans = Vec::new();
                    for i in 0..self.clusters.len() {
                        if cluster.as_ref().is_none_or(|n| *n == self.clusters[i].name) {
                            plans.push(self.plan(i).await);
                        }
                    }
                    let _ = r.send(plans);
                    continue;
                }
                Event::Command(Command::Publish { cluster, reply: r }) => {
                    for c in &mut self.clusters {
                        if cluster.as_ref().is_none_or(|n| *n == c.name) {
                            c.retry_at = None;
                        }
                    }
                    reply = Reply::Publish(r);
                }
            }
            // After a failed round, changes and ticks wait for the pause to end
            // (what changed meanwhile is kept by the tracker and the next round
            // sees it); a request or an ended publish is served at once.
            if matches!(reply, Reply::None)
                && finished.is_none()
                && self
                    .round_pause
                    .is_some_and(|(until, _)| Instant::now() < until)
            {
                continue;
            }
            let stop = self.stop.clone();
            let grace = Duration::from_secs(self.config.stop_grace_seconds);
            let result = {
                let round = self.round(finished, !matches!(reply, Reply::None));
                tokio::pin!(round);
                tokio::select! {
                    _ = &mut shutdown => {
                        let deadline = begin_stop(&stop, grace);
                        stopping = Some((deadline, tokio::time::timeout_at(deadline.into(), &mut round).await.is_ok()));
                        break;
                    }
                    result = &mut round => result,
                }
            };
            match result {
                Ok(round) => {
                    if self.round_pause.take().is_some() {
                        tracing::info!("rounds work again");
                    }
                    match reply {
                        Reply::None => {}
                        Reply::Ingest(placed, r) => {
                            let _ = r.send(Ok((placed, round)));
                        }
                        Reply::Publish(r) => {
                            let _ = r.send(round);
                        }
                    }
                }
                Err(e) => {
                    let pause = self
                        .round_pause
                        .map_or(Duration::from_secs(1), |(_, p)| (p * 2).min(MAX_BACKOFF));
                    let pause = jitter(pause);
                    tracing::error!(error = %e, retry_in_s = pause.as_secs(), "round failed; retrying with backoff");
                    self.round_pause = Some((Instant::now() + pause, pause));
                }
            }
        }
        self.finish_in_flight(stopping).await;
        service::notify(&[service::NotifyState::Stopping]);
        self.status.set_activity("stopping");
        // Requests in flight finish; watchers are told the stream ends.
        let _ = stop_grpc.send(true);
        if let Some(server) = server {
            server.drain().await;
        }
        hangup.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        tracing::info!("disconnected agent stopped");
        Ok(())
    }

    /// On the way out: lets the publishes under way finish their uploads, by the
    /// deadline set when stopping began during a round (else `stopGraceSeconds`
    /// from now), and records what they published.
    async fn finish_in_flight(&mut self, stopping: Option<(Instant, bool)>) {
        let grace = Duration::from_secs(self.config.stop_grace_seconds);
        let (deadline, mut in_time) = match stopping {
            Some(s) => s,
            None if self.in_flight.is_empty() => return,
            None => (begin_stop(&self.stop, grace), true),
        };
        let mut round = Round::default();
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline.into(), self.in_flight.join_next_with_id()).await
            {
                Ok(Some(done)) => self.finished(done, &mut round),
                Ok(None) => break,
                Err(_) => {
                    in_time = false;
                    self.in_flight.abort_all();
                    break;
                }
            }
        }
        if in_time {
            tracing::info!("uploads under way finished");
        } else {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "uploads under way did not finish in stopGraceSeconds and were abandoned; \
                 a registry keeps no part of an unfinished blob, and they are sent again on the next start"
            );
        }
    }

    /// Moves files received over the control plane into the drop directory, as
    /// renamed-in (complete) files.
    fn place(&mut self, staged: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
        let drop_dir = &self.config.drop_dir;
        let mut placed = Vec::new();
        for f in staged {
            let to = move_into(f, drop_dir).map_err(|e| Error::io(drop_dir, e))?;
            tracing::info!(file = %f.display(), placed = %to.display(), "file received over the control plane");
            placed.push(to);
        }
        self.tracker.renamed.extend(placed.iter().cloned());
        Ok(placed)
    }

    fn next_wake(&self, rescan: Duration) -> Instant {
        let now = Instant::now();
        if let Some((until, _)) = self.round_pause
            && until > now
        {
            return until;
        }
        let mut wake = now + rescan;
        let stall = Duration::from_secs(self.config.stall_seconds);
        if let Some(d) = self.tracker.next_deadline(self.settle(), stall, now) {
            wake = wake.min(d);
        }
        // A cluster publishing is looked at again when its publish ends.
        for c in self
            .clusters
            .iter()
            .filter(|c| !self.publishing.contains_key(&c.name))
        {
            if let Some(r) = c.retry_at {
                wake = wake.min(r.max(now));
            }
            if c.access.is_some() {
                wake = wake.min(c.next_check.max(now));
            }
        }
        wake
    }

    fn quarantine(&self, file: &Path, why: Quarantine, reason: &str, round: &mut Round) {
        match move_into(file, &self.config.quarantine_dir) {
            Ok(moved) => {
                self.metrics.quarantined(why);
                let note = format!(
                    "{}: {reason}\n",
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                let _ = std::fs::write(PathBuf::from(format!("{}.reason", moved.display())), note);
                tracing::warn!(file = %file.display(), quarantined = %moved.display(), %reason, "file quarantined");
                let mut event = AgentEvent::now(EventKind::Quarantined, reason);
                event.file = Some(file.to_path_buf());
                self.status.emit(event);
                round
                    .quarantined
                    .push((file.to_path_buf(), reason.to_string()));
            }
            Err(e) => tracing::error!(file = %file.display(), error = %e, "cannot quarantine"),
        }
    }

    /// Removes from quarantine the truncated copies of `files` (a writer that
    /// stalled too long, then a complete resend under the same name): the complete
    /// file was just taken, so the partial one is of no use to anyone.
    fn replace_partials(&self, files: &[PathBuf]) {
        for f in files {
            let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let copies = std::iter::once(name.clone()).chain((1..).map(|n| format!("{name}.{n}")));
            for copy in copies {
                let partial = self.config.quarantine_dir.join(&copy);
                let reason = PathBuf::from(format!("{}.reason", partial.display()));
                let Ok(why) = std::fs::read_to_string(&reason) else {
                    break;
                };
                // Only a file quarantined as this very file, truncated: the
                // reason is "<time>: <path>: truncated ...", and text quoted from
                // a forged manifest cannot begin with the path.
                let truncated = format!("{}: truncated", f.display());
                if why
                    .split_once(": ")
                    .is_some_and(|(_, rest)| rest.starts_with(&truncated))
                {
                    let _ = std::fs::remove_file(&partial);
                    let _ = std::fs::remove_file(&reason);
                    tracing::info!(file = %partial.display(), "removed a truncated copy of a file now taken whole");
                }
            }
        }
    }

    /// One pass over the drop directory and the clusters. With `answering`, a
    /// request waits for the round's answer, which then covers every publish
    /// under way, however long they take.
    async fn round(&mut self, finished: Option<Joined>, answering: bool) -> Result<Round, Error> {
        stall_point().await;
        let mut round = Round::default();
        if let Some(done) = finished {
            self.finished(done, &mut round);
        }
        let drop_dir = self.config.drop_dir.clone();
        let files = scan::list(&drop_dir).map_err(|e| Error::io(&drop_dir, e))?;
        let settled = self.tracker.settled(&files, self.settle(), Instant::now());
        let known = &self.known;
        let found =
            scan::read_heads_within(settled, scan::HELD_MANIFEST_BYTES, &|d| known.contains(d));
        let mut report = Report::default();
        for p in &found.other {
            self.quarantine(
                p,
                Quarantine::NotImageset,
                "not an Airlock imageset chunk",
                &mut round,
            );
        }
        if !found.deferred.is_empty() {
            report.problem(
                exit_codes::INCOMPLETE,
                format!(
                    "{} chunk files wait: the imagesets before them hold {} of manifests, the most held at once; they are read once those are published and removed",
                    found.deferred.len(),
                    ByteSize(scan::HELD_MANIFEST_BYTES as u64)
                ),
            );
        }
        let stall = Duration::from_secs(self.config.stall_seconds);
        for e in &found.damaged {
            // A file shorter than its own first entries say, that was not renamed
            // in, may be a writer that paused: it is judged when it is complete,
            // or once it has not changed for stallSeconds.
            if let ChunkError::Truncated { path, reason } = e
                && let Some(quiet) = self.tracker.unchanged_for(path, Instant::now())
                && quiet < stall
            {
                report.problem(
                            exit_codes::INCOMPLETE,
                            format!(
                                "{}: {reason}; waiting for the rest (quarantined if it does not change for {} s)",
                                path.display(),
                                stall.as_secs()
                            ),
                        );
                continue;
            }
            self.quarantine(e.path(), Quarantine::Unreadable, &e.to_string(), &mut round);
        }
        // An empty workspace first looks for the state an earlier machine recorded
        // in a registry; until one answers, nothing is taken in, or accepting
        // sequence 1 here would roll that registry back.
        let mut hold = false;
        if self.site.ws.accepted()?.is_none() && !found.imagesets.is_empty() {
            let uuids: Vec<Uuid> = found.imagesets.keys().map(|(u, _)| *u).collect();
            let now = Instant::now();
            let due = (0..self.clusters.len())
                .find(|&i| self.clusters[i].retry_at.is_none_or(|r| r <= now));
            hold = true;
            if let Some(i) = due
                && let Some((_, target)) = self.targets(&[i]).await.pop()
            {
                match self.site.continue_from_registry(&target, &uuids).await {
                    Ok(from) => {
                        report.continued_from = from;
                        hold = false;
                    }
                    Err(e) => self.failed(
                        i,
                        &format!("reading the workspace state recorded in the registry: {e}"),
                    ),
                }
            }
            if hold {
                report.problem(
                    exit_codes::INCOMPLETE,
                    format!(
                        "{} imagesets wait: the workspace is empty, and no cluster's registry answered to say whether an earlier machine recorded a later state there; they are taken once one does",
                        found.imagesets.len()
                    ),
                );
            }
        }
        if !found.imagesets.is_empty() && !hold {
            self.status.set_activity("taking imagesets in");
        }
        let outcomes = if hold {
            Vec::new()
        } else {
            self.site.accept(&drop_dir, &found, &mut report).await?
        };
        self.say(&report);
        for (uuid, sequence, blobs) in &report.accepted {
            self.metrics.accepted();
            let mut event = AgentEvent::now(
                EventKind::Accepted,
                format!("imageset verified and accepted ({blobs} blobs stored)"),
            );
            event.imageset = Some((*uuid, *sequence));
            self.status.emit(event);
        }
        for (key, outcome) in outcomes {
            let files: Vec<PathBuf> = found
                .imagesets
                .get(&key)
                .map(|c| {
                    c.chunks
                        .values()
                        .chain(c.parity.values())
                        .chain(&c.spares)
                        .map(|h| h.path.clone())
                        .chain(c.conflicting.iter().cloned())
                        .collect()
                })
                .unwrap_or_default();
            if matches!(outcome, Outcome::Accepted | Outcome::Duplicate)
                && let Some(c) = found.imagesets.get(&key)
            {
                self.known.insert(c.manifest_digest.clone());
            }
            match &outcome {
                Outcome::Accepted => self.replace_partials(&files),
                Outcome::Refused(why) => {
                    if let Some(c) = found.imagesets.get(&key) {
                        self.status.refused(Refused {
                            imageset: key,
                            created: c.manifest.created.clone(),
                            images: c.manifest.images.len() as u32,
                            reason: why.clone(),
                        });
                    }
                    for f in &files {
                        self.quarantine(f, Quarantine::Refused, why, &mut round);
                    }
                }
                Outcome::Damaged { file, reason } => {
                    self.quarantine(file, Quarantine::Damaged, reason, &mut round)
                }
                Outcome::Duplicate | Outcome::Waiting(_) => {}
            }
            round.outcomes.push((key, outcome, files));
        }
        self.metrics.waiting(
            round
                .outcomes
                .iter()
                .filter(|(_, o, _)| matches!(o, Outcome::Waiting(_)))
                .count(),
        );
        // Files of a manifest judged before (the same digest): duplicates, as a
        // request that sent them is told.
        for (key, files) in &found.skipped {
            round
                .outcomes
                .push((*key, Outcome::Duplicate, files.clone()));
        }
        for p in &report.set_aside {
            self.quarantine(
                p,
                Quarantine::Rebuilt,
                "damaged in transfer; the chunk was rebuilt from parity",
                &mut round,
            );
        }
        self.publish_all(&mut round, answering).await?;
        for i in 0..self.clusters.len() {
            self.reconcile(i, false).await;
        }
        self.dispose(&found)?;
        Ok(round)
    }

    /// What publishing to cluster `i` would do once the agent has taken what the
    /// drop directory holds, with what its destination's clusters run kept; connects to its registry if not yet connected, without
    /// keeping the connection or counting a failure against the cluster.
    async fn plan(&self, i: usize) -> ClusterPlan {
        let dest = &self.destinations[i];
        let existing = self.clusters[i].target.clone();
        let options = &self.clusters[i].options;
        let connect = async {
            match existing {
                Some(t) => Ok(t),
                None => Ok(Target {
                    dest: dest.clone(),
                    client: Arc::new(RegistryClient::connect(dest.registry(), options).await?),
                }),
            }
        };
        let users = self.users_of(i);
        let mut report = Report::default();
        // What waits in the drop directory (settling, or waiting for a sequence
        // before it) is what the next rounds take: part of the plan.
        let drop_dir = &self.config.drop_dir;
        let found = match scan::list(drop_dir) {
            Ok(files) => scan::read_heads_within(files, scan::HELD_MANIFEST_BYTES, &|_| false),
            Err(e) => {
                report.problem(exit_codes::IO, Error::io(drop_dir, e).to_string());
                scan::Found::default()
            }
        };
        let planned = self
            .site
            .plan(dest, connect, &users, !self.prunes(i), &found, &mut report)
            .await;
        let mut problems: Vec<String> = report.problems.iter().map(|p| p.message.clone()).collect();
        let would_publish = planned.unwrap_or_else(|e| {
            problems.push(e.to_string());
            Vec::new()
        });
        ClusterPlan {
            cluster: self.clusters[i].name.clone(),
            destination: dest.to_string(),
            would_publish,
            pruned: report.pruned.pop().map(|(_, p)| p),
            not_pruned: report.not_pruned.pop().map(|(_, why)| why),
            problems,
        }
    }

    /// The targets of clusters `which`, connecting those not yet connected all at
    /// once (a registry that does not answer must not delay the others); a cluster
    /// whose registry cannot be reached is left out and retried with backoff.
    async fn targets(&mut self, which: &[usize]) -> Vec<(usize, Target)> {
        let missing: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.clusters[i].target.is_none())
            .collect();
        let connected = futures::future::join_all(missing.iter().map(|&i| {
            RegistryClient::connect(self.destinations[i].registry(), &self.clusters[i].options)
        }))
        .await;
        for (i, result) in missing.into_iter().zip(connected) {
            match result {
                Ok(client) => {
                    self.clusters[i].target = Some(Target {
                        dest: self.destinations[i].clone(),
                        client: Arc::new(client),
                    })
                }
                Err(e) => self.failed(i, &e.to_string()),
            }
        }
        which
            .iter()
            .filter_map(|&i| self.clusters[i].target.clone().map(|t| (i, t)))
            .collect()
    }

    /// Logs the problems of a round that the round before did not have.
    fn say(&mut self, report: &Report) {
        let now: HashSet<String> = report.problems.iter().map(|p| p.message.clone()).collect();
        for p in &report.problems {
            if !self.said.contains(&p.message) {
                tracing::warn!(code = p.code, "{}", p.message);
            }
        }
        self.said = now;
    }

    fn failed(&mut self, i: usize, why: &str) {
        let c = &mut self.clusters[i];
        c.target = None;
        // Jitter, so that clusters that failed together do not retry in step.
        let delay = jitter(c.backoff);
        c.retry_at = Some(Instant::now() + delay);
        tracing::warn!(cluster = %c.name, retry_in_s = delay.as_secs(), error = %why, "publishing to this cluster failed; retrying with backoff");
        let mut event = AgentEvent::now(
            EventKind::PublishFailed,
            format!("{why}; retrying in {} s", delay.as_secs()),
        );
        event.cluster = Some(c.name.clone());
        self.status.emit(event);
        c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
        let retry_at = c.retry_at;
        self.status.update_cluster(i, |v| {
            v.publishing = false;
            v.last_error = Some(why.to_string());
            v.retry_at = retry_at;
        });
    }

    /// Starts publishing to each due cluster that lacks something and is not
    /// publishing already. The publishes go on after the round; the loop takes
    /// each in as it ends (with `answering`, the round waits for all of them, so
    /// that its answer covers them). So a cluster that is down waits for its
    /// retry, and one that hangs holds back neither the others nor the
    /// imagesets that arrive meanwhile.
    async fn publish_all(&mut self, round: &mut Round, answering: bool) -> Result<(), Error> {
        while let Some(done) = self.in_flight.try_join_next_with_id() {
            self.finished(done, round);
        }
        let Some((_, last)) = self.site.ws.accepted()? else {
            return Ok(());
        };
        if self.fetch_from.is_empty() && !self.fetch_dests.is_empty() {
            for d in &self.fetch_dests {
                let options = self
                    .clusters
                    .first()
                    .map(|c| c.options.clone())
                    .unwrap_or_default();
                match RegistryClient::connect(d.registry(), &options).await {
                    Ok(client) => self.fetch_from.push(Mirror {
                        client: Arc::new(client),
                        dest: d.clone(),
                    }),
                    Err(e) => {
                        tracing::warn!(mirror = %d, error = %e, "fetchFrom registry unreachable")
                    }
                }
            }
        }
        let now = Instant::now();
        let ready: Vec<usize> = (0..self.clusters.len())
            .filter(|&i| {
                let c = &self.clusters[i];
                c.retry_at.is_none_or(|r| r <= now) && !self.publishing.contains_key(&c.name)
            })
            .collect();
        let mut due = Vec::new();
        for (i, target) in self.targets(&ready).await {
            let behind = self.site.ws.published(&target.dest.key())?.unwrap_or(0) < last;
            if behind {
                self.status.update_cluster(i, |v| v.publishing = true);
            }
            due.push((i, behind, target));
        }
        let busy = due.iter().filter(|(_, behind, _)| *behind).count();
        let batch = Arc::new(Batch {
            reads: Arc::new(SharedReads::new(busy)),
            uploaded: Default::default(),
        });
        for (i, behind, target) in due {
            let name = self.clusters[i].name.clone();
            let resources = self.site.dir.join("cluster-resources").join(&name);
            if !behind {
                // Nothing to upload: only its resources are written, here and now.
                let users = self.users_of(i);
                let pass = Pass {
                    fetch_from: &self.fetch_from,
                    parallel: self.config.parallel,
                    skip_pruning: !self.prunes(i),
                    users: &users,
                    ..Pass::default()
                };
                let mut report = Report::default();
                let result = self
                    .site
                    .publish_to(&target, &pass, &resources, &mut report)
                    .instrument(tracing::info_span!("cluster", cluster = %name))
                    .await;
                self.record(name, result, report, round);
                continue;
            }
            // Looked at again when the publish ends, not before.
            self.clusters[i].retry_at = None;
            let (site, fetch_from, stop, batch) = (
                self.site.clone(),
                self.fetch_from.clone(),
                self.stop.clone(),
                batch.clone(),
            );
            let parallel = self.config.parallel;
            let skip_pruning = !self.prunes(i);
            let users = self.users_of(i);
            let cluster = name.clone();
            let task = self.in_flight.spawn(async move {
                let pass = Pass {
                    fetch_from: &fetch_from,
                    parallel,
                    shared: Some(&batch.reads),
                    stop: Some(&stop),
                    skip_pruning,
                    users: &users,
                };
                let mut report = Report::default();
                let started = Instant::now();
                // Every push and delete logged below names the cluster.
                let result = site
                    .publish_to(&target, &pass, &resources, &mut report)
                    .instrument(tracing::info_span!("cluster", cluster = %cluster))
                    .await;
                Done {
                    cluster,
                    batch,
                    result,
                    report,
                    took: started.elapsed(),
                }
            });
            self.publishing.insert(name, task);
        }
        drop(batch);
        self.show_publishing();
        if answering {
            // A command waits for its publishes, hours over a slow link: the
            // agent is busy, not stuck (each request is bounded by its own
            // timeouts and retries).
            let mut beat = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    done = self.in_flight.join_next_with_id() => match done {
                        Some(done) => self.finished(done, round),
                        None => break,
                    },
                    _ = beat.tick() => self.endpoint.health.beat(),
                }
            }
        }
        Ok(())
    }

    /// What `report` says pruning did at cluster `i`'s registry, if it did or
    /// declined anything.
    fn prune_view(&self, i: usize, report: &Report) -> Option<PruneView> {
        let (key, dest) = (self.destinations[i].key(), self.destinations[i].to_string());
        let sequence = || self.site.ws.pruned(&key).ok().flatten().unwrap_or(0);
        if let Some((_, p)) = report.pruned.iter().find(|(d, _)| *d == dest) {
            return Some(PruneView {
                sequence: sequence(),
                deleted: p.deleted.len() as u64,
                kept: p
                    .kept
                    .iter()
                    .map(|(at, why)| (at.to_string(), why.clone()))
                    .collect(),
                not_pruned: p
                    .refused
                    .as_ref()
                    .map(|a| format!("the registry refuses deletes ({a})")),
            });
        }
        let (_, why) = report.not_pruned.iter().find(|(d, _)| *d == dest)?;
        Some(PruneView {
            sequence: sequence(),
            not_pruned: Some(why.clone()),
            ..PruneView::default()
        })
    }

    /// Whether cluster `i`'s destination is pruned: only when every cluster
    /// publishing to that same destination asks for it, since what one keeps is
    /// there for all of them.
    fn prunes(&self, i: usize) -> bool {
        let dest = &self.destinations[i];
        self.clusters
            .iter()
            .zip(&self.destinations)
            .filter(|(_, d)| *d == dest)
            .all(|(c, _)| c.pruning)
    }

    /// The clusters with a readable API that pull from cluster `i`'s registry
    /// (several clusters may share one): pruning keeps what any of them runs.
    fn users_of(&self, i: usize) -> Vec<(String, cluster_api::Access)> {
        let registry = self.destinations[i].registry();
        self.clusters
            .iter()
            .zip(&self.destinations)
            .filter(|(_, d)| d.registry() == registry)
            .filter_map(|(c, _)| Some((c.name.clone(), c.access.clone()?)))
            .collect()
    }

    fn show_publishing(&self) {
        let mut names: Vec<&str> = self.publishing.keys().map(String::as_str).collect();
        if names.is_empty() {
            self.status.set_activity("idle");
        } else {
            names.sort_unstable();
            self.status
                .set_activity(format!("publishing to {}", names.join(", ")));
        }
    }

    /// Takes in a publish task that ended.
    fn finished(&mut self, joined: Joined, round: &mut Round) {
        let (id, done) = match joined {
            Ok(joined) => joined,
            Err(e) => {
                let id = e.id();
                let name = self
                    .publishing
                    .iter()
                    .find(|(_, task)| task.id() == id)
                    .map(|(name, _)| name.clone());
                // Aborted on SIGHUP: its entry is gone already.
                let Some(name) = name else { return };
                self.publishing.remove(&name);
                tracing::error!(cluster = %name, error = %e, "the publish task failed");
                if let Some(i) = self.clusters.iter().position(|c| c.name == name) {
                    self.failed(i, &format!("the publish task failed: {e}"));
                }
                return;
            }
        };
        let Done {
            cluster: name,
            batch,
            result,
            report,
            took,
        } = done;
        let pruned = report
            .pruned
            .iter()
            .map(|(_, p)| p.deleted.len() as u64)
            .sum();
        let well = result.is_ok() && report.problems.is_empty() && !report.published.is_empty();
        self.metrics
            .published(&name, report.stats[1], pruned, well.then_some(took));
        batch
            .uploaded
            .fetch_add(report.stats[1], std::sync::atomic::Ordering::Relaxed);
        // The last of its batch to end reports what the batch shared.
        if let Some(batch) = Arc::into_inner(batch) {
            let uploaded = batch.uploaded.into_inner();
            let read = batch.reads.read_bytes();
            self.status.add_traffic(uploaded, read);
            if uploaded > 0 {
                tracing::info!(
                    clusters = batch.reads.clusters(),
                    uploaded_bytes = uploaded,
                    store_read_bytes = read,
                    held_peak_bytes = batch.reads.peak_bytes(),
                    "blobs fanned out to the clusters"
                );
            }
        }
        // Only the task the cluster is waiting for counts: one aborted on SIGHUP
        // may have ended before the abort, and its cluster may have a new one.
        if self.publishing.get(&name).is_none_or(|t| t.id() != id) {
            return;
        }
        self.publishing.remove(&name);
        self.record(name, result, report, round);
    }

    /// Records the outcome of publishing to cluster `name`: what it published,
    /// and how it is to be retried.
    fn record(
        &mut self,
        name: String,
        result: Result<(), Error>,
        report: Report,
        round: &mut Round,
    ) {
        // A cluster removed by SIGHUP while it was publishing.
        let Some(i) = self.clusters.iter().position(|c| c.name == name) else {
            return;
        };
        let uuid = self.site.ws.accepted().ok().flatten().map(|(u, _)| u);
        for (_, seq) in &report.published {
            tracing::info!(cluster = %name, sequence = seq, "published to cluster");
            let mut event = AgentEvent::now(EventKind::Published, "imageset published");
            event.cluster = Some(name.clone());
            event.imageset = uuid.map(|u| (u, *seq));
            self.status.emit(event);
            round.published.push((name.clone(), *seq));
        }
        if let Some(view) = self.prune_view(i, &report) {
            self.status.update_cluster(i, |v| v.pruning = Some(view));
        }
        let complete = result.is_ok() && report.problems.is_empty();
        if !complete && self.stop.is_cancelled() {
            // Not a failure of the cluster: the agent is stopping.
            tracing::info!(cluster = %name, "publishing stopped; the rest is published at the next start");
            self.status.update_cluster(i, |v| v.publishing = false);
            return;
        }
        match result {
            Ok(()) if report.problems.is_empty() => {
                let c = &mut self.clusters[i];
                c.retry_at = None;
                c.backoff = Duration::from_secs(1);
                self.status.update_cluster(i, |v| {
                    v.publishing = false;
                    v.last_error = None;
                    v.retry_at = None;
                });
            }
            Ok(()) => {
                let why: Vec<&str> = report.problems.iter().map(|p| p.message.as_str()).collect();
                self.failed(i, &why.join("; "));
            }
            Err(e) => self.failed(i, &e.to_string()),
        }
    }

    /// Brings cluster `i`'s API in line with what is published to its registry:
    /// applies the cluster resources when a newer sequence is published there than
    /// was last applied (or always, taking fields back, with `force`), and, when
    /// due, reads its version and checks every object for drift. Failures are
    /// shown on the cluster and retried at the next check; they never stop the
    /// agent or the other clusters.
    async fn reconcile(&mut self, i: usize, force: bool) {
        let every = Duration::from_secs(self.config.reconcile_seconds);
        let c = &mut self.clusters[i];
        let Some(access) = c.access.clone() else {
            return;
        };
        if self.publishing.contains_key(&c.name) {
            // Its resources are rewritten when the publish ends; applying them
            // now could record as applied what is about to change.
            if force {
                tracing::info!(cluster = %c.name, "publishing; its resources are applied when the publish ends");
            }
            return;
        }
        let published = self
            .site
            .ws
            .published(&self.destinations[i].key())
            .ok()
            .flatten()
            .unwrap_or(0);
        let applied = self.site.ws.applied(&c.name).ok().flatten().unwrap_or(0);
        let apply = force || (published > 0 && applied < published);
        if !apply && Instant::now() < c.next_check {
            return;
        }
        c.next_check = Instant::now() + every;
        let name = c.name.clone();
        let result = self.check(i, &access, published, apply, force).await;
        let view = match result {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "cluster API check failed; retrying at the next check");
                self.clusters[i].kube = None;
                let mut view = self.status.clusters()[i].api.clone().unwrap_or_default();
                view.error = Some(e.to_string());
                view
            }
        };
        let before = self.status.clusters()[i].api.clone().unwrap_or_default();
        if !view.drift.is_empty() && view.drift != before.drift {
            tracing::warn!(cluster = %name, drift = ?view.drift, "cluster resources changed on the cluster");
            let mut event = AgentEvent::now(EventKind::Drifted, view.drift.join("; "));
            event.cluster = Some(name.clone());
            self.status.emit(event);
        }
        self.status.update_cluster(i, |v| v.api = Some(view));
    }

    async fn check(
        &mut self,
        i: usize,
        access: &cluster_api::Access,
        published: u64,
        apply: bool,
        force: bool,
    ) -> Result<ApiView, cluster_api::ApiError> {
        let name = self.clusters[i].name.clone();
        let kube = match &self.clusters[i].kube {
            Some(k) => k.clone(),
            None => {
                let k = ClusterApi::connect(access).await?;
                self.clusters[i].kube = Some(k.clone());
                k
            }
        };
        let versions = kube.versions().await?;
        let current = versions.current.clone();
        let dir = self.site.dir.join("cluster-resources").join(&name);
        let (desired, notes) =
            cluster_api::desired(&dir, current.as_deref().and_then(cluster_api::minor))?;
        let mut view = ApiView {
            desired_version: versions
                .desired
                .clone()
                .filter(|d| Some(d) != current.as_ref()),
            version: current.clone(),
            notes,
            checked: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            ..ApiView::default()
        };
        let mut unserved = Vec::new();
        let mut refused = 0;
        if apply && published > 0 {
            for d in &desired {
                match kube.apply(d, force).await? {
                    Applied::Done => {}
                    // Shown by the drift check below.
                    Applied::Conflict(why) => tracing::warn!(cluster = %name, "{why}"),
                    Applied::Unserved(why) => {
                        view.notes.push(why);
                        unserved.push(d.label());
                    }
                    Applied::Refused(why) => {
                        tracing::warn!(cluster = %name, "{why}");
                        view.notes.push(why);
                        unserved.push(d.label());
                        refused += 1;
                    }
                }
            }
            let mut left = Vec::new();
            if self.clusters[i].pruning {
                for w in kube.withdraw(&desired).await? {
                    match w {
                        Withdrawn::Deleted(label) => {
                            tracing::info!(cluster = %name, object = %label, "no longer published; deleted from the cluster")
                        }
                        Withdrawn::Left(why) => {
                            tracing::warn!(cluster = %name, "{why}");
                            left.push(why);
                        }
                    }
                }
            }
            self.clusters[i].left = left;
            // With an object refused, the sequence is not recorded as applied,
            // so that the next check applies again (the refusal may be lifted:
            // a webhook's policy changed, a quota raised).
            if refused == 0
                && let Err(e) = self.site.ws.mark_applied(&name, published)
            {
                tracing::error!(cluster = %name, error = %e, "cannot record the applied sequence");
            }
            tracing::info!(cluster = %name, sequence = published, objects = desired.len(), refused, forced = force, "cluster resources applied");
            let mut event = AgentEvent::now(
                EventKind::Applied,
                match refused {
                    0 => format!("{} objects applied", desired.len() - unserved.len()),
                    n => format!(
                        "{} objects applied, {n} refused by the cluster",
                        desired.len() - unserved.len()
                    ),
                },
            );
            event.cluster = Some(name.clone());
            event.imageset = self
                .site
                .ws
                .accepted()
                .ok()
                .flatten()
                .map(|(u, _)| (u, published));
            self.status.emit(event);
        }
        view.notes.extend(self.clusters[i].left.iter().cloned());
        for d in desired.iter().filter(|d| !unserved.contains(&d.label())) {
            let live = kube.live(d).await?;
            if let Some(drift) = d.drift(live.as_ref()) {
                view.drift.push(drift);
            }
            if d.is_catalog_source() {
                // OLM reports whether the catalog's pod serves: anything but READY
                // means the cluster cannot install from it.
                let state = live
                    .as_ref()
                    .and_then(|l| l["status"]["connectionState"]["lastObservedState"].as_str());
                if let Some(state) = state.filter(|s| *s != "READY") {
                    view.notes
                        .push(format!("{}: catalog connection {state}", d.label()));
                }
                let want = &d.object["spec"]["image"];
                let runs = live.as_ref().map(|l| &l["spec"]["image"]);
                if runs.is_some_and(|r| r != want) {
                    view.catalogs_behind.push(format!(
                        "{} runs {}, the latest published is {}",
                        d.label(),
                        runs.and_then(|r| r.as_str()).unwrap_or("nothing"),
                        want.as_str().unwrap_or_default()
                    ));
                }
            }
        }
        view.available_updates = self.updates(published, current.as_deref(), &versions.available);
        Ok(view)
    }

    /// Mirrored releases (of the sequence published to the cluster) newer than
    /// `current`; when the cluster's update service lists updates, only those.
    fn updates(&self, published: u64, current: Option<&str>, offered: &[String]) -> Vec<String> {
        let (Some(current), Some((uuid, _))) = (
            current.and_then(|c| semver::Version::parse(c).ok()),
            self.site.ws.accepted().ok().flatten(),
        ) else {
            return Vec::new();
        };
        if published == 0 || !self.site.ws.has_manifest(&uuid, published) {
            return Vec::new();
        }
        let Ok(m) = self.site.ws.manifest(&uuid, published) else {
            return Vec::new();
        };
        let mut out: Vec<semver::Version> = m
            .releases
            .iter()
            .filter_map(|r| semver::Version::parse(&r.version).ok())
            .filter(|v| *v > current)
            .filter(|v| offered.is_empty() || offered.contains(&v.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out.iter().map(|v| v.to_string()).collect()
    }

    /// Deletes or archives the files of imagesets published to every cluster, and
    /// empties the store when asked and everything is everywhere.
    fn dispose(&self, found: &scan::Found) -> Result<(), Error> {
        // A publish under way may have recorded a sequence and not yet written
        // its cluster's resources; and two clusters may share a destination, one
        // still reading blobs the other has published. Its end starts a round.
        if !self.publishing.is_empty() {
            return Ok(());
        }
        let Some((uuid, last)) = self.site.ws.accepted()? else {
            return Ok(());
        };
        let mut everywhere = u64::MAX;
        for d in &self.destinations {
            everywhere = everywhere.min(self.site.ws.published(&d.key())?.unwrap_or(0));
        }
        let held = found.imagesets.iter().map(|(key, c)| {
            let files: Vec<&PathBuf> = c
                .chunks
                .values()
                .chain(c.parity.values())
                .chain(&c.spares)
                .map(|h| &h.path)
                .collect();
            (key, files)
        });
        let skipped = found
            .skipped
            .iter()
            .map(|(key, files)| (key, files.iter().collect()));
        let archive = match (self.config.after_publish, &self.config.archive_dir) {
            (AfterPublish::Archive, Some(dir)) => Some(dir),
            _ => None,
        };
        for ((u, seq), files) in held.chain(skipped) {
            if *u != uuid || *seq > everywhere {
                continue;
            }
            for f in files {
                let (result, done) = match archive {
                    Some(dir) => (move_into(f, dir).map(|_| ()), "file moved to the archive"),
                    None => (
                        std::fs::remove_file(f),
                        "file removed from the drop directory",
                    ),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(file = %f.display(), sequence = seq, "published everywhere; {done}")
                    }
                    Err(e) => {
                        tracing::warn!(file = %f.display(), error = %e, "cannot remove a published file")
                    }
                }
            }
        }
        if self.config.empty_store && everywhere == last {
            let freed = self.site.empty_store()?;
            if freed > 0 {
                tracing::info!(freed, "content store emptied");
            }
        }
        Ok(())
    }
}
