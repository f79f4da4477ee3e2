//! `publish`: take every complete imageset from a directory, in sequence order, and
//! publish the workspace's content to a registry.
//!
//! 1. Scan the directory; group chunk files by imageset.
//! 2. If the workspace is empty, look for the state a previous machine recorded in
//!    the destination registry, and continue from it.
//! 3. In sequence order, judge each imageset against the workspace (accept,
//!    duplicate, wait, refuse); verify every chunk of an acceptable, complete one
//!    into the content store, and only then record it as accepted.
//! 4. Publish every accepted imageset not yet published to this destination, in
//!    order; record where each blob now is, and the site state in the registry.
//! 5. Write the cluster resources (mirror sets) for what is now published; with
//!    `--prune`, empty the content store.
//!
//! Whatever cannot be done (a missing chunk, a damaged file, an imageset waiting for
//! its predecessor) is reported with the files concerned, and makes the command exit
//! non-zero, but does not stop the imagesets that can be published.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_common::exit_codes::{self, ExitCode as _};
use airlock_common::publish::{self, Publisher};
use airlock_common::reference::Destination;
use airlock_common::registry::{RegistryClient, RegistryOptions};
use airlock_common::resources;
use airlock_common::signing::TrustStore;
use airlock_common::size::ByteSize;
use airlock_common::state::crash_point;
use airlock_common::telemetry::Progress;
use bytes::Bytes;

use crate::error::Error;
use crate::ingest::{self, IngestError};
use crate::scan::{self, Candidate};
use crate::source::{Mirror, StoreSource};
use crate::store::Store;
use crate::workspace::{SITE_STATE_FORMAT, SiteState, Verdict, Workspace};

/// Media type of the site state recorded in the destination registry.
pub const SITE_STATE_MEDIA_TYPE: &str = "application/vnd.airlock.site-workspace.v1+json";

/// Repository (under the destination prefix) that holds the site state, tagged by
/// workspace UUID, as oc-mirror keeps `oc-mirror:<uuid>`.
pub const SITE_STATE_REPOSITORY: &str = "airlock-state";

/// What `publish` is asked to do.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The directory holding chunk files.
    pub from: PathBuf,
    /// The mirror registry and prefix.
    pub to: Destination,
    /// The workspace directory; defaults to `~/.airlock/site`.
    pub workspace: Option<PathBuf>,
    /// Blob transfers at once.
    pub parallel: usize,
    /// How to reach the destination registry (and `fetch_from` registries).
    pub registry: RegistryOptions,
    /// Other registries to fetch layers from that no imageset carries.
    pub fetch_from: Vec<Destination>,
    /// Empty the content store once everything accepted is published.
    pub prune: bool,
    /// Public keys (minisign) an imageset must be signed with; none: signatures are
    /// not required.
    pub trust: Vec<PathBuf>,
}

/// Something `publish` could not do; the run continues with what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The exit code this problem calls for.
    pub code: i32,
    /// What, with the files concerned and what to do.
    pub message: String,
}

/// What `publish` did.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// Imagesets accepted in this run: (UUID, sequence, blobs stored).
    pub accepted: Vec<(uuid::Uuid, u64, u64)>,
    /// Sequences published to the destination in this run.
    pub published: Vec<u64>,
    /// Counters: uploaded, uploaded bytes, mounted, present, manifests.
    pub stats: [u64; 5],
    /// Cluster resource files written.
    pub resources: Vec<PathBuf>,
    /// Bytes freed by `--prune`.
    pub pruned: Option<u64>,
    /// Where the workspace position came from when it was taken from the registry.
    pub continued_from: Option<String>,
    /// Chunk files rebuilt from parity.
    pub rebuilt: Vec<PathBuf>,
    /// Damaged files set aside (renamed with `.damaged`).
    pub set_aside: Vec<PathBuf>,
    /// What could not be done.
    pub problems: Vec<Problem>,
    /// Wall time.
    pub elapsed: Duration,
}

impl PublishReport {
    /// The exit code: the most serious problem's, or success.
    pub fn exit_code(&self) -> i32 {
        let rank = |c: i32| match c {
            exit_codes::DATA => 4,
            exit_codes::STATE => 3,
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

    fn problem(&mut self, code: i32, message: String) {
        self.problems.push(Problem { code, message });
    }
}

/// The workspace directory to use.
pub fn workspace_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".airlock/site"))
        .ok_or_else(|| Error::Usage("no --workspace given and HOME is not set".into()))
}

/// The destination registry, connected on first use.
struct Target<'a> {
    opts: &'a PublishOptions,
    client: Option<Arc<RegistryClient>>,
}

impl Target<'_> {
    async fn client(&mut self) -> Result<Arc<RegistryClient>, Error> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let c =
            Arc::new(RegistryClient::connect(self.opts.to.registry(), &self.opts.registry).await?);
        self.client = Some(c.clone());
        Ok(c)
    }
}

