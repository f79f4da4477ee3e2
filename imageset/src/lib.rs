//! The imageset format, versions 1 and 2: what crosses the air gap.
//!
//! An imageset is a set of chunk files, each a plain POSIX tar (ustar) archive no
//! larger than the transfer limit, tar overhead included. Every chunk carries the
//! whole imageset manifest as its first entry, so any one chunk identifies its
//! imageset, and a per-chunk identity entry, so a chunk renamed by a file manager is
//! still recognised. Blob bytes follow; a blob that does not fit is split across
//! chunks. The full specification, precise enough to write another implementation,
//! is `docs/imageset-format.md`; this crate is its reference implementation:
//!
//! - [`layout`] decides which blob bytes go into which chunk at which offset,
//! - [`write`] writes chunk files from that plan, crash-safely,
//! - [`read`] reads chunk files strictly, treating them as hostile input,
//! - [`validate`] checks a manifest field by field: the trust boundary,
//! - [`signing`] signs a manifest and checks it against a trust store.
//!
//! Invariants: no network dependency enters this crate (it depends on
//! `airlock-oci`, and on archive, hashing, signature, parity and time crates), so
//! the contract can be read, tested and fuzzed on its own; and nothing read from a
//! chunk file reaches a path, a registry or a panic before [`validate`] has passed
//! it.

#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod layout;
pub mod parity;
pub mod read;
pub mod signing;
pub mod validate;
pub mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use airlock_oci::digest::Digest;

/// [`ImagesetManifest::format`] of version 1, where every chunk's payload has a
/// sha256 of its own (`chunks[].sha256`). Still read, and written on request,
/// for sites whose disconnected agent predates version 2.
pub const FORMAT_V1: &str = "airlock.imageset/v1";

/// [`ImagesetManifest::format`] of version 2, which drops the chunk payload
/// hashes: each part is proved by the digest of its blob, and each part of a
/// split blob by a sha256 of its own (`parts[].sha256`). A writer hashed every
/// byte twice for version 1, once for the blob digest and once for the chunk;
/// that second pass was a fifth of `create`'s time (docs/benchmarks.md, stop 48).
pub const FORMAT_V2: &str = "airlock.imageset/v2";

/// The format writers write unless told otherwise.
pub const FORMAT: &str = FORMAT_V2;

/// A version of the format, as [`ImagesetManifest::format`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// [`FORMAT_V1`].
    V1,
    /// [`FORMAT_V2`].
    #[default]
    V2,
}

impl Version {
    /// The `format` value of this version.
    pub fn format(self) -> &'static str {
        match self {
            Version::V1 => FORMAT_V1,
            Version::V2 => FORMAT_V2,
        }
    }

    /// The version `format` names, if this build reads it.
    pub fn of(format: &str) -> Option<Version> {
        match format {
            FORMAT_V1 => Some(Version::V1),
            FORMAT_V2 => Some(Version::V2),
            _ => None,
        }
    }
}

/// Tar entry name of the imageset manifest, the first entry of every chunk.
pub const MANIFEST_ENTRY: &str = "airlock/imageset.json";

/// Tar entry name of the manifest's sha256 (64 hex digits and a newline), the second
/// entry of every chunk: the manifest cannot be covered by the hashes it
/// lists, and without this an unsigned single-chunk imageset with a flipped byte in
/// a tag or repository name would be read as another, valid imageset.
pub const MANIFEST_SUM_ENTRY: &str = "airlock/imageset.json.sha256";

/// Length of the manifest sum entry's data.
pub const MANIFEST_SUM_LEN: u64 = 65;

/// Tar entry name of the manifest's detached signature, the third entry of every
/// chunk of a signed imageset (absent when unsigned).
pub const SIGNATURE_ENTRY: &str = "airlock/imageset.json.sig";

/// Tar entry name of the chunk identity, the first entry of the hashed payload.
pub const CHUNK_ENTRY: &str = "airlock/chunk.json";

/// Largest imageset manifest a reader accepts. A manifest lists images, chunks and
/// blob parts; 64 MiB holds several hundred thousand blobs, far beyond any real
/// release plus catalogs, while bounding what a forged header can make a reader
/// allocate.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Largest signature entry a reader accepts.
pub const MAX_SIGNATURE_BYTES: u64 = 64 << 10;

/// Tar block size.
pub const BLOCK: u64 = 512;

