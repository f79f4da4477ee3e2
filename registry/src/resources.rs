//! Cluster resources that make clusters use the mirror, written as oc-mirror v2
//! writes them: `ImageDigestMirrorSet` and `ImageTagMirrorSet`, the release
//! signature `ConfigMap`, and the `UpdateService` of the graph-data image.
//!
//! Users move from oc-mirror with scripts that `oc apply -f cluster-resources/`, so
//! the files keep oc-mirror's names (`idms-oc-mirror.yaml`, `itms-oc-mirror.yaml`),
//! object names (`idms-<category>-0`) and scoping rule: when the mirror path ends
//! with the source path (the normal naming rule), the mirror set is scoped to the
//! source *namespace* (`quay.io/ns` → `mirror:5000/prefix/ns`), which covers sibling
//! repositories; otherwise (a `targetRepo`, or names flattened for
//! `--max-nested-paths`) to the exact repository. Images named by
//! digest go to the IDMS, images named by tag to the ITMS, as in oc-mirror. Unlike
//! oc-mirror, the entries are sorted, so the same content always gives the same file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use airlock_imageset::CatalogSourceTemplate;
use airlock_oci::digest::Digest;

/// File name of the digest mirror sets.
pub const IDMS_FILE: &str = "idms-oc-mirror.yaml";
/// File name of the tag mirror sets.
pub const ITMS_FILE: &str = "itms-oc-mirror.yaml";
/// File name of the digest mirrors as `ImageContentSourcePolicy`, for clusters
/// before OpenShift 4.13 (oc-mirror v1's name), in [`LEGACY_DIR`].
pub const ICSP_FILE: &str = "imageContentSourcePolicy.yaml";
/// Subdirectory of what only clusters before OpenShift 4.13 take: apart, so that
/// `oc apply -f cluster-resources/` never gives a newer cluster both ICSPs and
/// mirror sets for the same sources.
pub const LEGACY_DIR: &str = "pre-4.13";
/// [`ICSP_FILE`] in [`LEGACY_DIR`], relative to the cluster-resources directory.
const LEGACY_ICSP: &str = "pre-4.13/imageContentSourcePolicy.yaml";
/// File names of the release signature `ConfigMap` (the same object twice, as
/// oc-mirror writes it).
pub const SIGNATURE_FILES: [&str; 2] = ["signature-configmap.json", "signature-configmap.yaml"];
/// File name of the `UpdateService`.
pub const UPDATE_SERVICE_FILE: &str = "updateService.yaml";
/// Name of the release signature `ConfigMap`.
pub const SIGNATURE_CONFIGMAP: &str = "mirrored-release-signatures";
/// The namespace the cluster-version operator reads signature `ConfigMap`s from.
pub const SIGNATURE_NAMESPACE: &str = "openshift-config-managed";
/// The label that makes the cluster-version operator read a `ConfigMap`'s
/// `binaryData` as release signatures.
pub const SIGNATURE_LABEL: &str = "release.openshift.io/verification-signatures";

/// oc-mirror's grouping of mirror-set entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Release payloads, their components and graph data.
    Release,
    /// Operator bundles and related images.
    Operator,
    /// Everything else.
    Generic,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Category::Release => "release",
            Category::Operator => "operator",
            Category::Generic => "generic",
        }
    }
}

/// One mirrored image, as the mirror sets see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// Source registry and repository (`quay.io/ns/app`).
    pub source: String,
    /// Mirror registry and repository (`mirror:5000/prefix/ns/app`).
    pub mirror: String,
    /// Named by digest in the configuration.
    pub by_digest: bool,
    /// Named by tag in the configuration.
    pub by_tag: bool,
    /// Grouping.
    pub category: Category,
    /// Scoped to the exact repository even where the naming rule kept the path:
    /// under `--max-nested-paths` a source namespace no longer maps onto one
    /// mirror namespace (oc-mirror forces repository scope then too).
    pub exact: bool,
}

fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((name, ""))
}

fn namespace(name: &str) -> String {
    let (domain, path) = split_name(name);
    match path.rfind('/') {
        Some(i) => format!("{domain}/{}", &path[..i]),
        None => domain.to_string(),
    }
}

