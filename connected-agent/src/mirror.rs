//! `mirror`: straight from the source registries to a reachable mirror registry,
//! for partially disconnected sites (oc-mirror's mirror-to-mirror).
//!
//! The images of the configuration are resolved as for `create`, then published
//! with the same rules as the disconnected side's `publish` (one implementation,
//! `airlock_registry::publish`): blobs stream from the source into the mirror without
//! temporary files, whatever the mirror already has is skipped, names follow
//! oc-mirror's rule, and the same mirror sets are written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_cli::telemetry::Bar;
use airlock_imageset::BlobRecord;
use airlock_oci::digest::Digest;
use airlock_oci::reference::{Destination, ImageRef};
use airlock_registry::publish::{self, BlobBody, ContentSource, Publisher};
use airlock_registry::resources;
use airlock_registry::{Pool, RawManifest, RegistryClient, RegistryOptions};

use crate::collect::Collected;
use crate::create::{Gathered, gather, load_config, workspace_dir};
use crate::error::Error;
use crate::reads::Reads;
use crate::release::ReleaseOptions;

/// What `mirror` is asked to do.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// The ImageSetConfiguration file.
    pub config: PathBuf,
    /// The mirror registry and prefix.
    pub to: Destination,
    /// Where `cluster-resources/` is written; defaults as for `create`.
    pub workspace: Option<PathBuf>,
    /// Blob transfers at once.
    pub parallel: usize,
    /// How to reach the source registries.
    pub source: RegistryOptions,
    /// How to reach the mirror registry.
    pub dest: RegistryOptions,
    /// Release selection, signatures and graph data.
    pub releases: ReleaseOptions,
    /// Signatures and referrers.
    pub policy: crate::policy::PolicyOptions,
    /// Leave out images that cannot be pulled, naming them in `missing.txt` in
    /// the workspace, instead of failing.
    pub continue_on_error: bool,
}

/// What `mirror` did.
#[derive(Debug)]
pub struct MirrorReport {
    /// Images mirrored.
    pub images: usize,
    /// Counters: uploaded, uploaded bytes, mounted, present, manifests, retries.
    pub stats: [u64; 6],
    /// Cluster resource files written.
    pub resources: Vec<PathBuf>,
    /// Wall time.
    pub elapsed: Duration,
    /// Images left out because they could not be pulled.
    pub missing: Vec<crate::collect::Missing>,
    /// `missing.txt`, when images were left out.
    pub missing_file: Option<PathBuf>,
}

/// Content straight from the source registries.
struct RegistrySource<'a> {
    pool: &'a Pool,
    collected: &'a Collected,
    records: std::collections::HashMap<&'a Digest, &'a BlobRecord>,
}

/// Why the source registries could not give what `mirror` publishes.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    /// Collecting did not resolve it: what is published is what was collected.
    #[error("{what} {digest} was not resolved")]
    Unresolved { what: &'static str, digest: Digest },
    /// The repository a blob was collected from is not a reference.
    #[error(transparent)]
    Reference(#[from] airlock_oci::reference::ReferenceError),
    /// The source registry failed. Its error is this one's source, so the
    /// publish's exit code is the registry's (69 when it is unavailable).
    #[error("{0}")]
    Registry(#[from] airlock_registry::RegistryError),
}

impl ContentSource for RegistrySource<'_> {
    type Error = SourceError;

    async fn manifest(
        &self,
        digest: &Digest,
        _media_type: &str,
    ) -> Result<RawManifest, SourceError> {
        self.collected
            .manifests
            .get(digest)
            .cloned()
            .ok_or_else(|| SourceError::Unresolved {
                what: "manifest",
                digest: digest.clone(),
            })
    }

    async fn locate(&self, digest: &Digest, _size: u64) -> Result<(), SourceError> {
        // The source registry served the manifest that references the blob; whether
        // it serves the blob too shows when it is streamed (and checked) below.
        self.record(digest).map(|_| ())
    }

    async fn open(&self, digest: &Digest, _size: u64) -> Result<BlobBody, SourceError> {
        if let Some(bytes) = self.collected.built.get(digest) {
            let bytes = bytes.clone();
            return Ok(BlobBody::Stream(futures::StreamExt::boxed(
                futures::stream::once(async move { Ok(bytes) }),
            )));
        }
        let source: ImageRef = self.record(digest)?.repository.parse()?;
        let client = self.pool.client(source.registry()).await?;
        let of = format!("{}@{digest}", source.name());
        let stream = Reads::new()
            .run("blob read", &of, || {
                client.blob_stream(source.repository(), digest)
            })
            .await?;
        Ok(BlobBody::Stream(stream))
    }
}

impl RegistrySource<'_> {
    fn record(&self, digest: &Digest) -> Result<&BlobRecord, SourceError> {
        self.records
            .get(digest)
            .copied()
            .ok_or_else(|| SourceError::Unresolved {
                what: "blob",
                digest: digest.clone(),
            })
    }
}

/// Runs `mirror`.
pub async fn mirror(opts: &MirrorOptions) -> Result<MirrorReport, Error> {
    let started = Instant::now();
    let (loaded, additional) = load_config(&opts.config)?;
    let ws_dir = workspace_dir(opts.workspace.as_deref(), &loaded)?;
    let pool = Pool::new(opts.source.clone());
    let Gathered {
        collected,
        releases,
        missing,
        ..
    } = gather(
        &loaded,
        additional,
        &pool,
        &opts.releases,
        &opts.policy,
        opts.continue_on_error,
        &std::collections::HashSet::new(),
    )
    .await?;
    // Nothing is pruned here, so nothing needs carrying over; the mirror sets
    // written below do not name what was left out.
    let missing_file = crate::create::write_missing(&ws_dir, &missing)?;
    let client = RegistryClient::connect(opts.to.registry(), &opts.dest).await?;
    let source = RegistrySource {
        pool: &pool,
        collected: &collected,
        records: collected.blobs.iter().map(|b| (&b.digest, b)).collect(),
    };
    let total = collected
        .blobs
        .iter()
        .filter(|b| b.media_type.is_none())
        .map(|b| b.size)
        .sum();
    let publisher = Publisher::new(
        &client,
        &source,
        &opts.to,
        opts.parallel,
        Bar::bytes("mirror", total),
    );
    let result = publisher.publish(&collected.images, &collected.blobs).await;
    let stats = publisher.stats.get();
    result.map_err(Error::Publish)?;
    let dir = ws_dir.join("cluster-resources");
    let resources = resources::write(
        &dir,
        &publish::cluster_resources(&collected.images, &releases, &opts.to),
    )
    .map_err(|e| Error::io(&dir, e))?;
    Ok(MirrorReport {
        images: collected.images.len(),
        stats,
        resources,
        elapsed: started.elapsed(),
        missing,
        missing_file,
    })
}
