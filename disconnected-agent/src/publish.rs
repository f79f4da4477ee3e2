//! `publish`: take every complete imageset from a directory, in sequence order, and
//! publish the workspace's content to a registry.
//!
//! 1. Scan the directory; group chunk files by imageset.
//! 2. If the workspace is empty, look for the state a previous machine recorded in
//!    the destination registry, and continue from it.
//! 3. In sequence order, judge each imageset against the workspace (accept,
//!    duplicate, wait, refuse); check its signature; verify every chunk (rebuilding
//!    lost or damaged ones from parity) into the content store, and only then record
//!    it as accepted.
//! 4. Publish every accepted imageset not yet published to this destination, in
//!    order; record where each blob now is, and the site state in the registry.
//! 5. Delete from the registry what the last published imageset no longer lists
//!    (unless `--skip-pruning`); write the cluster resources (mirror sets) for
//!    what is now published; with `--empty-store`, empty the content store.
//!
//! Whatever cannot be done (a missing chunk, a damaged file, an imageset waiting for
//! its predecessor) is reported with the files concerned, and makes the command exit
//! non-zero, but does not stop the imagesets that can be published.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_common::exit_codes;
use airlock_common::size::ByteSize;
use airlock_imageset::signing::TrustStore;
use airlock_oci::reference::Destination;
use airlock_registry::{RegistryClient, RegistryOptions};

use crate::early::{Early, Then};
use crate::error::Error;
use crate::scan;
use crate::site::{Outcome, Pass, Report, Site, Target};
use crate::source::Mirror;

/// What `publish` is asked to do.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The directory holding chunk files.
    pub from: PathBuf,
    /// The mirror registry and prefix.
    pub to: Destination,
    /// The workspace directory; defaults to `~/.airlock/site`.
    pub workspace: Option<PathBuf>,
    /// Blob transfers at once.
    pub parallel: usize,
    /// How to reach the destination registry (and `fetch_from` registries).
    pub registry: RegistryOptions,
    /// Other registries to fetch layers from that no imageset carries.
    pub fetch_from: Vec<Destination>,
    /// Empty the content store once everything accepted is published.
    pub empty_store: bool,
    /// Keep in the registry what the published imageset no longer lists.
    pub skip_pruning: bool,
    /// Change nothing: say what would be published, and what pruning would delete
    /// and keep.
    pub dry_run: bool,
    /// Public keys (minisign) an imageset must be signed with; none: signatures are
    /// not required.
    pub trust: Vec<PathBuf>,
}

/// What `publish` did.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// What was taken in and published.
    pub site: Report,
    /// Bytes freed by `--empty-store`.
    pub emptied: Option<u64>,
    /// With `--dry-run`: the sequences that would be published.
    pub would_publish: Option<Vec<u64>>,
    /// Wall time.
    pub elapsed: Duration,
}

impl PublishReport {
    /// The exit code: the most serious problem's, or success.
    pub fn exit_code(&self) -> i32 {
        self.site.exit_code()
    }
}

/// The workspace directory to use.
pub fn workspace_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".airlock/site"))
        .ok_or_else(|| Error::Usage("no --workspace given and HOME is not set".into()))
}

