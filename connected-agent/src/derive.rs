//! Images Airlock makes: a base image, every platform of it, with one more layer
//! on top and an edited config. The graph-data image and rebuilt operator catalogs
//! are made this way on the connected side, so they travel differentially and are
//! covered by the imageset's signature like every other image.

use std::io::Write;

use airlock_imageset::{BlobRecord, ImageRecord};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::{self, Descriptor, ManifestKind};
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RawManifest, RegistryClient};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::payload::{SmallBlobError, small_blob};
use crate::reads::Reads;

/// Why an image could not be made on a base: each names the manifest or blob of
/// the base concerned.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    /// The base's registry failed.
    #[error(transparent)]
    Registry(#[from] airlock_registry::RegistryError),
    /// The base's top manifest is not one.
    #[error(transparent)]
    Top(#[from] manifest::ManifestError),
    /// A platform's manifest is not one.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest.
        digest: Digest,
        /// Why it is not one.
        source: manifest::ManifestError,
    },
    /// A document of the base is not the JSON it should be.
    #[error("{what} {digest}: {source}")]
    Json {
        /// `index`, `manifest` or `config blob`.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Nothing of the index is a platform image.
    #[error("index {digest} has no platform image")]
    NoPlatform {
        /// The index.
        digest: Digest,
    },
    /// None of the index's images is of the platforms asked for.
    #[error("index {digest} has no image for {wanted} (it has {has})")]
    NoPlatformFor {
        /// The index.
        digest: Digest,
        /// The platforms asked for.
        wanted: String,
        /// Those it has.
        has: String,
    },
    /// An index inside an index.
    #[error("manifest {digest} is an index inside an index")]
    Nested {
        /// The inner index.
        digest: Digest,
    },
    /// A config without the layer list a new layer is added to.
    #[error("config blob {digest} has no rootfs.diff_ids")]
    NoDiffIds {
        /// The config.
        digest: Digest,
    },
    /// A manifest without layers.
    #[error("manifest {digest} has no layers")]
    NoLayers {
        /// The manifest.
        digest: Digest,
    },
    /// The caller's edit of the config refused it.
    #[error("config blob {digest}: {reason}")]
    Edit {
        /// The config.
        digest: Digest,
        /// Why.
        reason: String,
    },
    /// A config could not be read.
    #[error(transparent)]
    Blob(#[from] SmallBlobError),
}

/// A layer made here.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The gzip-compressed tar.
    pub bytes: Bytes,
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's `diff_id`).
    pub diff_id: Digest,
}

/// One entry of a layer made here.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    /// A directory.
    Dir {
        /// Modification time.
        mtime: u64,
    },
    /// A regular file.
    File {
        /// Modification time.
        mtime: u64,
        /// Contents.
        data: std::borrow::Cow<'a, [u8]>,
    },
}

impl Layer {
    /// A layer of `entries`, in the order given (paths without a trailing slash),
    /// every one owned by root with fixed modes (directories 0755, files 0644), so
    /// the same entries always give the same layer.
    pub fn of_entries<'a, 'b>(
        entries: impl IntoIterator<Item = (String, &'b Entry<'a>)>,
    ) -> std::io::Result<Layer>
    where
        'a: 'b,
    {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for (name, e) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            match e {
                Entry::Dir { mtime } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_mtime(*mtime);
                    h.set_size(0);
                    builder.append_data(&mut h, format!("{name}/"), std::io::empty())?;
                }
                Entry::File { mtime, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_mtime(*mtime);
                    h.set_size(data.len() as u64);
                    builder.append_data(&mut h, &name, &data[..])?;
                }
            }
        }
        Layer::gzip(&builder.into_inner()?)
    }

    /// Compresses `tar` without a timestamp, so the same tar gives the same layer.
    pub fn gzip(tar: &[u8]) -> std::io::Result<Layer> {
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
        gz.write_all(tar)?;
        let bytes = Bytes::from(gz.finish()?);
        Ok(Layer {
            digest: Digest::of(&bytes),
            diff_id: Digest::of(tar),
            bytes,
        })
    }
}

/// A made image, ready to join the imageset's content.
#[derive(Debug)]
pub struct Derived {
    /// Its image record (its digest is the new top manifest's).
    pub image: ImageRecord,
    /// Its manifests (the new top first, then one per platform for an index).
    pub manifests: Vec<RawManifest>,
    /// Every blob it references: the base's layers (pulled from the base's
    /// registry like any other blob) and the new configs and layer (whose bytes
    /// are given). A blob shared by platforms is listed once per platform;
    /// [`Collected::add_built`](crate::collect::Collected::add_built) keeps it once.
    pub blobs: Vec<(BlobRecord, Option<Bytes>)>,
}

/// How the config of each platform changes, besides the new layer's `diff_id`.
pub type EditConfig<'a> = &'a (dyn Fn(&mut Value) -> Result<(), String> + Sync);

