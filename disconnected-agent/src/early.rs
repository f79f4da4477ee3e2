//! Sending an imageset's large blobs to the registry while it is still being
//! verified, without publishing them.
//!
//! Taking an imageset in reads every chunk, checks every blob against its digest
//! and syncs it into the store; only then is the imageset accepted and published.
//! One after the other, a release spends about as long being verified as being
//! uploaded. Nothing may be published before every byte is verified (DESIGN.md,
//! invariant 7), but bytes may travel: each large blob, as soon as it is in the
//! store, is sent into an upload session that is left open ([`stage_blob_file`]).
//! A registry makes no blob of an open session: nothing can be pulled, listed or
//! mounted from it. Once the imageset is accepted, the publish closes each session
//! with the blob's digest instead of uploading it ([`Publisher::with_staged`]),
//! which costs a request, not the bytes. If the imageset is refused, the sessions
//! are cancelled.
//!
//! A blob goes to the repository the images of its source repository are
//! published to; the publish mounts it everywhere else. When those images go
//! to several (`targetRepo`), the publish chooses, and the blob is not staged.
//! Small blobs are left to the publish: for them the requests, not the bytes,
//! are the cost, and staging adds one.
//!
//! What happens once the verification succeeded depends on who waits for it
//! ([`Then`]). `publish` stages the rest at its full parallelism and accepts
//! once every blob announced is sent: the publish would send them next anyway,
//! and closing sessions is all that is left to it. The agent must not keep its
//! round, and so its drop directory, control plane and drain, waiting on a
//! registry: it starts no new upload, accepts at once, and hands the uploads
//! under way to the publish, a task of its own, which waits for them and uploads
//! the blobs not staged as usual.
//!
//! The agent stages only when it publishes to one cluster, and not while that
//! cluster publishes an earlier imageset: with several, the fan-out reads each
//! blob from the store once for all of them, and staging would read it again
//! for each. A stopping agent starts no new staging upload, and its publish
//! does not wait for those under way: they are cancelled once done, or lost if
//! the agent exits first, and the publish after the restart uploads those blobs.
//!
//! Staging helps, and is never a condition: a failure (the registry down, a
//! credential refused) stops it and is logged, and the publish that follows
//! uploads what was not staged, and reports what fails.
//!
//! [`stage_blob_file`]: airlock_registry::RegistryClient::stage_blob_file
//! [`Publisher::with_staged`]: airlock_registry::publish::Publisher::with_staged

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use airlock_imageset::ImagesetManifest;
use airlock_oci::digest::Digest;
use airlock_registry::StagedBlob;
use airlock_registry::publish::destination_repository;
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::site::Target;
use crate::store::{Announce, Store};

/// Blobs smaller than this are not staged.
pub const STAGE_MIN: u64 = 1 << 20;

/// Where an imageset's blobs are staged while it is verified.
#[derive(Clone)]
pub struct Early {
    /// The destination registry.
    pub target: Target,
    /// Blob transfers at once.
    pub parallel: usize,
    /// What staging does once the verification succeeded.
    pub then: Then,
    /// Once cancelled (a service asked to stop), no new upload starts.
    pub stop: Option<CancellationToken>,
}

/// What staging does once the imageset's verification succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Goes on at the full parallelism until every blob announced is sent;
    /// acceptance waits for it.
    Finish,
    /// Starts no new upload; acceptance does not wait for the uploads under
    /// way, which the publish waits for ([`Pending::sessions`]).
    HandOver,
}

/// Staging's upload sessions.
#[derive(Debug)]
pub enum Pending {
    /// The uploads are done: the sessions left open.
    Ready(Vec<StagedBlob>),
    /// Uploads that may still be under way.
    Running(JoinHandle<Vec<StagedBlob>>),
}

impl Pending {
    /// No staging.
    pub fn none() -> Self {
        Pending::Ready(Vec::new())
    }

