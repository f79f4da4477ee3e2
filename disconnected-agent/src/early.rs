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
//! Acceptance is recorded once the blobs announced are sent, at the publish's
//! full parallelism after the verification: the publish would send them next
//! anyway, and closing sessions is all that is left to it.
//!
//! The agent stages only when it publishes to one cluster: with several, the
//! fan-out reads each blob from the store once for all of them, and staging
//! would read it again for each.
//!
//! Staging helps, and is never a condition: a failure (the registry down, a
//! credential refused) stops it and is logged, and the publish that follows
//! uploads what was not staged, and reports what fails.
//!
//! [`stage_blob_file`]: airlock_registry::RegistryClient::stage_blob_file
//! [`Publisher::with_staged`]: airlock_registry::publish::Publisher::with_staged

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use airlock_imageset::{BlobRecord, ImagesetManifest};
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
#[derive(Clone, Copy)]
pub struct Early<'a> {
    /// The destination registry.
    pub target: &'a Target,
    /// Blob transfers at once.
    pub parallel: usize,
    /// A service asked to stop starts no new upload: the verification goes on
    /// to its end, and acceptance does not wait for uploads that help only a
    /// publish the stop will not start.
    pub stop: Option<&'a CancellationToken>,
}

impl Early<'_> {
    /// Stages each blob of `manifest` announced as it enters `store`, each
    /// upload holding a permit of `gate`, until the announcements end and every
    /// upload begun is done. Once one fails, or `halt` is set, no new upload
    /// starts. Returns the sessions left open.
    pub async fn stage(
        &self,
        store: &Store,
        manifest: &ImagesetManifest,
        announced: UnboundedReceiver<Digest>,
        gate: &Semaphore,
        halt: &AtomicBool,
    ) -> Vec<StagedBlob> {
        // Manifests are pushed as manifests, after acceptance, never as blobs.
        let blobs: HashMap<&Digest, &BlobRecord> = manifest
            .blobs
            .iter()
            .filter(|b| b.media_type.is_none() && b.size >= STAGE_MIN)
            .map(|b| (&b.digest, b))
            .collect();
        // Where the images of each source repository go; `None` when they go
        // to more than one (`targetRepo`): the publish chooses, not staging.
        let mut repositories: HashMap<&str, Option<String>> = HashMap::new();
        for i in &manifest.images {
            let to = destination_repository(&self.target.dest, i);
            repositories
                .entry(i.repository.as_str())
                .and_modify(|r| {
                    if r.as_ref() != Some(&to) {
                        *r = None;
                    }
                })
                .or_insert(Some(to));
        }
        let client = &self.target.client;
        let failed = AtomicBool::new(false);
        let staged = announced
            .filter_map(|digest| {
                let found = blobs.get(&digest).and_then(|b| {
                    let repo = repositories.get(b.repository.as_str())?.as_ref()?;
                    Some((repo.as_str(), digest, b.size))
                });
                std::future::ready(found)
            })
            .map(|(repo, digest, size)| {
                let failed = &failed;
                async move {
                    let _permit = gate.acquire().await.expect("never closed");
                    if failed.load(Ordering::Relaxed)
                        || halt.load(Ordering::Relaxed)
                        || self.stop.is_some_and(|s| s.is_cancelled())
                    {
                        return None;
                    }
                    let staged = match client.has_blob(repo, &digest).await {
                        // The publish finds it present.
                        Ok(true) => return None,
                        Ok(false) => {
                            client
                                .stage_blob_file(repo, &digest, size, &store.path(&digest))
                                .await
                        }
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
            .buffer_unordered(self.parallel.max(1))
            .filter_map(std::future::ready)
            .collect::<Vec<_>>()
            .await;
        tracing::debug!(staged = staged.len(), staged_bytes = staged.iter().map(|s| s.size).sum::<u64>(), destination = %self.target.dest, "blobs staged while verifying");
        staged
    }
}

/// Runs `ingest`, a verification told to announce each blob it stores, and
/// with `early` stages what it announces beside it: half the publish's
/// transfers while the verification runs, all of them once it succeeded; once
/// it failed, no new upload starts. Returns the verification's result and the
/// sessions left open.
///
/// Beside the verification, half: the registry, not the client, bounds
/// staging (it hashes and writes what it is sent), and each upload under way
/// beside the verification's threads keeps buffers in an allocator arena of
/// its own (the publish's peak at scale 1 was 46 MiB staging 8 at once, 38–40
/// MiB with 4, in the same time).
pub async fn beside<T, E>(
    early: Option<Early<'_>>,
    store: &Store,
    manifest: &ImagesetManifest,
    ingest: impl FnOnce(Option<Announce>) -> JoinHandle<Result<T, E>>,
) -> (Result<T, E>, Vec<StagedBlob>) {
    let Some(early) = early else {
        return (
            ingest(None).await.expect("ingest does not panic"),
            Vec::new(),
        );
    };
    let (announce, announced) = futures::channel::mpsc::unbounded();
    let mut ingest = ingest(Some(announce));
    let halt = AtomicBool::new(false);
    let beside = early.parallel.div_ceil(2).max(1);
    let gate = Semaphore::new(beside);
    let mut staging = std::pin::pin!(early.stage(store, manifest, announced, &gate, &halt));
    // Staging ends once the announcements do (the ingest is over) and the
    // uploads begun are done.
    let mut staged = None;
    let result = loop {
        tokio::select! {
            r = &mut ingest => break r.expect("ingest does not panic"),
            s = &mut staging, if staged.is_none() => staged = Some(s),
        }
    };
    match &result {
        Ok(_) => gate.add_permits(early.parallel.saturating_sub(beside)),
        Err(_) => halt.store(true, Ordering::Relaxed),
    }
    let staged = match staged {
        Some(s) => s,
        None => staging.await,
    };
    (result, staged)
}

/// Cancels staged uploads that no publish will close.
pub async fn cancel(target: &Target, staged: Vec<StagedBlob>) {
    futures::stream::iter(staged)
        .for_each_concurrent(8, |s| target.client.cancel_staged(s))
        .await;
}
