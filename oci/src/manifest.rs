//! The four manifest formats a mirror meets, read just far enough to find what a
//! manifest references.
//!
//! Manifests are never re-serialised: Airlock keeps the bytes it pulled and pushes
//! them unchanged, because a manifest's digest is the sha256 of its bytes and any
//! re-encoding (key order, whitespace, escaping) would give the mirrored image a new
//! identity. This module only *reads* manifests, into [`Manifest`], to learn which
//! blobs and child manifests must travel with them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform, or a list of artifacts).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest type Airlock mirrors, for the `Accept` header of manifest pulls.
/// All four must be listed: a registry asked for fewer may convert the manifest
/// (quay.io answers a list-only request with a schema 1 manifest), which changes
/// its digest.
pub const ACCEPTED: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Largest manifest Airlock accepts. The distribution registry refuses manifests over
/// 4 MiB on push, so anything larger could never be published; refusing it early
/// also bounds what a hostile source can make Airlock hold in memory.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// A content descriptor: what a manifest says about a blob or child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Alternate locations; set on foreign (non-distributable) layers.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Platform of a child manifest in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (signature payloads of cosign layers are carried here).
    #[serde(default, deserialize_with = "lenient_annotations")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Operating system (`linux`, ...).
    pub os: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Docker's annotation naming the kind of an index entry that is not a
/// platform's image (`attestation-manifest` for BuildKit's provenance and SBOMs).
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// Docker's annotation naming the platform image an attestation entry is about.
const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// Whether `s` is a platform as a filter names it: `os/architecture`, each part
/// 1 to 32 lowercase letters, digits or `_` (`linux/amd64`, `linux/ppc64le`).
/// Checked where a filter is read (the configuration, and an imageset, which is
/// hostile input), so that matching never meets a part with a `/` in it.
pub fn valid_platform(s: &str) -> bool {
    let part = |p: &str| {
        (1..=32).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    s.split_once('/')
        .is_some_and(|(os, arch)| part(os) && part(arch))
}

/// Makes the filter `kept` keep what `more` keeps too (an empty filter keeps
/// every platform): an image two entries name travels with what either asks for.
pub fn widen(kept: &mut Vec<String>, more: &[String]) {
    if kept.is_empty() {
        return;
    }
    if more.is_empty() {
        kept.clear();
        return;
    }
    kept.extend(more.iter().cloned());
    kept.sort();
    kept.dedup();
}

/// The platforms an index's children name, for messages (`linux/amd64, linux/arm64`).
pub fn platforms_of(children: &[Descriptor]) -> String {
    let mut named: Vec<String> = children
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| format!("{}/{}", p.os, p.architecture))
        .filter(|p| p != "unknown/unknown")
        .collect();
    named.sort();
    named.dedup();
    match named.is_empty() {
        true => "no platform".into(),
        false => named.join(", "),
    }
}

/// Which children of an index a platform filter (`os/architecture` strings,
/// `linux/amd64`) keeps: those of a platform asked for (any variant), those
/// without a platform (nothing says which they belong to, so they travel), and
/// BuildKit attestations about a kept child. The same rule decides what the
/// connected side ships and what the disconnected side requires, so an imageset
/// that leaves out a child this keeps is refused. An empty filter keeps every child.
pub fn kept_children<'a>(children: &'a [Descriptor], wanted: &[String]) -> Vec<&'a Descriptor> {
    if wanted.is_empty() {
        return children.iter().collect();
    }
    let asked = |d: &Descriptor| {
        d.platform
            .as_ref()
            .is_none_or(|p| platform_wanted(p, wanted))
    };
    let attests = |d: &Descriptor| d.annotations.contains_key(REFERENCE_TYPE);
    let platforms: std::collections::HashSet<&str> = children
        .iter()
        .filter(|d| !attests(d) && asked(d))
        .map(|d| d.digest.as_str())
        .collect();
    children
        .iter()
        .filter(|d| {
            if attests(d) {
                d.annotations
                    .get(REFERENCE_DIGEST)
                    .is_some_and(|about| platforms.contains(about.as_str()))
            } else {
                asked(d)
            }
        })
        .collect()
}

