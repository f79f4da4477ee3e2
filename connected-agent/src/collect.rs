//! Resolving the configuration's images into manifests and blobs.
//!
//! Each image's manifest is pulled with its exact bytes; an index or manifest list
//! brings every child manifest (every platform, like `skopeo copy --all`), and every
//! image manifest brings its config and layers. The result is the content of an
//! imageset: the images, and each manifest and blob once, in a stable order (by
//! image, parents before children, manifests before their blobs) so that two runs
//! over the same sources lay out identical chunks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use airlock_config::ImageSpec;
use airlock_imageset::{BlobRecord, ImageRecord};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::{self, Descriptor, Platform, is_index};
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RawManifest, RegistryError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::derive::Derived;
use crate::reads::Reads;

/// Nesting of indexes that is accepted (an index of indexes is legal but rare; a
/// deeper chain is more likely a loop in a hostile registry).
const MAX_DEPTH: usize = 4;

/// How many images are resolved (or, with `--continue-on-error`, checked for
/// their blobs) at once. Resolving an image is a request for its manifest and
/// one for each platform; a catalog has thousands, so across a WAN the round
/// trips, not the registry, are their cost. The registry client bounds the
/// manifests read from one registry at once, whatever the product of this and
/// [`PARALLEL_CHILDREN`].
const PARALLEL_IMAGES: usize = 32;

/// How many child manifests of one index are asked for at once.
pub(crate) const PARALLEL_CHILDREN: usize = 8;

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
#[derive(Debug, Default, Clone)]
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
    /// The platforms kept of the top index when a filter left some of its
    /// children out (a sparse index); empty when the tree is whole.
    pub kept: Vec<String>,
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
    let (slots, unique) = distinct(specs);
    // The first failure in the configuration's order ends the run: the images
    // after it are not waited for (each may be waiting out throttling).
    let each: Vec<Arc<Resolved>> = resolutions(unique, pool).try_collect().await?;
    Ok(slots.iter().map(|&i| each[i].clone()).collect())
}

/// Each distinct source of `specs` resolved once: for each spec, the index of its
/// resolution, and the resolutions.
async fn resolve_each(
    specs: &[ImageSpec],
    pool: &Pool,
) -> (Vec<usize>, Vec<Result<Arc<Resolved>, CollectError>>) {
    let (slots, unique) = distinct(specs);
    (slots, resolutions(unique, pool).collect().await)
}

/// For each spec, the index of its source among the distinct ones; and those.
fn distinct(specs: &[ImageSpec]) -> (Vec<usize>, Vec<&ImageSpec>) {
    let mut unique: Vec<&ImageSpec> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    let slots: Vec<usize> = specs
        .iter()
        .map(|spec| {
            let key = format!("{} {}", spec.source, spec.platforms.join(","));
            *position.entry(key).or_insert_with(|| {
                unique.push(spec);
                unique.len() - 1
            })
        })
        .collect();
    (slots, unique)
}

/// The resolutions of `specs`, in their order.
fn resolutions<'a>(
    specs: Vec<&'a ImageSpec>,
    pool: &'a Pool,
) -> impl futures::Stream<Item = Result<Arc<Resolved>, CollectError>> + 'a {
    futures::stream::iter(specs)
        .map(|spec| resolve(&spec.name, &spec.source, &spec.platforms, pool))
        .buffered(PARALLEL_IMAGES)
        .map(|r| r.map(Arc::new))
}

/// An image left out because it could not be resolved.
#[derive(Debug, Clone)]
pub struct Missing {
    /// The image as configured.
    pub image: String,
    /// Why: the registry's answer, or what was wrong with the manifest.
    pub reason: String,
    /// The sequence it was carried over from, as it was then, when the last
    /// imageset listed it.
    pub carried_from: Option<u64>,
}

impl std::fmt::Display for Missing {
    /// One line of `missing.txt`: the image, a tab, why, and what became of it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\t{}",
            self.image,
            self.reason.replace(['\n', '\t'], " ")
        )?;
        match self.carried_from {
            Some(seq) => write!(f, "\tcarried over as it was in sequence {seq}"),
            None => f.write_str("\tnot in the imageset"),
        }
    }
}

