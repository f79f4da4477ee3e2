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
//! 4. Everything accepted is published to every cluster; a registry that is down is
//!    retried with backoff while the others carry on.
//! 5. The files of an imageset published to every cluster are deleted or archived.
//!
//! Every step commits its state only when done, so a SIGKILL at any point loses
//! nothing and takes nothing twice: after a restart the same files are found, and
//! what was not recorded is done again. On SIGTERM the loop stops between steps or
//! abandons the current one, which is equally safe.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use airlock_common::registry::auth::AuthSource;
use airlock_common::registry::{RegistryClient, RegistryOptions};
use notify::Watcher;
use tokio::sync::mpsc;

use airlock_common::reference::Destination;

use crate::agent_config::{AfterPublish, AgentConfig, Checked};
use crate::error::Error;
use crate::scan;
use crate::site::{Outcome, Report, Site, Target};
use crate::source::Mirror;

/// Longest wait between retries of a registry that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What the loop wakes up for.
enum Event {
    /// Something changed in the drop directory; renamed-in files are complete.
    Changed(Vec<PathBuf>),
    /// Time to look again (rescan, a file settling, a retry).
    Tick,
}

struct Seen {
    len: u64,
    mtime: SystemTime,
    since: Instant,
    renamed: bool,
}

/// Which files have stopped changing.
#[derive(Default)]
struct Tracker {
    seen: HashMap<PathBuf, Seen>,
    renamed: HashSet<PathBuf>,
}

impl Tracker {
    /// Updates what is known of `files` and returns those that are complete.
    fn settled(&mut self, files: &[PathBuf], settle: Duration, now: Instant) -> Vec<PathBuf> {
        self.seen.retain(|p, _| files.contains(p));
        let mut out = Vec::new();
        for f in files {
            let Ok(meta) = std::fs::metadata(f) else {
                continue;
            };
            let (len, mtime) = (
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            );
            let renamed = self.renamed.remove(f);
            match self.seen.get_mut(f) {
                Some(s) if s.len == len && s.mtime == mtime => {
                    s.renamed |= renamed;
                    if s.renamed || now.duration_since(s.since) >= settle {
                        out.push(f.clone());
                    }
                }
                _ => {
                    self.seen.insert(
                        f.clone(),
                        Seen {
                            len,
                            mtime,
                            since: now,
                            renamed,
                        },
                    );
                    if renamed || settle.is_zero() {
                        out.push(f.clone());
                    }
                }
            }
        }
        out
    }

    /// When the next file that is still settling will have settled.
    fn next_deadline(&self, settle: Duration) -> Option<Instant> {
        self.seen
            .values()
            .filter(|s| !s.renamed)
            .map(|s| s.since + settle)
            .min()
    }
}

struct Cluster {
    name: String,
    options: RegistryOptions,
    target: Option<Target>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The running agent.
pub struct Daemon {
    config: AgentConfig,
    destinations: Vec<Destination>,
    fetch_dests: Vec<Destination>,
    site: Site,
    clusters: Vec<Cluster>,
    fetch_from: Vec<Mirror>,
    tracker: Tracker,
}

/// Moves `file` into `dir` (a suffix keeps names unique); across file systems, copies.
fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
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

impl Daemon {
    /// Opens the workspace and prepares the clusters; contacts no registry yet.
    pub fn new(cfg: Checked) -> Result<Self, Error> {
        let Checked {
            config,
            destinations,
            fetch_from,
            trust,
        } = cfg;
        let site = Site::open(&config.workspace, trust)?;
        std::fs::create_dir_all(&config.quarantine_dir)
            .map_err(|e| Error::io(&config.quarantine_dir, e))?;
        let clusters = config
            .clusters
            .iter()
            .map(|c| Cluster {
                name: c.name.clone(),
                options: RegistryOptions {
                    tls_verify: c.tls_verify,
                    cert_dir: c.cert_dir.clone(),
                    auth: AuthSource::new(c.auth_file.clone()),
                },
                target: None,
                retry_at: None,
                backoff: Duration::from_secs(1),
            })
            .collect();
        Ok(Daemon {
            config,
            destinations,
            fetch_dests: fetch_from,
            site,
            clusters,
            fetch_from: Vec::new(),
            tracker: Tracker::default(),
        })
    }