/// Size of the chunk identity entry: one header block and one data block.
pub const CHUNK_ENTRY_LEN: u64 = 2 * BLOCK;

/// The end-of-archive marker: two zero blocks.
pub const TRAILER_LEN: u64 = 2 * BLOCK;

/// What a parity file holds besides the metadata and its shard: the identity entry,
/// the shard's header and the end-of-archive marker. Data chunks are planned this
/// much below the limit when parity is asked for, so that parity files, one shard
/// (the largest chunk payload) each, fit the limit too.
pub const PARITY_EXTRA: u64 = CHUNK_ENTRY_LEN + BLOCK + TRAILER_LEN;

/// `n` rounded up to a whole number of tar blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// The manifest carried in every chunk of an imageset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagesetManifest {
    /// [`FORMAT_V1`] or [`FORMAT_V2`].
    pub format: String,
    /// The connected workspace that made this imageset.
    pub uuid: Uuid,
    /// Position in the workspace's sequence, from 1.
    pub sequence: u64,
    /// Whether this imageset ships every blob (the first of a workspace, or `--full`),
    /// rather than only blobs no earlier imageset of the workspace carried.
    pub full: bool,
    /// When the imageset was created, RFC 3339 UTC with seconds (`2026-11-24T10:00:00Z`);
    /// also the modification time of every tar entry.
    pub created: String,
    /// The transfer limit the chunks were cut to, in bytes.
    pub limit: u64,
    /// Every chunk file, in order.
    pub chunks: Vec<ChunkRecord>,
    /// Reed–Solomon parity files over the chunks' payloads (`--parity N`), in order;
    /// any N of the chunk and parity files can be rebuilt from the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parity: Vec<ChunkRecord>,
    /// Every image of the configuration: the whole desired state, even when some of
    /// its blobs travelled in earlier imagesets.
    pub images: Vec<ImageRecord>,
    /// Every manifest and blob the images reference, with where each byte travels.
    pub blobs: Vec<BlobRecord>,
    /// The OpenShift releases among the images, with what the disconnected side
    /// needs to write cluster resources for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<ReleaseRecord>,
    /// Present in a **delete imageset** (`airlock-connected delete`): the images an
    /// earlier imageset listed that this one removes on purpose. `images` is then
    /// the desired state without them, and the disconnected side deletes them from
    /// every registry even where pruning is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<ImageRecord>,
}

/// The repository, under a destination's prefix, where the disconnected side
/// keeps its state: no image of an imageset may be published there.
pub const RESERVED_REPOSITORY: &str = "airlock-state";

/// One OpenShift release of the imageset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReleaseRecord {
    /// Release version (`4.14.3`).
    pub version: String,
    /// Architecture as the configuration spells it (`amd64`, `multi`, ...).
    pub arch: String,
    /// Channels it was selected from (empty for `platform.release`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// The release image's source pull spec, by digest.
    pub image: String,
    /// Digest of the release image's top manifest (it is among [`ImagesetManifest::images`]).
    pub digest: Digest,
    /// Tag of the release image at the mirror, in `openshift/release-images`.
    pub tag: String,
    /// The release's signature from the signature store (base64 of the OpenPGP
    /// message), verified at `create`; absent when the user opted out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// One chunk file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChunkRecord {
    /// Position, from 1.
    pub index: u32,
    /// File name as written (a file manager may rename it; the identity entry inside
    /// the chunk is what counts).
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// sha256 (hex) of the chunk's payload: every byte after the manifest and
    /// signature entries, to the end of the file. Every parity file has it;
    /// data chunks only in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What kind of content an image is, for grouping cluster resources as oc-mirror does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageKind {
    /// An `additionalImages` entry.
    Generic,
    /// An OpenShift release image (`mirror.platform`).
    Release,
    /// An image a release payload names in its `image-references`.
    ReleaseComponent,
    /// The update-graph data image built for `platform.graph` (pulled by the
    /// cluster's update service from the mirror by digest, so in no mirror set).
    GraphData,
    /// An operator catalog image (rebuilt with the filtered catalog, or copied
    /// whole): clusters use it through a `CatalogSource` and a `ClusterCatalog` by
    /// digest, so it is in no mirror set.
    Catalog,
    /// An operator bundle image or an image a bundle names in `relatedImages`.
    Operator,
    /// A Helm chart as an OCI artifact (`mirror.helm`), published to
    /// `charts/<name>:<version>` so that `helm pull oci://…` works at the site;
    /// in no mirror set (the images its templates name are `Generic`).
    Chart,
    /// A signature, attestation or SBOM of another image of the imageset: a cosign
    /// `sha256-<digest>.sig|.att|.sbom` tag or an OCI 1.1 referrer. It lives in its
    /// subject's repository and is published after it.
    Referrer,
}

