//! Publishing images to a mirror registry, from any source of content.
//!
//! The disconnected agent publishes from its content store; the connected agent's
//! `mirror` publishes straight from the source registries. Both follow the same
//! rules, implemented once here:
//!
//! - an image is published only when all of it can be: every blob it references is
//!   first checked (at the destination, or available from the source, which may fetch
//!   it) before a single byte of the image is pushed;
//! - blobs go first, then child manifests, then the top manifest by digest, and its
//!   tag last, so a reader never sees a tag whose content is incomplete;
//! - manifests are pushed as the exact bytes that were pulled at the source;
//! - idempotent: a blob or manifest the destination has is not sent again (`HEAD`
//!   first); a blob shared by several repositories is uploaded once and mounted
//!   into the others;
//! - a request that fails in passing (5xx, 429, a reset connection) is tried again
//!   under [`RetryPolicy`], within a retry budget per image; a blob upload is
//!   retried from a new session with its source opened again, never buffered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Mutex, OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;
use crate::resources::{
    CatalogRef, Category, ClusterResources, Mirrored, ReleaseSignature, UpdateServiceRefs,
};
use crate::retry::{Budget, Limit, RetryPolicy, Retryable, Verdict};
use crate::{ErrorKind, RawManifest, ReferrersTag, RegistryClient, RegistryError, StagedBlob};
use airlock_imageset::{BlobRecord, ImageKind, ImageRecord, ReleaseRecord};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::OCI_INDEX;
use airlock_oci::reference::{Destination, ImageRef};

/// Images pushed at once; blob transfers are bounded separately.
const PARALLEL_IMAGES: usize = 4;

/// Why an image could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The destination registry refused or failed.
    #[error("image {image}: {source}")]
    Registry {
        /// The image as configured at the source.
        image: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The content of the image is not all available, or inconsistent; nothing of
    /// the image was pushed.
    #[error("image {image}: {problem}; nothing of this image was pushed")]
    Content {
        /// The image as configured at the source.
        image: String,
        /// What is missing or inconsistent, and where it was looked for.
        problem: String,
    },
    /// The source of content could not give what the image needs; nothing of
    /// the image was pushed.
    #[error("image {image}: {source}; nothing of this image was pushed")]
    Source {
        /// The image as configured at the source.
        image: String,
        /// The source's own error, with its causes.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The publisher was told to stop before this image's uploads were all
    /// started; the uploads under way were finished, nothing else of it was pushed.
    #[error(
        "image {image}: stopped before all its blobs were uploaded; it is published on the next start"
    )]
    Stopped {
        /// The image as configured at the source.
        image: String,
    },
}

impl Retryable for PublishError {
    fn verdict(&self) -> Verdict {
        match self {
            PublishError::Registry { source, .. } => source.verdict(),
            PublishError::Content { .. }
            | PublishError::Source { .. }
            | PublishError::Stopped { .. } => Verdict::Final,
        }
    }

    fn gave_up(self, attempts: u32, limit: Limit) -> Self {
        match self {
            PublishError::Registry { image, source } => PublishError::Registry {
                image,
                source: source.gave_up(attempts, limit),
            },
            e => e,
        }
    }
}

impl airlock_common::exit_codes::ExitCode for PublishError {
    fn exit_code(&self) -> i32 {
        match self {
            PublishError::Registry { source, .. } => {
                airlock_common::exit_codes::ExitCode::exit_code(source)
            }
            PublishError::Content { .. } => airlock_common::exit_codes::DATA,
            // A source that is a registry (`mirror`) failed as registries do:
            // unavailable is 69, not the data error of a damaged store.
            PublishError::Source { source, .. } => {
                std::iter::successors(Some(source.as_ref() as &dyn std::error::Error), |e| {
                    e.source()
                })
                .find_map(|e| e.downcast_ref::<RegistryError>())
                .map_or(airlock_common::exit_codes::DATA, |r| {
                    airlock_common::exit_codes::ExitCode::exit_code(r)
                })
            }
            PublishError::Stopped { .. } => airlock_common::exit_codes::UNAVAILABLE,
        }
    }
}

/// A registry's refusal of an index the imageset carries in part (`platforms`):
/// an answer (4xx) to that push is most likely the registry refusing an index
/// whose other children it does not hold (distribution: `MANIFEST_BLOB_UNKNOWN`;
/// Quay: `MANIFEST_INVALID`), so the message says how to allow it.
fn sparse_refused(image: &ImageRecord, mut e: RegistryError) -> RegistryError {
    if let RegistryError::Request {
        kind: ErrorKind::Protocol | ErrorKind::NotFound,
        message,
        ..
    } = &mut e
    {
        message.push_str(&format!(
            "; the imageset carries only {} of this image's index (the configuration's platforms), and a registry may refuse an index whose other platforms it does not hold. Allow sparse indexes (Quay: FEATURE_SPARSE_INDEX, with SPARSE_INDEX_REQUIRED_ARCHS naming only platforms carried; distribution 3: validation.manifests.indexes.platforms: none, or list with a platformlist of the platforms carried), or remove platforms from the configuration to mirror every platform",
            image.platforms.join(", ")
        ));
    }
    e
}