    fn settle(&self) -> Duration {
        Duration::from_secs(self.config.settle_seconds)
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let drop_dir = self.config.drop_dir.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::EventKind::Modify;
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
        let rescan = Duration::from_secs(self.config.rescan_seconds);
        tracing::info!(
            workspace = %self.config.workspace.display(),
            clusters = self.clusters.len(),
            settle_seconds = self.config.settle_seconds,
            rescan_seconds = self.config.rescan_seconds,
            "disconnected agent running"
        );
        // Ready for systemd (Type=notify): the configuration was checked, the
        // workspace opened and the drop directory watched.
        systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("watching the drop directory"),
        ]);
        let watchdog = watchdog();
        tokio::pin!(shutdown);
        let _ = tx.send(Event::Tick);
        loop {
            let wake = self.next_wake(rescan);
            let event = tokio::select! {
                _ = &mut shutdown => break,
                ev = rx.recv() => ev.unwrap_or(Event::Tick),
                _ = tokio::time::sleep_until(wake.into()) => Event::Tick,
            };
            if let Event::Changed(renamed) = event {
                self.tracker.renamed.extend(renamed);
            }
            tokio::select! {
                _ = &mut shutdown => break,
                result = self.round() => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "round failed; retrying on the next event");
                    }
                }
            }
        }
        systemd(&[sd_notify::NotifyState::Stopping]);
        if let Some(w) = watchdog {
            w.abort();
        }
        tracing::info!("disconnected agent stopped");
        Ok(())
    }

    fn next_wake(&self, rescan: Duration) -> Instant {
        let now = Instant::now();
        let mut wake = now + rescan;
        if let Some(d) = self.tracker.next_deadline(self.settle()) {
            wake = wake.min(d.max(now));
        }
        for c in &self.clusters {
            if let Some(r) = c.retry_at {
                wake = wake.min(r.max(now));
            }
        }
        wake
    }

    fn quarantine(&self, file: &Path, reason: &str) {
        match move_into(file, &self.config.quarantine_dir) {
            Ok(moved) => {
                let note = format!(
                    "{}: {reason}\n",
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                let _ = std::fs::write(PathBuf::from(format!("{}.reason", moved.display())), note);
                tracing::warn!(file = %file.display(), quarantined = %moved.display(), %reason, "file quarantined");
            }
            Err(e) => tracing::error!(file = %file.display(), error = %e, "cannot quarantine"),
        }
    }

    /// One pass over the drop directory and the clusters.
    async fn round(&mut self) -> Result<(), Error> {
        let drop_dir = self.config.drop_dir.clone();
        let files = scan::list(&drop_dir).map_err(|e| Error::io(&drop_dir, e))?;
        let settled = self.tracker.settled(&files, self.settle(), Instant::now());
        let found = scan::read_heads(settled);
        for p in &found.other {
            self.quarantine(p, "not an Airlock imageset chunk");
        }
        for e in &found.damaged {
            self.quarantine(e.path(), &e.to_string());
        }
        let mut report = Report::default();
        if self.site.ws.accepted()?.is_none() && !found.imagesets.is_empty() {
            let uuids: Vec<uuid::Uuid> = found.imagesets.keys().map(|(u, _)| *u).collect();
            if let Some(i) = (0..self.clusters.len()).find(|&i| self.clusters[i].retry_at.is_none())
            {
                if let Some(target) = self.target(i).await {
                    report.continued_from =
                        self.site.continue_from_registry(&target, &uuids).await?;
                }
            }
        }
        let outcomes = self.site.accept(&drop_dir, &found, &mut report).await?;
        for (key, outcome) in &outcomes {
            match outcome {
                Outcome::Refused(why) => {
                    if let Some(c) = found.imagesets.get(key) {
                        for f in c
                            .chunks
                            .values()
                            .chain(c.parity.values())
                            .chain(&c.spares)
                            .map(|h| &h.path)
                            .chain(&c.conflicting)
                        {
                            self.quarantine(f, why);
                        }
                    }
                }
                Outcome::Damaged { file, reason } => self.quarantine(file, reason),
                Outcome::Accepted | Outcome::Duplicate | Outcome::Waiting(_) => {}
            }
        }
        for p in &report.set_aside {
            self.quarantine(p, "damaged in transfer; the chunk was rebuilt from parity");
        }
        self.publish_all().await?;
        self.dispose(&found)?;
        Ok(())
    }

    /// The target of cluster `i`, connecting if needed; `None` while it is down.
    async fn target(&mut self, i: usize) -> Option<Target> {
        let c = &mut self.clusters[i];
        if let Some(t) = &c.target {
            return Some(t.clone());
        }
        let dest = self.destinations[i].clone();
        match RegistryClient::connect(dest.registry(), &c.options).await {
            Ok(client) => {
                let t = Target {
                    dest,
                    client: Arc::new(client),
                };
                c.target = Some(t.clone());
                Some(t)
            }
            Err(e) => {
                Self::failed(c, &e.to_string());
                None
            }
        }
    }

    fn failed(c: &mut Cluster, why: &str) {
        c.retry_at = Some(Instant::now() + c.backoff);
        tracing::warn!(cluster = %c.name, retry_in_s = c.backoff.as_secs(), error = %why, "publishing to this cluster failed; retrying with backoff");
        c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
    }

    /// Publishes what each cluster lacks; a cluster that is down waits for its retry
    /// while the others carry on.
    async fn publish_all(&mut self) -> Result<(), Error> {
        if self.site.ws.accepted()?.is_none() {
            return Ok(());
        }
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
        for i in 0..self.clusters.len() {
            if self.clusters[i].retry_at.is_some_and(|r| r > now) {
                continue;
            }
            let Some(target) = self.target(i).await else {
                continue;
            };
            let name = self.clusters[i].name.clone();
            let resources = self.site.dir.join("cluster-resources").join(&name);
            let mut report = Report::default();
            let result = self
                .site
                .publish_to(
                    &target,
                    &self.fetch_from,
                    self.config.parallel,
                    &resources,
                    &mut report,
                )
                .await;
            let c = &mut self.clusters[i];
            match result {
                Ok(()) if report.problems.is_empty() => {
                    c.retry_at = None;
                    c.backoff = Duration::from_secs(1);
                    for (_, seq) in &report.published {
                        tracing::info!(cluster = %name, sequence = seq, "published to cluster");
                    }
                }
                Ok(()) => {
                    let why: Vec<&str> =
                        report.problems.iter().map(|p| p.message.as_str()).collect();
                    c.target = None;
                    Self::failed(c, &why.join("; "));
                }
                Err(e) => {
                    c.target = None;
                    Self::failed(c, &e.to_string());
                }
            }
        }
        Ok(())
    }

    /// Deletes or archives the files of imagesets published to every cluster, and
    /// prunes the store when asked and everything is everywhere.
    fn dispose(&self, found: &scan::Found) -> Result<(), Error> {
        let Some((uuid, last)) = self.site.ws.accepted()? else {
            return Ok(());
        };
        let mut everywhere = u64::MAX;
        for d in &self.destinations {
            everywhere = everywhere.min(self.site.ws.published(&d.to_string())?.unwrap_or(0));
        }
        for ((u, seq), c) in &found.imagesets {
            if *u != uuid || *seq > everywhere {
                continue;
            }
            for head in c.chunks.values().chain(c.parity.values()).chain(&c.spares) {
                let f = &head.path;
                let result = match (self.config.after_publish, &self.config.archive_dir) {
                    (AfterPublish::Archive, Some(dir)) => move_into(f, dir).map(|_| ()),
                    _ => std::fs::remove_file(f),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(file = %f.display(), sequence = seq, "published everywhere; file removed from the drop directory")
                    }
                    Err(e) => {
                        tracing::warn!(file = %f.display(), error = %e, "cannot remove a published file")
                    }
                }
            }
        }
        if self.config.prune && everywhere == last {
            let freed = self
                .site
                .store
                .prune()
                .map_err(|e| Error::io(&self.site.dir, e))?;
            if freed > 0 {
                tracing::info!(freed, "content store pruned");
            }
        }
        Ok(())
    }
}

/// Tells systemd about the service's state; without `NOTIFY_SOCKET` (not run by
/// systemd) this does nothing.
fn systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval, as systemd
/// advises. The pings come from their own task: a publish of a large imageset
/// runs for hours inside one round of the loop, and must not be killed for it;
/// the watchdog catches a process whose runtime has stopped.
fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            systemd(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}
