//! The disconnected site: a workspace, its content store and its trusted keys, and
//! the two things done with them — taking imagesets in, and publishing them to a
//! destination. The one-shot `publish` command and the `run` daemon both drive it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_cli::telemetry::Bar;
use airlock_common::exit_codes::{self, ExitCode as _};
use airlock_common::size::ByteSize;
use airlock_imageset::signing::TrustStore;
use airlock_imageset::{ImageRecord, ImagesetManifest};
use airlock_oci::reference::Destination;
use airlock_registry::progress::Progress as _;
use airlock_registry::prune::{self, InUse, Pruned, Pruner};
use airlock_registry::publish::{self, Publisher};
use airlock_registry::resources;
use airlock_registry::{ErrorKind, RegistryClient, RegistryError};
use airlock_state::crash_point;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster_api::{Access, ClusterApi};
use crate::early::{self, Early, Pending};
use crate::error::Error;
use crate::fanout::Taker;
use crate::ingest::{self, IngestError};
use crate::scan::{Candidate, Found};
use crate::source::{Mirror, StoreSource};
use crate::store::Store;
use crate::workspace::{SITE_STATE_FORMAT, SiteState, Verdict, Workspace};

/// Media type of the site state recorded in the destination registry.
pub const SITE_STATE_MEDIA_TYPE: &str = "application/vnd.airlock.site-workspace.v1+json";

/// Repository (under the destination prefix) that holds the site state, tagged by
/// workspace UUID, as oc-mirror keeps `oc-mirror:<uuid>`.
pub const SITE_STATE_REPOSITORY: &str = airlock_imageset::RESERVED_REPOSITORY;

/// Something that could not be done; the work continues with what can be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The exit code this problem calls for.
    pub code: i32,
    /// What, with the files concerned and what to do.
    pub message: String,
}

/// What happened to one imageset found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified and recorded as accepted.
    Accepted,
    /// Already accepted earlier.
    Duplicate,
    /// Waits for its predecessor, for missing files, or for disk space.
    Waiting(String),
    /// Never acceptable here (another workspace, a bad signature, forged): every
    /// file of it should be set aside.
    Refused(String),
    /// One file is damaged beyond repair: that file should be set aside.
    Damaged {
        /// The damaged file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What taking imagesets in, or publishing, did.
#[derive(Debug, Default)]
pub struct Report {
    /// Imagesets accepted: (UUID, sequence, blobs stored).
    pub accepted: Vec<(Uuid, u64, u64)>,
    /// Chunk files rebuilt from parity.
    pub rebuilt: Vec<PathBuf>,
    /// Damaged files set aside (renamed with `.damaged`).
    pub set_aside: Vec<PathBuf>,
    /// Files that are not chunks at all, left where they are; named so that a
    /// chunk mangled in transfer beyond recognition is not silently missed.
    pub ignored: Vec<PathBuf>,
    /// Where the workspace position came from, when taken from a registry.
    pub continued_from: Option<String>,
    /// Sequences published, per destination.
    pub published: Vec<(String, u64)>,
    /// Counters: uploaded, uploaded bytes, mounted, present, manifests, retries.
    pub stats: [u64; 6],
    /// Bytes read from the store to send the blobs whose uploads, staged while
    /// their imageset was verified (`early.rs`), a publish was handed: it
    /// closes them without reading them again, so a service's count of store
    /// reads needs these too.
    pub staged_bytes: u64,
    /// Cluster resource files written.
    pub resources: Vec<PathBuf>,
    /// What pruning did, per destination.
    pub pruned: Vec<(String, Pruned)>,
    /// Destinations not pruned, and why.
    pub not_pruned: Vec<(String, String)>,
    /// What could not be done.
    pub problems: Vec<Problem>,
}

impl Report {
    /// The exit code: the most serious problem's, or success.
    pub fn exit_code(&self) -> i32 {
        let rank = |c: i32| match c {
            exit_codes::DATA => 5,
            exit_codes::STATE => 4,
            exit_codes::IO => 3,
            exit_codes::UNAVAILABLE => 2,
            exit_codes::INCOMPLETE => 1,
            _ => 0,
        };
        self.problems
            .iter()
            .map(|p| p.code)
            .max_by_key(|&c| rank(c))
            .unwrap_or(exit_codes::OK)
    }

    /// Records a problem. Not logged here: the command prints its problems once at
    /// the end, and the agent logs each once while it lasts, not at every round.
    pub fn problem(&mut self, code: i32, message: String) {
        self.problems.push(Problem { code, message });
    }
}

/// A destination registry and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where images go.
    pub dest: Destination,
    /// The client.
    pub client: Arc<RegistryClient>,
}