/// Runs `publish`.
pub async fn publish(opts: &PublishOptions) -> Result<PublishReport, Error> {
    let started = Instant::now();
    let mut report = PublishReport::default();
    if !opts.from.is_dir() {
        return Err(Error::Usage(format!(
            "--from {}: not a directory",
            opts.from.display()
        )));
    }
    let trust = TrustStore::load(&opts.trust).map_err(|e| Error::Usage(e.to_string()))?;
    let ws_dir = workspace_dir(opts.workspace.as_deref())?;
    let ws = Workspace::open(&ws_dir)?;
    let store = Store::open(&ws_dir).map_err(|e| Error::io(&ws_dir, e))?;
    store.clear_tmp().map_err(|e| Error::io(&ws_dir, e))?;
    let dest_key = opts.to.to_string();
    let registry = opts.to.registry();
    let mut target = Target { opts, client: None };

    let found = scan::scan(&opts.from).map_err(|e| Error::io(&opts.from, e))?;
    tracing::info!(dir = %opts.from.display(), imagesets = found.imagesets.len(), damaged = found.damaged.len(), other = found.other.len(), "scanned");
    for e in &found.damaged {
        report.problem(exit_codes::DATA, format!("{e}; the file was not used"));
    }

    // A workspace that knows nothing continues from what an earlier machine recorded
    // at this destination, if anything.
    if ws.accepted()?.is_none() {
        let mut uuids: Vec<uuid::Uuid> = found.imagesets.keys().map(|(u, _)| *u).collect();
        uuids.dedup();
        for uuid in uuids {
            let client = target.client().await?;
            let repo = opts.to.repository_for(SITE_STATE_REPOSITORY);
            let Some(bytes) = client
                .get_document(&repo, &uuid.to_string(), SITE_STATE_MEDIA_TYPE, 256 << 20)
                .await?
            else {
                continue;
            };
            let state: SiteState = serde_json::from_slice(&bytes)
                .ok()
                .filter(|s: &SiteState| s.format == SITE_STATE_FORMAT && s.uuid == uuid)
                .ok_or_else(|| Error::Usage(format!("{registry}/{repo}:{uuid} does not hold a readable workspace state; delete it or publish into a workspace that has the history")))?;
            ws.import(&dest_key, registry, &state)?;
            let from = format!("{registry}/{repo}:{uuid}");
            tracing::info!(%uuid, sequence = state.sequence, from = %from, "continuing from the workspace state recorded in the registry");
            report.continued_from = Some(from);
            break;
        }
    }
    if found.imagesets.is_empty() && ws.accepted()?.is_none() {
        report.problem(
            exit_codes::INCOMPLETE,
            format!("no imageset chunk files found in {}", opts.from.display()),
        );
    }

    accept_all(&ws, &store, &trust, &opts.from, &found, &mut report).await?;

    // Publish what was accepted and not yet published here.
    if let Some((uuid, last)) = ws.accepted()? {
        let from = ws.published(&dest_key)?.unwrap_or(0) + 1;
        if from <= last {
            let client = target.client().await?;
            let mut mirrors = vec![Mirror {
                client: client.clone(),
                dest: opts.to.clone(),
            }];
            for d in &opts.fetch_from {
                mirrors.push(Mirror {
                    client: Arc::new(RegistryClient::connect(d.registry(), &opts.registry).await?),
                    dest: d.clone(),
                });
            }
            let mut totals = [0u64; 5];
            for seq in from..=last {
                let m = ws.manifest(&uuid, seq)?;
                let locations = ws.locations(registry)?;
                let source = StoreSource::new(&store, mirrors.clone(), &locations, &m.blobs);
                let carried: u64 = m
                    .blobs
                    .iter()
                    .filter(|b| !b.parts.is_empty() && b.media_type.is_none())
                    .map(|b| b.size)
                    .sum();
                let publisher = Publisher::new(
                    &client,
                    &source,
                    &opts.to,
                    opts.parallel,
                    Progress::bytes("publish", carried),
                );
                let placed = match publisher.publish(&m.images, &m.blobs).await {
                    Ok(p) => p,
                    Err(e) => {
                        // Later sequences build on this one: stop here.
                        report.problem(e.exit_code(), format!("{}: {e}", m.label()));
                        break;
                    }
                };
                crash_point("published-images");
                ws.record_locations(registry, &placed)?;
                ws.mark_published(&dest_key, seq)?;
                for (t, v) in totals.iter_mut().zip(publisher.stats.get()) {
                    *t += v;
                }
                report.published.push(seq);
                tracing::info!(%uuid, sequence = seq, destination = %dest_key, "imageset published");
                let state = ws.site_state(registry, uuid, seq)?;
                let repo = opts.to.repository_for(SITE_STATE_REPOSITORY);
                let doc = Bytes::from(serde_json::to_vec(&state).expect("state serialises"));
                if let Err(e) = client
                    .put_document(&repo, &uuid.to_string(), SITE_STATE_MEDIA_TYPE, doc)
                    .await
                {
                    report.problem(
                        exit_codes::UNAVAILABLE,
                        format!("sequence {seq} is published, but the workspace state could not be recorded at {registry}/{repo}: {e}; a new machine could not continue from it until the next publish records it"),
                    );
                }
            }
            report.stats = totals;
        }
        // The mirror sets describe what is published here, not what is only accepted.
        let published = ws.published(&dest_key)?.unwrap_or(0);
        if published > 0 && ws.has_manifest(&uuid, published) {
            let latest = ws.manifest(&uuid, published)?;
            let dir = ws_dir.join("cluster-resources");
            report.resources =
                resources::write_mirror_sets(&dir, &publish::mirrored(&latest.images, &opts.to))
                    .map_err(|e| Error::io(&dir, e))?;
        }
        if opts.prune && published == last {
            report.pruned = Some(store.prune().map_err(|e| Error::io(&ws_dir, e))?);
        }
    }
    report.elapsed = started.elapsed();
    tracing::info!(
        accepted = report.accepted.len(),
        published = report.published.len(),
        uploaded = report.stats[0],
        uploaded_bytes = %ByteSize(report.stats[1]),
        problems = report.problems.len(),
        "publish finished"
    );
    Ok(report)
}

