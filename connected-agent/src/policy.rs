//! Image policy: what must not enter the imageset.
//!
//! Two kinds of rule, both applied before a single blob of an image is pulled:
//!
//! - `mirror.blockedImages` (oc-mirror's): a regular expression on the image's name,
//!   checked before even its manifest is fetched;
//! - `mirror.blockedBaseImages` (Airlock's): images built on a listed base. This
//!   needs the image's manifests (their layer lists and annotations), which are
//!   fetched anyway to know what to ship; layers and configs are not.
//!
//! An image built on a base reuses the base's compressed layers, digest for digest,
//! and adds its own on top, so "its layer list begins with the base's whole layer
//! list" finds it without reading a byte of its layers. The OCI annotations
//! `org.opencontainers.image.base.name` and `.base.digest` find images whose
//! builder recorded the base even when the layers were rewritten (squashed,
//! recompressed).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use airlock_config::{BaseRule, BlockList, ImageSpec};
use airlock_imageset::ImageKind;
use airlock_oci::digest::Digest;
use airlock_oci::manifest::{ManifestKind, Platform};
use airlock_oci::reference::ImageRef;
use airlock_registry::Pool;
use futures::StreamExt;

use crate::collect::{self, CollectError, Resolved};
use crate::error::Error;
use crate::payload::small_blob;

/// What travels besides the configured images, and what they must carry.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    /// Leave signatures and referrers behind.
    pub remove_signatures: bool,
    /// cosign public keys; when given, every image must be signed by one.
    pub require_signatures: Vec<std::path::PathBuf>,
    /// A containers policy.json every image must satisfy (`--secure-policy`).
    pub secure_policy: Option<std::path::PathBuf>,
    /// The registries.d directory naming lookaside signature stores
    /// (`--registries.d`), else the containers default.
    pub registries_d: Option<std::path::PathBuf>,
}

/// The OCI annotation naming the base image (a reference).
pub const BASE_NAME: &str = "org.opencontainers.image.base.name";
/// The OCI annotation giving the base image's manifest digest.
pub const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Why an image was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Its name matched a `blockedImages` pattern.
    Name,
    /// The layers of the manifest for `platform` begin with all of the base's.
    Layers {
        /// The platform whose manifest matched.
        platform: String,
    },
    /// An annotation (`key`) of the manifest for `platform` names the base.
    Annotation {
        /// The platform whose manifest matched (`index` for the index's own).
        platform: String,
        /// The annotation.
        key: &'static str,
    },
}

/// An image left out by a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The image as the configuration (or the release payload) names it.
    pub image: String,
    /// The rule's field (`mirror.blockedImages[1]`, `mirror.blockedBaseImages[0]`).
    pub field: String,
    /// The rule: the pattern, or the base image.
    pub pattern: String,
    /// What matched.
    pub detection: Detection,
}

impl fmt::Display for Blocked {
    /// One line: image, field, pattern or base, then for base rules the platform
    /// and how it was detected.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.image, self.field, self.pattern)?;
        match &self.detection {
            Detection::Name => Ok(()),
            Detection::Layers { platform } => write!(f, " {platform} layers"),
            Detection::Annotation { platform, key } => {
                write!(f, " {platform} annotation:{key}")
            }
        }
    }
}

/// Refuses to leave out what a release or catalog needs unless the rule says
/// `evenWhenRequired`: a release without one of its components cannot be
/// installed or updated to where it is needed, nor an operator without its
/// images. A release image or catalog itself is never left out that way: its
/// records (signatures, UpdateService, CatalogSource) would point at nothing;
/// leave the release or catalog out of the configuration instead. Additional
/// images and referrers are left out and reported.
fn refuse_release_part(
    spec: &ImageSpec,
    field: &str,
    rule: &str,
    even_when_required: bool,
) -> Result<(), Error> {
    let whole = match spec.kind {
        ImageKind::Generic | ImageKind::Referrer | ImageKind::Chart => return Ok(()),
        ImageKind::Release => "a selected release's image",
        ImageKind::Catalog => "a selected operator catalog",
        ImageKind::ReleaseComponent | ImageKind::Operator | ImageKind::GraphData => {
            if even_when_required {
                tracing::warn!(image = %spec.name, rule = %field, "an image a release or catalog needs is left out (evenWhenRequired): installs and updates that need it fail at the mirror");
                return Ok(());
            }
            return Err(Error::Usage(format!(
                "{} is needed by a selected release or operator, but {field} blocks it ({rule:?}); it cannot be mirrored whole without it: narrow the rule, leave the release or operator out, or set {field}.evenWhenRequired: true to mirror it without the image",
                spec.name
            )));
        }
    };
    Err(Error::Usage(format!(
        "{} is {whole}, but {field} blocks it ({rule:?}); narrow the rule or leave it out of the configuration (evenWhenRequired does not apply to it)",
        spec.name
    )))
}

