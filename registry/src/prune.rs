//! Pruning: deleting from a destination registry what earlier imagesets placed
//! there and the latest one no longer lists, as oc-mirror v1 does on publish.
//!
//! Every imageset lists the whole desired state, so what to delete is a difference
//! of two lists, decided by [`plan`] without touching the network:
//!
//! - a manifest (repository, digest) that an earlier imageset placed and the latest
//!   does not list in that repository is deleted by digest, which also removes its
//!   tags; one the latest still lists under another tag stays, and only the tag
//!   that is no longer listed is removed (where the registry deletes tags alone);
//! - a manifest in use ([`InUse`]: what a cluster runs) is never deleted, whatever
//!   the lists say, and the reason is reported.
//!
//! [`Pruner::run`] then carries the plan out, reading the registry for what the
//! lists do not say: the children of a deleted index go with it unless a kept
//! index of the same repository names them, and so do its referrers (cosign
//! `sha256-<hex>.sig|.att|.sbom` tags, OCI 1.1 referrers and the referrers tag
//! index). What hangs off a manifest is deleted before the manifest, so an
//! interrupted prune is finished by running it again: the manifest that leads to
//! what is left is still there, and deleting what is already gone is a no-op.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use crate::publish::destination_repository;
use crate::retry::{Budget, RetryPolicy};
use crate::{Deletion, ReferrersTag, RegistryClient, RegistryError};
use airlock_imageset::{BlobRecord, ImageKind, ImageRecord};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::is_index;
use airlock_oci::reference::{Destination, ImageRef};

/// Suffixes of the tags cosign keeps next to an image, `sha256-<hex>.<suffix>`.
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// How deep referrers of referrers are followed (a signature of an SBOM of an image
/// is two deep); the same bound the imageset format puts on subject chains.
const MAX_DEPTH: usize = airlock_imageset::validate::MAX_SUBJECT_DEPTH;

/// Manifests that must not be deleted, with who needs each ("in use by cluster
/// east (release 4.15.3)").
pub type InUse = HashMap<Digest, String>;

/// An image a cluster runs or may return to, as the cluster names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runs {
    /// The reference (`quay.io/ns/app@sha256:…`, `registry/ns/app:tag`, a pod's
    /// `imageID`).
    pub image: String,
    /// What needs it (`pod apps/web-0`, `release 4.15.3 (desired)`).
    pub why: String,
    /// Whether it is a release image (from ClusterVersion): its components are
    /// needed too.
    pub release: bool,
}

impl Runs {
    /// An image that is not a release.
    pub fn image(image: &str, why: &str) -> Self {
        Runs {
            image: image.to_string(),
            why: why.to_string(),
            release: false,
        }
    }
}

/// One manifest of a destination repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At {
    /// The repository at the destination.
    pub repository: String,
    /// The manifest.
    pub digest: Digest,
}

