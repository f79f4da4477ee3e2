//! The `ImageSetConfiguration` schema of oc-mirror, both `mirror.openshift.io/v1alpha2`
//! (oc-mirror v1) and `v2alpha1` (oc-mirror v2), as one superset of typed structs.
//!
//! One set of types serves both versions: the two schemas share almost every field,
//! and a field that belongs to only one of them is checked against the file's
//! `apiVersion` after parsing (see [`super::VERSION_ONLY_FIELDS`]), which gives a
//! better message ("`storageConfig` exists only in v1alpha2") than serde's generic
//! unknown-field error would. Every struct refuses unknown fields, as oc-mirror's
//! strict decoder does: a typo must never be silently ignored.

use serde::Deserialize;

/// One `ImageSetConfiguration` (or v2alpha1 `DeleteImageSetConfiguration`) document.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageSetConfiguration {
    /// `mirror.openshift.io/v1alpha2` or `mirror.openshift.io/v2alpha1`.
    pub api_version: String,
    /// `ImageSetConfiguration`, or `DeleteImageSetConfiguration` (v2alpha1).
    pub kind: String,
    /// Largest archive (chunk) file, in GiB.
    #[serde(default)]
    pub archive_size: Option<i64>,
    /// Where oc-mirror v1 kept its workspace metadata (v1alpha2 only).
    #[serde(default)]
    pub storage_config: Option<StorageConfig>,
    /// What to mirror.
    #[serde(default)]
    pub mirror: Option<Mirror>,
    /// What to delete (`DeleteImageSetConfiguration` only).
    #[serde(default)]
    pub delete: Option<Mirror>,
}

/// `storageConfig` (v1alpha2).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageConfig {
    /// Workspace state kept as an image in a registry.
    #[serde(default)]
    pub registry: Option<RegistryStorage>,
    /// Workspace state kept in a local directory.
    #[serde(default)]
    pub local: Option<LocalStorage>,
}

/// `storageConfig.registry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryStorage {
    /// Image that holds the state (`host/ns/name:tag`).
    #[serde(rename = "imageURL")]
    pub image_url: String,
    /// Plain HTTP / no certificate check.
    #[serde(default, rename = "skipTLS")]
    pub skip_tls: bool,
}

/// `storageConfig.local`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalStorage {
    /// Directory of the workspace.
    pub path: String,
}

/// `mirror` (and `delete`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    /// OpenShift releases.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Operator catalogs.
    #[serde(default)]
    pub operators: Vec<Operator>,
    /// Arbitrary images.
    #[serde(default)]
    pub additional_images: Vec<AdditionalImage>,
    /// Helm charts and the images they name.
    #[serde(default)]
    pub helm: Option<Helm>,
    /// Images never to mirror (name or regular expression).
    #[serde(default)]
    pub blocked_images: Vec<BlockedImage>,
    /// Base images nothing mirrored may be built on (an Airlock extension).
    #[serde(default)]
    pub blocked_base_images: Vec<BlockedImage>,
    /// Sample images (declared by oc-mirror, implemented by neither version).
    #[serde(default)]
    pub samples: Vec<NamedImage>,
}

/// `mirror.platform`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Platform {
    /// Include the update-graph data image.
    #[serde(default)]
    pub graph: bool,
    /// Release channels.
    #[serde(default)]
    pub channels: Vec<ReleaseChannel>,
    /// Architectures of the release payloads.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Platform filter for sparse manifest lists (v2alpha1).
    #[serde(default)]
    pub platforms: Vec<InstancePlatform>,
    /// One release image by pull spec, bypassing the update graph (v2alpha1).
    #[serde(default)]
    pub release: Option<String>,
    /// Mirror the KubeVirt container image of the release (v2alpha1).
    #[serde(default)]
    pub kube_virt_container: bool,
}

/// `mirror.platform.channels[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReleaseChannel {
    /// Channel name (`stable-4.14`).
    pub name: String,
    /// `ocp` (default) or `okd`.
    #[serde(default, rename = "type")]
    pub channel_type: Option<String>,
    /// Lowest release to mirror.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Highest release to mirror.
    #[serde(default)]
    pub max_version: Option<String>,
    /// Only the shortest upgrade path from min to max.
    #[serde(default)]
    pub shortest_path: bool,
    /// Every release in the channel.
    #[serde(default)]
    pub full: bool,
}