/// Leaves out the images a rule of `blocked` matches, before anything of them is
/// pulled.
pub fn apply_blocklist(
    images: Vec<ImageSpec>,
    blocked: &BlockList,
) -> Result<(Vec<ImageSpec>, Vec<Blocked>), Error> {
    let mut kept = Vec::with_capacity(images.len());
    let mut left_out = Vec::new();
    for spec in images {
        match name_rule(&spec, blocked)? {
            Some(b) => left_out.push(b),
            None => kept.push(spec),
        }
    }
    Ok((kept, left_out))
}

/// The `blockedImages` rule that leaves `spec` out, if any. The destination a rule
/// also sees is the path and tag under the mirror prefix.
fn name_rule(spec: &ImageSpec, blocked: &BlockList) -> Result<Option<Blocked>, Error> {
    let repo = spec
        .target_repo
        .clone()
        .unwrap_or_else(|| spec.source.repository().to_string());
    let destination = match spec.target_tag.as_deref().or(spec.source.tag()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo,
    };
    let Some(rule) = blocked.matching(&spec.name, &destination) else {
        return Ok(None);
    };
    refuse_release_part(spec, &rule.field, &rule.pattern, rule.even_when_required)?;
    tracing::info!(image = %spec.name, rule = %rule.field, pattern = %rule.pattern, "image blocked");
    Ok(Some(Blocked {
        image: spec.name.clone(),
        field: rule.field.clone(),
        pattern: rule.pattern.clone(),
        detection: Detection::Name,
    }))
}

/// Keeps the images (and their trees, one each, in the same order) whose flag
/// in `keep` is set.
fn retain_pairs(images: &mut Vec<ImageSpec>, resolved: &mut Vec<Arc<Resolved>>, keep: &[bool]) {
    let mut k = keep.iter();
    images.retain(|_| *k.next().expect("one flag per image"));
    let mut k = keep.iter();
    resolved.retain(|_| *k.next().expect("one flag per image"));
}

/// One platform's manifest of a base image.
#[derive(Debug)]
struct BasePlatform {
    platform: String,
    layers: Vec<Digest>,
}

/// A base image of `mirror.blockedBaseImages`, resolved.
#[derive(Debug)]
struct Base {
    field: String,
    name: ImageRef,
    even_when_required: bool,
    /// The top manifest and every platform manifest: what a `base.digest`
    /// annotation may name.
    digests: HashSet<Digest>,
    platforms: Vec<BasePlatform>,
}

impl Base {
    /// Whether a `base.name` annotation names this base: the same repository and
    /// tag, or a digest of it.
    fn named_by(&self, annotation: &str) -> bool {
        let Ok(r) = annotation.parse::<ImageRef>() else {
            return false;
        };
        if let Some(d) = r.digest() {
            return self.digests.contains(d);
        }
        let r = r.with_default_tag();
        r.name() == self.name.name() && self.name.tag().is_some() && r.tag() == self.name.tag()
    }
}

/// The resolved `mirror.blockedBaseImages`.
#[derive(Debug, Default)]
pub struct BaseImages(Vec<Base>);

