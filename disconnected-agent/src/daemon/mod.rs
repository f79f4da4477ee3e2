//! `run`: the disconnected agent as a service, fed by a drop directory.
//!
//! One loop, woken by file-system events (`notify`), by a periodic rescan (network
//! shares and diode proxies often produce no events), by the moment a file is due
//! to have settled, and by retries of registries that were down:
//!
//! 1. A file is taken only when complete: its size and modification time held for
//!    `settle`, or it was renamed into the directory (a writer that writes
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
//! those under way are given `stopGrace` to finish (a registry keeps a blob
//! only once its upload completes, so abandoning one after that is equally safe).
//!
//! This module is the loop: its events, rounds, and stopping. Each concern it
//! drives is a module of its own: [`drop_dir`] (events, quarantine, disposal),
//! [`cluster`] (per-cluster state and backoff), [`publishing`] (the publish
//! tasks and what their end records), [`reconcile`] (cluster APIs) and
//! [`reload`] (SIGHUP).

mod cluster;
mod drop_dir;
mod publishing;
mod reconcile;
mod reload;

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
use airlock_oci::reference::Destination;
use airlock_registry::RegistryClient;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::agent_config::{AgentConfig, Checked};
use crate::control;
use crate::early::{Early, Then};
use crate::error::Error;
use crate::messages::{ClusterPlan, Command, Commands, Round};
use crate::metrics::{Metrics, Quarantine};
use crate::scan;
use crate::settle::Tracker;
use crate::site::{Outcome, Report, Site, Target};
use crate::source::Mirror;
use crate::status::{AgentEvent, EventKind, Refused, Status};
use cluster::{Backoff, Cluster};
use publishing::{Done, Joined};

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
    round_pause: Backoff,
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

impl Daemon {
    /// Re-reads the configuration from `path` on SIGHUP.
    pub fn reload_from(mut self, path: &Path) -> Self {
        self.config_path = Some(path.to_path_buf());
        self
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
        let (clusters, views) = cluster::fresh_clusters(&config, &destinations, apis);
        let status = Arc::new(Status::new(site.clone(), config.drop_dir.clone(), views));
        // A round (verifying a large imageset among them) may keep the loop
        // away this long before it counts as stuck.
        let metrics = Arc::new(Metrics::new(status.clone()));
        let stall = config.healthz_stall();
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
            round_pause: Backoff::default(),
        })
    }

    fn settle(&self) -> Duration {
        self.config.settle()
    }

    /// The shared view of this agent (what the control plane serves).
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let drop_dir = self.config.drop_dir.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        // Kept until the agent stops: dropping it stops the events.
        let _watcher = match drop_dir::watch(&drop_dir, tx.clone()) {
            Some(w) => {
                tracing::info!(dir = %drop_dir.display(), "watching the drop directory");
                Some(w)
            }
            None => {
                tracing::warn!(dir = %drop_dir.display(), "file-system events unavailable; relying on rescans");
                None
            }
        };
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
        let rescan = self.config.rescan_interval();
        tracing::info!(
            workspace = %self.config.workspace.display(),
            clusters = self.clusters.len(),
            settle_seconds = self.config.settle().as_secs(),
            rescan_seconds = rescan.as_secs(),
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
            // Read at every turn: SIGHUP may have changed it.
            let wake = self.next_wake(self.config.rescan_interval());
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
                let (renamed, next) = drop_dir::debounce(&mut rx).await;
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
                            c.retry.try_now();
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
                && !self.round_pause.due(Instant::now())
            {
                continue;
            }
            let stop = self.stop.clone();
            let grace = self.config.stop_grace();
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
                    if self.round_pause.succeed() {
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
                    let pause = self.round_pause.fail(Instant::now());
                    tracing::error!(error = %e, retry_in_s = pause.as_secs(), "round failed; retrying with backoff");
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
    /// deadline set when stopping began during a round (else `stopGrace`
    /// from now), and records what they published.
    async fn finish_in_flight(&mut self, stopping: Option<(Instant, bool)>) {
        let grace = self.config.stop_grace();
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
                "uploads under way did not finish in {} and were abandoned; \
                 a registry keeps no part of an unfinished blob, and they are sent again on the next start",
                self.config.named("stopGrace")
            );
        }
    }

    /// Moves files received over the control plane into the drop directory, as
    /// renamed-in (complete) files.
    fn place(&mut self, staged: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
        let drop_dir = &self.config.drop_dir;
        let mut placed = Vec::new();
        for f in staged {
            let to = drop_dir::move_into(f, drop_dir).map_err(|e| Error::io(drop_dir, e))?;
            tracing::info!(file = %f.display(), placed = %to.display(), "file received over the control plane");
            placed.push(to);
        }
        self.tracker.renamed.extend(placed.iter().cloned());
        Ok(placed)
    }

    fn next_wake(&self, rescan: Duration) -> Instant {
        let now = Instant::now();
        if let Some(until) = self.round_pause.until()
            && until > now
        {
            return until;
        }
        let mut wake = now + rescan;
        let stall = self.config.stall();
        if let Some(d) = self.tracker.next_deadline(self.settle(), stall, now) {
            wake = wake.min(d);
        }
        // A cluster publishing is looked at again when its publish ends.
        for c in self
            .clusters
            .iter()
            .filter(|c| !self.publishing.contains_key(&c.name))
        {
            if let Some(r) = c.retry.until() {
                wake = wake.min(r.max(now));
            }
            if c.access.is_some() {
                wake = wake.min(c.next_check.max(now));
            }
        }
        wake
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
        let stall = self.config.stall();
        for e in &found.damaged {
            // A file shorter than its own first entries say, that was not renamed
            // in, may be a writer that paused: it is judged when it is complete,
            // or once it has not changed for stall.
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
            let due = (0..self.clusters.len()).find(|&i| self.clusters[i].retry.due(now));
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
        // With one cluster there is no fan-out to share the store's reads with:
        // its large blobs travel while the imageset is verified, as the CLI's
        // publish sends them (`early.rs`), and its publish after acceptance
        // closes their sessions. With several, each would read every blob again
        // beside the fan-out's shared reads. Not while the cluster publishes an
        // earlier imageset: its transfers are taken, and the sessions would wait
        // for the publish after that one.
        let staging = if self.clusters.len() == 1
            && !hold
            && !found.imagesets.is_empty()
            && self.clusters[0].retry.due(Instant::now())
            && !self.publishing.contains_key(&self.clusters[0].name)
        {
            self.targets(&[0]).await.pop().map(|(_, target)| target)
        } else {
            None
        };
        let early = staging.map(|target| Early {
            target,
            parallel: self.config.parallel,
            then: Then::HandOver,
            stop: Some(self.stop.clone()),
        });
        let outcomes = if hold {
            Vec::new()
        } else {
            self.site
                .accept(&drop_dir, &found, early.as_ref(), &mut report)
                .await?
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
        let users = cluster::users_of(&self.clusters, &self.destinations, i);
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
            .plan(
                dest,
                connect,
                &users,
                !cluster::prunes(&self.clusters, &self.destinations, i),
                &found,
                &mut report,
            )
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
}