/// Whether `p` is one of the platforms of a filter (`os/architecture`, any variant).
pub fn platform_wanted(p: &Platform, wanted: &[String]) -> bool {
    wanted
        .iter()
        .any(|w| w.split_once('/') == Some((p.os.as_str(), p.architecture.as_str())))
}

/// What a manifest is and what it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's own media type (from its `mediaType` field, or guessed from its
    /// shape as the OCI spec allows the field to be absent).
    pub media_type: String,
    /// The shape, with the references.
    pub kind: ManifestKind,
    /// OCI 1.1 `subject`: the manifest this one refers to (signatures, SBOMs).
    pub subject: Option<Descriptor>,
    /// OCI 1.1 `artifactType`.
    pub artifact_type: Option<String>,
    /// The manifest's annotations (`org.opencontainers.image.base.name`, ...).
    pub annotations: BTreeMap<String, String>,
}

/// The two shapes of manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest: a config blob and layer blobs.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, in order.
        layers: Vec<Descriptor>,
    },
    /// An index or manifest list: child manifests.
    Index {
        /// The child manifests (every platform, every artifact).
        manifests: Vec<Descriptor>,
    },
}

impl Manifest {
    /// The blobs an image manifest references (config first, then layers); empty for an index.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let (config, layers): (Option<&Descriptor>, &[Descriptor]) = match &self.kind {
            ManifestKind::Image { config, layers } => (Some(config), layers),
            ManifestKind::Index { .. } => (None, &[]),
        };
        config.into_iter().chain(layers)
    }

    /// The child manifests of an index; empty for an image manifest.
    pub fn children(&self) -> &[Descriptor] {
        match &self.kind {
            ManifestKind::Index { manifests } => manifests,
            ManifestKind::Image { .. } => &[],
        }
    }
}

/// Why manifest bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not valid JSON of a known manifest shape: {0}")]
    Json(#[from] serde_json::Error),
    /// Docker schema 1, which registries convert on the fly and so cannot be mirrored byte for byte.
    #[error(
        "Docker schema 1 manifests ({0}) are not supported: they cannot be mirrored digest for digest; rebuild or re-push the image with a schema 2 or OCI manifest"
    )]
    Schema1(String),
    /// A media type that is not one of the four manifest types.
    #[error("unsupported manifest media type {0:?}: expected one of {ACCEPTED:?}")]
    MediaType(String),
    /// The shape does not match the declared media type.
    #[error("manifest declares media type {media_type} but {problem}")]
    Shape {
        /// The declared media type.
        media_type: String,
        /// What is missing or extra.
        problem: &'static str,
    },
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest of {0} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit registries accept")]
    TooLarge(usize),
    /// A foreign layer cannot be pulled from the registry that serves the manifest.
    #[error(
        "layer {0} is a foreign (non-distributable) layer; such layers are not mirrored by registries and are not supported"
    )]
    Foreign(Digest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_annotations")]
    annotations: BTreeMap<String, String>,
}

