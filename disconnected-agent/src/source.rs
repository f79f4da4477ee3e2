//! Content for publishing: the store, and the registries a missing layer can be
//! fetched from.
//!
//! A differential imageset does not carry the blobs an earlier imageset shipped. At
//! publish they are usually already in the destination repository (the image was
//! published before) or in the content store. When neither holds one — the store was
//! pruned, or the image moved to a new repository — the blob is fetched from the
//! destination registry (a repository known to hold it, or where its source
//! repository is mirrored) or from a configured other mirror, verified against its
//! digest into the store, and only then published.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use airlock_imageset::BlobRecord;
use airlock_oci::digest::Digest;
use airlock_oci::reference::{Destination, ImageRef};
use airlock_registry::publish::{BlobBody, ContentSource};
use airlock_registry::{RawManifest, RegistryClient};

use crate::fanout::Taker;
use crate::store::Store;

/// A registry to fetch missing layers from, with the prefix it mirrors under.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The client.
    pub client: Arc<RegistryClient>,
    /// Where images are mirrored there.
    pub dest: Destination,
}

/// The content store plus the places missing layers may be fetched from.
pub struct StoreSource<'a> {
    store: &'a Store,
    /// The destination itself, then other mirrors.
    mirrors: Vec<Mirror>,
    /// Repositories of the destination known to hold each blob.
    locations: &'a HashMap<Digest, String>,
    /// Source repository of each blob, to find where it is mirrored.
    records: HashMap<Digest, &'a BlobRecord>,
    /// One fetch per blob at a time: images published concurrently may need the same
    /// missing layer.
    fetching: tokio::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Reads shared with the other clusters published to in the same pass.
    shared: Option<&'a Taker>,
}

impl<'a> StoreSource<'a> {
    /// A source over `store`, fetching from `mirrors` (the destination first).
    pub fn new(
        store: &'a Store,
        mirrors: Vec<Mirror>,
        locations: &'a HashMap<Digest, String>,
        blobs: &'a [BlobRecord],
    ) -> Self {
        StoreSource {
            store,
            mirrors,
            locations,
            records: blobs.iter().map(|b| (b.digest.clone(), b)).collect(),
            fetching: Default::default(),
            shared: None,
        }
    }

    /// Reads blobs through `shared`, with the other clusters of the pass.
    pub fn sharing(mut self, shared: Option<&'a Taker>) -> Self {
        self.shared = shared;
        self
    }

    /// Where `digest` may be: (mirror, repository) pairs in the order to try.
    fn candidates(&self, digest: &Digest) -> Vec<(&Mirror, String)> {
        let mut out: Vec<(&Mirror, String)> = Vec::new();
        let source_path = self
            .records
            .get(digest)
            .and_then(|r| r.repository.parse::<ImageRef>().ok())
            .map(|r| r.repository().to_string());
        for (i, m) in self.mirrors.iter().enumerate() {
            if i == 0
                && let Some(repo) = self.locations.get(digest)
            {
                out.push((m, repo.clone()));
            }
            if let Some(p) = &source_path {
                let repo = m.dest.repository_for(p);
                if !out.iter().any(|(mm, r)| std::ptr::eq(*mm, m) && *r == repo) {
                    out.push((m, repo));
                }
            }
        }
        out
    }
}