/// One image of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageRecord {
    /// The source reference as the configuration wrote it.
    pub source: String,
    /// Source registry and repository (`quay.io/ns/app`).
    pub repository: String,
    /// The tag to publish, if the image was named by tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Whether the configuration named the image by digest (alone or with a tag).
    pub by_digest: bool,
    /// Digest of the top manifest (an index for multi-platform images).
    pub digest: Digest,
    /// Repository path at the mirror instead of the source's (`targetRepo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_repository: Option<String>,
    /// What kind of content this is.
    pub kind: ImageKind,
    /// For a [`ImageKind::Referrer`]: the manifest it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// For a [`ImageKind::Catalog`]: what its `CatalogSource` takes from the
    /// configuration's `targetCatalogSourceTemplate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_source: Option<CatalogSourceTemplate>,
    /// The platforms (`linux/amd64`) kept of the index `digest` names when the
    /// configuration filtered it (`platforms`): its other children, and what
    /// hangs off them, are not in the imageset. The index itself travels byte
    /// for byte, so its digest and every signature of it stay valid; a registry
    /// must accept an index whose other platforms it does not hold (a sparse
    /// index). Which children count as kept is [`airlock_oci::manifest::kept_children`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

/// The parts of a user's `CatalogSource` template a catalog's `CatalogSource`
/// keeps (oc-mirror's `targetCatalogSourceTemplate`). The name, namespace, source
/// type and image are always Airlock's; fields that would change where the
/// catalog comes from or how its pod runs as root (`address`, `configMap`,
/// `runAsRoot`) are not carried. Nested values are kept as the user wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CatalogSourceTemplate {
    /// `metadata.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations` (Airlock's own are added over them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `spec.displayName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `spec.description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `spec.publisher`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// `spec.priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// `spec.icon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<CatalogIcon>,
    /// `spec.updateStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
    /// `spec.grpcPodConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_pod_config: Option<GrpcPodConfig>,
    /// `spec.secrets`: pull secrets for the catalog image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `CatalogSource.spec.icon`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogIcon {
    /// The image, base64.
    pub base64data: String,
    /// Its media type (`image/svg+xml`).
    pub mediatype: String,
}

/// `CatalogSource.spec.updateStrategy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// How often OLM polls the catalog image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_poll: Option<RegistryPoll>,
}

/// `updateStrategy.registryPoll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryPoll {
    /// A Go duration (`30m`, `1h30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// `CatalogSource.spec.grpcPodConfig`, the fields OLM documents for it but
/// `affinity`, which is refused rather than carried unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcPodConfig {
    /// Labels the catalog pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the catalog pod tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The pod's priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// `restricted` or `legacy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context_config: Option<String>,
    /// A memory quantity (`30Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_target: Option<String>,
    /// Where the catalog content is extracted in the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract_content: Option<ExtractContent>,
}

/// A Kubernetes toleration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    /// The taint key (empty with `Exists`: every taint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The taint value, for `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// How long a `NoExecute` taint is tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// `grpcPodConfig.extractContent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtractContent {
    /// The cache directory in the pod.
    pub cache_dir: String,
    /// The catalog directory in the pod.
    pub catalog_dir: String,
}

/// One manifest or blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlobRecord {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Set for manifests: their media type, needed to push them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Source repository (`quay.io/ns/app`) that serves the blob; for diagnostics
    /// and, at publish, the mirror repository to mount from.
    pub repository: String,
    /// Where the bytes are, in blob order; empty when an earlier imageset of the
    /// workspace carried the blob.
    #[serde(default)]
    pub parts: Vec<PartRecord>,
}

