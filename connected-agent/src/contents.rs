//! What the last imageset of a workspace holds, and why each image is in it.
//!
//! An imageset lists images, not the reasons they are there; deleting "release
//! 4.14.3" or "bundle foo.v1.2.0" needs the reasons. A release component tagged for
//! two releases, or a related image two bundles name, must stay while either is
//! kept. So every `create` records, with its sequence, each image's **owners** (the
//! releases, bundles, catalogs and `additionalImages` entries that brought it) and
//! its **tree** (the manifests and blobs it references). `delete` works only from
//! this record, never from the sources: what it deletes is exactly what was shipped,
//! even where a tag at the source has since moved.

use std::collections::{BTreeSet, HashMap, HashSet};

use airlock_imageset::{BlobRecord, ImageKind, ImageRecord, ReleaseRecord};
use airlock_oci::digest::Digest;
use airlock_registry::RawManifest;
use serde::{Deserialize, Serialize};

/// A reason an image is in an imageset: what the configuration selected that
/// brought it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "camelCase", deny_unknown_fields)]
pub enum Owner {
    /// An OpenShift release (its image and every component it names).
    Release {
        /// `4.14.3`.
        version: String,
        /// As the configuration spells it (`amd64`, `multi`, ...).
        arch: String,
    },
    /// An operator bundle (its image and its related images).
    Bundle {
        /// The `operators[].catalog` entry as written.
        catalog: String,
        /// Package name.
        package: String,
        /// Bundle name (`foo.v1.2.3`).
        bundle: String,
        /// Bundle version.
        version: String,
        /// The selected channels it is in.
        channels: Vec<String>,
    },
    /// An operator catalog image.
    Catalog {
        /// The `operators[].catalog` entry as written.
        catalog: String,
        /// Where it is placed (`targetCatalog`, `targetTag`): one catalog mirrored
        /// twice under different targets is two owners.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// Its tag at the mirror.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
    },
    /// An `additionalImages` entry.
    Image {
        /// The entry's `name` as written.
        name: String,
        /// `targetRepo`, if set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// Its tag at the mirror (the source's, or `targetTag`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
    },
    /// The update-graph data image (`platform.graph`).
    Graph,
    /// A Helm chart (`mirror.helm`); the images it names are `Image` owners.
    Chart {
        /// Where the chart came from (its record's source).
        source: String,
        /// Its version, the tag at the mirror.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
}

impl Owner {
    /// An image that is its own reason to be there.
    fn image(image: &ImageRecord) -> Self {
        Owner::Image {
            name: image.source.clone(),
            target: image.target_repository.clone(),
            tag: image.tag.clone(),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Release { version, arch } => write!(f, "release {version} ({arch})"),
            Owner::Bundle {
                catalog,
                package,
                bundle,
                ..
            } => write!(f, "bundle {bundle} of package {package} in {catalog}"),
            Owner::Catalog { catalog, .. } => write!(f, "catalog {catalog}"),
            Owner::Image { name, .. } => write!(f, "additional image {name}"),
            Owner::Graph => f.write_str("the update graph image"),
            Owner::Chart { source, .. } => write!(f, "Helm chart {source}"),
        }
    }
}

/// The content of one imageset with the owners and tree of each image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Contents {
    /// The sequence this describes.
    pub sequence: u64,
    /// As in the imageset.
    pub images: Vec<ImageRecord>,
    /// As in the imageset.
    pub releases: Vec<ReleaseRecord>,
    /// As in the imageset, without where the bytes travelled (`parts`).
    pub blobs: Vec<BlobRecord>,
    /// For each image, what brought it (never empty).
    pub owners: Vec<Vec<Owner>>,
    /// For each image, the positions in `blobs` of every manifest and blob it
    /// references.
    pub trees: Vec<Vec<u32>>,
}

impl Contents {
    /// Records what `images` are and why. `manifests` holds the bytes of every
    /// manifest of the imageset; `bundles` the owners of each bundle and related
    /// image by pull spec (from the catalogs).
    pub fn new(
        sequence: u64,
        images: &[ImageRecord],
        releases: &[ReleaseRecord],
        blobs: &[BlobRecord],
        manifests: &HashMap<Digest, RawManifest>,
        bundles: &HashMap<String, Vec<Owner>>,
    ) -> Self {
        Self::with_carried(sequence, images, releases, blobs, manifests, bundles, None)
    }

