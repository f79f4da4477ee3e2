//! Pushing an accepted imageset's images from the store to a registry.
//!
//! For each image, blobs go first, then child manifests, then the top manifest by
//! digest and finally its tag, so that a reader of the registry never sees a tag
//! whose content is incomplete. Manifests are pushed as the exact bytes that were
//! pulled at the source. Before a manifest is pushed, every blob it references is
//! known to be at the destination (uploaded, mounted or already there), and every
//! blob taken from the store matches the size its manifest declares.
//!
//! Publishing is idempotent: a blob or manifest the destination already has is not
//! sent again (a `HEAD` first), so rerunning after a crash or publishing the same
//! imageset twice uploads nothing twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use airlock_common::digest::Digest;
use airlock_common::imageset::{BlobRecord, ImageRecord, ImagesetManifest};
use airlock_common::reference::{Destination, ImageRef};
use airlock_common::registry::{RawManifest, RegistryClient, RegistryError};
use airlock_common::resources::{Category, Mirrored};
use airlock_common::telemetry::Progress;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Mutex, OnceCell, Semaphore};

use crate::store::Store;

/// Images pushed at once; blob transfers are bounded separately.
const PARALLEL_IMAGES: usize = 4;

/// Why an image could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The registry refused or failed.
    #[error("image {image}: {source}")]
    Registry {
        /// The image as configured at the source.
        image: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The imageset or store does not hold what the image needs.
    #[error("image {image}: {problem}")]
    Content {
        /// The image as configured at the source.
        image: String,
        /// What is missing or inconsistent.
        problem: String,
    },
}

/// Counts of what a publish did.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Blobs uploaded.
    pub uploaded: AtomicU64,
    /// Bytes uploaded.
    pub uploaded_bytes: AtomicU64,
    /// Blobs linked from another repository of the destination.
    pub mounted: AtomicU64,
    /// Blobs the destination already had.
    pub present: AtomicU64,
    /// Manifests pushed (by digest or tag).
    pub manifests: AtomicU64,
}

impl PushStats {
    /// A snapshot of the counters: uploaded, uploaded bytes, mounted, present, manifests.
    pub fn get(&self) -> [u64; 5] {
        [
            self.uploaded.load(Ordering::Relaxed),
            self.uploaded_bytes.load(Ordering::Relaxed),
            self.mounted.load(Ordering::Relaxed),
            self.present.load(Ordering::Relaxed),
            self.manifests.load(Ordering::Relaxed),
        ]
    }
}

/// The repository path of an image at the destination (oc-mirror's naming rule).
pub fn destination_repository(dest: &Destination, image: &ImageRecord) -> String {
    match &image.target_repository {
        Some(t) => dest.repository_for(t),
        None => {
            let source: ImageRef = image
                .repository
                .parse()
                .expect("recorded repositories parse");
            dest.repository_for(source.repository())
        }
    }
}

/// The mirror-set view of an imageset's images at `dest`. As in oc-mirror, an image
/// the configuration named by tag (a bare name means `latest`) goes into the tag
/// mirror set, one named by digest into the digest mirror set, and one named by both
/// into both.
pub fn mirrored(m: &ImagesetManifest, dest: &Destination) -> Vec<Mirrored> {
    m.images
        .iter()
        .map(|i| {
            let named_by_tag = i
                .source
                .parse::<ImageRef>()
                .map(|r| r.tag().is_some() || r.digest().is_none())
                .unwrap_or(false);
            Mirrored {
                source: i.repository.clone(),
                mirror: format!("{}/{}", dest.registry(), destination_repository(dest, i)),
                by_digest: i.by_digest,
                by_tag: named_by_tag,
                category: Category::Generic,
            }
        })
        .collect()
}

/// Set when a blob is in a repository; concurrent askers wait for the first.
type Once = Arc<OnceCell<()>>;

/// Pushes imagesets to one destination registry, sharing what it learns (which
/// repositories hold which blobs) across images and imagesets.
pub struct Pusher<'a> {
    client: &'a RegistryClient,
    store: &'a Store,
    dest: &'a Destination,
    transfers: Semaphore,
    /// Per (repository, blob): pushed once, whichever image asks first.
    done: Mutex<HashMap<(String, Digest), Once>>,
    /// The repository where this run first placed each blob, to mount from.
    holders: Mutex<HashMap<Digest, Arc<OnceCell<String>>>>,
    /// Counters.
    pub stats: PushStats,
    progress: Progress,
}

impl<'a> Pusher<'a> {
    /// A pusher with at most `parallel` blob transfers at once.
    pub fn new(
        client: &'a RegistryClient,
        store: &'a Store,
        dest: &'a Destination,
        parallel: usize,
        progress: Progress,
    ) -> Self {
        Pusher {
            client,
            store,
            dest,
            transfers: Semaphore::new(parallel.max(1)),
            done: Mutex::new(HashMap::new()),
            holders: Mutex::new(HashMap::new()),
            stats: PushStats::default(),
            progress,
        }
    }

    /// Pushes every image of `m`.
    pub async fn push_imageset(&self, m: &ImagesetManifest) -> Result<(), PushError> {
        let records: HashMap<&Digest, &BlobRecord> =
            m.blobs.iter().map(|b| (&b.digest, b)).collect();
        futures::stream::iter(&m.images)
            .map(|image| self.push_image(image, &records))
            .buffer_unordered(PARALLEL_IMAGES)
            .try_collect::<()>()
            .await
    }

