//! Reading an OpenShift release payload: the images a release is made of.
//!
//! A release image carries `release-manifests/image-references` (an ImageStream whose
//! tags name every component image) and `release-manifests/release-metadata` (its
//! version) as plain files in its filesystem. The files are found by reading the
//! layers from the top down: the first layer that holds a file, or a whiteout that
//! hides it, decides; a layer that makes `release-manifests/` opaque (or removes it)
//! hides everything below. Real payloads keep these files in the top layer, so the
//! large base layers are never downloaded twice. Every layer read is read to its end,
//! so the registry client checks its digest: a forged layer is an error, not a
//! silently different list of images.
//!
//! With `kubeVirtContainer`, a third file is read: the installer's RHCOS
//! boot-image stream `release-manifests/0000_50_installer_coreos-bootimages.yaml`,
//! a ConfigMap whose `data.stream` JSON names, per architecture, the KubeVirt
//! container disk image (`architectures.<arch>.images.kubevirt.digest-ref`).
//!
//! A multi-architecture payload is a manifest list of complete release images; every
//! child is read and their component lists are merged (they name the same component
//! manifest lists in real payloads).

use std::collections::{BTreeMap, HashMap};

use airlock_oci::digest::Digest;
use airlock_oci::manifest::{self, Manifest, ManifestKind, is_index};
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RegistryError};
use futures::TryStreamExt;
use serde::Deserialize;

use crate::layers::{self, LayerError, Limits, Overlay, read_layer};
use crate::reads::Reads;

/// Where the files live inside the image.
const DIR: &str = "release-manifests";
const REFERENCES: &str = "image-references";
const METADATA: &str = "release-metadata";
const BOOTIMAGES: &str = "0000_50_installer_coreos-bootimages.yaml";
/// Either file larger than this is refused (the real image-references is ~120 KiB).
const MAX_FILE: u64 = 16 << 20;
const LIMITS: Limits = Limits {
    file: MAX_FILE,
    total: 2 * MAX_FILE,
};

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The registry failed.
    #[error("release {image}: {source}")]
    Registry {
        /// The release image.
        image: String,
        /// The registry error.
        source: RegistryError,
    },
    /// The image is not a release payload, or its files are malformed.
    #[error("release {image}: {problem}")]
    Invalid {
        /// The release image.
        image: String,
        /// What is wrong.
        problem: String,
    },
    /// A manifest or layer of the image is not readable.
    #[error("release {image}: {source}")]
    Layer {
        /// The release image.
        image: String,
        /// What is wrong, and where.
        source: crate::layers::LayerError,
    },
}

/// `release-manifests/release-metadata`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    /// Must be `cincinnati-metadata-v0`.
    pub kind: String,
    /// The release version.
    pub version: String,
    /// Versions that may update to this one.
    #[serde(default)]
    pub previous: Vec<String>,
    /// Open string map.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ImageStream {
    kind: String,
    spec: ImageStreamSpec,
}

#[derive(Deserialize)]
struct ImageStreamSpec {
    #[serde(default)]
    tags: Vec<ImageStreamTag>,
}

#[derive(Deserialize)]
struct ImageStreamTag {
    name: String,
    from: ObjectReference,
}

#[derive(Deserialize)]
struct ObjectReference {
    kind: String,
    name: String,
}

/// One component image of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Its tag name in the ImageStream (`cli`, `installer`, ...), unique in a release.
    pub name: String,
    /// Its pull spec (by digest in real payloads).
    pub image: ImageRef,
}

/// What a release payload says about itself.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The release image's top manifest.
    pub digest: Digest,
    /// The release image, by that digest.
    pub image: ImageRef,
    /// `multi` for a manifest list, else the image config's architecture.
    pub arch: String,
    /// From `release-metadata`.
    pub metadata: Metadata,
    /// Every component, sorted by name.
    pub components: Vec<Component>,
    /// When asked for: the KubeVirt container disk image of each architecture
    /// the boot-image stream names one for, by the stream's key (`x86_64`, `s390x`).
    pub kubevirt: BTreeMap<String, ImageRef>,
}