/// Blob bytes to upload.
pub enum BlobBody {
    /// A verified local file of exactly the blob's bytes.
    File(PathBuf),
    /// A stream of the blob's bytes: from a source registry, one that ends with an
    /// error unless the bytes match the digest; from a verified store, as read. The
    /// destination checks the digest again when the upload completes.
    Stream(BoxStream<'static, Result<Bytes, RegistryError>>),
}

/// Where the content being published comes from.
pub trait ContentSource: Sync {
    /// Why it could not give something: says what was looked for, and where.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The bytes of manifest `digest` (of `media_type`).
    fn manifest(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> impl Future<Output = Result<RawManifest, Self::Error>> + Send;

    /// Makes sure blob `digest` can be opened, fetching it first if the source must;
    /// `Err` says where it was looked for. Called before anything of the image is
    /// pushed, for each blob the destination repository does not have.
    fn locate(
        &self,
        digest: &Digest,
        size: u64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Blob `digest` (`size` bytes) is in place where an image needs it, without
    /// having been opened: the repository had it, it was mounted, or a staged
    /// upload of it was committed. A hint for a source that serves several
    /// publishes at once: this one may not open it, though it still may, for a
    /// repository that lacks it.
    fn in_place(&self, _digest: &Digest, _size: u64) {}

    /// Opens blob `digest` for upload; called again for each retry of the upload,
    /// so a body is never kept for one.
    fn open(
        &self,
        digest: &Digest,
        size: u64,
    ) -> impl Future<Output = Result<BlobBody, Self::Error>> + Send;
}

/// Counts of what a publish did.
#[derive(Debug, Default)]
pub struct PublishStats {
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
    /// Requests tried again after a transient failure.
    pub retries: AtomicU64,
}

impl PublishStats {
    /// A snapshot of the counters: uploaded, uploaded bytes, mounted, present,
    /// manifests, retries.
    pub fn get(&self) -> [u64; 6] {
        [
            self.uploaded.load(Ordering::Relaxed),
            self.uploaded_bytes.load(Ordering::Relaxed),
            self.mounted.load(Ordering::Relaxed),
            self.present.load(Ordering::Relaxed),
            self.manifests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        ]
    }
}

/// The repository of an image at the destination (oc-mirror's naming rule, or
/// `PREFIX/<targetRepo>`).
pub fn destination_repository(dest: &Destination, image: &ImageRecord) -> String {
    match &image.target_repository {
        Some(t) => dest.repository_for(t),
        // `repository` is `REGISTRY/PATH` exactly as `ImageRef::name` spells it
        // (checked by `imageset::validate` when it crossed the gap, and again when
        // an accepted manifest is loaded), so the path is what follows the host.
        None => dest.repository_for(
            image
                .repository
                .split_once('/')
                .map_or(image.repository.as_str(), |(_, path)| path),
        ),
    }
}

/// Under `--max-nested-paths`, two repositories can flatten to one name
/// (`m/a/b-c` and `m/a/b/c` both become `m/a-b-c` with 2), and a source can land
/// on the site's own state repository: their tags would overwrite each other and
/// pruning one would delete the other's. Refused before anything is pushed.
pub fn flattening_conflicts(
    images: &[ImageRecord],
    dest: &Destination,
) -> Result<(), PublishError> {
    let Some(n) = dest.max_nested_paths() else {
        return Ok(());
    };
    let unflattened = dest.clone().with_max_nested_paths(0);
    let reserved = dest.repository_for(airlock_imageset::RESERVED_REPOSITORY);
    let mut seen: HashMap<String, (String, &ImageRecord)> = HashMap::new();
    for image in images {
        let flat = destination_repository(dest, image);
        let full = destination_repository(&unflattened, image);
        let conflict = |problem: String| {
            Err(PublishError::Content {
                image: image.source.clone(),
                problem,
            })
        };
        if flat == reserved {
            return conflict(format!(
                "{full} flattens to {flat} under --max-nested-paths {n}, the repository that holds the site's state; give the image a targetRepo, or a prefix"
            ));
        }
        match seen.get(&flat) {
            Some((other_full, other)) if *other_full != full => {
                return conflict(format!(
                    "{full} and {other_full} (of {}) both flatten to {flat} under --max-nested-paths {n}, where their tags would overwrite each other; give one of them a targetRepo, or use a larger N",
                    other.source
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(flat, (full, image));
            }
        }
    }
    Ok(())
}

/// The mirror-set view of `images` at `dest`. As in oc-mirror, an image the
/// configuration named by tag (a bare name means `latest`) goes into the tag mirror
/// set, one named by digest into the digest mirror set, one named by both into both.
/// The graph image and catalogs are pulled by digest from the mirror, charts by
/// `helm` from `charts/`, and referrers live in their subject's repository, so
/// none of them adds an entry.
pub fn mirrored(images: &[ImageRecord], dest: &Destination) -> Vec<Mirrored> {
    images
        .iter()
        .filter(|i| {
            !matches!(
                i.kind,
                ImageKind::GraphData | ImageKind::Referrer | ImageKind::Catalog | ImageKind::Chart
            )
        })
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
                exact: dest.max_nested_paths().is_some(),
                category: match i.kind {
                    ImageKind::Generic => Category::Generic,
                    ImageKind::Release | ImageKind::ReleaseComponent => Category::Release,
                    ImageKind::Operator => Category::Operator,
                    ImageKind::GraphData
                    | ImageKind::Referrer
                    | ImageKind::Catalog
                    | ImageKind::Chart => {
                        unreachable!("filtered out above")
                    }
                },
            }
        })
        .collect()
}

/// The cluster resources for `images` and `releases` published to `dest`.
pub fn cluster_resources(
    images: &[ImageRecord],
    releases: &[ReleaseRecord],
    dest: &Destination,
) -> ClusterResources {
    let at = |i: &ImageRecord| format!("{}/{}", dest.registry(), destination_repository(dest, i));
    let release_repo = images.iter().find(|i| i.kind == ImageKind::Release).map(at);
    let graph = images.iter().find(|i| i.kind == ImageKind::GraphData);
    let mut signatures: Vec<ReleaseSignature> = releases
        .iter()
        .filter_map(|r| {
            r.signature.as_ref().map(|s| ReleaseSignature {
                digest: r.digest.clone(),
                signature: s.clone(),
            })
        })
        .collect();
    signatures.sort_by(|a, b| a.digest.cmp(&b.digest));
    signatures.dedup_by(|a, b| a.digest == b.digest);
    let catalogs = images
        .iter()
        .filter(|i| i.kind == ImageKind::Catalog)
        .map(|i| CatalogRef {
            repository: at(i),
            tag: i.tag.clone(),
            digest: i.digest.clone(),
            template: i.catalog_source.clone(),
        })
        .collect();
    ClusterResources {
        catalogs,
        mirrored: mirrored(images, dest),
        signatures,
        update_service: release_repo
            .zip(graph)
            .map(|(releases, g)| UpdateServiceRefs {
                releases,
                graph_image: format!("{}@{}", at(g), g.digest),
            }),
    }
}

/// `images` in the order they are published: first those that refer to nothing,
/// then their referrers, then referrers of those, so that a signature never
/// reaches a registry before what it signs.
fn waves(images: &[ImageRecord]) -> Vec<Vec<&ImageRecord>> {
    let by_digest: HashMap<&Digest, &ImageRecord> = images.iter().map(|i| (&i.digest, i)).collect();
    let depth = |image: &ImageRecord| {
        let mut depth = 0;
        let mut at = image;
        while let Some(subject) = &at.subject {
            depth += 1;
            match by_digest.get(subject) {
                // Content addressing makes a cycle impossible; the bound is for
                // a forged imageset manifest (which validation refuses deeper).
                Some(parent) if depth <= airlock_imageset::validate::MAX_SUBJECT_DEPTH => {
                    at = parent
                }
                _ => break,
            }
        }
        depth
    };
    let mut waves: Vec<Vec<&ImageRecord>> = Vec::new();
    for image in images {
        let d = depth(image);
        if waves.len() <= d {
            waves.resize_with(d + 1, Vec::new);
        }
        waves[d].push(image);
    }
    waves.retain(|w| !w.is_empty());
    waves
}

/// The results of `results`, or its first error. A failure drops the work still
/// under way, except [`PublishError::Stopped`]: then what is under way finishes (the
/// rest stops at once), so that a stopping service does not throw away uploads.
async fn settle<T>(
    results: impl futures::Stream<Item = Result<T, PublishError>>,
) -> Result<Vec<T>, PublishError> {
    futures::pin_mut!(results);
    let (mut done, mut stopped) = (Vec::new(), None);
    while let Some(result) = results.next().await {
        match result {
            Ok(v) => done.push(v),
            Err(e @ PublishError::Stopped { .. }) => {
                stopped.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    stopped.map_or(Ok(done), Err)
}

/// Set when a blob is in a repository; concurrent askers wait for the first.
type Once = Arc<OnceCell<()>>;

/// Publishes images to one destination registry, sharing what it learns (which
/// repositories hold which blobs) across images and calls.
pub struct Publisher<'a, S> {
    client: &'a RegistryClient,
    source: &'a S,
    dest: &'a Destination,
    transfers: Semaphore,
    /// Per (repository, blob): pushed once, whichever image asks first.
    done: Mutex<HashMap<(String, Digest), Once>>,
    /// The repository where this run first placed each blob, to mount from.
    holders: Mutex<HashMap<Digest, Arc<OnceCell<String>>>>,
    /// Every repository this run placed each blob in, to mount from one that
    /// the target's credential can read.
    placed: Mutex<HashMap<Digest, Vec<String>>>,
    /// Held while a referrers tag is read and rewritten.
    referrers: Mutex<()>,
    /// Counters.
    pub stats: PublishStats,
    retry: RetryPolicy,
    progress: Box<dyn Progress + 'a>,
    /// Once cancelled, no new upload starts; those under way finish.
    stop: Option<CancellationToken>,
    /// Uploads whose bytes were sent ahead ([`Publisher::with_staged`]), by blob.
    staged: std::sync::Mutex<HashMap<Digest, StagedBlob>>,
}

impl<'a, S: ContentSource> Publisher<'a, S> {
    /// The source could not give what `image` needs.
    fn unavailable(&self, image: &ImageRecord, e: S::Error) -> PublishError {
        PublishError::Source {
            image: image.source.clone(),
            source: Box::new(e),
        }
    }

    /// A publisher with at most `parallel` blob transfers at once (at least
    /// one, and no more than a semaphore holds: the commands bound it to 256).
    pub fn new(
        client: &'a RegistryClient,
        source: &'a S,
        dest: &'a Destination,
        parallel: usize,
        progress: impl Progress + 'a,
    ) -> Self {
        Publisher {
            client,
            source,
            dest,
            transfers: Semaphore::new(parallel.clamp(1, Semaphore::MAX_PERMITS)),
            done: Mutex::new(HashMap::new()),
            holders: Mutex::new(HashMap::new()),
            placed: Mutex::new(HashMap::new()),
            referrers: Mutex::new(()),
            stats: PublishStats::default(),
            retry: RetryPolicy::default(),
            progress: Box::new(progress),
            stop: None,
            staged: Default::default(),
        }
    }

    /// Takes over upload sessions that already hold blobs' bytes
    /// ([`RegistryClient::stage_blob_file`]): the first placement of such a blob
    /// closes its session instead of uploading, and the other repositories mount
    /// it from there. One the registry no longer takes is uploaded as usual.
    pub fn with_staged(mut self, staged: Vec<StagedBlob>) -> Self {
        let map = self.staged.get_mut().expect("not poisoned");
        for s in staged {
            map.insert(s.digest.clone(), s);
        }
        self
    }

    /// The staged uploads no image of this publish used, to hand on to the
    /// next publish or to cancel.
    pub fn into_staged(self) -> Vec<StagedBlob> {
        self.staged
            .into_inner()
            .expect("not poisoned")
            .into_values()
            .collect()
    }

    fn take_staged(&self, digest: &Digest) -> Option<StagedBlob> {
        self.staged.lock().expect("not poisoned").remove(digest)
    }

    /// Closes the staged upload of a blob, under the retry policy; returns the
    /// repository it is now in, or `None` when the registry did not take it
    /// (the session expired, or the registry restarted and forgot it): the
    /// blob is then uploaded as usual.
    async fn commit_staged(
        &self,
        image: &ImageRecord,
        budget: &Budget,
        staged: StagedBlob,
    ) -> Option<String> {
        let _permit = self
            .transfers
            .acquire()
            .await
            .expect("semaphore is never closed");
        if self.check_stop(image).is_err() {
            self.client.cancel_staged(staged).await;
            return None;
        }
        let repo = &staged.repository;
        let closed = self
            .retrying(budget, repo, &staged.digest, || async {
                self.client
                    .commit_staged(&staged)
                    .await
                    .map_err(|e| self.refused(image, repo, e))
            })
            .await;
        match closed {
            Ok(()) => {
                self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .uploaded_bytes
                    .fetch_add(staged.size, Ordering::Relaxed);
                self.progress.add(staged.size);
                tracing::debug!(digest = %staged.digest, size = staged.size, repository = %staged.repository, "staged blob committed");
                Some(staged.repository)
            }
            Err(e) => {
                tracing::info!(digest = %staged.digest, repository = %staged.repository, error = %e, "a staged upload was not taken; uploading the blob again");
                self.client.cancel_staged(staged).await;
                None
            }
        }
    }

    /// Stops starting uploads once `stop` is cancelled, so that a service asked to
    /// stop finishes the blobs it is sending instead of throwing them away: a
    /// registry keeps a blob only when its upload completes.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = Some(stop);
        self
    }

    /// `op`, tried again under the retry policy; every retry is counted and logged.
    async fn retrying<T, Fut>(
        &self,
        budget: &Budget,
        repo: &str,
        digest: &Digest,
        op: impl FnMut() -> Fut,
    ) -> Result<T, PublishError>
    where
        Fut: Future<Output = Result<T, PublishError>>,
    {
        self.retry
            .run(budget, op, |r| {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let error = match r.error {
                    PublishError::Registry { source, .. } => source.to_string(),
                    e => e.to_string(),
                };
                tracing::warn!(
                    repository = %repo,
                    digest = %digest,
                    attempt = r.attempt,
                    wait_ms = r.wait.as_millis() as u64,
                    error = %error,
                    "registry request failed; retrying"
                );
            })
            .await
    }

    /// The error for a request about `image` in `repo` that the registry refused.
    /// Quay answers a repository name deeper than it allows as if the credential
    /// were wrong (401), others with `NAME_INVALID` or 404; nothing in the answer
    /// says "too deep", so a refused deep name says what else to try.
    fn refused(&self, image: &ImageRecord, repo: &str, mut source: RegistryError) -> PublishError {
        let depth = repo.split('/').count();
        if let RegistryError::Request { kind, message, .. } = &mut source {
            let maybe_depth = matches!(kind, ErrorKind::Unauthorized | ErrorKind::NotFound)
                || message.contains("NAME_INVALID");
            if maybe_depth && depth > 2 && self.dest.max_nested_paths().is_none() {
                message.push_str(&format!(
                    "; {repo} has {depth} path components: if this registry allows fewer (Quay, GitLab and GHCR limit them), publish with --max-nested-paths N (maxNestedPaths in the agent configuration), which flattens the names as oc-mirror does"
                ));
            }
        }
        PublishError::Registry {
            image: image.source.clone(),
            source,
        }
    }

    fn check_stop(&self, image: &ImageRecord) -> Result<(), PublishError> {
        if self.stop.as_ref().is_some_and(|s| s.is_cancelled()) {
            return Err(PublishError::Stopped {
                image: image.source.clone(),
            });
        }
        Ok(())
    }

    /// Publishes `images`, whose manifests and blobs are described by `blobs`.
    /// Returns, for every blob now at the destination, a repository that holds it.
    pub async fn publish(
        &self,
        images: &[ImageRecord],
        blobs: &[BlobRecord],
    ) -> Result<Vec<(Digest, String)>, PublishError> {
        flattening_conflicts(images, self.dest)?;
        let records: HashMap<&Digest, &BlobRecord> = blobs.iter().map(|b| (&b.digest, b)).collect();
        let mut placed = Vec::new();
        for wave in waves(images) {
            let done = settle(
                // By index and boxed: futures made by closures over borrowed items
                // are not provably Send (rust-lang/rust#102211), and the agent
                // spawns this.
                futures::stream::iter(0..wave.len())
                    .map(|k| self.publish_image(wave[k], &records).boxed())
                    .buffer_unordered(PARALLEL_IMAGES),
            )
            .await?;
            placed.extend(done.into_iter().flatten());
        }
        Ok(placed)
    }

    /// Makes `referrer` (just pushed) findable from `subject` at the destination.
    /// A registry with the referrers API indexes it on push; for one without, the
    /// referrers tag `sha256-<hex>` is an index that the pushing client keeps, as
    /// the distribution spec asks. Updates are serialised: two referrers of one
    /// subject would otherwise each overwrite the other's entry.
    async fn link_referrer(
        &self,
        image: &ImageRecord,
        budget: &Budget,
        repo: &str,
        subject: &Digest,
        referrer: &RawManifest,
    ) -> Result<(), PublishError> {
        let registry = |source| self.refused(image, repo, source);
        let _one_at_a_time = self.referrers.lock().await;
        let listed = self
            .retrying(budget, repo, subject, || async {
                self.client
                    .referrers(repo, subject, ReferrersTag::Unknown)
                    .await
                    .map_err(registry)
            })
            .await?;
        if listed.contains(&referrer.digest) {
            return Ok(());
        }
        let tag = subject.tag_form();
        let current = self
            .retrying(budget, repo, subject, || async {
                self.client
                    .find_manifest(repo, &tag)
                    .await
                    .map_err(registry)
            })
            .await?;
        let mut index: serde_json::Value = match current {
            Some(raw) => serde_json::from_slice(&raw.bytes).map_err(|e| PublishError::Content {
                image: image.source.clone(),
                problem: format!("referrers tag {repo}:{tag} at the destination: {e}"),
            })?,
            None => {
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
            }
        };
        let listed_in_tag = index
            .get("manifests")
            .and_then(|m| m.as_array())
            .is_some_and(|m| m.iter().any(|e| e["digest"] == referrer.digest.as_str()));
        if listed_in_tag {
            return Ok(());
        }
        let parsed = referrer.parse().map_err(|e| PublishError::Content {
            image: image.source.clone(),
            problem: format!("manifest {}: {e}", referrer.digest),
        })?;
        let mut entry = serde_json::json!({
            "mediaType": referrer.media_type,
            "digest": referrer.digest,
            "size": referrer.bytes.len(),
        });
        let artifact_type = parsed
            .artifact_type
            .clone()
            .or_else(|| parsed.blobs().next().map(|c| c.media_type.clone()));
        if let Some(t) = artifact_type {
            entry["artifactType"] = t.into();
        }
        if !parsed.annotations.is_empty() {
            entry["annotations"] = serde_json::json!(parsed.annotations);
        }
        match index.get_mut("manifests").and_then(|m| m.as_array_mut()) {
            Some(list) => list.push(entry),
            None => {
                return Err(PublishError::Content {
                    image: image.source.clone(),
                    problem: format!(
                        "referrers tag {repo}:{tag} at the destination is not an index"
                    ),
                });
            }
        }
        let raw = RawManifest::from_bytes(
            Bytes::from(serde_json::to_vec(&index).expect("an index serialises")),
            OCI_INDEX.to_string(),
        );
        self.retrying(budget, repo, &raw.digest, || async {
            self.client
                .put_manifest(repo, &raw, Some(&tag))
                .await
                .map_err(registry)
        })
        .await?;
        self.stats.manifests.fetch_add(1, Ordering::Relaxed);
        tracing::info!(subject = %subject, referrer = %referrer.digest, tag = %tag, repository = %repo, "referrers tag updated");
        Ok(())
    }

    async fn publish_image(
        &self,
        image: &ImageRecord,
        records: &HashMap<&Digest, &BlobRecord>,
    ) -> Result<Vec<(Digest, String)>, PublishError> {
        self.check_stop(image)?;
        let repo = destination_repository(self.dest, image);
        let budget = self.retry.budget();
        let content = |problem: String| PublishError::Content {
            image: image.source.clone(),
            problem,
        };
        let registry = |source| self.refused(image, &repo, source);
        // The manifest tree in post-order: every manifest after all its children, so
        // that a child shared by two parents is pushed before either of them.
        let mut manifests: Vec<RawManifest> = Vec::new();
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        let mut loaded: HashMap<Digest, (RawManifest, Vec<Digest>)> = HashMap::new();
        let mut stack = vec![(image.digest.clone(), false)];
        while let Some((digest, expanded)) = stack.pop() {
            if manifests.iter().any(|m| m.digest == digest) {
                continue;
            }
            if expanded {
                let (raw, _) = loaded
                    .remove(&digest)
                    .expect("loaded before it was expanded");
                manifests.push(raw);
                continue;
            }
            if !loaded.contains_key(&digest) {
                let record = records.get(&digest).ok_or_else(|| {
                    content(format!("manifest {digest} is not listed in the imageset"))
                })?;
                let media_type = record.media_type.as_deref().ok_or_else(|| {
                    content(format!(
                        "{digest} is referenced as a manifest but listed as a blob"
                    ))
                })?;
                let raw = self
                    .source
                    .manifest(&digest, media_type)
                    .await
                    .map_err(|e| self.unavailable(image, e))?;
                if raw.digest != digest {
                    return Err(content(format!(
                        "manifest {digest} hashes to {}",
                        raw.digest
                    )));
                }
                let parsed = raw
                    .parse()
                    .map_err(|e| content(format!("manifest {digest}: {e}")))?;
                for b in parsed.blobs() {
                    if !blobs.iter().any(|(d, _)| *d == b.digest) {
                        blobs.push((b.digest.clone(), b.size));
                    }
                }
                let mut children: Vec<Digest> =
                    parsed.children().iter().map(|c| c.digest.clone()).collect();
                if digest == image.digest && !image.platforms.is_empty() {
                    // A sparse index: the children its filter leaves out did not
                    // travel (those it keeps did; ingest checked).
                    let kept: HashSet<&Digest> =
                        airlock_oci::manifest::kept_children(parsed.children(), &image.platforms)
                            .into_iter()
                            .map(|k| &k.digest)
                            .collect();
                    children.retain(|c| {
                        kept.contains(c) || records.get(c).is_some_and(|r| r.media_type.is_some())
                    });
                }
                loaded.insert(digest.clone(), (raw, children));
            }
            let children = loaded[&digest].1.clone();
            stack.push((digest, true));
            stack.extend(children.into_iter().rev().map(|c| (c, false)));
        }
        // Every blob must be available before anything of the image is pushed.
        // One this run already placed is mounted (or found done) without asking
        // first: mounting a blob the repository holds is harmless, and the
        // question would cost a round trip per shared layer per image.
        // One whose upload was staged is missing: its session is closed.
        let (mut known, mut asked) = (Vec::new(), Vec::new());
        {
            let placed = self.placed.lock().await;
            let staged = self.staged.lock().expect("not poisoned");
            for blob in &blobs {
                match placed.get(&blob.0) {
                    // Placed here already: present.
                    Some(repos) if repos.contains(&repo) => {}
                    Some(_) => known.push(blob.clone()),
                    None if staged.contains_key(&blob.0) => known.push(blob.clone()),
                    None => asked.push(blob.clone()),
                }
            }
        }
        let answers = settle(
            futures::stream::iter(asked)
                .map(|(digest, size)| {
                    let (repo, budget) = (&repo, &budget);
                    async move {
                        let present = self.has_blob(image, budget, repo, &digest).await?;
                        if present {
                            self.source.in_place(&digest, size);
                        }
                        Ok((!present).then_some((digest, size)))
                    }
                    .boxed()
                })
                .buffer_unordered(8),
        )
        .await?;
        let missing: Vec<(Digest, u64)> = known
            .into_iter()
            .chain(answers.into_iter().flatten())
            .collect();
        for (digest, size) in &missing {
            // Locating may fetch a layer from a mirror: not worth starting when stopping.
            self.check_stop(image)?;
            self.source
                .locate(digest, *size)
                .await
                .map_err(|e| self.unavailable(image, e))?;
        }
        settle(
            futures::stream::iter(missing.iter().cloned())
                .map(|(digest, size)| {
                    let (repo, budget) = (&repo, &budget);
                    async move { self.ensure_blob(image, budget, repo, &digest, size).await }
                        .boxed()
                })
                .buffer_unordered(8),
        )
        .await?;
        self.stats
            .present
            .fetch_add((blobs.len() - missing.len()) as u64, Ordering::Relaxed);
        // Children before parents; the top manifest last, and its tag after it.
        for m in &manifests {
            let tag = if m.digest == image.digest {
                image.tag.as_deref()
            } else {
                None
            };
            if tag.is_none()
                && self
                    .retrying(&budget, &repo, &m.digest, || async {
                        self.client
                            .has_manifest(&repo, &m.digest)
                            .await
                            .map_err(registry)
                    })
                    .await?
            {
                continue;
            }
            let sparse = m.digest == image.digest && !image.platforms.is_empty();
            self.retrying(&budget, &repo, &m.digest, || async {
                self.client
                    .put_manifest(&repo, m, tag)
                    .await
                    .map_err(|e| registry(if sparse { sparse_refused(image, e) } else { e }))
            })
            .await?;
            self.stats.manifests.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(top) = manifests
            .last()
            .filter(|_| image.kind == ImageKind::Referrer)
        {
            let subject = top.parse().ok().and_then(|p| p.subject).map(|s| s.digest);
            if let Some(subject) = subject {
                self.link_referrer(image, &budget, &repo, &subject, top)
                    .await?;
            }
        }
        tracing::info!(image = %image.source, destination = %format!("{}/{repo}", self.dest.registry()), digest = %image.digest, "image published");
        Ok(blobs.into_iter().map(|(d, _)| (d, repo.clone())).collect())
    }

    /// Makes `digest` present in `repo`, once per run: mounted from the repository
    /// where this run first placed it, or uploaded. The first placement of each blob
    /// is serialised, so a layer shared by images in different repositories is
    /// uploaded once and mounted everywhere else.
    async fn ensure_blob(
        &self,
        image: &ImageRecord,
        budget: &Budget,
        repo: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PublishError> {
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
                    if let Some(staged) = self.take_staged(digest)
                        && let Some(holder) = self.commit_staged(image, budget, staged).await
                    {
                        self.source.in_place(digest, size);
                        return Ok(holder);
                    }
                    self.put(image, budget, repo, None, digest, size).await?;
                    Ok::<_, PublishError>(repo.to_string())
                })
                .await?;
            if holder != repo {
                // With a credential per namespace, the first holder may be one
                // the target's credential cannot read, and the registry would
                // decline the mount: a holder reached with the same credential
                // is preferred.
                // Copied out: comparing may run a credential helper.
                let holders = self.placed.lock().await.get(digest).cloned();
                let from = holders.and_then(|holders| {
                    holders
                        .into_iter()
                        .find(|h| self.client.same_credential(repo, h))
                });
                let from = from.as_deref().unwrap_or(holder);
                self.put(image, budget, repo, Some(from), digest, size)
                    .await?;
            }
            self.placed
                .lock()
                .await
                .entry(digest.clone())
                .or_default()
                .push(repo.to_string());
            Ok::<(), PublishError>(())
        })
        .await?;
        Ok(())
    }