/// The (source, mirror) pair of a mirror-set entry, with oc-mirror's scoping.
pub fn scope(m: &Mirrored) -> (String, String) {
    let (_, src_path) = split_name(&m.source);
    let (_, dst_path) = split_name(&m.mirror);
    if !m.exact && dst_path.ends_with(src_path) {
        (namespace(&m.source), namespace(&m.mirror))
    } else {
        (m.source.clone(), m.mirror.clone())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum Spec {
    Digest {
        image_digest_mirrors: Vec<MirrorEntry>,
    },
    Tag {
        image_tag_mirrors: Vec<MirrorEntry>,
    },
    Legacy {
        repository_digest_mirrors: Vec<MirrorEntry>,
    },
}

#[derive(Serialize)]
struct MirrorEntry {
    mirrors: Vec<String>,
    source: String,
}

type Groups = BTreeMap<Category, BTreeMap<String, BTreeSet<String>>>;

fn group(images: &[Mirrored], pick: impl Fn(&Mirrored) -> bool) -> Groups {
    let mut groups: Groups = BTreeMap::new();
    for m in images.iter().filter(|m| pick(m)) {
        let (source, mirror) = scope(m);
        groups
            .entry(m.category)
            .or_default()
            .entry(source)
            .or_default()
            .insert(mirror);
    }
    groups
}

fn entries(sources: BTreeMap<String, BTreeSet<String>>) -> Vec<MirrorEntry> {
    sources
        .into_iter()
        .map(|(source, mirrors)| MirrorEntry {
            mirrors: mirrors.into_iter().collect(),
            source,
        })
        .collect()
}

fn annotations() -> BTreeMap<&'static str, String> {
    BTreeMap::from([("createdBy", "airlock".to_string())])
}

/// The kinds of mirror set: digest (IDMS), tag (ITMS), and the digest mirrors
/// of clusters before OpenShift 4.13 (ICSP), which have neither.
#[derive(Debug, Clone, Copy)]
enum SetKind {
    Digest,
    Tag,
    Legacy,
}

impl SetKind {
    fn api_version(self) -> &'static str {
        match self {
            SetKind::Digest | SetKind::Tag => "config.openshift.io/v1",
            SetKind::Legacy => "operator.openshift.io/v1alpha1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            SetKind::Digest => "ImageDigestMirrorSet",
            SetKind::Tag => "ImageTagMirrorSet",
            SetKind::Legacy => "ImageContentSourcePolicy",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            SetKind::Digest => "idms",
            SetKind::Tag => "itms",
            SetKind::Legacy => "icsp",
        }
    }
    fn spec(self, entries: Vec<MirrorEntry>) -> Spec {
        match self {
            SetKind::Digest => Spec::Digest {
                image_digest_mirrors: entries,
            },
            SetKind::Tag => Spec::Tag {
                image_tag_mirrors: entries,
            },
            SetKind::Legacy => Spec::Legacy {
                repository_digest_mirrors: entries,
            },
        }
    }
    fn includes(self, m: &Mirrored) -> bool {
        match self {
            SetKind::Digest | SetKind::Legacy => m.by_digest,
            SetKind::Tag => m.by_tag,
        }
    }
}

fn mirror_sets(images: &[Mirrored], kind: SetKind) -> Option<String> {
    let groups = group(images, |m| kind.includes(m));
    if groups.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (cat, sources) in groups {
        let object = Object {
            api_version: kind.api_version(),
            kind: kind.kind(),
            metadata: Metadata {
                name: format!("{}-{}-0", kind.prefix(), cat.name()),
                annotations: annotations(),
            },
            spec: kind.spec(entries(sources)),
        };
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&object).expect("mirror sets serialise"));
    }
    Some(out)
}

/// The content of `idms-oc-mirror.yaml`, or `None` when no image was named by digest.
pub fn idms(images: &[Mirrored]) -> Option<String> {
    mirror_sets(images, SetKind::Digest)
}

/// The content of `itms-oc-mirror.yaml`, or `None` when no image was named by tag.
pub fn itms(images: &[Mirrored]) -> Option<String> {
    mirror_sets(images, SetKind::Tag)
}