/// Reads the payload of `image`; with `kubevirt`, also the KubeVirt container
/// images its boot-image stream names (an error if it names none). Of a
/// manifest list, only the release images of `platforms` are read when it
/// names any (`linux/amd64`).
pub async fn read(
    pool: &Pool,
    image: &ImageRef,
    kubevirt: bool,
    platforms: &[String],
) -> Result<Payload, PayloadError> {
    let name = image.to_string();
    let reg = |source| PayloadError::Registry {
        image: name.clone(),
        source,
    };
    let invalid = |problem: String| PayloadError::Invalid {
        image: name.clone(),
        problem,
    };
    let layer_err = |e| match e {
        LayerError::Registry(source) => reg(source),
        source => PayloadError::Layer {
            image: name.clone(),
            source,
        },
    };
    let opened = layers::open(pool, image).await.map_err(layer_err)?;
    let client = &opened.client;
    let parsed = opened.manifest.clone();
    let is_list = is_index(&parsed.media_type);
    // The release images to read: the children of a manifest list, or the top.
    let mut images: Vec<(Digest, Manifest)> = Vec::new();
    if is_list {
        for child in manifest::kept_children(parsed.children(), platforms) {
            let p = opened
                .child(image, &child.digest)
                .await
                .map_err(layer_err)?;
            images.push((child.digest.clone(), p));
        }
        if images.is_empty() && !platforms.is_empty() {
            return Err(invalid(format!(
                "its manifest list has no release image for {} (it has {}); change mirror.platform.platforms",
                platforms.join(", "),
                manifest::platforms_of(parsed.children())
            )));
        }
        if images.is_empty() {
            return Err(invalid("its manifest list is empty".into()));
        }
    } else {
        images.push((opened.digest.clone(), parsed));
    }
    let arch = if is_list {
        "multi".to_string()
    } else {
        config_arch(client, image, &images[0].1)
            .await
            .map_err(&invalid)?
    };
    if !is_list
        && !platforms.is_empty()
        && !platforms
            .iter()
            .any(|p| p.split_once('/').is_some_and(|(_, a)| a == arch))
    {
        return Err(invalid(format!(
            "it is a release for {arch} only, and mirror.platform.platforms asks for {}; name the release's multi-architecture image (its manifest list), or change platforms",
            platforms.join(", ")
        )));
    }
    let mut metadata: Option<Metadata> = None;
    let mut components: BTreeMap<String, ImageRef> = BTreeMap::new();
    let mut kubevirt_images: BTreeMap<String, ImageRef> = BTreeMap::new();
    for (digest, parsed) in &images {
        let ManifestKind::Image { layers, .. } = &parsed.kind else {
            return Err(invalid(format!(
                "manifest {} is an index inside the release's manifest list",
                digest
            )));
        };
        let wanted: &[&str] = if kubevirt {
            &[REFERENCES, METADATA, BOOTIMAGES]
        } else {
            &[REFERENCES, METADATA]
        };
        let mut found = Overlay::new(DIR, LIMITS).only(wanted);
        for layer in layers.iter().rev() {
            found = read_layer(client, image.repository(), &layer.digest, found)
                .await
                .map_err(layer_err)?;
            if found.is_sealed() || wanted.iter().all(|w| found.decided(w)) {
                break;
            }
        }
        if kubevirt {
            let stream = found.get(BOOTIMAGES).ok_or_else(|| {
                invalid(format!(
                    "kubeVirtContainer: image {digest} has no {DIR}/{BOOTIMAGES}, where a release names its KubeVirt container image; remove mirror.platform.kubeVirtContainer to mirror releases without it"
                ))
            })?;
            let named = parse_kubevirt(stream)
                .map_err(|e| invalid(format!("kubeVirtContainer: {DIR}/{BOOTIMAGES}: {e}")))?;
            for (arch, r) in named {
                if let Some(existing) = disagreeing(&mut kubevirt_images, &arch, &r) {
                    return Err(invalid(format!(
                        "kubeVirtContainer: the images of its manifest list name different KubeVirt images for {arch} ({existing} and {r})"
                    )));
                }
            }
        }
        let refs = found.get(REFERENCES).ok_or_else(|| {
            invalid(format!(
                "image {} has no {DIR}/{REFERENCES}: it is not an OpenShift release payload",
                digest
            ))
        })?;
        let meta = found.get(METADATA).ok_or_else(|| {
            invalid(format!(
                "image {} has no {DIR}/{METADATA}: it is not an OpenShift release payload",
                digest
            ))
        })?;
        let meta: Metadata =
            serde_json::from_slice(meta).map_err(|e| invalid(format!("{DIR}/{METADATA}: {e}")))?;
        if meta.kind != "cincinnati-metadata-v0" {
            return Err(invalid(format!(
                "{DIR}/{METADATA}: kind is {:?}, expected cincinnati-metadata-v0",
                meta.kind
            )));
        }
        if let Some(first) = &metadata
            && first.version != meta.version
        {
            return Err(invalid(format!(
                "the images of its manifest list disagree on the version ({} and {})",
                first.version, meta.version
            )));
        }
        for c in parse_references(refs).map_err(|e| invalid(format!("{DIR}/{REFERENCES}: {e}")))? {
            if let Some(existing) = disagreeing(&mut components, &c.name, &c.image) {
                return Err(invalid(format!(
                    "component {} is {existing} in one image of the manifest list and {} in another",
                    c.name, c.image
                )));
            }
        }
        metadata = Some(meta);
    }
    Ok(Payload {
        image: image.at_digest(opened.digest.clone()),
        digest: opened.digest,
        arch,
        metadata: metadata.expect("at least one image was read"),
        components: components
            .into_iter()
            .map(|(name, image)| Component { name, image })
            .collect(),
        kubevirt: kubevirt_images,
    })
}

