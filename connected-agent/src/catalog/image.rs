//! Reading the file-based catalog out of a catalog image, and listing what a
//! configuration selects from it (`list bundles`).
//!
//! The image's config label `operators.operatorframework.io.index.configs.v1`
//! names the catalog's root (`/configs` in Red Hat's images, and the default when
//! the label is absent). The directory is read from the layers top first, with
//! whiteouts honoured ([`crate::layers`]). Catalog images are multi-platform
//! indexes whose platforms hold the same catalog; the linux/amd64 child is read
//! (else the first).

use std::path::PathBuf;

use airlock_config::schema::Operator;
use airlock_oci::digest::Digest;
use airlock_oci::manifest::ManifestKind;
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RegistryError, layout};
use serde::{Deserialize, Serialize};

use super::fbc::{Builder, Catalog, FbcError};
use super::filter::{self, FilterError, Selection};
use crate::layers::{self, LayerError, Limits, Overlay, read_layer};
use crate::payload::small_blob;

/// The label naming the catalog's root directory.
pub const CONFIGS_LABEL: &str = "operators.operatorframework.io.index.configs.v1";
/// The label of the older SQLite catalogs.
pub const DATABASE_LABEL: &str = "operators.operatorframework.io.index.database.v1";

/// Red Hat's operator index holds a few hundred MiB of FBC; a file over 256 MiB
/// or a catalog over 4 GiB is refused rather than held.
const LIMITS: Limits = Limits {
    file: super::fbc::MAX_FILE,
    total: 4 << 30,
};

/// Why a catalog could not be read or filtered.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The registry failed.
    #[error("catalog {catalog}: {source}")]
    Registry {
        /// The catalog image.
        catalog: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The image is not a file-based catalog, or its catalog is malformed.
    #[error("catalog {catalog}: {problem}")]
    Invalid {
        /// The catalog image.
        catalog: String,
        /// What is wrong.
        problem: String,
    },
    /// A manifest or layer of the image is not readable.
    #[error("catalog {catalog}: {source}")]
    Layer {
        /// The catalog image.
        catalog: String,
        /// What is wrong, and where.
        source: LayerError,
    },
    /// The configuration asks for something the catalog does not have.
    #[error("catalog {catalog}: {source}")]
    Filter {
        /// The catalog image.
        catalog: String,
        /// The field and the problem.
        source: FilterError,
    },
}

/// A catalog image, read.
#[derive(Debug)]
pub struct CatalogImage {
    /// The top manifest's digest.
    pub digest: Digest,
    /// The catalog root inside the image (`/configs`).
    pub root: String,
    /// The catalog.
    pub catalog: Catalog,
    /// The serve cache directory its command names (`--cache-dir`), if any.
    pub cache_dir: Option<String>,
    /// The catalog's files, by path under the root, to read selected packages
    /// again in full.
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl CatalogImage {
    /// The packages of `selection` with everything their blobs hold (the catalog
    /// was read light): their files, read again, whole.
    pub fn complete(&self, selection: &super::filter::Selection) -> Result<Catalog, FbcError> {
        let files: std::collections::BTreeSet<&String> = selection
            .packages
            .keys()
            .flat_map(|p| &self.catalog.packages[p].files)
            .collect();
        let mut builder = Builder::default();
        for f in files {
            builder.add_file(f, &self.files[f])?;
        }
        builder.finish()
    }
}

/// Reads the catalog of `image`.
pub async fn read(pool: &Pool, image: &ImageRef) -> Result<CatalogImage, CatalogError> {
    let name = image.to_string();
    let reg = |source| CatalogError::Registry {
        catalog: name.clone(),
        source,
    };
    let invalid = |problem: String| CatalogError::Invalid {
        catalog: name.clone(),
        problem,
    };
    let layer_err = |e| match e {
        LayerError::Registry(source) => reg(source),
        source => CatalogError::Layer {
            catalog: name.clone(),
            source,
        },
    };
    let opened = layers::open(pool, image).await.map_err(layer_err)?;
    let client = &opened.client;
    let manifest = match &opened.manifest.kind {
        ManifestKind::Image { .. } => opened.manifest.clone(),
        ManifestKind::Index { manifests } => {
            let child = manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .or(manifests.first())
                .ok_or_else(|| invalid("its index lists no manifests".into()))?;
            opened
                .child(image, &child.digest)
                .await
                .map_err(layer_err)?
        }
    };
    let ManifestKind::Image { config, layers } = &manifest.kind else {
        return Err(invalid("an index inside its index".into()));
    };
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default, rename = "Labels")]
        labels: Option<std::collections::BTreeMap<String, String>>,
    }
    let bytes = small_blob(client, image.repository(), config, "config blob")
        .await
        .map_err(|e| invalid(e.to_string()))?;
    let whole: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("config blob {}: {e}", config.digest)))?;
    let cache_dir = super::rebuild::cache_dir(&whole);
    let c: Config = serde_json::from_value(whole)
        .map_err(|e| invalid(format!("config blob {}: {e}", config.digest)))?;
    let labels = c.config.and_then(|i| i.labels).unwrap_or_default();
    let root = match (labels.get(CONFIGS_LABEL), labels.get(DATABASE_LABEL)) {
        (Some(root), _) => root.clone(),
        (None, Some(db)) => {
            return Err(invalid(format!(
                "it is a SQLite catalog (label {DATABASE_LABEL}={db}), which is not supported: use a file-based catalog image (label {CONFIGS_LABEL}; Red Hat's indexes are file-based from OpenShift 4.11)"
            )));
        }
        (None, None) => "/configs".to_string(),
    };
    let mut overlay = Overlay::new(&root, LIMITS);
    for layer in layers.iter().rev() {
        overlay = read_layer(client, image.repository(), &layer.digest, overlay)
            .await
            .map_err(layer_err)?;
        if overlay.is_sealed() {
            break;
        }
    }
    let files = overlay.into_files();
    if files.is_empty() {
        return Err(invalid(format!(
            "no files under {root}: it is not a file-based catalog image"
        )));
    }
    let mut builder = Builder::light();
    let fbc = |e: FbcError| invalid(format!("{root}/{e}"));
    builder.add_tree(&files).map_err(fbc)?;
    let catalog = builder.finish().map_err(fbc)?;
    tracing::info!(catalog = %name, digest = %opened.digest, root = %root, files = files.len(), packages = catalog.packages.len(), "catalog read");
    Ok(CatalogImage {
        digest: opened.digest,
        root,
        catalog,
        cache_dir,
        files,
    })
}