/// Why the content store (and the registries it may fetch from) could not give
/// what a publish needs. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreSourceError {
    /// A manifest neither in the store nor at any `fetchFrom` registry.
    #[error(
        "manifest {digest} is not in the content store, and could not be fetched from {}; give a registry that has it with --fetch-from (fetchFrom in the agent configuration)",
        places(tried)
    )]
    ManifestUnavailable {
        /// The manifest.
        digest: Digest,
        /// Each place tried, with why it did not serve it.
        tried: Vec<String>,
    },
    /// A layer an earlier imageset carried, gone from the store and from every
    /// `fetchFrom` registry.
    #[error(
        "blob {digest} ({size} bytes) is needed, but the imageset does not carry it (an earlier one did), \
         the content store no longer holds it, and it could not be fetched from {}; give a registry that has it \
         with --fetch-from (fetchFrom in the agent configuration), or create a --full imageset on the connected side",
        places(tried)
    )]
    BlobUnavailable {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Each place tried, with why it did not serve it.
        tried: Vec<String>,
    },
    /// Opened for upload without having been located first (a bug).
    #[error("blob {digest} is not in the content store")]
    NotStored {
        /// The blob.
        digest: Digest,
    },
    /// The store's file of a blob could not be read.
    #[error("blob {digest} in the content store ({}): {source}", path.display())]
    Unreadable {
        /// The blob.
        digest: Digest,
        /// Its file in the store.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

impl ContentSource for StoreSource<'_> {
    type Error = StoreSourceError;

    async fn manifest(
        &self,
        digest: &Digest,
        media_type: &str,
    ) -> Result<RawManifest, StoreSourceError> {
        if let Ok(bytes) = self.store.read(digest) {
            return Ok(RawManifest::from_bytes(
                bytes.into(),
                media_type.to_string(),
            ));
        }
        // A store emptied before manifests were kept in it: fetched like a
        // layer, by digest (the client checks that the bytes are that digest).
        let mut tried = Vec::new();
        for (mirror, repo) in self.candidates(digest) {
            let at = format!("{}/{repo}", mirror.client.host());
            match mirror.client.get_manifest(&repo, digest.as_str()).await {
                Ok(raw) => {
                    tracing::info!(%digest, from = %at, "manifest missing from the content store fetched and verified");
                    return Ok(RawManifest::from_bytes(raw.bytes, media_type.to_string()));
                }
                Err(e) => tried.push(format!("{at} ({})", short(&e.to_string()))),
            }
        }
        Err(StoreSourceError::ManifestUnavailable {
            digest: digest.clone(),
            tried,
        })
    }

    async fn locate(&self, digest: &Digest, size: u64) -> Result<(), StoreSourceError> {
        if self.store.has(digest) {
            return Ok(());
        }
        let lock = self
            .fetching
            .lock()
            .await
            .entry(digest.clone())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        if self.store.has(digest) {
            return Ok(());
        }
        let mut tried = Vec::new();
        for (mirror, repo) in self.candidates(digest) {
            let at = format!("{}/{repo}", mirror.client.host());
            match mirror.client.blob_stream(&repo, digest).await {
                Ok(stream) => match self.store.fetch(digest, size, stream).await {
                    Ok(()) => {
                        tracing::info!(%digest, size, from = %at, "missing layer fetched and verified");
                        return Ok(());
                    }
                    Err(e) => tried.push(format!("{at} ({e})")),
                },
                Err(e) => tried.push(format!("{at} ({})", short(&e.to_string()))),
            }
        }
        Err(StoreSourceError::BlobUnavailable {
            digest: digest.clone(),
            size,
            tried,
        })
    }

    fn in_place(&self, digest: &Digest, size: u64) {
        if let Some(shared) = self.shared {
            shared.in_place(digest, size);
        }
    }

    async fn open(&self, digest: &Digest, size: u64) -> Result<BlobBody, StoreSourceError> {
        if !self.store.has(digest) {
            return Err(StoreSourceError::NotStored {
                digest: digest.clone(),
            });
        }
        let path = self.store.path(digest);
        match self.shared {
            None => Ok(BlobBody::File(path)),
            Some(shared) => shared
                .stream(digest, &path, size)
                .map(BlobBody::Stream)
                .map_err(|source| StoreSourceError::Unreadable {
                    digest: digest.clone(),
                    path,
                    source,
                }),
        }
    }
}

/// The places tried, for an error.
fn places(tried: &[String]) -> String {
    if tried.is_empty() {
        "anywhere (no candidate repository known)".to_string()
    } else {
        tried.join(", ")
    }
}

fn short(s: &str) -> &str {
    s.rsplit(": ").next().unwrap_or(s)
}