/// Records `image` under `name`, on which the images of a manifest list must
/// agree; returns the other image an earlier one gave it, when they differ.
fn disagreeing(
    map: &mut BTreeMap<String, ImageRef>,
    name: &str,
    image: &ImageRef,
) -> Option<ImageRef> {
    match map.get(name) {
        Some(existing) if existing != image => Some(existing.clone()),
        _ => {
            map.insert(name.to_string(), image.clone());
            None
        }
    }
}

/// The `architecture` of a single-image release's config blob.
async fn config_arch(
    client: &airlock_registry::RegistryClient,
    image: &ImageRef,
    manifest: &airlock_oci::manifest::Manifest,
) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Config {
        architecture: String,
    }
    let ManifestKind::Image { config, .. } = &manifest.kind else {
        unreachable!("called for image manifests")
    };
    let bytes = small_blob(client, image.repository(), config, "config blob")
        .await
        .map_err(|e| e.to_string())?;
    let c: Config = serde_json::from_slice(&bytes)
        .map_err(|e| format!("config blob {}: {e}", config.digest))?;
    Ok(c.architecture)
}

/// Why a small blob (a config, a signature payload) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SmallBlobError {
    /// Its descriptor declares more than is held in memory.
    #[error("{what} {digest} is {size} bytes; more than {MAX_FILE} is refused")]
    TooLarge {
        /// What it is (`config blob`).
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The size declared.
        size: u64,
    },
    /// The registry would not serve it.
    #[error(transparent)]
    Open(RegistryError),
    /// The registry failed part way.
    #[error("{what} {digest}: {source}")]
    Read {
        /// What it is.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// The registry's error.
        source: RegistryError,
    },
    /// More bytes came than the descriptor declares.
    #[error("{what} {digest} is larger than its descriptor says")]
    Larger {
        /// What it is.
        what: &'static str,
        /// Its digest.
        digest: Digest,
    },
    /// The bytes are not the digest.
    #[error("{what} {digest} does not match its digest (the registry served other bytes)")]
    Digest {
        /// What it is.
        what: &'static str,
        /// Its digest.
        digest: Digest,
    },
}

/// A blob small enough to hold in memory (a config), checked against its
/// descriptor's size and digest; `what` names it in errors.
pub(crate) async fn small_blob(
    client: &airlock_registry::RegistryClient,
    repository: &str,
    blob: &airlock_oci::manifest::Descriptor,
    what: &'static str,
) -> Result<Vec<u8>, SmallBlobError> {
    let digest = || blob.digest.clone();
    if blob.size > MAX_FILE {
        return Err(SmallBlobError::TooLarge {
            what,
            digest: digest(),
            size: blob.size,
        });
    }
    let of = format!("{repository}@{}", blob.digest);
    let mut stream = Reads::new()
        .run(what, &of, || client.blob_stream(repository, &blob.digest))
        .await
        .map_err(SmallBlobError::Open)?;
    let mut bytes = Vec::new();
    while let Some(b) = stream
        .try_next()
        .await
        .map_err(|source| SmallBlobError::Read {
            what,
            digest: digest(),
            source,
        })?
    {
        if (bytes.len() + b.len()) as u64 > blob.size {
            return Err(SmallBlobError::Larger {
                what,
                digest: digest(),
            });
        }
        bytes.extend_from_slice(&b);
    }
    if Digest::of(&bytes) != blob.digest {
        return Err(SmallBlobError::Digest {
            what,
            digest: digest(),
        });
    }
    Ok(bytes)
}