/// One selected bundle in one channel, as `list bundles -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    /// The catalog as configured.
    pub catalog: String,
    /// Package.
    pub package: String,
    /// Channel.
    pub channel: String,
    /// The `olm.bundle` name.
    pub bundle: String,
    /// Its version.
    pub version: String,
    /// Bundle image pull spec.
    pub image: String,
    /// Its related images.
    pub related_images: Vec<String>,
}

/// Reads the catalog of `op` (the configuration's `mirror.operators[index]`) and
/// applies its filter: the catalog reference (`latest` when it names neither tag
/// nor digest), the catalog, and what it selects.
pub async fn read_selected(
    pool: &Pool,
    op: &Operator,
    index: usize,
) -> Result<(ImageRef, CatalogImage, Selection), CatalogError> {
    let reference = open_catalog(pool, op, index)?;
    let image = read(pool, &reference).await?;
    let selection =
        filter::select(&image.catalog, op, index).map_err(|source| CatalogError::Filter {
            catalog: op.catalog.clone(),
            source,
        })?;
    Ok((reference, image, selection))
}

/// The image `op.catalog` names; a catalog in a local OCI layout
/// ([`oci_layout`]) is registered with the pool, which then reads it.
pub fn open_catalog(pool: &Pool, op: &Operator, index: usize) -> Result<ImageRef, CatalogError> {
    let invalid = |problem: String| CatalogError::Invalid {
        catalog: op.catalog.clone(),
        problem: format!("mirror.operators[{index}].catalog: {problem}"),
    };
    match oci_layout(op) {
        None => Ok(op
            .catalog
            .parse::<ImageRef>()
            .map_err(|e| invalid(e.to_string()))?
            .with_default_tag()),
        Some(layout) => {
            let (dir, reference) = layout.map_err(|e| invalid(e.to_string()))?;
            pool.layouts()
                .add(&reference, &dir)
                .map_err(|e| invalid(e.to_string()))?;
            Ok(reference)
        }
    }
}

/// For a catalog in a local OCI layout: its directory and the reference it is
/// read and recorded as (see [`layout::catalog`]); `None` for one in a registry.
pub fn oci_layout(op: &Operator) -> Option<Result<(PathBuf, ImageRef), layout::LayoutError>> {
    layout::catalog(
        &op.catalog,
        op.target_catalog.as_deref(),
        op.target_tag.as_deref(),
    )
}

/// How the imageset names the catalog of `op`: as configured, or, for a local
/// layout, by the reference it is read as (no local path crosses the gap).
pub fn recorded_name(op: &Operator) -> String {
    match oci_layout(op) {
        Some(Ok((_, reference))) => reference.to_string(),
        _ => op.catalog.clone(),
    }
}

/// What each `mirror.operators[]` entry selects, catalog by catalog.
pub async fn list(pool: &Pool, operators: &[Operator]) -> Result<Vec<Listed>, CatalogError> {
    let mut out = Vec::new();
    for (i, op) in operators.iter().enumerate() {
        let (_, image, selection) = read_selected(pool, op, i).await?;
        for (package, sp) in &selection.packages {
            let p = &image.catalog.packages[package];
            for (channel, bundles) in &sp.channels {
                for b in bundles {
                    let bundle = &p.bundles[b];
                    out.push(Listed {
                        catalog: op.catalog.clone(),
                        package: package.clone(),
                        channel: channel.clone(),
                        bundle: b.clone(),
                        version: bundle.version.to_string(),
                        image: bundle.image.clone(),
                        related_images: bundle.related_images.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}
