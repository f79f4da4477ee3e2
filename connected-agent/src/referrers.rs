//! Signatures, attestations and SBOMs travel with the images they are about.
//!
//! Two conventions are in use, and both are looked for on every manifest of every
//! mirrored image (the index and each platform's manifest, since `cosign sign
//! --recursive` signs each):
//!
//! - cosign's tags: `sha256-<hex>.sig`, `.att` and `.sbom` in the image's
//!   repository, each an image of its own;
//! - OCI 1.1 referrers: manifests whose `subject` is the image, listed by the
//!   registry's referrers API or, where it has none, by the referrers tag
//!   `sha256-<hex>`.
//!
//! Nearly every one of these four lookups per manifest finds nothing, so a
//! repository's tags are listed once where the registry gives the whole list
//! in one answer, and looked up in it ([`Listings`]); see
//! `airlock_registry`'s `lookups` module for what the registry client saves
//! besides.
//!
//! What is found becomes an image of kind [`ImageKind::Referrer`] in the subject's
//! repository, and is itself searched, so the signature of an SBOM comes along too.
//! Dropping them silently would leave the far side unable to verify what it runs
//! (skopeo#1674, hauler#667), so only `--remove-signatures` turns this off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};

use airlock_config::ImageSpec;
use airlock_imageset::ImageKind;
use airlock_oci::digest::Digest;
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, ReferrersTag, RegistryError, TagList};
use futures::{StreamExt, TryStreamExt};

use crate::collect::{self, CollectError, Resolved};
use crate::reads::Reads;