/// The content of `imageContentSourcePolicy.yaml` (oc-mirror v1's file) for
/// clusters before OpenShift 4.13: the IDMS's entries as ICSPs. Those clusters
/// have no tag mirror sets; images pulled by tag are not redirected there.
pub fn icsp(images: &[Mirrored]) -> Option<String> {
    mirror_sets(images, SetKind::Legacy).map(|sets| {
        format!("# For clusters before OpenShift 4.13, instead of {IDMS_FILE}; they cannot\n# redirect images pulled by tag ({ITMS_FILE}).\n{sets}")
    })
}

/// One release signature: the release image digest and the signature (base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSignature {
    /// The release image's digest.
    pub digest: Digest,
    /// The OpenPGP signature, base64.
    pub signature: String,
}

/// Where the cluster's update service finds releases and graph data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateServiceRefs {
    /// Repository of the release images (`mirror:5000/prefix/openshift/release-images`).
    pub releases: String,
    /// The graph-data image, by digest.
    pub graph_image: String,
}

/// Everything `cluster-resources/` holds for one destination.
#[derive(Debug, Clone, Default)]
pub struct ClusterResources {
    /// Images, for the mirror sets.
    pub mirrored: Vec<Mirrored>,
    /// Release signatures, for the signature `ConfigMap`.
    pub signatures: Vec<ReleaseSignature>,
    /// For the `UpdateService`, when a graph-data image is published.
    pub update_service: Option<UpdateServiceRefs>,
    /// Operator catalogs, for a `CatalogSource` and a `ClusterCatalog` each.
    pub catalogs: Vec<CatalogRef>,
}

/// An operator catalog at the mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRef {
    /// Mirror registry and repository (`mirror:5000/prefix/redhat/redhat-operator-index`).
    pub repository: String,
    /// Its tag at the mirror, if it has one.
    pub tag: Option<String>,
    /// Its digest: the resources point at it, so a cluster runs exactly the catalog
    /// that was published.
    pub digest: Digest,
    /// What its `CatalogSource` takes from the user's template.
    pub template: Option<CatalogSourceTemplate>,
}

impl CatalogRef {
    /// oc-mirror v2's object name without its `cs-`/`cc-` prefix: the last path
    /// part and the tag (12 characters at most), or 12 characters of the digest,
    /// lowercased, with anything outside `[a-z0-9-]` made `-`. Named by the tag, the
    /// object is the same from one publish to the next and is updated in place.
    pub fn name(&self) -> String {
        let last = self.repository.rsplit('/').next().unwrap_or_default();
        let suffix: String = match &self.tag {
            Some(t) => t.chars().take(12).collect(),
            None => self.digest.hex().chars().take(12).collect(),
        };
        let name: String = format!("{last}-{suffix}")
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        name.trim_matches('-').to_string()
    }