/// Accepts, in sequence order, every imageset of `found` that the workspace can take;
/// an acceptance may unblock an imageset that waits.
async fn accept_all(
    ws: &Workspace,
    store: &Store,
    trust: &TrustStore,
    from: &Path,
    found: &scan::Found,
    report: &mut PublishReport,
) -> Result<(), Error> {
    let mut pending: Vec<&Candidate> = found.imagesets.values().collect();
    loop {
        let mut progressed = false;
        let mut still = Vec::new();
        for c in pending {
            match ws.judge(&c.manifest)? {
                Verdict::Duplicate => {
                    tracing::info!(uuid = %c.manifest.uuid, sequence = c.manifest.sequence, "already accepted; skipped");
                }
                Verdict::Refuse(why) => report.problem(exit_codes::STATE, why),
                Verdict::Wait { .. } => still.push(c),
                Verdict::Accept => {
                    if !c.conflicting.is_empty() {
                        let files: Vec<String> = c
                            .conflicting
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect();
                        report.problem(
                            exit_codes::DATA,
                            format!(
                                "{}: chunk files disagree on its manifest ({}); refusing it: a file was altered or two different imagesets claim the same sequence",
                                c.manifest.label(),
                                files.join(", ")
                            ),
                        );
                        continue;
                    }
                    if !trust.is_empty() {
                        if let Err(why) = trust.verify(&c.manifest_bytes, c.signature.as_deref()) {
                            report.problem(
                                exit_codes::DATA,
                                format!(
                                    "{}: refused: {why}; nothing of it was published",
                                    c.manifest.label()
                                ),
                            );
                            continue;
                        }
                    }
                    let (candidate, st, dir) = (c.clone(), store.clone(), from.to_path_buf());
                    let result =
                        tokio::task::spawn_blocking(move || ingest::ingest(&candidate, &st, &dir))
                            .await
                            .expect("ingest does not panic");
                    match result {
                        Ok(ingested) => {
                            crash_point("ingested");
                            ws.accept(&c.manifest)?;
                            crash_point("accepted");
                            tracing::info!(uuid = %c.manifest.uuid, sequence = c.manifest.sequence, blobs_stored = ingested.stored, rebuilt = ingested.rebuilt.len(), "imageset verified and accepted");
                            report.accepted.push((
                                c.manifest.uuid,
                                c.manifest.sequence,
                                ingested.stored,
                            ));
                            report.rebuilt.extend(ingested.rebuilt);
                            report.set_aside.extend(ingested.set_aside);
                            progressed = true;
                        }
                        Err(IngestError::Incomplete(why)) => {
                            report.problem(exit_codes::INCOMPLETE, why)
                        }
                        Err(IngestError::Damaged(e)) => report.problem(
                            exit_codes::DATA,
                            format!("{}: {e}; nothing of it was published", c.manifest.label()),
                        ),
                    }
                }
            }
        }
        pending = still;
        if !progressed || pending.is_empty() {
            break;
        }
    }
    for c in pending {
        let Verdict::Wait { expected } = ws.judge(&c.manifest)? else {
            continue;
        };
        let mut message = format!("{} is waiting for sequence {expected}", c.manifest.label());
        if !c.missing().is_empty() {
            message.push_str(&format!(
                "; it also lacks chunks: {}",
                ingest::missing_message(c, &[])
            ));
        }
        tracing::warn!(uuid = %c.manifest.uuid, sequence = c.manifest.sequence, expected, "waiting for sequence {expected}");
        report.problem(exit_codes::INCOMPLETE, message);
    }
    Ok(())
}