/// [`resolve_all`], leaving out the images that cannot be resolved instead of
/// failing (`--continue-on-error`): the specs kept, their resolutions, and what
/// was left out. A release, its components, a catalog or the graph image is
/// never left out: each is part of a whole that would be shipped incomplete
/// (a release whose component is missing fails every upgrade to it), so its
/// failure is the run's.
pub async fn resolve_available(
    specs: Vec<ImageSpec>,
    pool: &Pool,
) -> Result<(Vec<ImageSpec>, Vec<Arc<Resolved>>, Vec<Missing>), CollectError> {
    let (slots, mut each) = resolve_each(&specs, pool).await;
    if let Some(&slot) = specs
        .iter()
        .zip(&slots)
        .find_map(|(spec, slot)| (whole(spec.kind) && each[*slot].is_err()).then_some(slot))
    {
        return Err(each
            .swap_remove(slot)
            .map(drop)
            .expect_err("the slot was checked to hold an error"));
    }
    let (mut kept, mut resolved, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for (spec, slot) in specs.into_iter().zip(slots) {
        match &each[slot] {
            Ok(r) => {
                kept.push(spec);
                resolved.push(r.clone());
            }
            Err(e) => leave_out(&mut missing, &spec.name, &e.to_string()),
        }
    }
    Ok((kept, resolved, missing))
}

/// Names `spec` in `missing` with why it cannot be pulled, once per image as
/// configured (two entries naming one image are one line of `missing.txt`).
pub(crate) fn leave_out(missing: &mut Vec<Missing>, image: &str, reason: &str) {
    if missing.iter().any(|m| m.image == image) {
        return;
    }
    tracing::warn!(image = %image, error = %reason, "left out: it cannot be pulled (--continue-on-error)");
    missing.push(Missing {
        image: image.to_string(),
        reason: reason.to_string(),
        carried_from: None,
    });
}

/// A release, its components, a catalog or the graph image: a part of a whole
/// that would ship incomplete, so never left out.
pub(crate) fn whole(kind: airlock_imageset::ImageKind) -> bool {
    use airlock_imageset::ImageKind;
    matches!(
        kind,
        ImageKind::Release
            | ImageKind::ReleaseComponent
            | ImageKind::Catalog
            | ImageKind::GraphData
    )
}

/// With `--continue-on-error`: leaves out (into `missing`) the images one of
/// whose layers or configs the registry does not serve, asked with a `HEAD` of
/// each blob before anything is written, so that a garbage-collected or refused
/// layer costs its image rather than the run. Each image once; not the parts of
/// a whole, whose failure is the run's when their blobs are pulled. Run after
/// the policy rules, so that no blocked image is asked for a blob. Blobs the
/// workspace `shipped` before are not asked for: the site has them, so a
/// source that has since lost one costs nothing.
pub async fn leave_out_unavailable(
    specs: &mut Vec<ImageSpec>,
    resolved: &mut Vec<Arc<Resolved>>,
    missing: &mut Vec<Missing>,
    pool: &Pool,
    shipped: &HashSet<&Digest>,
) {
    // Each resolution once (images named the same way share one), by address.
    let key = |r: &Arc<Resolved>| Arc::as_ptr(r) as usize;
    let mut seen = HashSet::new();
    let asked: Vec<(&ImageSpec, &Arc<Resolved>)> = specs
        .iter()
        .zip(resolved.iter())
        .filter(|(spec, r)| !whole(spec.kind) && seen.insert(key(r)))
        .collect();
    // A blob shared by many images is asked for once per repository.
    let present: Mutex<HashSet<(String, Digest)>> = Mutex::new(HashSet::new());
    let failed: HashMap<usize, CollectError> = futures::stream::iter(asked)
        .map(|(spec, r)| {
            let present = &present;
            async move {
                unavailable_layer(spec, r, pool, present, shipped)
                    .await
                    .map(|e| (key(r), e))
            }
        })
        .buffer_unordered(PARALLEL_IMAGES)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    if failed.is_empty() {
        return;
    }
    let (mut kept_specs, mut kept) = (Vec::new(), Vec::new());
    for (spec, r) in specs.drain(..).zip(resolved.drain(..)) {
        match failed.get(&key(&r)) {
            Some(e) if !whole(spec.kind) => leave_out(missing, &spec.name, &e.to_string()),
            _ => {
                kept_specs.push(spec);
                kept.push(r);
            }
        }
    }
    *specs = kept_specs;
    *resolved = kept;
}

/// Why a layer (or config) of `r` cannot be pulled, asked with a `HEAD` of each
/// not already known `present`; `None` when the registry has them all.
async fn unavailable_layer(
    spec: &ImageSpec,
    r: &Resolved,
    pool: &Pool,
    present: &Mutex<HashSet<(String, Digest)>>,
    shipped: &HashSet<&Digest>,
) -> Option<CollectError> {
    let src = &spec.source;
    let client = match pool.client(src.registry()).await {
        Ok(c) => c,
        Err(source) => {
            return Some(CollectError::Registry {
                image: spec.name.clone(),
                source,
            });
        }
    };
    let reads = Reads::new();
    for b in r.blobs.iter().filter(|b| !shipped.contains(&b.digest)) {
        let known = (src.name(), b.digest.clone());
        if present.lock().expect("not poisoned").contains(&known) {
            continue;
        }
        let of = format!("{}@{}", src.name(), b.digest);
        match reads
            .run("blob check", &of, || {
                client.has_blob(src.repository(), &b.digest)
            })
            .await
        {
            Ok(true) => {
                present.lock().expect("not poisoned").insert(known);
            }
            Ok(false) => {
                return Some(CollectError::Inconsistent {
                    image: spec.name.clone(),
                    problem: format!(
                        "blob {} cannot be pulled: {} does not have it (404)",
                        b.digest,
                        src.name()
                    ),
                });
            }
            Err(source) => {
                return Some(CollectError::Registry {
                    image: spec.name.clone(),
                    source,
                });
            }
        }
    }
    None
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
            catalog_source: None,
            platforms: r.kept.clone(),
        });
    }
    out
}

