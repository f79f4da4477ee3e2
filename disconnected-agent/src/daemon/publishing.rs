//! Publishing to the clusters: each publish a task of its own, which may
//! outlive the round that started it, so that a registry that hangs holds back
//! no other cluster and no imageset arriving meanwhile; clusters that start
//! together share their store reads ([`crate::fanout`]). A publish that ends is
//! taken in by the loop and recorded: published sequences, pruning, and the
//! cluster's backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_registry::RegistryClient;
use tracing::Instrument as _;

use super::{Daemon, cluster};
use crate::error::Error;
use crate::fanout::SharedReads;
use crate::messages::Round;
use crate::site::{Pass, Report};
use crate::source::Mirror;
use crate::status::{AgentEvent, EventKind, PruneView};

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
    /// What the publishes' staged uploads had read from the store, outside the
    /// shared reads (`early.rs`).
    staged_read: std::sync::atomic::AtomicU64,
}

impl Daemon {
    /// Starts publishing to each due cluster that lacks something and is not
    /// publishing already. The publishes go on after the round; the loop takes
    /// each in as it ends (with `answering`, the round waits for all of them, so
    /// that its answer covers them). So a cluster that is down waits for its
    /// retry, and one that hangs holds back neither the others nor the
    /// imagesets that arrive meanwhile.
    pub(super) async fn publish_all(
        &mut self,
        round: &mut Round,
        answering: bool,
    ) -> Result<(), Error> {
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
                c.retry.due(now) && !self.publishing.contains_key(&c.name)
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
        // The publishes start before the clusters with nothing to upload are
        // seen to here and now: until a publish starts, its cluster may take
        // any block, so the others keep every block for it.
        due.sort_by_key(|(_, behind, _)| !behind);
        let (reads, takers) = SharedReads::new(busy);
        let mut takers = takers.into_iter();
        let batch = Arc::new(Batch {
            reads,
            uploaded: Default::default(),
            staged_read: Default::default(),
        });
        for (i, behind, target) in due {
            let name = self.clusters[i].name.clone();
            let resources = self.site.dir.join("cluster-resources").join(&name);
            if !behind {
                // Nothing to upload: only its resources are written, here and now.
                let users = cluster::users_of(&self.clusters, &self.destinations, i);
                let pass = Pass {
                    fetch_from: &self.fetch_from,
                    parallel: self.config.parallel,
                    skip_pruning: !cluster::prunes(&self.clusters, &self.destinations, i),
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
            self.clusters[i].retry.try_now();
            let (site, fetch_from, stop, batch) = (
                self.site.clone(),
                self.fetch_from.clone(),
                self.stop.clone(),
                batch.clone(),
            );
            let parallel = self.config.parallel;
            let skip_pruning = !cluster::prunes(&self.clusters, &self.destinations, i);
            let users = cluster::users_of(&self.clusters, &self.destinations, i);
            let cluster = name.clone();
            let taker = takers.next().expect("a taker for each cluster behind");
            let task = self.in_flight.spawn(async move {
                let pass = Pass {
                    fetch_from: &fetch_from,
                    parallel,
                    shared: Some(&taker),
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

    pub(super) fn show_publishing(&self) {
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
    pub(super) fn finished(&mut self, joined: Joined, round: &mut Round) {
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
        batch
            .staged_read
            .fetch_add(report.staged_bytes, std::sync::atomic::Ordering::Relaxed);
        // The last of its batch to end reports what the batch shared.
        if let Some(batch) = Arc::into_inner(batch) {
            let uploaded = batch.uploaded.into_inner();
            let read = batch.reads.read_bytes() + batch.staged_read.into_inner();
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

    /// Records the outcome of publishing to cluster `name`: what it published,
    /// and how it is to be retried.
    pub(super) fn record(
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
                c.retry.succeed();
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
}