    fn image(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// The OLM v0 `CatalogSource` of `c`: a gRPC catalog in `openshift-marketplace`,
/// with what its template (if any) adds; the name, namespace, source type, image
/// and Airlock's annotations are always Airlock's, as in oc-mirror.
pub fn catalog_source(c: &CatalogRef) -> String {
    let t = c.template.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = t.annotations;
    annotations.extend(
        self::annotations()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    let mut metadata = serde_json::json!({
        "name": format!("cs-{}", c.name()),
        "namespace": "openshift-marketplace",
        "annotations": annotations,
    });
    if !t.labels.is_empty() {
        metadata["labels"] = serde_json::json!(t.labels);
    }
    let mut spec = serde_json::json!({"sourceType": "grpc", "image": c.image()});
    let optional = [
        ("displayName", t.display_name.map(serde_json::Value::from)),
        ("description", t.description.map(serde_json::Value::from)),
        ("publisher", t.publisher.map(serde_json::Value::from)),
        ("priority", t.priority.map(serde_json::Value::from)),
        ("icon", t.icon.map(|v| serde_json::json!(v))),
        (
            "updateStrategy",
            t.update_strategy.map(|v| serde_json::json!(v)),
        ),
        (
            "grpcPodConfig",
            t.grpc_pod_config.map(|v| serde_json::json!(v)),
        ),
        (
            "secrets",
            (!t.secrets.is_empty()).then(|| serde_json::json!(t.secrets)),
        ),
    ];
    for (field, value) in optional {
        if let Some(v) = value {
            spec[field] = v;
        }
    }
    let object = serde_json::json!({
        "apiVersion": "operators.coreos.com/v1alpha1",
        "kind": "CatalogSource",
        "metadata": metadata,
        "spec": spec,
    });
    serde_yaml_ng::to_string(&object).expect("catalog sources serialise")
}

/// Why a `targetCatalogSourceTemplate` cannot shape a `CatalogSource`.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Not YAML or JSON of a Kubernetes object.
    #[error(transparent)]
    Parse(#[from] serde_yaml_ng::Error),
    /// Another kind of object.
    #[error("is a {api_version} {kind}, expected a CatalogSource of operators.coreos.com/v1alpha1")]
    Kind {
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
    },
    /// A field the template may not set.
    #[error("{field}: {why}")]
    Field {
        /// The field.
        field: &'static str,
        /// Why it may not be set, and what to do.
        why: &'static str,
    },
    /// A field's value refused by the format's check (what would not pass the
    /// gap either).
    #[error("{0}")]
    Invalid(String),
}

/// Reads a `targetCatalogSourceTemplate`: a `CatalogSource` (YAML or JSON) whose
/// labels, annotations and display and pod settings the catalog's
/// `CatalogSource` takes. What the template cannot set is an error naming the
/// field, never dropped: a `sourceType` other than `grpc`, an `address` or
/// `configMap` (another source than the mirrored catalog), `runAsRoot`, or any
/// field `CatalogSource` does not have. Its name, namespace and image are
/// replaced, as oc-mirror replaces them.
pub fn catalog_source_template(text: &str) -> Result<CatalogSourceTemplate, TemplateError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Object {
        api_version: String,
        kind: String,
        #[serde(default)]
        metadata: Metadata,
        #[serde(default)]
        spec: Spec,
    }
    #[derive(serde::Deserialize, Default)]
    struct Metadata {
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Spec {
        source_type: Option<String>,
        image: Option<String>,
        address: Option<serde_json::Value>,
        config_map: Option<serde_json::Value>,
        run_as_root: Option<serde_json::Value>,
        display_name: Option<String>,
        description: Option<String>,
        publisher: Option<String>,
        priority: Option<i64>,
        icon: Option<airlock_imageset::CatalogIcon>,
        update_strategy: Option<airlock_imageset::UpdateStrategy>,
        grpc_pod_config: Option<airlock_imageset::GrpcPodConfig>,
        #[serde(default)]
        secrets: Vec<String>,
    }
    let o: Object = serde_yaml_ng::from_str(text)?;
    if o.api_version != "operators.coreos.com/v1alpha1" || o.kind != "CatalogSource" {
        return Err(TemplateError::Kind {
            api_version: o.api_version,
            kind: o.kind,
        });
    }
    let s = o.spec;
    if s.source_type.as_deref().is_some_and(|t| t != "grpc") {
        return Err(TemplateError::Field {
            field: "spec.sourceType",
            why: "a mirrored catalog is a grpc catalog source",
        });
    }
    for (set, field) in [
        (s.address.is_some(), "spec.address"),
        (s.config_map.is_some(), "spec.configMap"),
        (s.run_as_root.is_some(), "spec.runAsRoot"),
    ] {
        if set {
            return Err(TemplateError::Field {
                field,
                why: "not taken from a template (the CatalogSource serves the mirrored catalog image); remove it",
            });
        }
    }
    let _replaced = s.image;
    let template = CatalogSourceTemplate {
        labels: o.metadata.labels,
        annotations: o.metadata.annotations,
        display_name: s.display_name,
        description: s.description,
        publisher: s.publisher,
        priority: s.priority,
        icon: s.icon,
        update_strategy: s.update_strategy,
        grpc_pod_config: s.grpc_pod_config,
        secrets: s.secrets,
    };
    airlock_imageset::validate::catalog_source_template(&template)
        .map_err(TemplateError::Invalid)?;
    Ok(template)
}

/// The OLM v1 `ClusterCatalog` of `c`.
pub fn cluster_catalog(c: &CatalogRef) -> String {
    let object = serde_json::json!({
        "apiVersion": "olm.operatorframework.io/v1",
        "kind": "ClusterCatalog",
        "metadata": {
            "name": format!("cc-{}", c.name()),
            "annotations": annotations(),
        },
        "spec": {"priority": 0, "source": {"type": "Image", "image": {"ref": c.image()}}},
    });
    serde_yaml_ng::to_string(&object).expect("cluster catalogs serialise")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigMap {
    api_version: &'static str,
    kind: &'static str,
    metadata: ConfigMapMetadata,
    binary_data: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ConfigMapMetadata {
    name: &'static str,
    namespace: &'static str,
    labels: BTreeMap<&'static str, &'static str>,
    annotations: BTreeMap<&'static str, String>,
}

/// The release signature `ConfigMap` as JSON and YAML, or `None` without signatures.
///
/// Each signature is under `sha256-<hex>-1`: the cluster-version operator takes
/// every key that starts with the digest, and one signature per release is what the
/// signature store's `signature-1` gives.
pub fn signature_configmap(signatures: &[ReleaseSignature]) -> Option<(String, String)> {
    if signatures.is_empty() {
        return None;
    }
    let cm = ConfigMap {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: ConfigMapMetadata {
            name: SIGNATURE_CONFIGMAP,
            namespace: SIGNATURE_NAMESPACE,
            labels: BTreeMap::from([(SIGNATURE_LABEL, "")]),
            annotations: annotations(),
        },
        binary_data: signatures
            .iter()
            .map(|s| (format!("sha256-{}-1", s.digest.hex()), s.signature.clone()))
            .collect(),
    };
    Some((
        serde_json::to_string_pretty(&cm).expect("config maps serialise") + "\n",
        serde_yaml_ng::to_string(&cm).expect("config maps serialise"),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateService {
    api_version: &'static str,
    kind: &'static str,
    metadata: UpdateServiceMetadata,
    spec: UpdateServiceSpec,
}

#[derive(Serialize)]
struct UpdateServiceMetadata {
    name: &'static str,
    namespace: &'static str,
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateServiceSpec {
    graph_data_image: String,
    releases: String,
    replicas: u32,
}

/// The `UpdateService` (OpenShift Update Service operator) serving the mirrored
/// releases from the mirrored graph data, named as oc-mirror names it.
pub fn update_service(refs: &UpdateServiceRefs) -> String {
    let object = UpdateService {
        api_version: "updateservice.operator.openshift.io/v1",
        kind: "UpdateService",
        metadata: UpdateServiceMetadata {
            name: "update-service-oc-mirror",
            namespace: "openshift-update-service",
            annotations: annotations(),
        },
        spec: UpdateServiceSpec {
            graph_data_image: refs.graph_image.clone(),
            releases: refs.releases.clone(),
            replicas: 2,
        },
    };
    serde_yaml_ng::to_string(&object).expect("update services serialise")
}

/// Writes the cluster resources into `dir`, replacing earlier ones; a file with
/// nothing to say is removed, so the directory always describes one publish.
/// Returns the files written.
pub fn write(dir: &Path, resources: &ClusterResources) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let (sig_json, sig_yaml) = signature_configmap(&resources.signatures).unzip();
    let files = [
        (IDMS_FILE, idms(&resources.mirrored)),
        (ITMS_FILE, itms(&resources.mirrored)),
        (LEGACY_ICSP, icsp(&resources.mirrored)),
        (SIGNATURE_FILES[0], sig_json),
        (SIGNATURE_FILES[1], sig_yaml),
        (
            UPDATE_SERVICE_FILE,
            resources.update_service.as_ref().map(update_service),
        ),
    ];
    let catalogs: Vec<(String, Option<String>)> = resources
        .catalogs
        .iter()
        .flat_map(|c| {
            [
                (format!("cs-{}.yaml", c.name()), Some(catalog_source(c))),
                (format!("cc-{}.yaml", c.name()), Some(cluster_catalog(c))),
            ]
        })
        .collect();
    // Catalogs of an earlier publish that this one no longer has.
    let stale: Vec<(String, Option<String>)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| {
            (f.starts_with("cs-") || f.starts_with("cc-"))
                && f.ends_with(".yaml")
                && !catalogs.iter().any(|(c, _)| c == f)
        })
        .map(|f| (f, None))
        .collect();
    let files = files
        .into_iter()
        .map(|(f, c)| (f.to_string(), c))
        .chain(catalogs)
        .chain(stale);
    let mut written = Vec::new();
    for (file, content) in files {
        let file = file.as_str();
        let path = dir.join(file);
        match content {
            Some(text) => {
                let parent = path.parent().unwrap_or(dir);
                std::fs::create_dir_all(parent)?;
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let tmp = parent.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &path)?;
                written.push(path);
            }
            None => {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                // A subdirectory left empty goes too (it fails while not empty).
                if let Some(parent) = path.parent().filter(|p| *p != dir) {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(source: &str, mirror: &str, by_digest: bool, by_tag: bool) -> Mirrored {
        Mirrored {
            source: source.into(),
            mirror: mirror.into(),
            by_digest,
            by_tag,
            category: Category::Generic,
            exact: false,
        }
    }

    #[test]
    fn scope_is_namespace_when_the_path_is_kept() {
        assert_eq!(
            scope(&m(
                "quay.io/ns/app",
                "mirror:5000/prefix/ns/app",
                true,
                false
            )),
            ("quay.io/ns".into(), "mirror:5000/prefix/ns".into())
        );
        assert_eq!(
            scope(&m("localhost:5000/app", "mirror:5000/app", true, false)),
            ("localhost:5000".into(), "mirror:5000".into())
        );
        assert_eq!(
            scope(&m(
                "registry.redhat.io/ubi9/ubi-minimal",
                "mirror:5000/ubi-repo",
                true,
                false
            )),
            (
                "registry.redhat.io/ubi9/ubi-minimal".into(),
                "mirror:5000/ubi-repo".into()
            )
        );
        // Under --max-nested-paths, even a kept path names its repository only.
        let kept = Mirrored {
            exact: true,
            ..m("quay.io/ns/app", "mirror:5000/prefix/ns/app", true, false)
        };
        assert_eq!(
            scope(&kept),
            ("quay.io/ns/app".into(), "mirror:5000/prefix/ns/app".into())
        );
    }

    #[test]
    fn digest_and_tag_images_split_into_idms_and_itms() {
        let images = [
            m("quay.io/ns/a", "mirror:5000/p/ns/a", true, false),
            m("quay.io/ns/b", "mirror:5000/p/ns/b", false, true),
            m("quay.io/other/c", "mirror:5000/p/other/c", true, true),
        ];
        insta::assert_snapshot!(idms(&images).unwrap(), @r"
        ---
        apiVersion: config.openshift.io/v1
        kind: ImageDigestMirrorSet
        metadata:
          name: idms-generic-0
          annotations:
            createdBy: airlock
        spec:
          imageDigestMirrors:
          - mirrors:
            - mirror:5000/p/ns
            source: quay.io/ns
          - mirrors:
            - mirror:5000/p/other
            source: quay.io/other
        ");
        let itms = itms(&images).unwrap();
        assert!(itms.contains("kind: ImageTagMirrorSet"));
        assert!(itms.contains("name: itms-generic-0"));
        assert!(itms.contains("source: quay.io/ns") && itms.contains("source: quay.io/other"));
        assert_eq!(idms(&[m("a.io/x/y", "m/x/y", false, true)]), None);
        // Clusters before 4.13: the same digest entries, as oc-mirror v1 wrote them.
        insta::assert_snapshot!(icsp(&images).unwrap(), @r"
        # For clusters before OpenShift 4.13, instead of idms-oc-mirror.yaml; they cannot
        # redirect images pulled by tag (itms-oc-mirror.yaml).
        ---
        apiVersion: operator.openshift.io/v1alpha1
        kind: ImageContentSourcePolicy
        metadata:
          name: icsp-generic-0
          annotations:
            createdBy: airlock
        spec:
          repositoryDigestMirrors:
          - mirrors:
            - mirror:5000/p/ns
            source: quay.io/ns
          - mirrors:
            - mirror:5000/p/other
            source: quay.io/other
        ");
        assert_eq!(icsp(&[m("a.io/x/y", "m/x/y", false, true)]), None);
    }

    fn resources(mirrored: Vec<Mirrored>) -> ClusterResources {
        ClusterResources {
            mirrored,
            ..Default::default()
        }
    }

    #[test]
    fn files_are_replaced_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = resources(vec![m("quay.io/ns/a", "m:1/ns/a", true, true)]);
        all.signatures.push(ReleaseSignature {
            digest: Digest::of(b"release"),
            signature: "c2ln".into(),
        });
        all.update_service = Some(UpdateServiceRefs {
            releases: "m:1/openshift/release-images".into(),
            graph_image: format!("m:1/openshift/graph-image@{}", Digest::of(b"g")),
        });
        assert_eq!(
            write(dir.path(), &all).unwrap().len(),
            6,
            "IDMS, ITMS, ICSP, two signature files, update service"
        );
        let tags_only = resources(vec![m("quay.io/ns/a", "m:1/ns/a", false, true)]);
        let written = write(dir.path(), &tags_only).unwrap();
        assert_eq!(written, vec![dir.path().join(ITMS_FILE)]);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [ITMS_FILE]);
    }

    #[test]
    fn signature_configmap_is_what_the_cluster_version_operator_reads() {
        let d = Digest::of(b"release");
        let (json, yaml) = signature_configmap(&[ReleaseSignature {
            digest: d.clone(),
            signature: "c2lnbmF0dXJl".into(),
        }])
        .unwrap();
        let from_json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let from_yaml: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(from_json, from_yaml);
        assert_eq!(from_json["kind"], "ConfigMap");
        assert_eq!(
            from_json["metadata"]["namespace"],
            "openshift-config-managed"
        );
        assert_eq!(from_json["metadata"]["labels"][SIGNATURE_LABEL], "");
        assert_eq!(
            from_json["binaryData"][format!("sha256-{}-1", d.hex())],
            "c2lnbmF0dXJl"
        );
        assert_eq!(signature_configmap(&[]), None);
    }

    #[test]
    fn catalog_source_and_cluster_catalog_point_at_the_catalog_by_digest() {
        let c = CatalogRef {
            repository: "mirror:5000/prefix/redhat/redhat-operator-index".into(),
            tag: Some("v4.17".into()),
            digest: Digest::of(b"catalog"),
            template: None,
        };
        assert_eq!(c.name(), "redhat-operator-index-v4-17");
        let image = format!("{}@{}", c.repository, c.digest);
        let cs: serde_json::Value = serde_yaml_ng::from_str(&catalog_source(&c)).unwrap();
        insta::assert_snapshot!(catalog_source(&c).replace(c.digest.hex(), "<hex>"), @r"
        apiVersion: operators.coreos.com/v1alpha1
        kind: CatalogSource
        metadata:
          annotations:
            createdBy: airlock
          name: cs-redhat-operator-index-v4-17
          namespace: openshift-marketplace
        spec:
          image: mirror:5000/prefix/redhat/redhat-operator-index@sha256:<hex>
          sourceType: grpc
        ");
        assert_eq!(cs["spec"]["image"], image.as_str());
        let cc: serde_json::Value = serde_yaml_ng::from_str(&cluster_catalog(&c)).unwrap();
        assert_eq!(cc["apiVersion"], "olm.operatorframework.io/v1");
        assert_eq!(cc["kind"], "ClusterCatalog");
        assert_eq!(cc["metadata"]["name"], "cc-redhat-operator-index-v4-17");
        assert_eq!(cc["spec"]["source"]["type"], "Image");
        assert_eq!(cc["spec"]["priority"], 0);
        assert_eq!(cc["spec"]["source"]["image"]["ref"], image.as_str());

        // By digest only: 12 characters of the digest; odd tags become DNS labels.
        let by_digest = CatalogRef {
            tag: None,
            ..c.clone()
        };
        assert_eq!(
            by_digest.name(),
            format!("redhat-operator-index-{}", &c.digest.hex()[..12])
        );
        let odd = CatalogRef {
            tag: Some("V4.17_Latest-Build".into()),
            ..c.clone()
        };
        assert_eq!(odd.name(), "redhat-operator-index-v4-17-latest");
    }

    /// oc-mirror's `targetCatalogSourceTemplate`: the user's display and pod
    /// settings are kept; the name, namespace, source type, image and Airlock's
    /// annotation are Airlock's whatever the template says.
    #[test]
    fn a_catalog_source_template_adds_its_settings_and_replaces_nothing_of_ours() {
        let template = catalog_source_template(
            r#"apiVersion: operators.coreos.com/v1alpha1
kind: CatalogSource
metadata:
  name: my-operators
  namespace: somewhere-else
  labels:
    team: platform
  annotations:
    createdBy: someone
    example.com/owner: ops
spec:
  sourceType: grpc
  image: quay.io/old/index:v1
  displayName: Site operators
  publisher: Platform team
  priority: -100
  secrets: [mirror-pull]
  updateStrategy:
    registryPoll:
      interval: 30m
  grpcPodConfig:
    nodeSelector:
      node-role.kubernetes.io/infra: ""
    securityContextConfig: restricted
"#,
        )
        .unwrap();
        let c = CatalogRef {
            repository: "mirror:5000/redhat/redhat-operator-index".into(),
            tag: Some("v4.17".into()),
            digest: Digest::of(b"catalog"),
            template: Some(template),
        };
        insta::assert_snapshot!(catalog_source(&c).replace(c.digest.hex(), "<hex>"), @r#"
        apiVersion: operators.coreos.com/v1alpha1
        kind: CatalogSource
        metadata:
          annotations:
            createdBy: airlock
            example.com/owner: ops
          labels:
            team: platform
          name: cs-redhat-operator-index-v4-17
          namespace: openshift-marketplace
        spec:
          displayName: Site operators
          grpcPodConfig:
            nodeSelector:
              node-role.kubernetes.io/infra: ''
            securityContextConfig: restricted
          image: mirror:5000/redhat/redhat-operator-index@sha256:<hex>
          priority: -100
          publisher: Platform team
          secrets:
          - mirror-pull
          sourceType: grpc
          updateStrategy:
            registryPoll:
              interval: 30m
        "#);
    }

    #[test]
    fn a_template_that_would_change_the_source_or_is_not_a_catalog_source_is_refused() {
        let head = "apiVersion: operators.coreos.com/v1alpha1\nkind: CatalogSource\n";
        for (body, wants) in [
            ("spec:\n  sourceType: configmap\n", "spec.sourceType"),
            ("spec:\n  address: 10.0.0.1:50051\n", "spec.address"),
            ("spec:\n  configMap: my-catalog\n", "spec.configMap"),
            ("spec:\n  runAsRoot: true\n", "spec.runAsRoot"),
            ("spec:\n  displayNme: typo\n", "unknown field `displayNme`"),
            (
                "metadata:\n  labels:\n    bad key!: x\n",
                "labels: \"bad key!\"",
            ),
            (
                "spec:\n  secrets: [Not_A_Name]\n",
                "secrets: \"Not_A_Name\"",
            ),
            ("spec:\n  secrets: [a..b]\n", "secrets: \"a..b\""),
            ("metadata:\n  labels:\n    /x: y\n", "labels: \"/x\""),
            (
                "metadata:\n  labels:\n    team: -a\n",
                "labels: the value of \"team\"",
            ),
            (
                "metadata:\n  annotations:\n    olm.catalogImageTemplate: x\n",
                "is OLM's own",
            ),
            (
                "spec:\n  grpcPodConfig:\n    affinity: {}\n",
                "unknown field `affinity`",
            ),
            (
                "spec:\n  updateStrategy:\n    registryPoll:\n      interval: soon\n",
                "updateStrategy.registryPoll.interval",
            ),
            (
                "spec:\n  grpcPodConfig:\n    tolerations:\n    - operator: Maybe\n",
                "tolerations[0].operator",
            ),
        ] {
            let e = catalog_source_template(&format!("{head}{body}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(wants), "{body}: {e}");
        }
        let e = catalog_source_template("apiVersion: v1\nkind: ConfigMap\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a CatalogSource"), "{e}");
    }

    #[test]
    fn catalogs_of_an_earlier_publish_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let c = |name: &str| CatalogRef {
            repository: format!("m:5000/{name}"),
            tag: Some("v1".into()),
            digest: Digest::of(name.as_bytes()),
            template: None,
        };
        let first = ClusterResources {
            catalogs: vec![c("one"), c("two")],
            ..Default::default()
        };
        let written = write(dir.path(), &first).unwrap();
        let names: BTreeSet<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(
                [
                    "cc-one-v1.yaml",
                    "cc-two-v1.yaml",
                    "cs-one-v1.yaml",
                    "cs-two-v1.yaml"
                ]
                .map(String::from)
            )
        );
        std::fs::write(dir.path().join("keep-me.yaml"), "x").unwrap();
        let second = ClusterResources {
            catalogs: vec![c("two")],
            ..Default::default()
        };
        write(dir.path(), &second).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["cc-two-v1.yaml", "cs-two-v1.yaml", "keep-me.yaml"]);
    }
}