/// Parses the boot-image ConfigMap: the KubeVirt image of each architecture that
/// has one, which must be named by digest (it is what clusters boot from).
pub fn parse_kubevirt(bytes: &[u8]) -> Result<BTreeMap<String, ImageRef>, String> {
    #[derive(Deserialize)]
    struct ConfigMap {
        kind: String,
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        stream: String,
    }
    #[derive(Deserialize)]
    struct Stream {
        architectures: BTreeMap<String, Arch>,
    }
    #[derive(Deserialize)]
    struct Arch {
        #[serde(default)]
        images: Images,
    }
    #[derive(Deserialize, Default)]
    struct Images {
        kubevirt: Option<KubeVirt>,
    }
    #[derive(Deserialize)]
    struct KubeVirt {
        #[serde(rename = "digest-ref", default)]
        digest_ref: String,
    }
    let map: ConfigMap = serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())?;
    if map.kind != "ConfigMap" {
        return Err(format!("kind is {:?}, expected ConfigMap", map.kind));
    }
    let stream: Stream =
        serde_json::from_str(&map.data.stream).map_err(|e| format!("data.stream: {e}"))?;
    let mut out = BTreeMap::new();
    for (arch, a) in stream.architectures {
        let Some(k) = a.images.kubevirt.filter(|k| !k.digest_ref.is_empty()) else {
            continue;
        };
        let at = format!("data.stream: architectures.{arch}.images.kubevirt.digest-ref");
        let image: ImageRef = k
            .digest_ref
            .parse()
            .map_err(|e| format!("{at}: {:?} is not an image reference: {e}", k.digest_ref))?;
        if image.digest().is_none() {
            return Err(format!("{at}: {:?} is not named by digest", k.digest_ref));
        }
        out.insert(arch, image);
    }
    if out.is_empty() {
        return Err(
            "data.stream names no KubeVirt image (images.kubevirt.digest-ref) for any architecture"
                .into(),
        );
    }
    Ok(out)
}