    /// Whether `repo` holds `digest`, asked under the retry rules.
    async fn has_blob(
        &self,
        image: &ImageRecord,
        budget: &Budget,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, PublishError> {
        self.retrying(budget, repo, digest, || async {
            self.client
                .has_blob(repo, digest)
                .await
                .map_err(|e| self.refused(image, repo, e))
        })
        .await
    }

    /// Puts a blob into `repo`: mounted from `holder` when one is given and the
    /// registry agrees, otherwise uploaded from the source.
    async fn put(
        &self,
        image: &ImageRecord,
        budget: &Budget,
        repo: &str,
        holder: Option<&str>,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PublishError> {
        let _permit = self
            .transfers
            .acquire()
            .await
            .expect("semaphore is never closed");
        self.check_stop(image)?;
        if let Some(from) = holder {
            if self.client.mount_blob(repo, from, digest).await {
                self.stats.mounted.fetch_add(1, Ordering::Relaxed);
                self.source.in_place(digest, size);
                return Ok(());
            }
            // Declined. A blob this run placed elsewhere is mounted without
            // asking whether the repository has it: asked now, before an upload.
            if self.has_blob(image, budget, repo, digest).await? {
                self.stats.present.fetch_add(1, Ordering::Relaxed);
                self.source.in_place(digest, size);
                return Ok(());
            }
        }
        self.retrying(budget, repo, digest, || {
            self.upload(image, repo, digest, size)
        })
        .await?;
        self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
        self.progress.add(size);
        tracing::debug!(digest = %digest, size, repository = %repo, "blob uploaded");
        Ok(())
    }

    /// One attempt at uploading a blob: the source opened afresh, then sent.
    async fn upload(
        &self,
        image: &ImageRecord,
        repo: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), PublishError> {
        let registry = |source| self.refused(image, repo, source);
        match self
            .source
            .open(digest, size)
            .await
            .map_err(|e| self.unavailable(image, e))?
        {
            BlobBody::File(path) => {
                let actual = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .unwrap_or(u64::MAX);
                if actual != size {
                    return Err(PublishError::Content {
                        image: image.source.clone(),
                        problem: format!(
                            "blob {digest} is {actual} bytes in {}, its manifest says {size}",
                            path.display()
                        ),
                    });
                }
                self.client
                    .push_blob_file(repo, digest, size, &path)
                    .await
                    .map_err(registry)?;
            }
            BlobBody::Stream(stream) => {
                self.client
                    .push_blob_stream(repo, digest, size, stream)
                    .await
                    .map_err(registry)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_imageset::fixtures::{PAYLOAD_OFFSET, forged_manifest};
    use airlock_imageset::validate::check;
    use airlock_oci::reference::valid_repository;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a forger writes into a manifest's string fields, what the
        /// format's check lets through works here: destination repositories are
        /// valid paths, chunk names are Airlock's own, and the cluster resources
        /// can be written.
        #[test]
        fn what_the_format_check_passes_is_safe_to_publish(m in forged_manifest()) {
            if check(&m, PAYLOAD_OFFSET).is_ok() {
                let dest: Destination = "docker://mirror.example:5000/site".parse().unwrap();
                for i in &m.images {
                    let repo = destination_repository(&dest, i);
                    prop_assert!(valid_repository(&repo), "{repo:?}");
                }
                prop_assert_eq!(
                    &m.chunks[0].name,
                    &airlock_imageset::chunk_file_name(&m.uuid, 1, 1, 1)
                );
                let _ = cluster_resources(&m.images, &m.releases, &dest);
            }
        }
    }

    fn image(name: &str, subject: Option<&str>) -> ImageRecord {
        ImageRecord {
            source: name.into(),
            repository: "r/x".into(),
            tag: None,
            by_digest: true,
            digest: Digest::of(name.as_bytes()),
            target_repository: None,
            kind: if subject.is_some() {
                ImageKind::Referrer
            } else {
                ImageKind::Generic
            },
            subject: subject.map(|s| Digest::of(s.as_bytes())),
            catalog_source: None,
            platforms: Vec::new(),
        }
    }

    /// Repositories that flatten to one name, or onto the state repository,
    /// are refused; the same repository twice, or names that stay apart, pass.
    #[test]
    fn flattening_that_merges_repositories_is_refused() {
        let at = |repo: &str, tag: &str| ImageRecord {
            source: format!("{repo}:{tag}"),
            repository: repo.into(),
            tag: Some(tag.into()),
            ..image(repo, None)
        };
        let dest = |n| {
            "docker://mirror.example/m"
                .parse::<Destination>()
                .unwrap()
                .with_max_nested_paths(n)
        };
        let apart = [
            at("q.io/a/b-c", "1"),
            at("q.io/a/b-c", "2"),
            at("q.io/x/y", "1"),
        ];
        assert!(flattening_conflicts(&apart, &dest(2)).is_ok());
        let merged = [at("q.io/a/b-c", "1"), at("q.io/a/b/c", "1")];
        let e = flattening_conflicts(&merged, &dest(2))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m/a/b/c and m/a/b-c") && e.contains("both flatten to m/a-b-c"),
            "{e}"
        );
        assert!(
            flattening_conflicts(&merged, &dest(0)).is_ok(),
            "no limit, no merge"
        );
        let state = [at("q.io/airlock/state", "1")];
        let e = flattening_conflicts(&state, &dest(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds the site's state"), "{e}");
    }

    fn stopped() -> PublishError {
        PublishError::Stopped { image: "a".into() }
    }

    #[tokio::test]
    async fn a_stop_lets_the_work_under_way_finish_and_is_reported() {
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicU64::new(0));
        let work = {
            let done = done.clone();
            async move {
                finished.await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        };
        let results =
            futures::stream::iter([futures::future::ready(Err(stopped())).boxed(), work.boxed()])
                .buffer_unordered(2);
        let settled = settle(results);
        futures::pin_mut!(settled);
        assert!(
            futures::poll!(&mut settled).is_pending(),
            "the stop is not reported while work is under way"
        );
        finish.send(()).unwrap();
        let result = settled.await;
        assert!(
            matches!(result, Err(PublishError::Stopped { .. })),
            "{result:?}"
        );
        assert_eq!(
            done.load(Ordering::Relaxed),
            1,
            "the upload under way finished"
        );
    }

    #[tokio::test]
    async fn any_other_failure_drops_the_work_under_way_at_once() {
        let results = futures::stream::iter([
            futures::future::ready(Err(PublishError::Content {
                image: "a".into(),
                problem: "bad".into(),
            }))
            .boxed(),
            futures::future::pending().boxed(),
        ])
        .buffer_unordered(2);
        let result: Result<Vec<()>, _> = settle(results).await;
        assert!(
            matches!(result, Err(PublishError::Content { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn waves_put_every_referrer_after_what_it_refers_to() {
        // Listed in the worst order: the signature of an SBOM first.
        let images = vec![
            image("sbom-sig", Some("sbom")),
            image("sbom", Some("app")),
            image("app-sig", Some("app")),
            image("app", None),
            image("child-sig", Some("a platform manifest of app")),
        ];
        let names: Vec<Vec<&str>> = waves(&images)
            .iter()
            .map(|w| w.iter().map(|i| i.source.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec!["app"],
                vec!["sbom", "app-sig", "child-sig"],
                vec!["sbom-sig"]
            ]
        );
        // A forged cycle ends instead of looping.
        let mut a = image("a", Some("b"));
        let mut b = image("b", Some("a"));
        a.subject = Some(b.digest.clone());
        b.subject = Some(a.digest.clone());
        assert_eq!(waves(&[a, b]).iter().map(Vec::len).sum::<usize>(), 2);
    }
}