/// Makes `base` (every platform of an index, or those of `platforms` when it
/// names any; attestation entries are dropped) with `layer` on top, each config
/// changed by `edit` and given a `history` entry; `record` is the made image's
/// record, its digest set here. The made index lists only what was made, so it
/// is complete at any registry.
pub async fn derive(
    pool: &Pool,
    base: &ImageRef,
    mut record: ImageRecord,
    layer: &Layer,
    history: &str,
    edit: EditConfig<'_>,
    platforms: &[String],
) -> Result<Derived, DeriveError> {
    let client = pool.client(base.registry()).await?;
    let reads = Reads::new();
    let reference = base.manifest_reference();
    let top = reads
        .run("manifest read", &base.to_string(), || {
            client.get_manifest(base.repository(), &reference)
        })
        .await?;
    let parsed = top.parse()?;
    record.repository = base.name();
    let mut out = Derived {
        image: record,
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    out.blobs.push((
        blob(&out.image, &layer.digest, layer.bytes.len() as u64),
        Some(layer.bytes.clone()),
    ));
    let on = Platform {
        client: &client,
        repository: base.repository(),
        layer,
        history,
        edit,
    };
    let new_top = match parsed.kind {
        ManifestKind::Image { .. } => on.extend(&top, &mut out).await?,
        ManifestKind::Index { manifests } => {
            let mut index: Value =
                serde_json::from_slice(&top.bytes).map_err(json("index", &top.digest))?;
            let mut children = Vec::new();
            let kept = manifest::kept_children(&manifests, platforms);
            for (i, child) in manifests.iter().enumerate() {
                // Build attestations and other artifacts in an index are not platforms.
                if child.platform.as_ref().is_none_or(|p| p.os == "unknown")
                    || !kept.iter().any(|k| k.digest == child.digest)
                {
                    continue;
                }
                let of = format!("{}@{}", base.name(), child.digest);
                let raw = reads
                    .run("manifest read", &of, || {
                        client.get_manifest(base.repository(), child.digest.as_str())
                    })
                    .await?;
                let built = on.extend(&raw, &mut out).await?;
                let mut entry = index["manifests"][i].clone();
                entry["digest"] = json!(built.digest.as_str());
                entry["size"] = json!(built.bytes.len());
                children.push(entry);
            }
            if children.is_empty() {
                return Err(match platforms {
                    [] => DeriveError::NoPlatform {
                        digest: top.digest.clone(),
                    },
                    _ => DeriveError::NoPlatformFor {
                        digest: top.digest.clone(),
                        wanted: platforms.join(", "),
                        has: manifest::platforms_of(&manifests),
                    },
                });
            }
            index["manifests"] = Value::Array(children);
            RawManifest::from_bytes(
                Bytes::from(serde_json::to_vec(&index).expect("json serialises")),
                top.media_type.clone(),
            )
        }
    };
    out.image.digest = new_top.digest.clone();
    out.manifests.insert(0, new_top);
    Ok(out)
}

/// A document of the base that is not JSON.
fn json(what: &'static str, digest: &Digest) -> impl FnOnce(serde_json::Error) -> DeriveError {
    let digest = digest.clone();
    move |source| DeriveError::Json {
        what,
        digest,
        source,
    }
}

fn blob(image: &ImageRecord, digest: &Digest, size: u64) -> BlobRecord {
    BlobRecord {
        digest: digest.clone(),
        size,
        media_type: None,
        repository: image.repository.clone(),
        parts: Vec::new(),
    }
}

/// What every platform gets.
struct Platform<'a> {
    client: &'a RegistryClient,
    repository: &'a str,
    layer: &'a Layer,
    history: &'a str,
    edit: EditConfig<'a>,
}

impl Platform<'_> {
    /// One platform's image with the layer on top and its config edited; adds the
    /// new manifest and blobs to `out` and returns the manifest.
    async fn extend(
        &self,
        base: &RawManifest,
        out: &mut Derived,
    ) -> Result<RawManifest, DeriveError> {
        let parsed = base.parse().map_err(|source| DeriveError::Manifest {
            digest: base.digest.clone(),
            source,
        })?;
        let ManifestKind::Image { config, layers } = &parsed.kind else {
            return Err(DeriveError::Nested {
                digest: base.digest.clone(),
            });
        };
        let config_bytes = small_blob(self.client, self.repository, config, "config blob").await?;
        let mut image_config: Value =
            serde_json::from_slice(&config_bytes).map_err(json("config blob", &config.digest))?;
        let diff_ids = image_config
            .pointer_mut("/rootfs/diff_ids")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| DeriveError::NoDiffIds {
                digest: config.digest.clone(),
            })?;
        diff_ids.push(json!(self.layer.diff_id.as_str()));
        (self.edit)(&mut image_config).map_err(|reason| DeriveError::Edit {
            digest: config.digest.clone(),
            reason,
        })?;
        if let Some(history) = image_config
            .get_mut("history")
            .and_then(Value::as_array_mut)
        {
            history.push(json!({ "created_by": self.history }));
        }
        let new_config = Bytes::from(serde_json::to_vec(&image_config).expect("json serialises"));
        let new_config_digest = Digest::of(&new_config);

        let mut doc: Value =
            serde_json::from_slice(&base.bytes).map_err(json("manifest", &base.digest))?;
        doc["config"]["digest"] = json!(new_config_digest.as_str());
        doc["config"]["size"] = json!(new_config.len());
        let layer_type = if parsed.media_type == manifest::DOCKER_MANIFEST {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        doc["layers"]
            .as_array_mut()
            .ok_or_else(|| DeriveError::NoLayers {
                digest: base.digest.clone(),
            })?
            .push(json!({
                "mediaType": layer_type,
                "digest": self.layer.digest.as_str(),
                "size": self.layer.bytes.len(),
            }));
        let raw = RawManifest::from_bytes(
            Bytes::from(serde_json::to_vec(&doc).expect("json serialises")),
            base.media_type.clone(),
        );
        out.blobs.push((
            blob(&out.image, &new_config_digest, new_config.len() as u64),
            Some(new_config),
        ));
        out.blobs.extend(
            layers
                .iter()
                .map(|d: &Descriptor| (blob(&out.image, &d.digest, d.size), None)),
        );
        out.manifests.push(raw.clone());
        Ok(raw)
    }
}