/// How a publishing pass runs, for each cluster in it.
#[derive(Default)]
pub struct Pass<'a> {
    /// Registries to fetch layers from that the store lacks, after the destination.
    pub fetch_from: &'a [Mirror],
    /// Blob transfers at once, per cluster.
    pub parallel: usize,
    /// Reads shared with the other clusters published to at once.
    pub shared: Option<&'a Taker>,
    /// Cancelled when the agent stops: uploads under way finish, no new one starts.
    pub stop: Option<&'a CancellationToken>,
    /// Keep what the published imageset no longer lists (`--skip-pruning`).
    pub skip_pruning: bool,
    /// The clusters that pull from this registry and whose API can be read: what
    /// any of them runs is not pruned.
    pub users: &'a [(String, Access)],
}

/// The disconnected workspace, its store and its trusted keys.
#[derive(Debug)]
pub struct Site {
    /// The workspace directory.
    pub dir: PathBuf,
    /// The state.
    pub ws: Workspace,
    /// The content store.
    pub store: Store,
    /// The keys imagesets must be signed with (none: no signature required).
    pub trust: TrustStore,
    /// One per destination, held while publishing and pruning there: two
    /// clusters may share a destination, and one's prune must not delete what
    /// the other just pushed for a newer sequence.
    destinations: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// By destination: the uploads staged there while their imageset was
    /// verified ([`Early`]), for the publish that follows to close once they
    /// are done.
    staged: std::sync::Mutex<HashMap<String, Vec<Pending>>>,
}

impl Site {
    /// Opens the workspace at `dir`, and clears what an interrupted ingest left.
    pub fn open(dir: &Path, trust: TrustStore) -> Result<Self, Error> {
        let ws = Workspace::open(dir)?;
        let store = Store::open(dir).map_err(|e| Error::io(dir, e))?;
        store.clear_tmp().map_err(|e| Error::io(dir, e))?;
        Ok(Site {
            dir: dir.to_path_buf(),
            ws,
            store,
            trust,
            destinations: Default::default(),
            staged: Default::default(),
        })
    }

    /// Empties the content store (`emptyStore`, `--empty-store`) of everything
    /// but the manifests of the newest accepted imageset: they are small, and a
    /// registry added later is published to from them (its layers come from the
    /// other registries). Returns the bytes freed.
    pub fn empty_store(&self) -> Result<u64, Error> {
        let keep: HashSet<airlock_oci::digest::Digest> = match self.ws.accepted()? {
            Some((uuid, last)) => self
                .ws
                .manifest(&uuid, last)?
                .blobs
                .into_iter()
                .filter(|b| b.media_type.is_some())
                .map(|b| b.digest)
                .collect(),
            None => HashSet::new(),
        };
        self.store.empty(&keep).map_err(|e| Error::io(&self.dir, e))
    }