/// `platforms[]` entries (v2alpha1).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstancePlatform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture (`amd64`).
    pub architecture: String,
}

/// `mirror.operators[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operator {
    /// Catalog image (`registry/ns/index:tag`, `@sha256:`, or `oci://path`).
    pub catalog: String,
    /// Packages to keep; none means the whole catalog.
    #[serde(default)]
    pub packages: Vec<IncludePackage>,
    /// Deprecated rename of the catalog (v1alpha2).
    #[serde(default)]
    pub target_name: Option<String>,
    /// Repository path of the rebuilt catalog at the mirror.
    #[serde(default)]
    pub target_catalog: Option<String>,
    /// Tag of the rebuilt catalog at the mirror.
    #[serde(default)]
    pub target_tag: Option<String>,
    /// Every bundle rather than channel heads.
    #[serde(default)]
    pub full: bool,
    /// Do not add the dependencies of selected bundles.
    #[serde(default)]
    pub skip_dependencies: bool,
    /// Deprecated original reference of an `oci:` catalog (v1alpha2).
    #[serde(default)]
    pub original_ref: Option<String>,
    /// CatalogSource template file (v2alpha1).
    #[serde(default)]
    pub target_catalog_source_template: Option<String>,
    /// Platform filter (v2alpha1).
    #[serde(default)]
    pub platforms: Vec<InstancePlatform>,
}

/// `packages[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IncludePackage {
    /// Package name.
    pub name: String,
    /// Channels to keep.
    #[serde(default)]
    pub channels: Vec<IncludeChannel>,
    /// Override of the package's default channel.
    #[serde(default)]
    pub default_channel: Option<String>,
    /// Lowest bundle version.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Highest bundle version.
    #[serde(default)]
    pub max_version: Option<String>,
    /// Lowest bundle by name (v1alpha2).
    #[serde(default)]
    pub min_bundle: Option<String>,
}

/// `packages[].channels[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IncludeChannel {
    /// Channel name.
    pub name: String,
    /// Lowest bundle version.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Highest bundle version.
    #[serde(default)]
    pub max_version: Option<String>,
    /// Lowest bundle by name (v1alpha2).
    #[serde(default)]
    pub min_bundle: Option<String>,
}

/// `mirror.additionalImages[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdditionalImage {
    /// Source image (tag, digest or both; `docker://` allowed).
    pub name: String,
    /// Repository path at the mirror instead of the source's (v2alpha1).
    #[serde(default)]
    pub target_repo: Option<String>,
    /// Tag at the mirror instead of the source's (v2alpha1).
    #[serde(default)]
    pub target_tag: Option<String>,
    /// Platform filter for a manifest list (v2alpha1).
    #[serde(default)]
    pub platforms: Vec<InstancePlatform>,
}

/// An entry that has only a `name` (`blockedImages[]`, `samples[]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedImage {
    /// Image name, or for blocked images a regular expression.
    pub name: String,
}

/// A `blockedImages[]` or `blockedBaseImages[]` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlockedImage {
    /// A regular expression (`blockedImages`) or an image reference
    /// (`blockedBaseImages`).
    pub name: String,
    /// Airlock extension: also leave out images a selected release needs (which
    /// is otherwise an error), accepting that the release is incomplete at the
    /// mirror.
    #[serde(default)]
    pub even_when_required: bool,
}

/// `mirror.helm`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Helm {
    /// Chart repositories.
    #[serde(default)]
    pub repositories: Vec<HelmRepository>,
    /// Local chart archives.
    #[serde(default)]
    pub local: Vec<HelmChart>,
}

/// `mirror.helm.repositories[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmRepository {
    /// Repository name.
    pub name: String,
    /// Repository URL.
    pub url: String,
    /// Charts to take; none means every chart.
    #[serde(default)]
    pub charts: Vec<HelmChart>,
}

/// A chart (`helm.local[]`, `helm.repositories[].charts[]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmChart {
    /// Chart name.
    pub name: String,
    /// Chart version.
    #[serde(default)]
    pub version: Option<String>,
    /// Path of a local chart archive.
    #[serde(default)]
    pub path: Option<String>,
    /// Extra JSON paths to images in the rendered chart.
    #[serde(default)]
    pub image_paths: Vec<String>,
    /// Platform filter (v2alpha1).
    #[serde(default)]
    pub platforms: Vec<InstancePlatform>,
}