/// A contiguous range of a blob stored as one tar entry in one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PartRecord {
    /// Chunk index, from 1.
    pub chunk: u32,
    /// Offset of the range within the blob.
    pub offset: u64,
    /// Length of the range.
    pub length: u64,
    /// sha256 (hex) of the range, for each part of a split blob in version 2:
    /// what tells which chunk of a split blob that fails its digest was
    /// damaged, and proves a chunk on its own. A blob in one part needs none,
    /// its digest is the part's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl BlobRecord {
    /// Whether this imageset carries the blob's bytes.
    pub fn carried(&self) -> bool {
        !self.parts.is_empty() || self.size == 0
    }

    /// The tar entry name of part `i`: `blobs/sha256/<hex>` when the blob travels whole,
    /// `blobs/sha256/<hex>.<n>` (n from 1) when it is split.
    pub fn entry_name(&self, i: usize) -> String {
        if self.parts.len() <= 1 {
            format!("blobs/sha256/{}", self.digest.hex())
        } else {
            format!("blobs/sha256/{}.{}", self.digest.hex(), i + 1)
        }
    }
}

/// The identity entry of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChunkIdentity {
    /// The imageset's workspace UUID.
    pub uuid: Uuid,
    /// The imageset's sequence number.
    pub sequence: u64,
    /// This chunk's index, from 1.
    pub chunk: u32,
    /// How many chunks the imageset has.
    pub chunks: u32,
    /// Set in parity files only: how many parity files there are (`chunk` is then
    /// this parity file's number, from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<u32>,
}

/// The file name of parity file `index` of `count`:
/// `airlock-<uuid8>-seq<NNNNNN>-parity<jj>of<NN>.tar`.
pub fn parity_file_name(uuid: &Uuid, sequence: u64, index: u32, count: u32) -> String {
    let short = &uuid.simple().to_string()[..8];
    format!("airlock-{short}-seq{sequence:06}-parity{index:02}of{count:02}.tar")
}

/// The file name of chunk `index` of `count`: `airlock-<uuid8>-seq<NNNNNN>-chunk<kkkk>of<KKKK>.tar`.
/// Zero-padded so that name order (the order diodes send in) is sequence then chunk.
pub fn chunk_file_name(uuid: &Uuid, sequence: u64, index: u32, count: u32) -> String {
    let short = &uuid.simple().to_string()[..8];
    format!("airlock-{short}-seq{sequence:06}-chunk{index:04}of{count:04}.tar")
}

impl ImagesetManifest {
    /// The format version; [`Version::V2`] for a `format` this build does not
    /// read, which [`validate`] refuses before anything asks.
    pub fn version(&self) -> Version {
        Version::of(&self.format).unwrap_or_default()
    }

    /// `<uuid8>/seq<N>`, how logs and messages name an imageset.
    pub fn label(&self) -> String {
        format!("imageset {} sequence {}", self.uuid, self.sequence)
    }

    /// The parts stored in chunk `index`, in the order their entries appear:
    /// blob order, then part order.
    pub fn parts_in_chunk(&self, index: u32) -> impl Iterator<Item = (usize, usize, &PartRecord)> {
        self.blobs.iter().enumerate().flat_map(move |(b, blob)| {
            blob.parts
                .iter()
                .enumerate()
                .filter(move |(_, p)| p.chunk == index)
                .map(move |(i, p)| (b, i, p))
        })
    }
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    #[test]
    fn chunk_names_sort_by_sequence_then_index() {
        let u = Uuid::parse_str("3f2a9c1e-0000-4000-8000-000000000000").unwrap();
        assert_eq!(
            chunk_file_name(&u, 3, 2, 5),
            "airlock-3f2a9c1e-seq000003-chunk0002of0005.tar"
        );
        let mut names = [
            chunk_file_name(&u, 10, 1, 2),
            chunk_file_name(&u, 9, 12, 12),
            chunk_file_name(&u, 9, 2, 12),
        ];
        names.sort();
        assert!(names[0].contains("seq000009-chunk0002"));
        assert!(names[2].contains("seq000010"));
    }

    #[test]
    fn entry_names_mark_split_blobs() {
        let d = Digest::of(b"x");
        let mut b = BlobRecord {
            digest: d.clone(),
            size: 10,
            media_type: None,
            repository: "r/x".into(),
            parts: vec![PartRecord {
                chunk: 1,
                offset: 0,
                length: 10,
                sha256: None,
            }],
        };
        assert_eq!(b.entry_name(0), format!("blobs/sha256/{}", d.hex()));
        b.parts.push(PartRecord {
            chunk: 2,
            offset: 10,
            length: 0,
            sha256: None,
        });
        assert_eq!(b.entry_name(1), format!("blobs/sha256/{}.2", d.hex()));
    }
}

#[cfg(test)]
mod tests;