/// cosign's tag suffixes: signature, attestation, SBOM.
pub const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Referrers of referrers are followed this deep (an SBOM's signature is 2).
const MAX_DEPTH: usize = 3;

/// Referrers accepted for one manifest. Real images have a handful (a signature
/// per signer, an SBOM, a few attestations); thousands would be a registry
/// flooding the imageset, which is refused rather than truncated.
const MAX_PER_MANIFEST: usize = 256;

/// Referrers accepted in one run, all images together.
const MAX_PER_RUN: usize = 20_000;

/// Subjects searched at once. Each asks its four lookups at once, so up to
/// 32 requests are in flight to one registry: a catalog's thousands of
/// manifests are searched in round trips, not requests. A lookup the registry
/// throttles waits and is asked again ([`Reads`]).
const PARALLEL: usize = 8;

/// The referrers of one manifest of `subject`'s repository. `tags` is the
/// repository's tag list when the registry gave it whole: the tags are then
/// looked up in it instead of asked for one by one.
async fn find(
    pool: &Pool,
    subject: &ImageSpec,
    digest: &Digest,
    tags: Option<&HashSet<String>>,
) -> Result<Vec<ImageSpec>, CollectError> {
    let registry_err = |source: RegistryError| CollectError::Registry {
        image: format!("{} (referrers of {digest})", subject.name),
        source,
    };
    let src = &subject.source;
    let client = pool.client(src.registry()).await.map_err(registry_err)?;
    let spec = |source: ImageRef| ImageSpec {
        name: source.to_string(),
        source,
        target_repo: subject.target_repo.clone(),
        target_tag: None,
        kind: ImageKind::Referrer,
        subject: Some(digest.clone()),
        platforms: Vec::new(),
    };
    // The lookups are asked at once: each is a round trip that finds nothing for
    // most images, and a catalog has thousands of manifests to search.
    let (client, reads) = (&client, &Reads::new());
    let cosign = COSIGN_SUFFIXES.map(|suffix| async move {
        let tag = format!("{}.{suffix}", digest.tag_form());
        let found = match tags {
            Some(listed) => listed.contains(&tag),
            None => {
                let of = format!("{}:{tag}", src.name());
                reads
                    .run("signature lookup", &of, || {
                        client.has_tag(src.repository(), &tag)
                    })
                    .await?
            }
        };
        Ok::<_, RegistryError>(found.then_some(tag))
    });
    let referrers_tag = match tags {
        Some(listed) if !listed.contains(&digest.tag_form()) => ReferrersTag::Absent,
        _ => ReferrersTag::Unknown,
    };
    let of = format!("{}@{digest}", src.name());
    let (tagged, listed) = futures::try_join!(
        futures::future::try_join_all(cosign),
        reads.run("referrers lookup", &of, || {
            client.referrers(src.repository(), digest, referrers_tag)
        })
    )
    .map_err(registry_err)?;
    let mut out: Vec<ImageSpec> = tagged
        .into_iter()
        .flatten()
        .map(|tag| spec(src.at_tag(&tag)))
        .collect();
    if listed.len() > MAX_PER_MANIFEST {
        return Err(CollectError::Inconsistent {
            image: subject.name.clone(),
            problem: format!(
                "manifest {digest} has {} referrers; more than {MAX_PER_MANIFEST} are refused (pass --remove-signatures, without --require-signatures or --secure-policy, to mirror without signatures and referrers)",
                listed.len()
            ),
        });
    }
    out.extend(listed.into_iter().map(|d| spec(src.at_digest(d))));
    Ok(out)
}

/// Tag lists a registry stops being asked for once this many of them were of
/// no use (paged, too large, refused) and no more were whole: a registry whose
/// repositories hold more tags than fit one answer (a public registry's long
/// histories) then costs this many requests, not one per repository.
const FUTILE_LISTINGS: u32 = 4;

/// Page sizes registries use (distribution 3 pages by 1,000; Quay and Docker
/// Hub by 50 or 100): a list of exactly as many tags, without a `Link` to its
/// next page, may still be one page of several.
const PAGE_SIZES: [usize; 3] = [50, 100, 1000];

/// Tag lists asked for at once: as many requests as `PARALLEL`'s subjects
/// make, and as the registry client reads manifests at once.
const PARALLEL_LISTINGS: usize = 32;

/// The tag lists of one discovery, by registry and repository (`None`: tags
/// are asked for one by one), and per registry how many were whole.
#[derive(Debug, Default)]
struct Listings {
    repositories: HashMap<(String, String), Option<Arc<HashSet<String>>>>,
    registries: std::sync::Mutex<HashMap<String, Tally>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    whole: u32,
    futile: u32,
}

impl Tally {
    fn worth_asking(self) -> bool {
        self.futile < FUTILE_LISTINGS || self.whole >= self.futile
    }
}

impl Listings {
    /// Lists the tags of every repository of `subjects` not listed yet. The
    /// first [`FUTILE_LISTINGS`] of each registry go first, so that a registry
    /// whose lists are of no use is found out before its other repositories'
    /// lists are asked for.
    async fn fill(&mut self, pool: &Pool, subjects: &[(&ImageSpec, &Digest)]) {
        let mut wanted: HashMap<(String, String), Vec<&str>> = HashMap::new();
        for (spec, _) in subjects {
            let k = key(spec);
            if !self.repositories.contains_key(&k) {
                wanted.entry(k).or_default().extend(spec.source.tag());
            }
        }
        let mut per_registry: HashMap<&str, u32> = HashMap::new();
        let (first, rest): (Vec<_>, Vec<_>) = wanted.iter().partition(|((registry, _), _)| {
            let n = per_registry.entry(registry).or_default();
            *n += 1;
            *n <= FUTILE_LISTINGS
        });
        let registries = &self.registries;
        for batch in [first, rest] {
            let listed: Vec<_> = futures::stream::iter(batch)
                .map(|(k, resolved)| async move {
                    let tags = Self::list(registries, pool, &k.0, &k.1, resolved).await;
                    (k.clone(), tags)
                })
                .buffer_unordered(PARALLEL_LISTINGS)
                .collect()
                .await;
            self.repositories.extend(listed);
        }
    }

    /// The tags of `repository`, when the registry gives a list that looks
    /// whole: it names the tags images were resolved by (`resolved`), and is
    /// not as long as a page of a registry that pages without saying so
    /// ([`PAGE_SIZES`]).
    async fn list(
        registries: &std::sync::Mutex<HashMap<String, Tally>>,
        pool: &Pool,
        registry: &str,
        repository: &str,
        resolved: &[&str],
    ) -> Option<Arc<HashSet<String>>> {
        let tally = |f: fn(&mut Tally)| {
            let mut all = registries.lock().unwrap_or_else(PoisonError::into_inner);
            let t = all.entry(registry.to_string()).or_default();
            f(t);
            *t
        };
        if !tally(|_| {}).worth_asking() {
            return None;
        }
        let listed = match pool.client(registry).await {
            Ok(client) => {
                let of = format!("{registry}/{repository}");
                Reads::new()
                    .run("tag list", &of, || client.list_tags(repository))
                    .await
            }
            Err(e) => Err(e),
        };
        let whole = match listed {
            Ok(TagList::Whole(tags))
                if resolved.iter().all(|t| tags.contains(*t))
                    && !PAGE_SIZES.contains(&tags.len()) =>
            {
                Some(tags)
            }
            // Not the registry's to say: that says nothing of its lists.
            Ok(TagList::NotAsked) => return None,
            Ok(TagList::Whole(_) | TagList::NotWhole) => None,
            Err(e) => {
                tracing::debug!(registry, repository, error = %e, "tags not listed; asked for one by one");
                None
            }
        };
        match whole {
            Some(tags) => {
                tally(|t| t.whole += 1);
                Some(Arc::new(tags))
            }
            None => {
                tally(|t| t.futile += 1);
                None
            }
        }
    }

    fn get(&self, spec: &ImageSpec) -> Option<&HashSet<String>> {
        self.repositories.get(&key(spec))?.as_deref()
    }
}

fn key(spec: &ImageSpec) -> (String, String) {
    (
        spec.source.registry().to_string(),
        spec.source.repository().to_string(),
    )
}

/// Where an image goes: its source and its destination repository. A referrer is
/// needed once per destination its subject goes to.
fn placement(spec: &ImageSpec) -> String {
    format!("{} -> {:?}", spec.source, spec.target_repo)
}

/// Finds and resolves the referrers of `images` (resolved as `resolved`, one each),
/// and theirs in turn. Returns them in the order found, each once per destination,
/// none of them already among `images`. An OCI referrer whose manifest does not
/// name the subject it was listed for is left out with a warning: a referrers
/// index can list anything, and only what refers to a mirrored image belongs.
pub async fn discover(
    images: &[ImageSpec],
    resolved: &[Arc<Resolved>],
    pool: &Pool,
) -> Result<(Vec<ImageSpec>, Vec<Arc<Resolved>>), CollectError> {
    let mut seen: HashSet<String> = images.iter().map(placement).collect();
    let mut searched: HashSet<(String, Option<String>, Digest)> = HashSet::new();
    let mut found_specs: Vec<ImageSpec> = Vec::new();
    let mut found_resolved: Vec<Arc<Resolved>> = Vec::new();
    let mut listings = Listings::default();
    let mut frontier: Vec<(ImageSpec, Arc<Resolved>)> = images
        .iter()
        .cloned()
        .zip(resolved.iter().cloned())
        .collect();
    for depth in 0.. {
        // Each manifest of each repository and destination is searched once
        // (release components shared by several releases, images named twice).
        let subjects: Vec<(&ImageSpec, &Digest)> = frontier
            .iter()
            .flat_map(|(spec, r)| r.manifests.iter().map(move |m| (spec, &m.digest)))
            .filter(|(spec, d)| {
                searched.insert((spec.source.name(), spec.target_repo.clone(), (*d).clone()))
            })
            .collect();
        if subjects.is_empty() {
            break;
        }
        if depth == MAX_DEPTH {
            tracing::warn!(
                subjects = subjects.len(),
                depth,
                "referrers nested deeper than this are not searched"
            );
            break;
        }
        listings.fill(pool, &subjects).await;
        let listings = &listings;
        // The first failure (in order) ends the search: with lookups waiting
        // out throttling, searching the rest of a catalog's thousands of
        // manifests first would make a failing registry take hours to fail.
        let found: Vec<Vec<ImageSpec>> = futures::stream::iter(subjects)
            .map(|(spec, digest)| find(pool, spec, digest, listings.get(spec)))
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        let mut new = Vec::new();
        for spec in found.into_iter().flatten() {
            if seen.insert(placement(&spec)) {
                new.push(spec);
            }
        }
        if found_specs.len() + new.len() > MAX_PER_RUN {
            return Err(CollectError::Inconsistent {
                image: "the configuration's images".into(),
                problem: format!(
                    "more than {MAX_PER_RUN} signatures and referrers; pass --remove-signatures (without --require-signatures or --secure-policy) to mirror without them"
                ),
            });
        }
        let r = collect::resolve_all(&new, pool).await?;
        let mut next = Vec::new();
        for (spec, tree) in new.into_iter().zip(r) {
            let listed_for = spec.subject.as_ref().expect("referrers have a subject");
            let names = spec.source.tag().is_some()
                || tree.manifests[0]
                    .parse()
                    .ok()
                    .and_then(|m| m.subject)
                    .is_some_and(|s| &s.digest == listed_for);
            if !names {
                tracing::warn!(referrer = %spec.name, subject = %listed_for, "listed as a referrer, but its manifest names another subject (or none); left out");
                continue;
            }
            tracing::info!(referrer = %spec.name, subject = %listed_for, "signature or referrer found");
            found_specs.push(spec.clone());
            found_resolved.push(tree.clone());
            next.push((spec, tree));
        }
        frontier = next;
    }
    Ok((found_specs, found_resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry whose tag lists are of no use (paged, too large, refused)
    /// stops being asked for them after a few, unless as many were whole.
    #[test]
    fn a_registry_whose_lists_are_of_no_use_is_not_asked_for_more() {
        let after = |whole, futile| Tally { whole, futile }.worth_asking();
        assert!(after(0, 0));
        assert!(after(0, FUTILE_LISTINGS - 1));
        assert!(!after(0, FUTILE_LISTINGS));
        assert!(!after(FUTILE_LISTINGS - 1, FUTILE_LISTINGS));
        assert!(after(FUTILE_LISTINGS, FUTILE_LISTINGS));
        assert!(after(100, 7));
        assert!(!after(3, 40));
    }
}