impl At {
    /// Where `image` is placed at `dest`.
    pub fn of(dest: &Destination, image: &ImageRecord) -> Self {
        At {
            repository: destination_repository(dest, image),
            digest: image.digest.clone(),
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

/// A manifest an earlier imageset placed that the latest does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Where.
    pub at: At,
    /// The image as the configuration named it, for the report.
    pub image: String,
    /// For a signature or other referrer: the manifest it is attached to.
    pub subject: Option<Digest>,
}

/// What pruning is to do at one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Manifests to delete, referrers before what they refer to.
    pub doomed: Vec<Doomed>,
    /// Tags (repository, tag) no longer listed whose manifest stays.
    pub untag: Vec<(String, String)>,
    /// Manifests the lists would delete but that are in use, with why.
    pub kept: Vec<(Doomed, String)>,
}

/// What to delete at `dest`, where `placed` are the images earlier imagesets
/// published there and `wanted` those of the imageset published now.
pub fn plan(
    placed: &[&ImageRecord],
    wanted: &[ImageRecord],
    dest: &Destination,
    in_use: &InUse,
) -> Plan {
    let keep: HashSet<At> = wanted.iter().map(|i| At::of(dest, i)).collect();
    let tags: HashSet<(String, &str)> = wanted
        .iter()
        .filter_map(|i| Some((destination_repository(dest, i), i.tag.as_deref()?)))
        .collect();
    let by_digest: HashMap<&Digest, &ImageRecord> =
        placed.iter().map(|i| (&i.digest, *i)).collect();
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    // Referrers (deepest first) before their subjects: a referrer left behind by
    // an interrupted prune would otherwise be found from nothing.
    let mut ordered: Vec<&&ImageRecord> = placed.iter().collect();
    ordered.sort_by_key(|i| std::cmp::Reverse(i.subject.is_some()));
    for image in ordered {
        let here = At::of(dest, image);
        if keep.contains(&here) {
            // A tag of a manifest a cluster runs may be how it pulls it.
            if let Some(tag) = image
                .tag
                .as_ref()
                .filter(|_| !in_use.contains_key(&image.digest))
            {
                let key = (here.repository.clone(), tag.as_str());
                if !tags.contains(&key) && seen.insert((here.clone(), Some(tag.clone()))) {
                    plan.untag.push((here.repository, tag.clone()));
                }
            }
            continue;
        }
        if !seen.insert((here.clone(), None)) {
            continue;
        }
        let doomed = Doomed {
            at: here,
            image: image.source.clone(),
            subject: image.subject.clone(),
        };
        match needed(image, &by_digest, in_use) {
            Some(why) => plan.kept.push((doomed, why)),
            None => plan.doomed.push(doomed),
        }
    }
    plan
}

/// What of `placed` the cluster `cluster` needs, given what it runs.
///
/// A reference with a digest counts by digest, wherever it points (the cluster
/// pulls mirrored content by its source name, through its mirror sets); one with
/// a tag only counts for the placed image of that source or destination
/// repository and tag. A release the cluster runs or may return to keeps every
/// release component placed, whether or not the release itself is among what is
/// pruned now: which components belong to which release is in the release image,
/// not in the imageset, and keeping too much is the safe side.
pub fn in_use(
    cluster: &str,
    running: &[Runs],
    placed: &[&ImageRecord],
    dest: &Destination,
) -> InUse {
    let mut out = InUse::new();
    let mut release = None;
    for r in running {
        let reason = format!("in use by cluster {cluster} ({})", r.why);
        if r.release && release.is_none() {
            release = Some(reason.clone());
        }
        let digest = r
            .image
            .rsplit_once("@")
            .and_then(|(_, d)| d.parse::<Digest>().ok());
        let digests: Vec<&Digest> = match &digest {
            Some(d) => vec![d],
            None => {
                // As the container runtime reads it: `nginx:1` is
                // `docker.io/library/nginx:1`, a bare name is `:latest`.
                let written = r
                    .image
                    .rsplit_once("://")
                    .map_or(r.image.as_str(), |(_, n)| n);
                let Ok(named) = written.parse::<ImageRef>().map(ImageRef::with_default_tag) else {
                    continue;
                };
                let (name, tag) = (named.name(), named.tag().unwrap_or_default());
                placed
                    .iter()
                    .filter(|p| {
                        p.tag.as_deref() == Some(tag)
                            && (name == p.repository
                                || name
                                    == format!(
                                        "{}/{}",
                                        dest.registry(),
                                        destination_repository(dest, p)
                                    ))
                    })
                    .map(|p| &p.digest)
                    .collect()
            }
        };
        for d in digests {
            out.entry(d.clone()).or_insert_with(|| reason.clone());
        }
    }
    if let Some(reason) = release {
        for p in placed
            .iter()
            .filter(|p| p.kind == ImageKind::ReleaseComponent)
        {
            out.entry(p.digest.clone())
                .or_insert_with(|| format!("a release component, {reason}"));
        }
    }
    out
}

/// Why `image` must stay although no longer listed: it is in use, or it is a
/// signature or other referrer of something in use (followed up the subject chain).
fn needed(
    image: &ImageRecord,
    placed: &HashMap<&Digest, &ImageRecord>,
    in_use: &InUse,
) -> Option<String> {
    if let Some(why) = in_use.get(&image.digest) {
        return Some(why.clone());
    }
    let mut at = image;
    for _ in 0..MAX_DEPTH {
        let subject = at.subject.as_ref()?;
        if let Some(why) = in_use.get(subject) {
            return Some(format!("attached to {subject}, {why}"));
        }
        at = placed.get(subject)?;
    }
    None
}

/// Why pruning stopped.
#[derive(Debug, thiserror::Error)]
#[error("pruning {registry}: {source}")]
pub struct PruneError {
    /// The registry.
    pub registry: String,
    /// What failed.
    #[source]
    pub source: RegistryError,
}

impl airlock_common::exit_codes::ExitCode for PruneError {
    fn exit_code(&self) -> i32 {
        self.source.exit_code()
    }
}

/// One manifest deleted (or, on a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Where.
    pub at: At,
    /// The image it belonged to, as the configuration named it.
    pub image: String,
    /// What it was to that image: `image`, `child`, `referrer`, `referrers tag`.
    pub role: &'static str,
}