impl BaseImages {
    /// Resolves each base: its manifests, every platform's layer list, and for a
    /// single-platform base its platform (from its config, the one blob read).
    pub async fn resolve(rules: Vec<BaseRule>, pool: &Pool) -> Result<Self, Error> {
        let resolved: Vec<Result<Base, Error>> = futures::stream::iter(rules)
            .map(|rule| async move {
                let name = rule.image;
                let label = format!("base image {name} ({})", rule.field);
                let r = collect::resolve(&label, &name, &[], pool).await?;
                let mut base = Base {
                    field: rule.field,
                    name,
                    even_when_required: rule.even_when_required,
                    digests: r.manifests.iter().map(|m| m.digest.clone()).collect(),
                    platforms: Vec::new(),
                };
                for m in &r.manifests {
                    let parsed = m.parse().map_err(|e| CollectError::Inconsistent {
                        image: label.clone(),
                        problem: format!("manifest {}: {e}", m.digest),
                    })?;
                    let ManifestKind::Image { config, layers } = &parsed.kind else {
                        continue;
                    };
                    let platform = match r.platforms.get(&m.digest) {
                        Some(p) => p.to_string(),
                        None => config_platform(pool, &base.name, config, &label).await?,
                    };
                    base.platforms.push(BasePlatform {
                        platform,
                        layers: layers.iter().map(|l| l.digest.clone()).collect(),
                    });
                }
                tracing::info!(base = %base.name, field = %base.field, platforms = base.platforms.len(), "blocked base image resolved");
                Ok(base)
            })
            .buffered(4)
            .collect()
            .await;
        Ok(BaseImages(resolved.into_iter().collect::<Result<_, _>>()?))
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the rule at `field` says `evenWhenRequired`.
    fn even_when_required(&self, field: &str) -> bool {
        self.0
            .iter()
            .any(|b| b.field == field && b.even_when_required)
    }

    /// Every way `image`'s manifests show one of the bases: at most one finding per
    /// manifest (the first base, layers before annotations).
    pub fn classify(&self, image: &str, r: &Resolved) -> Vec<Blocked> {
        let mut found = Vec::new();
        for m in &r.manifests {
            // Manifests were parsed when resolved; one that parsed then parses now.
            let Ok(parsed) = m.parse() else { continue };
            let own = r.platforms.get(&m.digest).map(Platform::to_string);
            let finding = self.0.iter().find_map(|base| {
                let blocked = |detection| Blocked {
                    image: image.to_string(),
                    field: base.field.clone(),
                    pattern: base.name.to_string(),
                    detection,
                };
                if let ManifestKind::Image { layers, .. } = &parsed.kind {
                    let on_base = base.platforms.iter().find(|b| {
                        !b.layers.is_empty()
                            && layers.len() >= b.layers.len()
                            && layers.iter().zip(&b.layers).all(|(l, d)| l.digest == *d)
                    });
                    if let Some(b) = on_base {
                        return Some(blocked(Detection::Layers {
                            platform: own.clone().unwrap_or_else(|| b.platform.clone()),
                        }));
                    }
                }
                let platform = || {
                    own.clone().unwrap_or_else(|| match parsed.kind {
                        ManifestKind::Index { .. } => "index".to_string(),
                        ManifestKind::Image { .. } => "single-platform".to_string(),
                    })
                };
                if let Some(d) = parsed.annotations.get(BASE_DIGEST)
                    && d.parse::<Digest>().is_ok_and(|d| base.digests.contains(&d))
                {
                    return Some(blocked(Detection::Annotation {
                        platform: platform(),
                        key: BASE_DIGEST,
                    }));
                }
                if let Some(n) = parsed.annotations.get(BASE_NAME)
                    && base.named_by(n)
                {
                    return Some(blocked(Detection::Annotation {
                        platform: platform(),
                        key: BASE_NAME,
                    }));
                }
                None
            });
            found.extend(finding);
        }
        found
    }
}

/// The platform a single-platform base's config declares.
async fn config_platform(
    pool: &Pool,
    base: &ImageRef,
    config: &airlock_oci::manifest::Descriptor,
    label: &str,
) -> Result<String, Error> {
    #[derive(serde::Deserialize)]
    struct Config {
        os: String,
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let inconsistent = |problem: String| CollectError::Inconsistent {
        image: label.to_string(),
        problem,
    };
    let client = pool
        .client(base.registry())
        .await
        .map_err(|source| CollectError::Registry {
            image: label.to_string(),
            source,
        })?;
    let bytes = small_blob(&client, base.repository(), config, "config")
        .await
        .map_err(|e| inconsistent(e.to_string()))?;
    let c: Config = serde_json::from_slice(&bytes)
        .map_err(|e| inconsistent(format!("config {}: {e}", config.digest)))?;
    Ok(Platform {
        os: c.os,
        architecture: c.architecture,
        variant: c.variant,
    }
    .to_string())
}

/// Leaves out the images built on a base of `bases`, by their resolved manifest
/// trees (one per spec, in order). An image is left out whole when any of its
/// platforms is built on a base: an index cannot be mirrored in part without
/// changing its digest.
pub fn apply_base_rules(
    images: &mut Vec<ImageSpec>,
    resolved: &mut Vec<Arc<Resolved>>,
    bases: &BaseImages,
) -> Result<Vec<Blocked>, Error> {
    if bases.is_empty() {
        return Ok(Vec::new());
    }
    let mut left_out = Vec::new();
    let mut keep = Vec::with_capacity(images.len());
    for (spec, r) in images.iter().zip(resolved.iter()) {
        let found = bases.classify(&spec.name, r);
        if let Some(first) = found.first() {
            let even_when_required = found.iter().all(|f| bases.even_when_required(&f.field));
            refuse_release_part(spec, &first.field, &first.pattern, even_when_required)?;
            for b in &found {
                tracing::info!(image = %b.image, rule = %b.field, base = %b.pattern, detection = ?b.detection, "image built on a blocked base");
            }
        }
        keep.push(found.is_empty());
        left_out.extend(found);
    }
    retain_pairs(images, resolved, &keep);
    Ok(left_out)
}

/// Both rules over images found after resolving (signatures and referrers):
/// those they match are left out and reported like any other image.
pub fn apply_resolved(
    images: &mut Vec<ImageSpec>,
    resolved: &mut Vec<Arc<Resolved>>,
    blocked: &BlockList,
    bases: &BaseImages,
) -> Result<Vec<Blocked>, Error> {
    let mut out = Vec::new();
    let mut keep = Vec::with_capacity(images.len());
    for spec in images.iter() {
        let b = name_rule(spec, blocked)?;
        keep.push(b.is_none());
        out.extend(b);
    }
    retain_pairs(images, resolved, &keep);
    out.extend(apply_base_rules(images, resolved, bases)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_config as config;

    fn spec(name: &str, kind: ImageKind, target_repo: Option<&str>) -> ImageSpec {
        ImageSpec {
            source: name.parse::<ImageRef>().unwrap().with_default_tag(),
            name: name.to_string(),
            target_repo: target_repo.map(str::to_string),
            target_tag: None,
            kind,
            subject: None,
            platforms: Vec::new(),
        }
    }

    fn blocklist(patterns: &[&str]) -> BlockList {
        let rules: String = patterns
            .iter()
            .map(|p| format!("  - name: '{p}'\n"))
            .collect();
        blocklist_yaml(&rules)
    }

    fn blocklist_yaml(rules: &str) -> BlockList {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("isc.yaml");
        std::fs::write(
            &path,
            format!("apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  blockedImages:\n{rules}"),
        )
        .unwrap();
        config::load(&path).unwrap().blocked_images()
    }

    #[test]
    fn blocklist_matches_source_or_destination_and_refuses_release_parts() {
        let rules = blocklist(&["quay.io/team/old", "^mirror-only/"]);
        let (kept, left_out) = apply_blocklist(
            vec![
                spec("quay.io/team/old:1", ImageKind::Generic, None),
                spec("quay.io/team/new:1", ImageKind::Generic, None),
                spec("quay.io/x/y:1", ImageKind::Generic, Some("mirror-only/y")),
            ],
            &rules,
        )
        .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, "quay.io/team/new:1");
        let fields: Vec<&str> = left_out.iter().map(|b| b.field.as_str()).collect();
        assert_eq!(
            fields,
            ["mirror.blockedImages[0]", "mirror.blockedImages[1]"]
        );

        let component = || {
            vec![spec(
                "quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                ImageKind::ReleaseComponent,
                Some("openshift/release"),
            )]
        };
        let e = apply_blocklist(component(), &blocklist(&["art-dev"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "is needed by a selected release or operator, but mirror.blockedImages[0] blocks it"
            ),
            "{e}"
        );
        assert!(
            e.contains("set mirror.blockedImages[0].evenWhenRequired: true"),
            "{e}"
        );
        let (kept, left_out) = apply_blocklist(
            component(),
            &blocklist_yaml("  - name: art-dev\n    evenWhenRequired: true\n"),
        )
        .unwrap();
        assert!(kept.is_empty());
        assert_eq!(left_out.len(), 1);
        // Never the release image itself: its signature and UpdateService would
        // point at nothing.
        let e = apply_blocklist(
            vec![spec(
                "quay.io/openshift-release-dev/ocp-release:4.18.1-x86_64",
                ImageKind::Release,
                None,
            )],
            &blocklist_yaml("  - name: ocp-release\n    evenWhenRequired: true\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a selected release's image"), "{e}");
        assert!(e.contains("evenWhenRequired does not apply"), "{e}");
    }

    #[test]
    fn base_name_annotation_matches_same_repository_and_tag_or_a_base_digest() {
        let d = Digest::of(b"base");
        let base = Base {
            field: "mirror.blockedBaseImages[0]".into(),
            name: "registry.example.com/ubi9/ubi:9.4".parse().unwrap(),
            even_when_required: false,
            digests: [d.clone()].into(),
            platforms: Vec::new(),
        };
        assert!(base.named_by("registry.example.com/ubi9/ubi:9.4"));
        assert!(base.named_by(&format!("registry.example.com/ubi9/ubi@{d}")));
        assert!(!base.named_by("registry.example.com/ubi9/ubi:9.5"));
        assert!(!base.named_by("registry.example.com/ubi9/ubi-minimal:9.4"));
        assert!(!base.named_by(&format!(
            "registry.example.com/ubi9/ubi@{}",
            Digest::of(b"other")
        )));
        assert!(!base.named_by("not a reference"));
    }
}
