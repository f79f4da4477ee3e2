//! What `mirror.operators` adds to an imageset: the bundle and related images of
//! the selection, and each catalog, rebuilt with the filtered catalog (or copied
//! whole for `full: true` without packages, as oc-mirror v2 does).

use std::collections::{BTreeSet, HashMap};

use airlock_config::schema::Operator;
use airlock_config::{ImageSpec, platform_filter};
use airlock_imageset::{ImageKind, ImageRecord};
use airlock_oci::manifest::widen;
use airlock_oci::reference::ImageRef;
use airlock_registry::Pool;

use super::image::{self, CatalogError};
use super::rebuild;
use crate::contents::Owner;
use crate::derive::{self, Derived};

/// The catalogs' part of an imageset.
#[derive(Debug, Default)]
pub struct CatalogContent {
    /// Bundle and related images (kind `operator`), each once, and catalogs copied
    /// whole (kind `catalog`).
    pub images: Vec<ImageSpec>,
    /// Catalogs rebuilt with their filtered catalog.
    pub rebuilt: Vec<Derived>,
    /// The source catalog of each rebuilt one, by digest: its layers ship
    /// inside the rebuilt image, so signature requirements apply to it.
    pub bases: Vec<ImageSpec>,
    /// For each bundle and related image (by pull spec), every selected bundle
    /// that names it: what a delete of a bundle may remove, and what it must keep.
    pub owners: HashMap<String, Vec<Owner>>,
}

/// Reads, filters and rebuilds every catalog of `operators`.
pub async fn gather(pool: &Pool, operators: &[Operator]) -> Result<CatalogContent, CatalogError> {
    let mut out = CatalogContent::default();
    // Where each bundle and related image is in `out.images`, by pull spec.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, op) in operators.iter().enumerate() {
        let invalid = |problem: String| CatalogError::Invalid {
            catalog: op.catalog.clone(),
            problem,
        };
        let (reference, read, selection) = image::read_selected(pool, op, i).await?;
        let catalog = image::recorded_name(op);
        for (package, sp) in &selection.packages {
            let p = &read.catalog.packages[package];
            let bundles: BTreeSet<&String> = sp.channels.values().flatten().collect();
            for b in bundles {
                let bundle = &p.bundles[b];
                let owner = Owner::Bundle {
                    catalog: catalog.clone(),
                    package: package.clone(),
                    bundle: b.clone(),
                    version: bundle.version.to_string(),
                    channels: sp
                        .channels
                        .iter()
                        .filter(|(_, bs)| bs.contains(b))
                        .map(|(c, _)| c.clone())
                        .collect(),
                };
                for pullspec in std::iter::once(&bundle.image).chain(&bundle.related_images) {
                    if pullspec.is_empty() {
                        continue;
                    }
                    let owners = out.owners.entry(pullspec.clone()).or_default();
                    if !owners.contains(&owner) {
                        owners.push(owner.clone());
                    }
                    let platforms = platform_filter(&op.platforms);
                    if let Some(&at) = seen.get(pullspec) {
                        // Named by two catalogs: it keeps what either asks for.
                        widen(&mut out.images[at].platforms, &platforms);
                        continue;
                    }
                    seen.insert(pullspec.clone(), out.images.len());
                    let source: ImageRef = pullspec.parse().map_err(|e| {
                        invalid(format!(
                            "bundle {b} of package {package} names image {pullspec:?}: {e}"
                        ))
                    })?;
                    out.images.push(ImageSpec {
                        source: source.with_default_tag(),
                        name: pullspec.clone(),
                        target_repo: None,
                        target_tag: None,
                        kind: ImageKind::Operator,
                        subject: None,
                        platforms,
                    });
                }
            }
        }
        let tag = op
            .target_tag
            .clone()
            .or_else(|| reference.tag().map(str::to_string));
        if op.full && op.packages.is_empty() {
            // The whole catalog: the image as it is, digest kept.
            out.images.push(ImageSpec {
                source: reference.clone(),
                name: catalog.clone(),
                target_repo: op.target_catalog.clone(),
                target_tag: op.target_tag.clone(),
                kind: ImageKind::Catalog,
                subject: None,
                platforms: platform_filter(&op.platforms),
            });
            continue;
        }
        let complete = read
            .complete(&selection)
            .map_err(|e| invalid(format!("{}/{e}", read.root)))?;
        let files = rebuild::files(&complete, &selection);
        let layer = rebuild::layer(&read.root, &files, read.cache_dir.as_deref())
            .map_err(|e| invalid(format!("writing the filtered catalog: {e}")))?;
        let record = ImageRecord {
            source: catalog.clone(),
            repository: reference.name(),
            tag,
            by_digest: false,
            digest: layer.digest.clone(),
            target_repository: op.target_catalog.clone(),
            kind: ImageKind::Catalog,
            subject: None,
            catalog_source: None,
            platforms: Vec::new(),
        };
        let base = reference.at_digest(read.digest.clone());
        out.bases.push(ImageSpec {
            source: base.clone(),
            name: catalog.clone(),
            target_repo: None,
            target_tag: None,
            kind: ImageKind::Catalog,
            subject: None,
            platforms: platform_filter(&op.platforms),
        });
        let built = derive::derive(
            pool,
            &base,
            record,
            &layer,
            &format!("airlock: filtered catalog in {}", read.root),
            &rebuild::drop_cache_flags,
            &platform_filter(&op.platforms),
        )
        .await
        .map_err(|e| invalid(format!("rebuilding: {e}")))?;
        tracing::info!(catalog = %op.catalog, packages = selection.packages.len(), digest = %built.image.digest, "catalog rebuilt");
        out.rebuilt.push(built);
    }
    Ok(out)
}