/// What pruning did at one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Deleted manifests (or, on a dry run, those that would be).
    pub deleted: Vec<Deleted>,
    /// Manifests kept although no longer listed, with why.
    pub kept: Vec<(At, String)>,
    /// Tags removed whose manifest stays.
    pub untagged: Vec<(String, String)>,
    /// Set when the registry refuses deletes: its answer. Nothing more was tried.
    pub refused: Option<String>,
}

/// Carries out a [`Plan`] at one registry.
#[derive(Debug)]
pub struct Pruner<'a> {
    client: &'a RegistryClient,
    dest: &'a Destination,
    dry_run: bool,
    retry: RetryPolicy,
}

/// A repository's manifests that stay: the images still listed there, and the
/// children of those that are indexes.
type Keep = HashMap<String, HashSet<Digest>>;

impl<'a> Pruner<'a> {
    /// A pruner for `dest`; with `dry_run` it reads the registry but deletes nothing.
    pub fn new(client: &'a RegistryClient, dest: &'a Destination, dry_run: bool) -> Self {
        Pruner {
            client,
            dest,
            dry_run,
            retry: RetryPolicy::default(),
        }
    }

    fn fail(&self, source: RegistryError) -> PruneError {
        PruneError {
            registry: self.dest.registry().to_string(),
            source,
        }
    }