    /// An empty workspace continues from what an earlier machine recorded at `target`
    /// for one of `uuids`. Returns where it continued from.
    pub async fn continue_from_registry(
        &self,
        target: &Target,
        uuids: &[Uuid],
    ) -> Result<Option<String>, Error> {
        if self.ws.accepted()?.is_some() {
            return Ok(None);
        }
        let registry = target.dest.registry();
        let repo = target.dest.repository_for(SITE_STATE_REPOSITORY);
        for uuid in uuids {
            let Some(bytes) = target
                .client
                .get_document(&repo, &uuid.to_string(), SITE_STATE_MEDIA_TYPE, 256 << 20)
                .await
                .map_err(|mut e| {
                    // With a credential per namespace, this repository is easily
                    // forgotten: say what it is.
                    if let RegistryError::Request {
                        kind: ErrorKind::Unauthorized,
                        message,
                        ..
                    } = &mut e
                    {
                        message.push_str(&format!(
                            "; Airlock keeps the site's state in {registry}/{repo}, and the credential for it (the auth file's key for that repository, its namespace or {registry}) needs pull and push there"
                        ));
                    }
                    e
                })?
            else {
                continue;
            };
            let state: SiteState = serde_json::from_slice(&bytes)
                .ok()
                .filter(|s: &SiteState| s.format == SITE_STATE_FORMAT && s.uuid == *uuid)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{registry}/{repo}:{uuid} does not hold a readable workspace state; delete it or publish into a workspace that has the history"
                    ))
                })?;
            self.ws.import(&target.dest.key(), registry, &state)?;
            let from = format!("{registry}/{repo}:{uuid}");
            tracing::info!(%uuid, sequence = state.sequence, from = %from, "continuing from the workspace state recorded in the registry");
            return Ok(Some(from));
        }
        Ok(None)
    }

    /// Accepts, in sequence order, every imageset of `found` that the workspace can
    /// take (an acceptance may unblock one that waits). Chunks rebuilt from parity are
    /// written to `dir`. With `early`, large blobs are staged there as they enter
    /// the store (`early.rs`). Returns what happened to each imageset.
    pub async fn accept(
        &self,
        dir: &Path,
        found: &Found,
        early: Option<&Early>,
        report: &mut Report,
    ) -> Result<Vec<((Uuid, u64), Outcome)>, Error> {
        let mut outcomes = Vec::new();
        let mut pending: Vec<&Candidate> = found.imagesets.values().collect();
        loop {
            let mut progressed = false;
            let mut still = Vec::new();
            for c in pending {
                let key = (c.manifest.uuid, c.manifest.sequence);
                let outcome = match self.ws.judge(&c.manifest)? {
                    Verdict::Duplicate => match self.same_as_accepted(c)? {
                        None => {
                            tracing::info!(uuid = %key.0, sequence = key.1, "imageset accepted before; these files are a copy and are not taken in again");
                            Outcome::Duplicate
                        }
                        Some(why) => {
                            report.problem(exit_codes::DATA, why.clone());
                            Outcome::Refused(why)
                        }
                    },
                    Verdict::Refuse(why) => {
                        report.problem(exit_codes::STATE, why.clone());
                        Outcome::Refused(why)
                    }
                    Verdict::Wait { .. } => {
                        still.push(c);
                        continue;
                    }
                    Verdict::Accept => {
                        let outcome = self.take(dir, c, early, report).await?;
                        progressed |= outcome == Outcome::Accepted;
                        outcome
                    }
                };
                outcomes.push((key, outcome));
            }
            pending = still;
            if !progressed || pending.is_empty() {
                break;
            }
        }
        for c in pending {
            let Verdict::Wait { expected } = self.ws.judge(&c.manifest)? else {
                continue;
            };
            let mut message = format!("{} is waiting for sequence {expected}", c.manifest.label());
            if !c.missing().is_empty() {
                message.push_str(&format!(
                    "; it also lacks files: {}",
                    ingest::missing_message(c, &[])
                ));
            }
            report.problem(exit_codes::INCOMPLETE, message.clone());
            outcomes.push((
                (c.manifest.uuid, c.manifest.sequence),
                Outcome::Waiting(message),
            ));
        }
        Ok(outcomes)
    }

    /// Why `c`, whose sequence was accepted earlier, is not that imageset: a resend
    /// is welcome, but another manifest under an accepted sequence is a forgery or
    /// two connected workspaces sharing a UUID, and must not pass as a duplicate.
    /// `None` when it is the same (or the accepted manifest is not kept here, as
    /// after continuing from a registry, so there is nothing to compare).
    fn same_as_accepted(&self, c: &Candidate) -> Result<Option<String>, Error> {
        let m = &c.manifest;
        if !self.ws.has_manifest(&m.uuid, m.sequence) {
            return Ok(None);
        }
        let accepted = self.ws.manifest(&m.uuid, m.sequence)?;
        if accepted == **m {
            return Ok(None);
        }
        Ok(Some(format!(
            "{}: was accepted earlier with another manifest (sha256 of this one: {}); refusing it: a file was forged, or two connected workspaces share a UUID. Nothing of it was published; the accepted imageset stands",
            m.label(),
            c.manifest_digest
        )))
    }

    /// Verifies and takes one acceptable imageset.
    async fn take(
        &self,
        dir: &Path,
        c: &Candidate,
        early: Option<&Early>,
        report: &mut Report,
    ) -> Result<Outcome, Error> {
        let label = c.manifest.label();
        if !c.conflicting.is_empty() {
            let files: Vec<String> = c
                .conflicting
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let why = format!(
                "{label}: chunk files disagree on its manifest ({}); refusing it: a file was altered or two different imagesets claim the same sequence",
                files.join(", ")
            );
            report.problem(exit_codes::DATA, why.clone());
            return Ok(Outcome::Refused(why));
        }
        if !self.trust.is_empty()
            && let Err(why) = self.trust.verify(&c.manifest_bytes, c.signature.as_deref())
        {
            let why = format!("{label}: refused: {why}; nothing of it was published");
            report.problem(exit_codes::DATA, why.clone());
            return Ok(Outcome::Refused(why));
        }
        if let Some(why) = self.foreign_deletes(&c.manifest, None)? {
            let why = format!("{label}: refused: {why}; nothing of it was published");
            report.problem(exit_codes::DATA, why.clone());
            return Ok(Outcome::Refused(why));
        }
        // Refuse early, not half-way, when the disk cannot hold it (zarf#1473).
        let needed: u64 = c
            .manifest
            .blobs
            .iter()
            .filter(|b| !b.parts.is_empty() && !self.store.has(&b.digest))
            .map(|b| b.size)
            .sum();
        let free = airlock_state::free_space(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        if needed > free {
            let why = format!(
                "{label} needs {} in the workspace {}, but only {} is free; free space there (or move the workspace) and it is taken on the next run",
                ByteSize(needed),
                self.dir.display(),
                ByteSize(free)
            );
            report.problem(exit_codes::IO, why.clone());
            return Ok(Outcome::Waiting(why));
        }
        let (candidate, store, dir) = (c.clone(), self.store.clone(), dir.to_path_buf());
        let total = ingest::chunk_bytes(c);
        let bar = Bar::bytes(&format!("verify {label}"), total);
        let verify = move |announce| {
            tokio::task::spawn_blocking(move || {
                let taken = ingest::ingest(&candidate, &store, &dir, &bar, announce);
                bar.finish();
                if taken.is_ok() {
                    verified_point();
                }
                taken.and_then(|ingested| {
                    ingest::check_manifests(&candidate.manifest, &store)
                        .map(|()| ingested)
                        .map_err(IngestError::Forged)
                })
            })
        };
        let (result, staged) = early::beside(early, &self.store, &c.manifest, verify).await;
        // Kept for the publish once the imageset is accepted, cancelled
        // otherwise (none without `early`).
        let mut staged = early.map(|e| (e, staged));
        if result.is_err()
            && let Some((early, staged)) = staged.take()
        {
            early::discard(&early.target, staged).await;
        }
        Ok(match result {
            Err(IngestError::Forged(why)) => {
                let why = format!("{label}: refused: {why}; nothing of it was published");
                report.problem(exit_codes::DATA, why.clone());
                Outcome::Refused(why)
            }
            Ok(ingested) => {
                crash_point("ingested");
                if let Err(e) = self.ws.accept(&c.manifest) {
                    if let Some((early, staged)) = staged {
                        early::discard(&early.target, staged).await;
                    }
                    return Err(e.into());
                }
                if let Some((early, staged)) = staged {
                    self.staged
                        .lock()
                        .expect("not poisoned")
                        .entry(early.target.dest.key())
                        .or_default()
                        .push(staged);
                }
                crash_point("accepted");
                tracing::info!(uuid = %c.manifest.uuid, sequence = c.manifest.sequence, blobs_stored = ingested.stored, rebuilt = ingested.rebuilt.len(), "imageset verified and accepted");
                report
                    .accepted
                    .push((c.manifest.uuid, c.manifest.sequence, ingested.stored));
                report.rebuilt.extend(ingested.rebuilt);
                report.set_aside.extend(ingested.set_aside);
                Outcome::Accepted
            }
            Err(IngestError::Incomplete(why)) => {
                report.problem(exit_codes::INCOMPLETE, why.clone());
                Outcome::Waiting(why)
            }
            Err(IngestError::Damaged(e @ airlock_imageset::read::ChunkError::Store { .. })) => {
                let why = format!(
                    "{label}: {e}; nothing of it was published; it is taken again on the next run"
                );
                report.problem(exit_codes::IO, why.clone());
                Outcome::Waiting(why)
            }
            Err(IngestError::Damaged(e)) => {
                report.problem(
                    exit_codes::DATA,
                    format!("{label}: {e}; nothing of it was published"),
                );
                Outcome::Damaged {
                    file: e.path().to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })
    }

    /// Publishes every accepted imageset not yet published to `target`, in order,
    /// recording where each blob now is and the site state at the destination, then
    /// writes the cluster resources of what is published there into `resources_dir`.
    pub async fn publish_to(
        &self,
        target: &Target,
        pass: &Pass<'_>,
        resources_dir: &Path,
        report: &mut Report,
    ) -> Result<(), Error> {
        let Some((uuid, last)) = self.ws.accepted()? else {
            return Ok(());
        };
        let (dest_key, shown) = (target.dest.key(), target.dest.to_string());
        let registry = target.dest.registry();
        if let Some(shared) = pass.shared {
            // Nothing is kept for it while it waits for another cluster's
            // publish to the same destination.
            shared.expect(std::iter::empty());
        }
        let lock = self
            .destinations
            .lock()
            .expect("not poisoned")
            .entry(dest_key.clone())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let before = self.ws.published(&dest_key)?;
        let from = before.unwrap_or(0) + 1;
        if self.ws.pruned(&dest_key)?.is_none() {
            // A new destination holds nothing before the first sequence published
            // there; one published before pruning existed is taken to hold what
            // its last sequence lists.
            self.ws.mark_pruned(&dest_key, before.unwrap_or(from))?;
        }
        let mut mirrors = vec![Mirror {
            client: target.client.clone(),
            dest: target.dest.clone(),
        }];
        mirrors.extend(pass.fetch_from.iter().cloned());
        let pending = self
            .staged
            .lock()
            .expect("not poisoned")
            .remove(&dest_key)
            .unwrap_or_default();
        // Staging may have handed over uploads still under way (the agent's).
        let mut staged = Vec::new();
        for p in pending {
            staged.extend(p.sessions_unless_stopped(pass.stop, target).await);
        }
        report.staged_bytes += staged.iter().map(|s| s.size).sum::<u64>();
        // Whatever ends the loop, sessions no sequence closed are cancelled.
        let looped: Result<(), Error> = async {
            for seq in from..=last {
                if !self.ws.has_manifest(&uuid, seq) {
                    // Accepted by an earlier machine, whose workspace this one continued
                    // from the registry: each imageset lists the whole desired state, so
                    // publishing a later one brings this destination up to date.
                    tracing::info!(%uuid, sequence = seq, destination = %dest_key, "no manifest of this sequence here; a later one brings the destination up to date");
                    continue;
                }
                let m = self.ws.manifest(&uuid, seq)?;
                let locations: HashMap<_, _> = self.ws.locations(registry)?;
                let source = StoreSource::new(&self.store, mirrors.clone(), &locations, &m.blobs)
                    .sharing(pass.shared);
                if let Some(shared) = pass.shared {
                    // What the other clusters read of any other blob is not
                    // kept for this one, nor of one whose upload is staged.
                    // A blob the registry holds somewhere is expected: an
                    // image in another repository uploads it again (the
                    // publish mounts only what this run placed).
                    shared.expect(
                        m.blobs
                            .iter()
                            .filter(|b| {
                                b.media_type.is_none()
                                    && !staged.iter().any(|st| st.digest == b.digest)
                            })
                            .map(|b| b.digest.clone()),
                    );
                }
                let carried: u64 = m
                    .blobs
                    .iter()
                    .filter(|b| !b.parts.is_empty() && b.media_type.is_none())
                    .map(|b| b.size)
                    .sum();
                let mut publisher = Publisher::new(
                    &target.client,
                    &source,
                    &target.dest,
                    pass.parallel,
                    Bar::bytes("publish", carried),
                )
                .with_staged(std::mem::take(&mut staged));
                if let Some(stop) = pass.stop {
                    publisher = publisher.with_stop(stop.clone());
                }
                let published = publisher.publish(&m.images, &m.blobs).await;
                let stats = publisher.stats.get();
                // What this sequence did not use, a later one may.
                staged = publisher.into_staged();
                let placed = match published {
                    Ok(p) => p,
                    Err(e) => {
                        // Later sequences build on this one: stop here.
                        report.problem(e.exit_code(), format!("{} → {shown}: {e}", m.label()));
                        break;
                    }
                };
                crash_point("published-images");
                self.ws.record_locations(registry, &placed)?;
                self.ws.mark_published(&dest_key, seq)?;
                for (t, v) in report.stats.iter_mut().zip(stats) {
                    *t += v;
                }
                report.published.push((shown.clone(), seq));
                tracing::info!(%uuid, sequence = seq, destination = %dest_key, "imageset published");
                let state = self.ws.site_state(registry, uuid, seq)?;
                let repo = target.dest.repository_for(SITE_STATE_REPOSITORY);
                let doc = Bytes::from(serde_json::to_vec(&state).expect("state serialises"));
                if let Err(e) = target
                    .client
                    .put_document(&repo, &uuid.to_string(), SITE_STATE_MEDIA_TYPE, doc)
                    .await
                {
                    report.problem(
                        exit_codes::UNAVAILABLE,
                        format!("sequence {seq} is published, but the workspace state could not be recorded at {registry}/{repo}: {e}; a new machine could not continue from it until the next publish records it"),
                    );
                }
            }
            Ok(())
        }
        .await;
        if let Some(shared) = pass.shared {
            // Pruning and resources read no blob: nothing is kept for them.
            shared.leave();
        }
        early::cancel(target, staged).await;
        looped?;
        self.prune_at(target, pass, report).await?;
        // The mirror sets describe what is published here, not what is only accepted.
        let published = self.ws.published(&dest_key)?.unwrap_or(0);
        if published > 0 && self.ws.has_manifest(&uuid, published) {
            let latest = self.ws.manifest(&uuid, published)?;
            report.resources.extend(
                resources::write(
                    resources_dir,
                    &publish::cluster_resources(&latest.images, &latest.releases, &target.dest),
                )
                .map_err(|e| Error::io(resources_dir, e))?,
            );
        }
        Ok(())
    }

    /// What publishing to `dest` would do, changing nothing: the sequences it
    /// would publish (the accepted ones not yet there, then those of `found` that
    /// follow them: complete imagesets whose manifests were checked, not yet
    /// verified), and, into `report`, what pruning there would then delete and
    /// keep, the plan of a real run with the deletes left out. The registry is
    /// read (through `connect`, awaited only then) for children and referrers,
    /// and the clusters in `users` for what they run.
    pub async fn plan(
        &self,
        dest: &Destination,
        connect: impl std::future::Future<Output = Result<Target, Error>>,
        users: &[(String, Access)],
        skip_pruning: bool,
        found: &Found,
        report: &mut Report,
    ) -> Result<Vec<u64>, Error> {
        let (dest_key, shown) = (dest.key(), dest.to_string());
        let Some((uuid, last)) = self.ws.accepted()? else {
            report.not_pruned.push((
                shown,
                "nothing was published from this workspace yet: nothing to prune".into(),
            ));
            return Ok(found.imagesets.keys().map(|(_, s)| *s).collect());
        };
        let mut arriving = Vec::new();
        while let Some(c) = found
            .imagesets
            .get(&(uuid, last + 1 + arriving.len() as u64))
        {
            arriving.push(c.manifest.as_ref().clone());
        }
        let published = self.ws.published(&dest_key)?.unwrap_or(0);
        let newest = last + arriving.len() as u64;
        let would_publish = (published + 1..=newest).collect();
        let base = self.ws.pruned(&dest_key)?.unwrap_or(published.max(1));
        if published == 0 || base >= newest {
            return Ok(would_publish);
        }
        // What a real run would look at: what was placed since the last prune (with
        // pruning on), and what delete imagesets remove (always).
        let mut since = self.held(&uuid, base + 1..last + 1)?;
        since.extend(arriving.iter().cloned());
        let deletes = self.requested_deletes(&since, report)?;
        let placement = if skip_pruning {
            Err("pruning is off (--skip-pruning, pruning: false)".to_string())
        } else {
            self.placed_by(&uuid, base, (last + 1).min(newest))?
        };
        let wanted = match arriving.pop() {
            Some(m) => m,
            None if self.ws.has_manifest(&uuid, newest) => self.ws.manifest(&uuid, newest)?,
            None => {
                report.not_pruned.push((shown, unknown_placement(newest)));
                return Ok(would_publish);
            }
        };
        let (earlier, kept) = match placement {
            Ok(mut earlier) => {
                earlier.extend(arriving);
                (earlier, self.ws.kept(&dest_key)?)
            }
            Err(why) => {
                let kept = self.ws.kept(&dest_key)?;
                if deletes.is_empty() && kept.is_empty() {
                    report.not_pruned.push((shown, why));
                    return Ok(would_publish);
                }
                (Vec::new(), with_kept(deletes, &kept))
            }
        };
        let target = connect.await?;
        if let Some(pruned) = self
            .prune_to(&target, users, &earlier, &kept, &wanted, true, report)
            .await
        {
            report.pruned.push((shown, pruned));
        }
        Ok(would_publish)
    }

    /// Deletes from `target` what the imagesets published there since it was last
    /// pruned placed and the one published last no longer lists; see
    /// [`airlock_registry::prune`]. The mark moves only once that is done, so an
    /// interrupted or failed prune is finished by the next publish.
    async fn prune_at(
        &self,
        target: &Target,
        pass: &Pass<'_>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let (dest_key, shown) = (target.dest.key(), target.dest.to_string());
        let (Some((uuid, _)), Some(now)) = (self.ws.accepted()?, self.ws.published(&dest_key)?)
        else {
            return Ok(());
        };
        let base = match self.ws.pruned(&dest_key)? {
            Some(base) if base < now => base,
            _ => return Ok(()),
        };
        // With pruning off, only what delete imagesets removed on purpose goes,
        // and what a prune decided to delete but kept while a cluster ran it.
        let stored_kept = self.ws.kept(&dest_key)?;
        let since = self.held(&uuid, base + 1..now + 1)?;
        let deletes = self.requested_deletes(&since, report)?;
        let placement = match self.placed_by(&uuid, base, now)? {
            Ok(_) if !self.ws.has_manifest(&uuid, now) => Err(unknown_placement(base)),
            other => other,
        };
        let (earlier, kept_before) = match placement {
            Ok(earlier) if !pass.skip_pruning => (earlier, stored_kept),
            // What was kept in use before is looked at again with the requested
            // deletes: it stays while in use, and protects its children.
            _ if !(deletes.is_empty() && stored_kept.is_empty())
                && self.ws.has_manifest(&uuid, now) =>
            {
                (Vec::new(), with_kept(deletes, &stored_kept))
            }
            Ok(_) | Err(_) if pass.skip_pruning => {
                report.not_pruned.push((
                    shown.clone(),
                    "pruning is off (--skip-pruning, pruning: false)".into(),
                ));
                return Ok(self.ws.mark_pruned(&dest_key, now)?);
            }
            Ok(_) | Err(_) => {
                let why = unknown_placement(base);
                tracing::info!(destination = %dest_key, reason = %why, "not pruned");
                report.not_pruned.push((shown.clone(), why));
                return Ok(self.ws.mark_pruned(&dest_key, now)?);
            }
        };
        let wanted = self.ws.manifest(&uuid, now)?;
        let Some(pruned) = self
            .prune_to(
                target,
                pass.users,
                &earlier,
                &kept_before,
                &wanted,
                false,
                report,
            )
            .await
        else {
            return Ok(());
        };
        // What was kept is looked at again by the next prune: a cluster that
        // stopped running it lets it go then.
        let kept_at: HashSet<&prune::At> = pruned.kept.iter().map(|(at, _)| at).collect();
        let mut kept: Vec<ImageRecord> = Vec::new();
        for image in earlier.iter().flat_map(|m| &m.images).chain(&kept_before) {
            if kept_at.contains(&prune::At::of(&target.dest, image)) && !kept.contains(image) {
                kept.push(image.clone());
            }
        }
        tracing::info!(destination = %dest_key, sequence = now, deleted = pruned.deleted.len(), kept = pruned.kept.len(), untagged = pruned.untagged.len(), refused = pruned.refused.is_some(), "pruned what the published imageset no longer lists");
        report.pruned.push((shown, pruned));
        Ok(self.ws.mark_pruned_keeping(&dest_key, now, &kept)?)
    }

    /// What the delete imagesets among `manifests` (in sequence order) remove on
    /// purpose: deleted even where pruning is off, as oc-mirror's `delete` is a
    /// request, not a policy. Only what the sequence before each listed is taken;
    /// a delete imageset whose predecessor is not known here (the workspace
    /// continued from a registry) deletes nothing, said in `report`.
    pub fn requested_deletes(
        &self,
        manifests: &[ImagesetManifest],
        report: &mut Report,
    ) -> Result<Vec<ImageRecord>, Error> {
        let mut out: Vec<ImageRecord> = Vec::new();
        for m in manifests.iter().filter(|m| !m.deletes.is_empty()) {
            let before = manifests.iter().find(|p| p.sequence + 1 == m.sequence);
            if before.is_none() && !self.ws.has_manifest(&m.uuid, m.sequence - 1) {
                report.not_pruned.push((
                    m.label(),
                    format!(
                        "its deletes are not carried out: sequence {}, whose images they must be, is not known to this workspace (it continued from the state recorded in the registry)",
                        m.sequence - 1
                    ),
                ));
                continue;
            }
            if let Some(why) = self.foreign_deletes(m, before)? {
                // Refused at acceptance already; a manifest kept from before that
                // check is not trusted either.
                report.problem(exit_codes::DATA, format!("{}: {why}", m.label()));
                continue;
            }
            for image in &m.deletes {
                if !out.contains(image) {
                    out.push(image.clone());
                }
            }
        }
        Ok(out)
    }

    /// Why `m`'s deletes cannot be trusted: each must be an image the sequence
    /// before it listed (`before`, else the one kept here), since a delete
    /// imageset removes from what was published and a forged one must not reach
    /// anything else under the destination. `None` when they are, or when the
    /// sequence before is not known here.
    fn foreign_deletes(
        &self,
        m: &ImagesetManifest,
        before: Option<&ImagesetManifest>,
    ) -> Result<Option<String>, Error> {
        if m.deletes.is_empty() {
            return Ok(None);
        }
        let kept_here;
        let before = match before {
            Some(b) => b,
            None if self.ws.has_manifest(&m.uuid, m.sequence - 1) => {
                kept_here = self.ws.manifest(&m.uuid, m.sequence - 1)?;
                &kept_here
            }
            None => return Ok(None),
        };
        Ok(m.deletes
            .iter()
            .enumerate()
            .find(|(_, d)| !before.images.contains(d))
            .map(|(i, d)| {
                format!(
                    "deletes[{i}] ({}@{}) is not an image of sequence {}; a delete imageset only removes what the sequence before it listed",
                    d.repository, d.digest, before.sequence
                )
            }))
    }

    /// The manifests of the sequences `from..to` kept here: what they placed is
    /// what a prune from `from` may delete. `Err` with why when `from`'s is not
    /// here (the workspace continued from a registry), so that is not known.
    pub fn placed_by(
        &self,
        uuid: &Uuid,
        from: u64,
        to: u64,
    ) -> Result<Result<Vec<ImagesetManifest>, String>, Error> {
        if !self.ws.has_manifest(uuid, from) {
            return Ok(Err(unknown_placement(from)));
        }
        Ok(Ok(self.held(uuid, from..to)?))
    }

    /// The manifests of the sequences in `range` that this workspace keeps (one
    /// that continued from a registry lacks those an earlier machine accepted).
    fn held(
        &self,
        uuid: &Uuid,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<ImagesetManifest>, Error> {
        let mut out = Vec::new();
        for seq in range {
            if self.ws.has_manifest(uuid, seq) {
                out.push(self.ws.manifest(uuid, seq)?);
            }
        }
        Ok(out)
    }

    /// Prunes `target` of what `earlier` placed (and an earlier prune `kept`) and
    /// `wanted` no longer lists, keeping what the clusters in `users` run; with `dry_run`, reads the
    /// registry but deletes nothing, and the result says what would go. `None`
    /// when nothing could be decided or done (said in `report`).
    #[allow(clippy::too_many_arguments)]
    pub async fn prune_to(
        &self,
        target: &Target,
        users: &[(String, Access)],
        earlier: &[ImagesetManifest],
        kept: &[ImageRecord],
        wanted: &ImagesetManifest,
        dry_run: bool,
        report: &mut Report,
    ) -> Option<Pruned> {
        let shown = target.dest.to_string();
        let placed: Vec<_> = earlier.iter().flat_map(|m| &m.images).chain(kept).collect();
        let mut in_use = InUse::new();
        let mut plan = prune::plan(&placed, &wanted.images, &target.dest, &in_use);
        if !plan.doomed.is_empty() || !plan.untag.is_empty() {
            for (name, access) in users {
                let running = match ClusterApi::connect(access).await {
                    Ok(api) => api.running().await,
                    Err(e) => Err(e),
                };
                match running {
                    Ok(running) => {
                        for (digest, why) in prune::in_use(name, &running, &placed, &target.dest) {
                            in_use.entry(digest).or_insert(why);
                        }
                    }
                    Err(e) => {
                        let why = format!(
                            "what cluster {name} runs cannot be read ({e}); nothing is pruned until it can be"
                        );
                        tracing::warn!(destination = %shown, cluster = %name, error = %e, "not pruned: what the cluster runs cannot be read");
                        report.not_pruned.push((shown, why));
                        return None;
                    }
                }
            }
            plan = prune::plan(&placed, &wanted.images, &target.dest, &in_use);
        }
        match Pruner::new(&target.client, &target.dest, dry_run)
            .run(&plan, &wanted.images, &wanted.blobs, &in_use)
            .await
        {
            Ok(p) => Some(p),
            Err(e) => {
                let message = if dry_run {
                    format!("{shown}: cannot tell what pruning would delete: {e}")
                } else {
                    format!(
                        "{shown}: sequence {} is published, but {e}; pruning is finished on the next run",
                        wanted.sequence
                    )
                };
                report.problem(e.exit_code(), message);
                None
            }
        }
    }
}

/// A test hook: with `AIRLOCK_TEST_VERIFIED_WHEN=<file>`, a verification ends
/// only once that file exists, so that a test can have staging's uploads under
/// way, or done, when it ends.
fn verified_point() {
    let Some(file) = std::env::var_os("AIRLOCK_TEST_VERIFIED_WHEN") else {
        return;
    };
    while !Path::new(&file).exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `deletes` and, after them, the records of `kept` not among them.
fn with_kept(mut deletes: Vec<ImageRecord>, kept: &[ImageRecord]) -> Vec<ImageRecord> {
    for image in kept {
        if !deletes.contains(image) {
            deletes.push(image.clone());
        }
    }
    deletes
}

/// Why nothing is pruned when what sequence `base` placed is not known here.
fn unknown_placement(base: u64) -> String {
    format!(
        "what sequence {base} placed there is not known to this workspace (it continued from the state recorded in the registry); nothing is pruned until the next imageset"
    )
}