    /// The sessions left open, once the uploads under way are done.
    pub async fn sessions(self) -> Vec<StagedBlob> {
        match self {
            Pending::Ready(staged) => staged,
            Pending::Running(task) => finished(task.await),
        }
    }

    /// The same, unless `stop` is cancelled first (a service stopping, whose
    /// publish would cancel the sessions anyway): then none, and the uploads
    /// under way go on in the background until done, their sessions cancelled,
    /// so that the drain does not wait on them.
    pub async fn sessions_unless_stopped(
        self,
        stop: Option<&CancellationToken>,
        target: &Target,
    ) -> Vec<StagedBlob> {
        let (mut task, stop) = match (self, stop) {
            (Pending::Running(task), Some(stop)) => (task, stop),
            (pending, _) => return pending.sessions().await,
        };
        tokio::select! {
            done = &mut task => return finished(done),
            () = stop.cancelled() => {}
        }
        discard(target, Pending::Running(task)).await;
        Vec::new()
    }
}

/// The sessions a staging task left open.
fn finished(done: Result<Vec<StagedBlob>, tokio::task::JoinError>) -> Vec<StagedBlob> {
    done.unwrap_or_else(|e| {
        // Its sessions are lost: the publish uploads those blobs, and the
        // registry purges sessions left open.
        tracing::warn!(error = %e, "sending blobs while verifying ended abnormally; the publish uploads them");
        Vec::new()
    })
}

/// Where each blob of `manifest` that is staged goes: large blobs whose images
/// all go to one repository. Manifests are pushed as manifests, after
/// acceptance, never as blobs; for blobs whose images go to several
/// repositories (`targetRepo`), the publish chooses.
fn stageable(target: &Target, manifest: &ImagesetManifest) -> HashMap<Digest, (String, u64)> {
    let mut repositories: HashMap<&str, Option<String>> = HashMap::new();
    for i in &manifest.images {
        let to = destination_repository(&target.dest, i);
        repositories
            .entry(i.repository.as_str())
            .and_modify(|r| {
                if r.as_ref() != Some(&to) {
                    *r = None;
                }
            })
            .or_insert(Some(to));
    }
    manifest
        .blobs
        .iter()
        .filter(|b| b.media_type.is_none() && b.size >= STAGE_MIN)
        .filter_map(|b| {
            let repo = repositories.get(b.repository.as_str())?.clone()?;
            Some((b.digest.clone(), (repo, b.size)))
        })
        .collect()
}

/// Stages each blob of `blobs` announced as it enters `store`, each upload
/// holding a permit of `gate`, until the announcements end and every upload
/// begun is done. Once one fails, `halt` is set or the service is stopping, no
/// new upload starts. Returns the sessions left open.
async fn stage(
    early: Early,
    store: Store,
    blobs: HashMap<Digest, (String, u64)>,
    announced: UnboundedReceiver<Digest>,
    gate: Arc<Semaphore>,
    halt: Arc<AtomicBool>,
) -> Vec<StagedBlob> {
    let failed = Arc::new(AtomicBool::new(false));
    let staged = announced
        .filter_map(|digest| {
            let found = blobs
                .get(&digest)
                .map(|(repo, size)| (repo.clone(), digest, *size));
            std::future::ready(found)
        })
        // Each upload owns what it uses: futures of closures over the stream's
        // borrows are not provably `Send` (rust-lang/rust#102211), and staging
        // is spawned.
        .map(|(repo, digest, size)| {
            let (failed, gate, halt) = (failed.clone(), gate.clone(), halt.clone());
            let (client, stop) = (early.target.client.clone(), early.stop.clone());
            let path = store.path(&digest);
            async move {
                let _permit = gate.acquire().await.expect("never closed");
                let stopped = || {
                    failed.load(Ordering::Relaxed)
                        || halt.load(Ordering::Relaxed)
                        || stop.as_ref().is_some_and(|s| s.is_cancelled())
                };
                if stopped() {
                    return None;
                }
                let staged = match client.has_blob(&repo, &digest).await {
                    // The publish finds it present.
                    Ok(true) => return None,
                    Ok(false) if stopped() => return None,
                    Ok(false) => client.stage_blob_file(&repo, &digest, size, &path).await,
                    Err(e) => Err(e),
                };
                match staged {
                    Ok(s) => Some(s),
                    Err(e) => {
                        if !failed.swap(true, Ordering::Relaxed) {
                            tracing::warn!(%digest, repository = %repo, error = %e, "sending blobs while the imageset is verified stopped; the publish after acceptance uploads them");
                        }
                        None
                    }
                }
            }
        })
        .buffer_unordered(early.parallel.max(1))
        .filter_map(std::future::ready)
        .collect::<Vec<_>>()
        .await;
    tracing::debug!(staged = staged.len(), staged_bytes = staged.iter().map(|s| s.size).sum::<u64>(), destination = %early.target.dest, "blobs staged while verifying");
    staged
}

