//! Resolving the configuration's images into manifests and blobs.
//!
//! Each image's manifest is pulled with its exact bytes; an index or manifest list
//! brings every child manifest (every platform, like `skopeo copy --all`), and every
//! image manifest brings its config and layers. The result is the content of an
//! imageset: the images, and each manifest and blob once, in a stable order (by
//! image, parents before children, manifests before their blobs) so that two runs
//! over the same sources lay out identical chunks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use airlock_common::config::ImageSpec;
use airlock_common::digest::Digest;
use airlock_common::imageset::{BlobRecord, ImageRecord};
use airlock_common::manifest::{Descriptor, Platform, is_index};
use airlock_common::reference::ImageRef;
use airlock_common::registry::{Pool, RawManifest, RegistryError};
use bytes::Bytes;
use futures::StreamExt;

use crate::derive::Derived;

/// Nesting of indexes that is accepted (an index of indexes is legal but rare; a
/// deeper chain is more likely a loop in a hostile registry).
const MAX_DEPTH: usize = 4;

/// How many images are resolved at once.
const PARALLEL_IMAGES: usize = 8;

/// Why an image could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The registry failed.
    #[error("image {image}: {source}")]
    Registry {
        /// The image as configured.
        image: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The registry served content that disagrees with what referenced it.
    #[error("image {image}: {problem}")]
    Inconsistent {
        /// The image as configured.
        image: String,
        /// What disagrees.
        problem: String,
    },
}

/// The content of an imageset.
#[derive(Debug, Default)]
pub struct Collected {
    /// One record per configured image.
    pub images: Vec<ImageRecord>,
    /// Every manifest and blob, each once.
    pub blobs: Vec<BlobRecord>,
    /// The bytes of every manifest, by digest.
    pub manifests: HashMap<Digest, RawManifest>,
    /// Blobs made here rather than pulled (the graph image's configs and data
    /// layer), by digest.
    pub built: HashMap<Digest, Bytes>,
}

impl Collected {
    /// Adds an image built here: its record, manifests and blobs, each blob once.
    pub fn add_built(&mut self, image: Derived) {
        let mut seen: HashSet<Digest> = self.blobs.iter().map(|b| b.digest.clone()).collect();
        for m in image.manifests {
            if seen.insert(m.digest.clone()) {
                self.blobs.push(BlobRecord {
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    media_type: Some(m.media_type.clone()),
                    repository: image.image.repository.clone(),
                    parts: Vec::new(),
                });
                self.manifests.insert(m.digest.clone(), m);
            }
        }
        for (record, bytes) in image.blobs {
            if let Some(b) = bytes {
                self.built.insert(record.digest.clone(), b);
            }
            if seen.insert(record.digest.clone()) {
                self.blobs.push(record);
            }
        }
        self.images.push(image.image);
    }