    /// [`Contents::new`] for an imageset that carries images over from
    /// `previous` (`carried`, by digest: left out of this pull, their manifests
    /// were not read): they keep the trees recorded then, before owners are
    /// worked out, so that their signatures and referrers still belong to them.
    pub fn with_carried(
        sequence: u64,
        images: &[ImageRecord],
        releases: &[ReleaseRecord],
        blobs: &[BlobRecord],
        manifests: &HashMap<Digest, RawManifest>,
        bundles: &HashMap<String, Vec<Owner>>,
        carried: Option<(&Contents, &HashSet<Digest>)>,
    ) -> Self {
        let position: HashMap<&Digest, u32> = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| (&b.digest, i as u32))
            .collect();
        let mut trees: Vec<Vec<u32>> = images
            .iter()
            .map(|image| {
                tree(&image.digest, manifests)
                    .iter()
                    .filter_map(|d| position.get(d).copied())
                    .collect()
            })
            .collect();
        if let Some((previous, carried)) = carried {
            for (k, image) in images.iter().enumerate() {
                if !carried.contains(&image.digest) {
                    continue;
                }
                let Some(j) = previous
                    .images
                    .iter()
                    .position(|p| p.digest == image.digest)
                else {
                    continue;
                };
                trees[k] = previous.trees[j]
                    .iter()
                    .filter_map(|&p| previous.blobs.get(p as usize))
                    .filter_map(|b| position.get(&b.digest).copied())
                    .collect();
            }
        }
        let mut owners: Vec<Vec<Owner>> = images
            .iter()
            .map(|image| direct_owners(image, releases, bundles))
            .collect();
        // A referrer belongs to what it is about: the images whose tree holds its
        // subject. Chains (a signature of an SBOM) are followed to their end.
        loop {
            let mut changed = false;
            for (i, image) in images.iter().enumerate() {
                let Some(subject) = &image.subject else {
                    continue;
                };
                let Some(&at) = position.get(subject) else {
                    continue;
                };
                let mut found: BTreeSet<Owner> = owners[i].iter().cloned().collect();
                for (j, t) in trees.iter().enumerate() {
                    if j != i && t.contains(&at) {
                        found.extend(owners[j].iter().cloned());
                    }
                }
                if found.len() > owners[i].len() {
                    owners[i] = found.into_iter().collect();
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for (i, image) in images.iter().enumerate() {
            if owners[i].is_empty() {
                // Nothing else claims it: it is deletable by its own name.
                owners[i].push(Owner::image(image));
            }
        }
        Contents {
            sequence,
            images: images.to_vec(),
            releases: releases.to_vec(),
            blobs: blobs
                .iter()
                .map(|b| BlobRecord {
                    parts: Vec::new(),
                    ..b.clone()
                })
                .collect(),
            owners,
            trees,
        }
    }

    /// What remains once `deleted` owners are gone: every image that keeps an
    /// owner, the releases not deleted, and only the blobs the remaining images
    /// reference (in their order here).
    pub fn without(&self, deleted: &HashSet<&Owner>, sequence: u64) -> Remaining {
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (i, owners) in self.owners.iter().enumerate() {
            let left: Vec<Owner> = owners
                .iter()
                .filter(|o| !deleted.contains(o))
                .cloned()
                .collect();
            if left.is_empty() {
                removed.push(i);
            } else {
                kept.push((i, left));
            }
        }
        let used: BTreeSet<u32> = kept
            .iter()
            .flat_map(|(i, _)| self.trees[*i].iter().copied())
            .collect();
        let renumber: HashMap<u32, u32> = used
            .iter()
            .enumerate()
            .map(|(new, &old)| (old, new as u32))
            .collect();
        let releases = self
            .releases
            .iter()
            .filter(|r| {
                !deleted.contains(&Owner::Release {
                    version: r.version.clone(),
                    arch: r.arch.clone(),
                })
            })
            .cloned()
            .collect();
        let contents = Contents {
            sequence,
            images: kept.iter().map(|(i, _)| self.images[*i].clone()).collect(),
            releases,
            blobs: used
                .iter()
                .map(|&b| self.blobs[b as usize].clone())
                .collect(),
            owners: kept.iter().map(|(_, o)| o.clone()).collect(),
            trees: kept
                .iter()
                .map(|(i, _)| self.trees[*i].iter().map(|b| renumber[b]).collect())
                .collect(),
        };
        let freed = removed
            .iter()
            .flat_map(|&i| self.trees[i].iter())
            .filter(|b| !used.contains(b))
            .map(|&b| self.blobs[b as usize].digest.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Remaining {
            contents,
            removed: removed.iter().map(|&i| self.images[i].clone()).collect(),
            freed,
        }
    }
}

/// [`Contents::without`]'s answer.
#[derive(Debug)]
pub struct Remaining {
    /// What the imageset after the delete holds.
    pub contents: Contents,
    /// The images no owner keeps.
    pub removed: Vec<ImageRecord>,
    /// Manifests and blobs only removed images referenced: no longer "shipped", so
    /// that if they are selected again they travel again (the site's registry may
    /// have collected them as garbage).
    pub freed: Vec<Digest>,
}

/// The owners an image has by its own record.
fn direct_owners(
    image: &ImageRecord,
    releases: &[ReleaseRecord],
    bundles: &HashMap<String, Vec<Owner>>,
) -> Vec<Owner> {
    let release = |r: &ReleaseRecord| Owner::Release {
        version: r.version.clone(),
        arch: r.arch.clone(),
    };
    match image.kind {
        ImageKind::Release => releases
            .iter()
            .filter(|r| r.digest == image.digest)
            .map(release)
            .collect(),
        // A component is tagged `<release tag>-<component name>` for each release
        // that names it.
        ImageKind::ReleaseComponent => releases
            .iter()
            .filter(|r| {
                image
                    .tag
                    .as_deref()
                    .and_then(|t| t.strip_prefix(r.tag.as_str()))
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .map(release)
            .collect(),
        ImageKind::Operator => bundles.get(&image.source).cloned().unwrap_or_default(),
        ImageKind::Catalog => vec![Owner::Catalog {
            catalog: image.source.clone(),
            target: image.target_repository.clone(),
            tag: image.tag.clone(),
        }],
        ImageKind::Generic => vec![Owner::image(image)],
        ImageKind::GraphData => vec![Owner::Graph],
        ImageKind::Chart => vec![Owner::Chart {
            source: image.source.clone(),
            version: image.tag.clone(),
        }],
        ImageKind::Referrer => Vec::new(),
    }
}

/// Every manifest and blob under `top`, `top` included, each once.
pub(crate) fn tree(top: &Digest, manifests: &HashMap<Digest, RawManifest>) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![top.clone()];
    while let Some(d) = stack.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        out.push(d.clone());
        let Some(parsed) = manifests.get(&d).and_then(|m| m.parse().ok()) else {
            continue;
        };
        for b in parsed.blobs() {
            if seen.insert(b.digest.clone()) {
                out.push(b.digest.clone());
            }
        }
        stack.extend(parsed.children().iter().map(|c| c.digest.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_imageset::ImageKind;

    /// Regression: an image carried over (its source down; its manifests not
    /// read this run) had only its top manifest in its tree when owners were
    /// worked out, so the signature of one of its platform manifests (`cosign
    /// sign --recursive`) became an image of its own, which a delete of the
    /// image left behind.
    #[test]
    fn a_carried_image_keeps_the_signatures_of_its_platform_manifests() {
        let app = Digest::of(b"app index");
        let child = Digest::of(b"app amd64 manifest");
        let sig = Digest::of(b"signature manifest");
        let record = |source: &str, digest: &Digest, kind, subject: Option<&Digest>| ImageRecord {
            source: source.into(),
            repository: "quay.io/team/app".into(),
            tag: Some("1".into()),
            by_digest: false,
            digest: digest.clone(),
            target_repository: None,
            kind,
            subject: subject.cloned(),
            catalog_source: None,
            platforms: Vec::new(),
        };
        let images = vec![
            record("quay.io/team/app:1", &app, ImageKind::Generic, None),
            record(
                &format!("quay.io/team/app:{}.sig", child.tag_form()),
                &sig,
                ImageKind::Referrer,
                Some(&child),
            ),
        ];
        let blob = |d: &Digest| BlobRecord {
            digest: d.clone(),
            size: 1,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            repository: "quay.io/team/app".into(),
            parts: Vec::new(),
        };
        let blobs = vec![blob(&app), blob(&sig), blob(&child)];
        let previous = Contents {
            sequence: 3,
            images: images.clone(),
            releases: Vec::new(),
            blobs: blobs.clone(),
            owners: vec![vec![Owner::image(&images[0])]; 2],
            trees: vec![vec![0, 2], vec![1]],
        };
        let carried: HashSet<Digest> = [app.clone(), sig.clone()].into();
        let none = HashMap::new();
        let now = Contents::with_carried(
            4,
            &images,
            &[],
            &blobs,
            &none,
            &none_bundles(),
            Some((&previous, &carried)),
        );
        assert_eq!(now.trees, previous.trees);
        assert_eq!(now.owners[1], vec![Owner::image(&images[0])]);
        let unlinked = Contents::new(4, &images, &[], &blobs, &none, &none_bundles());
        assert_eq!(
            unlinked.owners[1],
            vec![Owner::image(&images[1])],
            "what the bug did"
        );
    }

    fn none_bundles() -> HashMap<String, Vec<Owner>> {
        HashMap::new()
    }
}