    async fn push_image(
        &self,
        image: &ImageRecord,
        records: &HashMap<&Digest, &BlobRecord>,
    ) -> Result<(), PushError> {
        let repo = destination_repository(self.dest, image);
        let content = |problem: String| PushError::Content {
            image: image.source.clone(),
            problem,
        };
        // The manifest tree, parents before children, from the store.
        let mut manifests: Vec<RawManifest> = Vec::new();
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        let mut queue = vec![image.digest.clone()];
        while let Some(digest) = queue.pop() {
            if manifests.iter().any(|m| m.digest == digest) {
                continue;
            }
            let record = records.get(&digest).ok_or_else(|| {
                content(format!("manifest {digest} is not listed in the imageset"))
            })?;
            let media_type = record.media_type.clone().ok_or_else(|| {
                content(format!(
                    "{digest} is referenced as a manifest but listed as a blob"
                ))
            })?;
            let bytes = self.store.read(&digest).map_err(|e| {
                content(format!(
                    "manifest {digest} is not in the content store: {e}"
                ))
            })?;
            let raw = RawManifest::from_bytes(bytes.into(), media_type);
            if raw.digest != digest {
                return Err(content(format!(
                    "stored manifest {digest} hashes to {}",
                    raw.digest
                )));
            }
            let parsed = raw
                .parse()
                .map_err(|e| content(format!("manifest {digest}: {e}")))?;
            for child in parsed.children() {
                queue.push(child.digest.clone());
            }
            for b in parsed.blobs() {
                if !blobs.iter().any(|(d, _)| *d == b.digest) {
                    blobs.push((b.digest.clone(), b.size));
                }
            }
            manifests.push(raw);
        }
        futures::stream::iter(&blobs)
            .map(|(digest, size)| self.ensure_blob(image, &repo, digest, *size))
            .buffer_unordered(8)
            .try_collect::<()>()
            .await?;
        let registry = |source| PushError::Registry {
            image: image.source.clone(),
            source,
        };
        // Children before parents; the top manifest last, and its tag after it.
        for m in manifests.iter().rev() {
            let tag = if m.digest == image.digest {
                image.tag.as_deref()
            } else {
                None
            };
            if tag.is_none()
                && self
                    .client
                    .has_manifest(&repo, &m.digest)
                    .await
                    .map_err(registry)?
            {
                continue;
            }
            self.client
                .put_manifest(&repo, m, tag)
                .await
                .map_err(registry)?;
            self.stats.manifests.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(image = %image.source, destination = %format!("{}/{repo}", self.dest.registry()), digest = %image.digest, "image published");
        Ok(())
    }

    /// Makes `digest` present in `repo`, once per run: already there, mounted from
    /// the repository where this run first placed it, or uploaded from the store. The
    /// first placement of each blob is serialised, so a layer shared by images in
    /// different repositories is uploaded once and mounted everywhere else.
    async fn ensure_blob(
        &self,
        image: &ImageRecord,
        repo: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PushError> {
        let cell = {
            let mut done = self.done.lock().await;
            done.entry((repo.to_string(), digest.clone()))
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| async {
            let first = {
                let mut holders = self.holders.lock().await;
                holders.entry(digest.clone()).or_default().clone()
            };
            let holder = first
                .get_or_try_init(|| async {
                    self.put(image, repo, None, digest, size).await?;
                    Ok::<_, PushError>(repo.to_string())
                })
                .await?;
            if holder != repo {
                self.put(image, repo, Some(holder), digest, size).await?;
            }
            Ok::<(), PushError>(())
        })
        .await?;
        Ok(())
    }

    /// Puts a blob into `repo` unless it is there: mounted from `holder` when one is
    /// given and the registry agrees, otherwise uploaded from the store.
    async fn put(
        &self,
        image: &ImageRecord,
        repo: &str,
        holder: Option<&str>,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PushError> {
        let _permit = self
            .transfers
            .acquire()
            .await
            .expect("semaphore is never closed");
        let present =
            self.client
                .has_blob(repo, digest)
                .await
                .map_err(|source| PushError::Registry {
                    image: image.source.clone(),
                    source,
                })?;
        if present {
            self.stats.present.fetch_add(1, Ordering::Relaxed);
            if holder.is_none() {
                self.progress.add(size);
            }
            return Ok(());
        }
        if let Some(from) = holder {
            if self.client.mount_blob(repo, from, digest).await {
                self.stats.mounted.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.upload(image, repo, digest, size).await
    }

    async fn upload(
        &self,
        image: &ImageRecord,
        repo: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PushError> {
        let path = self.store.path(digest);
        let actual = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(_) => {
                return Err(PushError::Content {
                    image: image.source.clone(),
                    problem: format!(
                        "blob {digest} is needed but is neither in the content store ({}) nor at {}/{repo}",
                        path.display(),
                        self.dest.registry()
                    ),
                });
            }
        };
        if actual != size {
            return Err(PushError::Content {
                image: image.source.clone(),
                problem: format!(
                    "blob {digest} is {actual} bytes in the store, its manifest says {size}"
                ),
            });
        }
        self.client
            .push_blob_file(repo, digest, size, &path)
            .await
            .map_err(|source| PushError::Registry {
                image: image.source.clone(),
                source,
            })?;
        self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
        self.progress.add(size);
        tracing::debug!(digest = %digest, size, repository = %repo, "blob uploaded");
        Ok(())
    }
}