    /// Total bytes of all blobs and manifests.
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// One image's manifests and blobs, before deduplication.
#[derive(Debug)]
pub struct Resolved {
    /// Digest of the top manifest.
    pub top: Digest,
    /// Every manifest of the tree, parents before children.
    pub manifests: Vec<RawManifest>,
    /// The platform an index gives each child manifest.
    pub platforms: HashMap<Digest, Platform>,
    blobs: Vec<Descriptor>,
    repository: String,
}

/// Resolves every image of `specs` into its manifest tree, without pulling a blob.
/// Images named the same way (release components shared by several releases) are
/// resolved once; the result has one entry per spec.
pub async fn resolve_all(
    specs: &[ImageSpec],
    pool: &Pool,
) -> Result<Vec<Arc<Resolved>>, CollectError> {
    let mut unique: Vec<&ImageSpec> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    // For each spec, the index of its resolution in `unique`.
    let slots: Vec<usize> = specs
        .iter()
        .map(|spec| {
            *position.entry(spec.source.to_string()).or_insert_with(|| {
                unique.push(spec);
                unique.len() - 1
            })
        })
        .collect();
    let resolved: Vec<Result<Resolved, CollectError>> = futures::stream::iter(unique)
        .map(|spec| resolve(&spec.name, &spec.source, pool))
        .buffered(PARALLEL_IMAGES)
        .collect()
        .await;
    let resolved: Vec<Arc<Resolved>> = resolved
        .into_iter()
        .map(|r| r.map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(slots.iter().map(|&i| resolved[i].clone()).collect())
}

/// The content of an imageset from `specs` and their resolutions (one each, in
/// the same order): each manifest and blob once, in a stable order.
pub fn assemble(specs: &[ImageSpec], resolved: &[Arc<Resolved>]) -> Collected {
    let mut out = Collected::default();
    let mut seen = HashSet::new();
    for (spec, r) in specs.iter().zip(resolved) {
        for m in &r.manifests {
            if seen.insert(m.digest.clone()) {
                out.blobs.push(BlobRecord {
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    media_type: Some(m.media_type.clone()),
                    repository: r.repository.clone(),
                    parts: Vec::new(),
                });
                out.manifests.insert(m.digest.clone(), m.clone());
            }
        }
        for d in &r.blobs {
            if seen.insert(d.digest.clone()) {
                out.blobs.push(BlobRecord {
                    digest: d.digest.clone(),
                    size: d.size,
                    media_type: None,
                    repository: r.repository.clone(),
                    parts: Vec::new(),
                });
            }
        }
        let src = &spec.source;
        out.images.push(ImageRecord {
            source: spec.name.clone(),
            repository: src.name(),
            tag: spec
                .target_tag
                .clone()
                .or_else(|| src.tag().map(str::to_string)),
            by_digest: src.digest().is_some(),
            digest: r.top.clone(),
            target_repository: spec.target_repo.clone(),
            kind: spec.kind,
            subject: spec.subject.clone(),
        });
    }
    out
}

/// Resolves every image of `specs` and assembles the result.
pub async fn collect(specs: &[ImageSpec], pool: &Pool) -> Result<Collected, CollectError> {
    let resolved = resolve_all(specs, pool).await?;
    Ok(assemble(specs, &resolved))
}

/// Resolves one image (`name` as configured, for messages) into its manifest tree.
pub async fn resolve(name: &str, src: &ImageRef, pool: &Pool) -> Result<Resolved, CollectError> {
    let image = name.to_string();
    let registry_err = |source| CollectError::Registry {
        image: image.clone(),
        source,
    };
    let client = pool.client(src.registry()).await.map_err(registry_err)?;
    let top = client
        .get_manifest(src.repository(), &src.manifest_reference())
        .await
        .map_err(registry_err)?;
    tracing::info!(image = %image, digest = %top.digest, media_type = %top.media_type, "resolved image");
    let mut manifests = vec![top.clone()];
    let mut platforms = HashMap::new();
    let mut blobs = Vec::new();
    // Walk the tree breadth first; children are checked against their descriptors.
    let mut level = vec![top.clone()];
    for depth in 0.. {
        let mut next = Vec::new();
        for m in &level {
            let parsed = m.parse().map_err(|e| CollectError::Inconsistent {
                image: image.clone(),
                problem: format!("manifest {}: {e}", m.digest),
            })?;
            blobs.extend(parsed.blobs().cloned());
            for child in parsed.children() {
                if depth + 1 >= MAX_DEPTH {
                    return Err(CollectError::Inconsistent {
                        image: image.clone(),
                        problem: format!("indexes nested deeper than {MAX_DEPTH} levels"),
                    });
                }
                let c = client
                    .get_manifest(src.repository(), child.digest.as_str())
                    .await
                    .map_err(registry_err)?;
                if c.bytes.len() as u64 != child.size {
                    return Err(CollectError::Inconsistent {
                        image: image.clone(),
                        problem: format!(
                            "child manifest {} is {} bytes, its index says {}",
                            child.digest,
                            c.bytes.len(),
                            child.size
                        ),
                    });
                }
                if c.media_type != child.media_type
                    && !(is_index(&c.media_type) && is_index(&child.media_type))
                {
                    tracing::warn!(image = %image, child = %child.digest, declared = %child.media_type, actual = %c.media_type, "child manifest media type differs from its index entry");
                }
                if let Some(p) = &child.platform {
                    platforms.insert(c.digest.clone(), p.clone());
                }
                manifests.push(c.clone());
                next.push(c);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(Resolved {
        top: top.digest,
        manifests,
        platforms,
        blobs,
        repository: src.name(),
    })
}