    /// `op` under the retry policy, as publishing does.
    async fn retrying<T, Fut>(
        &self,
        budget: &Budget,
        op: impl FnMut() -> Fut,
    ) -> Result<T, PruneError>
    where
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        self.retry
            .run(budget, op, |r| {
                tracing::warn!(registry = %self.dest.registry(), attempt = r.attempt, error = %r.error, "registry request failed while pruning; retrying");
            })
            .await
            .map_err(|e| self.fail(e))
    }

    /// Carries out `plan`, keeping what `wanted` (with its manifests in
    /// `wanted_blobs`) lists and what `in_use` names.
    pub async fn run(
        &self,
        plan: &Plan,
        wanted: &[ImageRecord],
        wanted_blobs: &[BlobRecord],
        in_use: &InUse,
    ) -> Result<Pruned, PruneError> {
        let mut pruned = Pruned {
            kept: plan
                .kept
                .iter()
                .map(|(d, why)| (d.at.clone(), why.clone()))
                .collect(),
            ..Pruned::default()
        };
        // What the kept manifests hold (an in-use index's children) is as
        // much in use as they are.
        let (doomed, protected) = self.spare_attached(plan, in_use, &mut pruned).await?;
        for (at, why) in &pruned.kept {
            tracing::info!(registry = %self.dest.registry(), repository = %at.repository, digest = %at.digest, reason = %why, "kept although no longer listed");
        }
        let keep = self.keep(plan, wanted, wanted_blobs).await?;
        for doomed in doomed {
            let mut found = Vec::new();
            self.hanging_off(
                &doomed.at,
                "image",
                &keep,
                &protected,
                0,
                &mut found,
                &mut pruned,
            )
            .await?;
            // Deepest first: what hangs off a manifest goes before it.
            for (at, role) in found.into_iter().rev() {
                if !self.delete(&at, &doomed.image, role, &mut pruned).await? {
                    return Ok(pruned);
                }
            }
        }
        for (repository, tag) in &plan.untag {
            if self.dry_run {
                pruned.untagged.push((repository.clone(), tag.clone()));
                continue;
            }
            let budget = self.retry.budget();
            match self
                .retrying(&budget, || self.client.delete_manifest(repository, tag))
                .await?
            {
                Deletion::Deleted => {
                    tracing::info!(registry = %self.dest.registry(), repository = %repository, tag = %tag, "tag no longer listed; removed");
                    pruned.untagged.push((repository.clone(), tag.clone()));
                }
                Deletion::Absent => {}
                Deletion::Refused(answer) => {
                    tracing::info!(registry = %self.dest.registry(), repository = %repository, tag = %tag, answer = %answer, "tag no longer listed, but the registry deletes tags only with their manifest, which is still listed; tag kept");
                }
            }
        }
        Ok(pruned)
    }

    /// The doomed manifests less the referrers of what is kept in use: of a kept
    /// manifest itself, or (read from the registry) of one of its children, as
    /// `cosign sign --recursive` signs an index's platform manifests. Also returns
    /// everything protected: `in_use`, what is kept, and the children of what is
    /// kept, which a doomed index of the same repository may share.
    async fn spare_attached<'p>(
        &self,
        plan: &'p Plan,
        in_use: &InUse,
        pruned: &mut Pruned,
    ) -> Result<(Vec<&'p Doomed>, InUse), PruneError> {
        let mut protected = in_use.clone();
        for (d, why) in &plan.kept {
            for child in self.children(&d.at).await? {
                protected.insert(child, format!("a child of {}, {why}", d.at.digest));
            }
            protected.insert(d.at.digest.clone(), why.clone());
        }
        let mut doomed: Vec<&Doomed> = plan.doomed.iter().collect();
        loop {
            let spared: Vec<(usize, String)> = doomed
                .iter()
                .enumerate()
                .filter_map(|(k, d)| {
                    let subject = d.subject.as_ref()?;
                    let why = protected.get(subject)?;
                    Some((k, format!("attached to {subject}, {why}")))
                })
                .collect();
            if spared.is_empty() {
                return Ok((doomed, protected));
            }
            for (k, why) in spared.into_iter().rev() {
                let d = doomed.remove(k);
                protected.insert(d.at.digest.clone(), why.clone());
                pruned.kept.push((d.at.clone(), why));
            }
        }
    }

    /// The manifests that stay in each repository pruning touches: what `wanted`
    /// lists there, and the children of its indexes, read from the registry.
    async fn keep(
        &self,
        plan: &Plan,
        wanted: &[ImageRecord],
        wanted_blobs: &[BlobRecord],
    ) -> Result<Keep, PruneError> {
        let touched: HashSet<&str> = plan
            .doomed
            .iter()
            .map(|d| d.at.repository.as_str())
            .collect();
        let media: HashMap<&Digest, &str> = wanted_blobs
            .iter()
            .filter_map(|b| Some((&b.digest, b.media_type.as_deref()?)))
            .collect();
        let mut keep = Keep::new();
        for image in wanted {
            let here = At::of(self.dest, image);
            if !touched.contains(here.repository.as_str()) {
                continue;
            }
            if media.get(&image.digest).is_some_and(|t| is_index(t)) {
                for child in self.children(&here).await? {
                    keep.entry(here.repository.clone())
                        .or_default()
                        .insert(child);
                }
            }
            keep.entry(here.repository).or_default().insert(here.digest);
        }
        Ok(keep)
    }

    /// The children of the index `at`; none when it is not there.
    async fn children(&self, at: &At) -> Result<Vec<Digest>, PruneError> {
        let budget = self.retry.budget();
        let raw = self
            .retrying(&budget, || {
                self.client
                    .find_manifest(&at.repository, at.digest.as_str())
            })
            .await?;
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let parsed = raw.parse().map_err(|source| {
            self.fail(RegistryError::Manifest {
                target: at.to_string(),
                source,
            })
        })?;
        Ok(parsed.children().iter().map(|c| c.digest.clone()).collect())
    }

    /// `at` and everything hanging off it that is not kept, parents before what
    /// hangs off them: its children, referrers, and cosign tags.
    #[allow(clippy::too_many_arguments)]
    fn hanging_off<'s>(
        &'s self,
        at: &'s At,
        role: &'static str,
        keep: &'s Keep,
        in_use: &'s InUse,
        depth: usize,
        found: &'s mut Vec<(At, &'static str)>,
        pruned: &'s mut Pruned,
    ) -> futures::future::BoxFuture<'s, Result<(), PruneError>> {
        Box::pin(async move {
            let kept = keep
                .get(&at.repository)
                .is_some_and(|k| k.contains(&at.digest));
            if kept || found.iter().any(|(a, _)| a == at) {
                return Ok(());
            }
            if let Some(why) = in_use.get(&at.digest) {
                // Two pruned indexes may share the same protected child.
                if !pruned.kept.iter().any(|(a, _)| a == at) {
                    pruned.kept.push((at.clone(), why.clone()));
                }
                return Ok(());
            }
            found.push((at.clone(), role));
            if depth > MAX_DEPTH {
                return Ok(());
            }
            let mut more: Vec<(At, &'static str)> = self
                .children(at)
                .await?
                .into_iter()
                .map(|digest| {
                    let at = At {
                        repository: at.repository.clone(),
                        digest,
                    };
                    (at, "child")
                })
                .collect();
            more.extend(self.attached(at).await?);
            for (next, role) in more {
                self.hanging_off(&next, role, keep, in_use, depth + 1, found, pruned)
                    .await?;
            }
            Ok(())
        })
    }

    /// What is attached to `at`: its OCI 1.1 referrers, the referrers tag index
    /// that lists them, and its cosign tags.
    async fn attached(&self, at: &At) -> Result<Vec<(At, &'static str)>, PruneError> {
        let budget = self.retry.budget();
        let repo = &at.repository;
        let base = at.digest.tag_form();
        let tags = std::iter::once((base.clone(), "referrers tag")).chain(
            COSIGN_SUFFIXES
                .iter()
                .map(|s| (format!("{base}.{s}"), "referrer")),
        );
        // The referrers tag index comes first: what is found first is deleted
        // last, and on a registry without the referrers API the index is the
        // only way to the referrers it lists, so it must outlive them.
        let mut out = Vec::new();
        for (tag, role) in tags {
            let found = self
                .retrying(&budget, || self.client.find_manifest(repo, &tag))
                .await?;
            if let Some(raw) = found {
                let at = At {
                    repository: repo.clone(),
                    digest: raw.digest,
                };
                out.push((at, role));
            }
        }
        let referrers = self
            .retrying(&budget, || {
                self.client
                    .referrers(repo, &at.digest, ReferrersTag::Unknown)
            })
            .await?;
        out.extend(referrers.into_iter().map(|digest| {
            let at = At {
                repository: repo.clone(),
                digest,
            };
            (at, "referrer")
        }));
        Ok(out)
    }

    /// Deletes one manifest; `false` when the registry refuses deletes.
    async fn delete(
        &self,
        at: &At,
        image: &str,
        role: &'static str,
        pruned: &mut Pruned,
    ) -> Result<bool, PruneError> {
        let registry = self.dest.registry();
        let deleted = Deleted {
            at: at.clone(),
            image: image.to_string(),
            role,
        };
        if self.dry_run {
            // Nothing goes, so what an earlier entry would delete is found again.
            if !pruned.deleted.iter().any(|d| d.at == *at) {
                pruned.deleted.push(deleted);
            }
            return Ok(true);
        }
        let budget = self.retry.budget();
        match self
            .retrying(&budget, || {
                self.client
                    .delete_manifest(&at.repository, at.digest.as_str())
            })
            .await?
        {
            Deletion::Deleted => {
                tracing::info!(%registry, repository = %at.repository, digest = %at.digest, image, role, "pruned: no longer listed");
                pruned.deleted.push(deleted);
                airlock_state::crash_point("pruned-manifest");
                Ok(true)
            }
            Deletion::Absent => Ok(true),
            Deletion::Refused(answer) => {
                tracing::warn!(%registry, answer = %answer, "the registry refuses deletes; nothing pruned there");
                pruned.refused = Some(answer);
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests;