/// Resolves every image of `specs` and assembles the result.
pub async fn collect(specs: &[ImageSpec], pool: &Pool) -> Result<Collected, CollectError> {
    let resolved = resolve_all(specs, pool).await?;
    Ok(assemble(specs, &resolved))
}

/// Resolves one image (`name` as configured, for messages) into its manifest
/// tree; of a top index, only the children `platforms` keeps when it names any
/// (see [`manifest::kept_children`]). An index with none of them is an error:
/// an image that cannot run where the configuration says it will.
pub async fn resolve(
    name: &str,
    src: &ImageRef,
    wanted: &[String],
    pool: &Pool,
) -> Result<Resolved, CollectError> {
    let image = name.to_string();
    let registry_err = |source| CollectError::Registry {
        image: image.clone(),
        source,
    };
    let client = pool.client(src.registry()).await.map_err(registry_err)?;
    let reads = Reads::new();
    let read = |reference: String| {
        let (client, reads) = (&client, &reads);
        async move {
            let of = format!("{}@{reference}", src.name());
            reads
                .run("manifest read", &of, || {
                    client.get_manifest(src.repository(), &reference)
                })
                .await
        }
    };
    let top = read(src.manifest_reference()).await.map_err(registry_err)?;
    tracing::info!(image = %image, digest = %top.digest, media_type = %top.media_type, "resolved image");
    let mut manifests = vec![top.clone()];
    let mut platforms = HashMap::new();
    let mut blobs = Vec::new();
    let mut kept = Vec::new();
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
            let filter = if depth == 0 { wanted } else { &[] };
            let children = manifest::kept_children(parsed.children(), filter);
            if children.len() < parsed.children().len() {
                let runs_here = |c: &&Descriptor| {
                    c.platform
                        .as_ref()
                        .is_some_and(|p| manifest::platform_wanted(p, wanted))
                };
                if !children.iter().any(runs_here) {
                    return Err(CollectError::Inconsistent {
                        image: image.clone(),
                        problem: format!(
                            "it has no image for {} (it has {}); change the entry's platforms",
                            wanted.join(", "),
                            manifest::platforms_of(parsed.children())
                        ),
                    });
                }
                kept = wanted.to_vec();
            }
            if !children.is_empty() && depth + 1 >= MAX_DEPTH {
                return Err(CollectError::Inconsistent {
                    image: image.clone(),
                    problem: format!("indexes nested deeper than {MAX_DEPTH} levels"),
                });
            }
            // Asked at once: one after the other, each platform of an index
            // would cost a round trip to the registry. Each is checked as it
            // comes, so the first child in the index's order that fails is
            // the one reported, whatever failed.
            let fetched: Vec<RawManifest> = futures::stream::iter(&children)
                .map(|child| {
                    let (read, image, registry_err) = (&read, &image, &registry_err);
                    async move {
                        let c = read(child.digest.to_string()).await.map_err(registry_err)?;
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
                        Ok(c)
                    }
                })
                .buffered(PARALLEL_CHILDREN)
                .try_collect()
                .await?;
            for (child, c) in children.into_iter().zip(fetched) {
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
        kept,
        blobs,
        repository: src.name(),
    })
}