/// Runs `ingest`, a verification told to announce each blob it stores, and
/// with `early` stages what it announces beside it: half the publish's
/// transfers while the verification runs; once it succeeded, what
/// [`Then`] says; once it failed, no new upload starts. Returns the
/// verification's result and staging's sessions: done for [`Then::Finish`],
/// with uploads possibly still under way for [`Then::HandOver`].
///
/// Beside the verification, half: the registry, not the client, bounds
/// staging (it hashes and writes what it is sent), and each upload under way
/// beside the verification's threads keeps buffers in an allocator arena of
/// its own (the publish's peak at scale 1 was 46 MiB staging 8 at once, 38–40
/// MiB with 4, in the same time).
pub async fn beside<T, E>(
    early: Option<&Early>,
    store: &Store,
    manifest: &ImagesetManifest,
    ingest: impl FnOnce(Option<Announce>) -> JoinHandle<Result<T, E>>,
) -> (Result<T, E>, Pending) {
    let Some(early) = early else {
        return (
            ingest(None).await.expect("ingest does not panic"),
            Pending::none(),
        );
    };
    let (announce, announced) = futures::channel::mpsc::unbounded();
    let ingest = ingest(Some(announce));
    let halt = Arc::new(AtomicBool::new(false));
    let beside = early.parallel.div_ceil(2).max(1);
    let gate = Arc::new(Semaphore::new(beside));
    // Staging ends once the announcements do (the ingest is over) and the
    // uploads begun are done.
    let staging = tokio::spawn(stage(
        early.clone(),
        store.clone(),
        stageable(&early.target, manifest),
        announced,
        gate.clone(),
        halt.clone(),
    ));
    let result = ingest.await.expect("ingest does not panic");
    match (&result, early.then) {
        (Ok(_), Then::Finish) => gate.add_permits(early.parallel.saturating_sub(beside)),
        _ => halt.store(true, Ordering::Relaxed),
    }
    let pending = Pending::Running(staging);
    match early.then {
        Then::Finish => (result, Pending::Ready(pending.sessions().await)),
        Then::HandOver => (result, pending),
    }
}

/// Cancels staged uploads that no publish will close: those done before
/// returning (with [`Then::Finish`], whose caller waited for them anyway);
/// those possibly still under way (with [`Then::HandOver`]) in the background,
/// once done, so that the agent's round and drain do not wait on a registry.
pub async fn discard(target: &Target, pending: Pending) {
    match pending {
        Pending::Ready(staged) => cancel(target, staged).await,
        running => {
            let target = target.clone();
            drop(tokio::spawn(async move {
                cancel(&target, running.sessions().await).await
            }));
        }
    }
}

/// Cancels staged uploads that no publish will close.
pub async fn cancel(target: &Target, staged: Vec<StagedBlob>) {
    futures::stream::iter(staged)
        .for_each_concurrent(8, |s| target.client.cancel_staged(s))
        .await;
}