/// Runs `publish`.
pub async fn publish(opts: &PublishOptions) -> Result<PublishReport, Error> {
    let started = Instant::now();
    let mut report = PublishReport::default();
    if !opts.from.is_dir() {
        return Err(Error::Usage(format!(
            "--from {}: not a directory",
            opts.from.display()
        )));
    }
    let trust = TrustStore::load(&opts.trust).map_err(|e| Error::Usage(e.to_string()))?;
    let site = Site::open(&workspace_dir(opts.workspace.as_deref())?, trust)?;
    let found = scan::scan(&opts.from).map_err(|e| Error::io(&opts.from, e))?;
    tracing::info!(dir = %opts.from.display(), imagesets = found.imagesets.len(), damaged = found.damaged.len(), other = found.other.len(), "scanned");
    // The file names each imageset's manifest lists, to tell a damaged file of
    // an imageset that parity made whole from one nothing accounts for.
    let listed: HashMap<String, (uuid::Uuid, u64)> = found
        .imagesets
        .iter()
        .flat_map(|(key, c)| {
            let m = &c.manifest;
            m.chunks
                .iter()
                .map(|r| &r.name)
                .chain(m.parity.iter().map(|r| &r.name))
                .map(|name| (name.clone(), *key))
        })
        .collect();
    let is_listed = |path: &Path| file_name(path).is_some_and(|n| listed.contains_key(n.as_str()));
    // A file whose header a transfer mangled may not read as a chunk at all; one
    // named as a chunk of an imageset here is damaged, not a stranger.
    let (mangled, others): (Vec<PathBuf>, Vec<PathBuf>) =
        found.other.iter().cloned().partition(|p| is_listed(p));
    report.site.ignored = others;
    let damaged: Vec<(PathBuf, String)> = found
        .damaged
        .iter()
        .map(|e| (e.path().to_path_buf(), e.to_string()))
        .chain(
            mangled
                .into_iter()
                .map(|p| (p.clone(), format!("{}: its header is damaged", p.display()))),
        )
        .collect();
    if opts.dry_run {
        for (_, e) in &damaged {
            report
                .site
                .problem(exit_codes::DATA, format!("{e}; the file was not used"));
        }
    }
    // The registry is contacted only when there is something to do with it.
    let mut target: Option<Target> = None;
    let connect = || async {
        Ok::<_, Error>(Target {
            dest: opts.to.clone(),
            client: Arc::new(RegistryClient::connect(opts.to.registry(), &opts.registry).await?),
        })
    };
    if site.ws.accepted()?.is_none() && !found.imagesets.is_empty() {
        let mut uuids: Vec<uuid::Uuid> = found.imagesets.keys().map(|(u, _)| *u).collect();
        uuids.dedup();
        let t = connect().await?;
        report.site.continued_from = site.continue_from_registry(&t, &uuids).await?;
        target = Some(t);
    }
    if found.imagesets.is_empty() && site.ws.accepted()?.is_none() {
        report.site.problem(
            exit_codes::INCOMPLETE,
            format!("no imageset chunk files found in {}", opts.from.display()),
        );
    }
    if opts.dry_run {
        dry_run(opts, &site, &found, &mut report).await?;
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    // Blobs go to the registry while their imageset is verified (`early`).
    // One that cannot be reached yet is no reason not to verify: the publish
    // after acceptance connects again, and reports why it cannot.
    if target.is_none() && !found.imagesets.is_empty() {
        match connect().await {
            Ok(t) => target = Some(t),
            Err(e) => {
                tracing::warn!(destination = %opts.to, error = %e, "cannot reach the destination yet; verifying first")
            }
        }
    }
    let early = target.as_ref().map(|target| Early {
        target: target.clone(),
        parallel: opts.parallel,
        then: Then::Finish,
        stop: None,
    });
    let outcomes = site
        .accept(&opts.from, &found, early.as_ref(), &mut report.site)
        .await?;
    // Imagesets beyond what could be held at once: read again, without the ones
    // judged (all but those waiting), for as long as some were deferred and the
    // last pass judged something.
    let mut judged = HashSet::new();
    let mut last = (found, outcomes);
    while !last.0.deferred.is_empty() {
        let (found, outcomes) = &last;
        let before = judged.len();
        judged.extend(outcomes.iter().filter_map(|(key, outcome)| {
            (!matches!(outcome, Outcome::Waiting(_)))
                .then(|| found.imagesets.get(key).map(|c| c.manifest_digest.clone()))
                .flatten()
        }));
        if judged.len() == before {
            report.site.problem(
                exit_codes::INCOMPLETE,
                format!(
                    "{} chunk files were not read: the imagesets before them, which wait, hold {} of manifests, the most held at once; run publish again once those are taken",
                    found.deferred.len(),
                    ByteSize(scan::HELD_MANIFEST_BYTES as u64)
                ),
            );
            break;
        }
        let more = scan::read_heads_within(
            scan::list(&opts.from).map_err(|e| Error::io(&opts.from, e))?,
            scan::HELD_MANIFEST_BYTES,
            &|d| judged.contains(d),
        );
        let outcomes = site
            .accept(&opts.from, &more, early.as_ref(), &mut report.site)
            .await?;
        last = (more, outcomes);
    }
    set_damaged_aside(&site, &damaged, &listed, &mut report.site)?;
    if let Some((_, last)) = site.ws.accepted()? {
        let target = match target {
            Some(t) => t,
            None => connect().await?,
        };
        let mut fetch_from = Vec::new();
        for d in &opts.fetch_from {
            fetch_from.push(Mirror {
                client: Arc::new(RegistryClient::connect(d.registry(), &opts.registry).await?),
                dest: d.clone(),
            });
        }
        let resources = site.dir.join("cluster-resources");
        let pass = Pass {
            fetch_from: &fetch_from,
            parallel: opts.parallel,
            skip_pruning: opts.skip_pruning,
            ..Pass::default()
        };
        site.publish_to(&target, &pass, &resources, &mut report.site)
            .await?;
        if opts.empty_store && site.ws.published(&opts.to.key())? == Some(last) {
            report.emptied = Some(site.empty_store()?);
        }
    }
    report.elapsed = started.elapsed();
    tracing::info!(
        accepted = report.site.accepted.len(),
        published = report.site.published.len(),
        uploaded = report.site.stats[0],
        uploaded_bytes = %ByteSize(report.site.stats[1]),
        problems = report.site.problems.len(),
        "publish finished"
    );
    Ok(report)
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

/// A damaged file whose name the manifest of an imageset now accepted lists was
/// made up for by parity: it is renamed `*.damaged`, as parity repair does with
/// those it finds, and reported as set aside, not as a problem, so a run that
/// rebuilt everything exits 0. Any other is a problem and stays where it is:
/// nothing says what it held, and it may be a copy still under way.
fn set_damaged_aside(
    site: &Site,
    damaged: &[(PathBuf, String)],
    listed: &HashMap<String, (uuid::Uuid, u64)>,
    report: &mut Report,
) -> Result<(), Error> {
    let accepted = site.ws.accepted()?;
    for (path, why) in damaged {
        let made_up = file_name(path)
            .and_then(|n| listed.get(&n).copied())
            .is_some_and(|(uuid, seq)| accepted.is_some_and(|(u, last)| u == uuid && seq <= last));
        let aside = PathBuf::from(format!("{}.damaged", path.display()));
        if made_up && std::fs::rename(path, &aside).is_ok() {
            tracing::warn!(file = %path.display(), aside = %aside.display(), reason = %why, "damaged file set aside; parity made up for it");
            report.set_aside.push(aside);
        } else if !made_up {
            report.problem(exit_codes::DATA, format!("{why}; the file was not used"));
        }
    }
    Ok(())
}

/// `publish --dry-run`: what publishing `found` would publish to `opts.to`, and
/// what pruning there would then delete and keep, read from the workspace, the
/// chunk files' manifests (checked, not verified) and the registry. Nothing is
/// accepted, pushed, deleted or recorded.
async fn dry_run(
    opts: &PublishOptions,
    site: &Site,
    found: &scan::Found,
    report: &mut PublishReport,
) -> Result<(), Error> {
    let connect = async {
        Ok(Target {
            dest: opts.to.clone(),
            client: Arc::new(RegistryClient::connect(opts.to.registry(), &opts.registry).await?),
        })
    };
    report.would_publish = Some(
        site.plan(
            &opts.to,
            connect,
            &[],
            opts.skip_pruning,
            found,
            &mut report.site,
        )
        .await?,
    );
    Ok(())
}