/// Annotations as Airlock reads them: the string values of the map. Some tools
/// write `null` or non-string values; such a manifest is still mirrored byte for
/// byte, so it must not be refused for what Airlock only reads.
fn lenient_annotations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let v: Option<serde_json::Value> = Option::deserialize(d)?;
    Ok(v.as_ref()
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Whether `media_type` names an index (as opposed to an image manifest).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Reads manifest bytes. `content_type` is what the registry said (`Content-Type`),
/// used only when the manifest itself has no `mediaType` field.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(bytes.len()));
    }
    let raw: Raw = serde_json::from_slice(bytes)?;
    if raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1(
            raw.media_type
                .unwrap_or_else(|| DOCKER_SCHEMA1[0].to_string()),
        ));
    }
    let media_type = match (&raw.media_type, content_type) {
        (Some(m), _) => m.clone(),
        (None, Some(ct)) if ACCEPTED.contains(&ct) => ct.to_string(),
        (None, _) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, _) => OCI_MANIFEST.to_string(),
    };
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) {
        return Err(ManifestError::Schema1(media_type));
    }
    let shape = |problem| ManifestError::Shape {
        media_type: media_type.clone(),
        problem,
    };
    let kind = if is_index(&media_type) {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(shape("has config or layers"));
        }
        ManifestKind::Index {
            manifests: raw
                .manifests
                .ok_or_else(|| shape("has no manifests list"))?,
        }
    } else if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        if raw.manifests.is_some() {
            return Err(shape("has a manifests list"));
        }
        let layers = raw.layers.unwrap_or_default();
        if let Some(foreign) = layers.iter().find(|l| !l.urls.is_empty()) {
            return Err(ManifestError::Foreign(foreign.digest.clone()));
        }
        ManifestKind::Image {
            config: raw.config.ok_or_else(|| shape("has no config"))?,
            layers,
        }
    } else {
        return Err(ManifestError::MediaType(media_type));
    };
    Ok(Manifest {
        media_type,
        kind,
        subject: raw.subject,
        artifact_type: raw.artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(rel: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/real/oc-mirror/registry-manifests")
            .join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn reads_real_docker_manifest_list_and_children() {
        let name = "sha256-d15a206e4ee462e82ab722ed84dfa514ab9ed8d85100d591c04314ae7c2162ee.json";
        let bytes = fixture(&format!("docker-manifest-list/{name}"));
        assert_eq!(
            Digest::of(&bytes).hex(),
            &name["sha256-".len()..name.len() - 5],
            "fixture bytes are the registry's bytes"
        );
        let m = parse(&bytes, None).unwrap();
        assert_eq!(m.media_type, DOCKER_MANIFEST_LIST);
        assert_eq!(m.children().len(), 4);
        assert_eq!(m.blobs().count(), 0);
        for child in m.children() {
            let bytes = fixture(&format!(
                "docker-manifest-list/{}.json",
                child.digest.tag_form()
            ));
            assert_eq!(Digest::of(&bytes), child.digest);
            assert_eq!(bytes.len() as u64, child.size);
            let c = parse(&bytes, None).unwrap();
            assert_eq!(c.media_type, DOCKER_MANIFEST);
            assert!(c.blobs().count() >= 2, "config and at least one layer");
        }
    }

    #[test]
    fn odd_annotations_are_read_leniently() {
        let d = Digest::of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"a","digest":"{d}","size":1}},"layers":[{{"mediaType":"l","digest":"{d}","size":1,"annotations":null}}],"annotations":{{"a":"b","n":1,"z":null}}}}"#
        );
        let p = parse(m.as_bytes(), None).unwrap();
        assert_eq!(p.annotations.len(), 1);
        assert_eq!(p.annotations["a"], "b");
        assert!(p.blobs().nth(1).unwrap().annotations.is_empty());
    }

    #[test]
    fn guesses_oci_types_when_media_type_is_absent() {
        let d = Digest::of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"a","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert_eq!(parse(m.as_bytes(), None).unwrap().media_type, OCI_MANIFEST);
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1}}]}}"#
        );
        assert_eq!(parse(i.as_bytes(), None).unwrap().media_type, OCI_INDEX);
    }

    #[test]
    fn refuses_schema1_and_mismatched_shapes() {
        assert!(matches!(
            parse(br#"{"schemaVersion":1,"name":"x"}"#, None),
            Err(ManifestError::Schema1(_))
        ));
        let bad = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","layers":[]}}"#);
        assert!(matches!(
            parse(bad.as_bytes(), None),
            Err(ManifestError::Shape { .. })
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None),
            Err(ManifestError::MediaType(_))
        ));
        assert!(matches!(
            parse(b"not json", None),
            Err(ManifestError::Json(_))
        ));
        let forged = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"a","digest":"sha256:../../x","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(forged.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn a_platform_filter_keeps_its_platforms_every_variant_and_what_names_no_platform() {
        let name = "sha256-d15a206e4ee462e82ab722ed84dfa514ab9ed8d85100d591c04314ae7c2162ee.json";
        let real = parse(&fixture(&format!("docker-manifest-list/{name}")), None).unwrap();
        let arches = |kept: Vec<&Descriptor>| -> Vec<String> {
            kept.iter()
                .map(|d| d.platform.as_ref().unwrap().to_string())
                .collect()
        };
        // The real list has linux/arm twice (v6 and v7): both are arm.
        assert_eq!(
            arches(kept_children(real.children(), &["linux/arm".into()])),
            ["linux/arm/v6", "linux/arm/v7"]
        );
        assert_eq!(
            arches(kept_children(
                real.children(),
                &["linux/amd64".into(), "linux/arm64".into()]
            )),
            ["linux/amd64", "linux/arm64"]
        );
        assert_eq!(kept_children(real.children(), &[]).len(), 4);
        assert!(kept_children(real.children(), &["linux/s390x".into()]).is_empty());
        assert!(kept_children(real.children(), &["windows/amd64".into()]).is_empty());
        assert_eq!(
            platforms_of(real.children()),
            "linux/amd64, linux/arm, linux/arm64"
        );
    }

    /// BuildKit puts an attestation entry (platform unknown/unknown) beside
    /// each platform: it travels with the platform it is about, not alone.
    #[test]
    fn an_attestation_travels_with_the_platform_it_is_about() {
        let entry = |digest: &Digest, platform: &str, about: Option<&Digest>| {
            let (os, arch) = platform.split_once('/').unwrap();
            let annotations = match about {
                Some(d) => format!(
                    r#","annotations":{{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"{d}"}}"#
                ),
                None => String::new(),
            };
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"}}{annotations}}}"#
            )
        };
        let (amd, arm) = (Digest::of(b"amd64"), Digest::of(b"arm64"));
        let (amd_att, arm_att) = (Digest::of(b"amd64 att"), Digest::of(b"arm64 att"));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{},{},{},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1}}]}}"#,
            entry(&amd, "linux/amd64", None),
            entry(&arm, "linux/arm64", None),
            entry(&amd_att, "unknown/unknown", Some(&amd)),
            entry(&arm_att, "unknown/unknown", Some(&arm)),
            Digest::of(b"no platform"),
        );
        let m = parse(index.as_bytes(), None).unwrap();
        let kept: Vec<&Digest> = kept_children(m.children(), &["linux/amd64".into()])
            .iter()
            .map(|d| &d.digest)
            .collect();
        assert_eq!(kept, [&amd, &amd_att, &Digest::of(b"no platform")]);
        // Asking for unknown/unknown does not keep an attestation without its platform.
        assert_eq!(
            kept_children(m.children(), &["unknown/unknown".into()]).len(),
            1,
            "only the entry without a platform"
        );
    }

    #[test]
    fn a_platform_is_two_parts_of_lowercase_letters_digits_and_underscores() {
        for good in [
            "linux/amd64",
            "linux/ppc64le",
            "windows/386",
            "linux/mips64_le",
        ] {
            assert!(valid_platform(good), "{good}");
        }
        let long = format!("linux/{}", "a".repeat(33));
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/arm/v7",
            "Linux/amd64",
            "linux/amd 64",
            "linux/../x",
            &long,
        ] {
            assert!(!valid_platform(bad), "{bad}");
        }
    }

    #[test]
    fn widening_a_filter_keeps_what_either_keeps() {
        let mut kept = vec!["linux/amd64".to_string()];
        widen(&mut kept, &["linux/arm64".into(), "linux/amd64".into()]);
        assert_eq!(kept, ["linux/amd64", "linux/arm64"]);
        widen(&mut kept, &[]);
        assert!(
            kept.is_empty(),
            "an entry without a filter wants every platform"
        );
        widen(&mut kept, &["linux/s390x".into()]);
        assert!(kept.is_empty(), "every platform stays every platform");
    }
}