/// Parses `image-references`: every tag's `from` must be a `DockerImage` pull spec.
pub fn parse_references(bytes: &[u8]) -> Result<Vec<Component>, String> {
    let stream: ImageStream = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if stream.kind != "ImageStream" {
        return Err(format!("kind is {:?}, expected ImageStream", stream.kind));
    }
    let mut seen = HashMap::new();
    let mut out = Vec::with_capacity(stream.spec.tags.len());
    for (i, t) in stream.spec.tags.into_iter().enumerate() {
        if t.from.kind != "DockerImage" {
            return Err(format!(
                "spec.tags[{i}] ({}): from.kind is {:?}, expected DockerImage",
                t.name, t.from.kind
            ));
        }
        if t.name.is_empty() || !airlock_oci::reference::valid_tag(&t.name) {
            return Err(format!(
                "spec.tags[{i}].name {:?} cannot be part of a tag",
                t.name
            ));
        }
        if seen.insert(t.name.clone(), i).is_some() {
            return Err(format!("spec.tags[{i}].name {:?} appears twice", t.name));
        }
        let image: ImageRef = t.from.name.parse().map_err(|e| {
            format!(
                "spec.tags[{i}] ({}): from.name {:?} is not an image reference: {e}",
                t.name, t.from.name
            )
        })?;
        out.push(Component {
            name: t.name,
            image,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/real/oc-mirror/release")
                .join(path),
        )
        .unwrap()
    }

    #[test]
    fn real_image_references_list_every_component_by_digest() {
        let refs = fixture("ocp-release-4.12.0-x86_64/release-manifests/image-references");
        let c = parse_references(&refs).unwrap();
        assert_eq!(c.len(), 183);
        assert!(c.iter().all(|c| c.image.digest().is_some()
            && c.image.name() == "quay.io/openshift-release-dev/ocp-v4.0-art-dev"));
        let meta: Metadata = serde_json::from_slice(&fixture(
            "ocp-release-4.12.0-x86_64/release-manifests/release-metadata",
        ))
        .unwrap();
        assert_eq!(
            (meta.kind.as_str(), meta.version.as_str()),
            ("cincinnati-metadata-v0", "4.12.0")
        );
        // oc-mirror's own test payload names its component by tag.
        let c = parse_references(&fixture(
            "integration-test-release/release-manifests/image-references",
        ))
        .unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].image.digest().is_none() && c[0].image.tag().is_some());
    }

    #[test]
    fn hostile_payload_files_are_refused() {
        let e = parse_references(br#"{"kind":"ImageStream","spec":{"tags":[{"name":"../x","from":{"kind":"DockerImage","name":"a/b:c"}}]}}"#).unwrap_err();
        assert!(e.contains("spec.tags[0].name"), "{e}");
        let e = parse_references(br#"{"kind":"ImageStream","spec":{"tags":[{"name":"a","from":{"kind":"DockerImage","name":"a/b:c"}},{"name":"a","from":{"kind":"DockerImage","name":"a/b:d"}}]}}"#).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
        let e = parse_references(br#"{"kind":"ImageStream","spec":{"tags":[{"name":"a","from":{"kind":"ImageStreamTag","name":"x"}}]}}"#).unwrap_err();
        assert!(e.contains("expected DockerImage"), "{e}");
    }

    /// The ConfigMap as the installer ships it in a release (abridged: a real
    /// stream lists every cloud's images and artifacts for four architectures;
    /// aarch64 and ppc64le carry no KubeVirt image).
    const BOOTIMAGES_415: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  annotations:
    include.release.openshift.io/ibm-cloud-managed: "true"
    include.release.openshift.io/self-managed-high-availability: "true"
    include.release.openshift.io/single-node-developer: "true"
  name: coreos-bootimages
  namespace: openshift-machine-config-operator
data:
  releaseVersion: 0.0.1-snapshot
  stream: |
    {
      "stream": "rhcos-4.15",
      "metadata": {"last-modified": "2023-11-28T19:16:20Z", "generator": "plume cosa2stream 8d8e5e7"},
      "architectures": {
        "aarch64": {"artifacts": {"metal": {"release": "415.92.202311241643-0", "formats": {}}},
                    "images": {"aws": {"regions": {"us-east-1": {"release": "415.92.202311241643-0", "image": "ami-0b8e8e0b1fd0b5d39"}}}}},
        "ppc64le": {"artifacts": {}, "images": {}},
        "s390x": {"artifacts": {}, "images": {"kubevirt": {"release": "415.92.202311241643-0",
                   "image": "quay.io/openshift-release-dev/ocp-v4.0-art-dev",
                   "digest-ref": "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:5d2a5e3f0f3e6c1c88b1e1a2b1be8f71e4d8e2c38c2bc2f4fa2a96f8b3c8a0e1"}}},
        "x86_64": {"artifacts": {}, "images": {
                   "gcp": {"release": "415-92-202311241643-0", "project": "rhcos-cloud", "name": "rhcos-415-92-202311241643-0-gcp-x86-64"},
                   "kubevirt": {"release": "415.92.202311241643-0",
                   "image": "quay.io/openshift-release-dev/ocp-v4.0-art-dev",
                   "digest-ref": "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:8a8b2bd3d4ec0e0d8a2b0a8b2d3c7f0f1e1c4bb2c27b6c1c5d5fb1e2c0f5e3a7"}}}
      }
    }
"#;

    #[test]
    fn the_boot_image_stream_names_a_kubevirt_image_per_architecture_that_has_one() {
        let k = parse_kubevirt(BOOTIMAGES_415.as_bytes()).unwrap();
        assert_eq!(k.keys().collect::<Vec<_>>(), ["s390x", "x86_64"]);
        assert_eq!(
            k["x86_64"].to_string(),
            "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:8a8b2bd3d4ec0e0d8a2b0a8b2d3c7f0f1e1c4bb2c27b6c1c5d5fb1e2c0f5e3a7"
        );
    }

    #[test]
    fn hostile_boot_image_streams_are_refused() {
        let with = |digest_ref: &str| {
            BOOTIMAGES_415.replace(
                "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:8a8b2bd3d4ec0e0d8a2b0a8b2d3c7f0f1e1c4bb2c27b6c1c5d5fb1e2c0f5e3a7",
                digest_ref,
            )
        };
        let e = parse_kubevirt(with("quay.io/x/y:latest").as_bytes()).unwrap_err();
        assert!(
            e.contains("architectures.x86_64.images.kubevirt.digest-ref")
                && e.contains("not named by digest"),
            "{e}"
        );
        let e = parse_kubevirt(with("../../etc/passwd").as_bytes()).unwrap_err();
        assert!(e.contains("not an image reference"), "{e}");
        let e = parse_kubevirt(
            BOOTIMAGES_415
                .replace("kind: ConfigMap", "kind: Secret")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("expected ConfigMap"), "{e}");
        let e = parse_kubevirt(
            BOOTIMAGES_415
                .replace("\"kubevirt\"", "\"other\"")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("names no KubeVirt image"), "{e}");
        let e = parse_kubevirt(b"kind: ConfigMap\ndata:\n  stream: '{not json'\n").unwrap_err();
        assert!(e.starts_with("data.stream:"), "{e}");
    }
}
