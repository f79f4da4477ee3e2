//! `create`: build the next imageset of a workspace.
//!
//! 1. Load and check the configuration (every unsupported field is refused first,
//!    before any registry is contacted).
//! 2. Resolve every image into manifests and blobs ([`crate::collect`]).
//! 3. Lay out the chunks and create them under temporary names.
//! 4. Download the blobs concurrently straight into their places in the chunks,
//!    checking each against its digest; retry a blob whose transfer breaks.
//! 5. Finish the chunks (hashes, manifest, sync, rename) and only then record the
//!    new sequence in the workspace.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use airlock_cli::telemetry::Bar;
use airlock_common::size::ByteSize;
use airlock_config::{self as config, ImageSpec, LoadedConfig};
use airlock_imageset::signing::Signer;
use airlock_imageset::write::{self, Prepared, WriteError};
use airlock_imageset::{FORMAT, ImageKind, ImagesetManifest, ReleaseRecord};
use airlock_oci::digest::Digest;
use airlock_oci::reference::ImageRef;
use airlock_registry::progress::Progress;
use airlock_registry::retry::{Limit, RetryPolicy, Retryable, Verdict};
use airlock_registry::{ErrorKind, Pool, RegistryError, RegistryOptions};
use airlock_state::crash_point;
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::cincinnati::UpdateService;
use crate::collect::{self, Collected, Missing};
use crate::contents::{Contents, Owner};
use crate::error::Error;
use crate::graph_image;
use crate::policy::{self, BaseImages, Blocked, PolicyOptions};
use crate::release::{self, ReleaseOptions, SignatureCheck};
use crate::remote::{self, RemoteState};
use crate::secure_policy::SecurePolicy;
use crate::workspace::{ImagesetRecord, STATE_FORMAT, Workspace, WorkspaceState};
use crate::{cosign, referrers};

/// oc-mirror v1's archive size when the configuration sets none.
pub const DEFAULT_LIMIT: ByteSize = ByteSize(500 << 30);

/// How often a blob download is attempted before `create` gives up.
const ATTEMPTS: u32 = 4;

/// Blobs at least this large are downloaded `--parallel` at once; smaller ones
/// up to [`SMALL_BLOBS_PER_SLOT`] times as many. A catalog's blobs are mostly
/// small, and across a WAN each costs a round trip more than its bytes.
const LARGE_BLOB: u64 = 1 << 20;

/// Downloads under way at once for each of `--parallel`'s, counting small blobs.
const SMALL_BLOBS_PER_SLOT: usize = 4;

/// What `create` is asked to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The ImageSetConfiguration file.
    pub config: PathBuf,
    /// Where the chunk files go.
    pub out: PathBuf,
    /// The workspace directory; defaults to `storageConfig.local.path`, then `~/.airlock/connected`.
    pub workspace: Option<PathBuf>,
    /// Largest chunk file; defaults to `archiveSize`, then [`DEFAULT_LIMIT`].
    pub limit: Option<ByteSize>,
    /// Start a new workspace UUID at sequence 1.
    pub full: bool,
    /// Write the mapping and the list of what would ship; change nothing.
    pub dry_run: bool,
    /// Blobs of 1 MiB or more downloaded at once; smaller ones up to four
    /// times as many.
    pub parallel: usize,
    /// How to reach the source registries.
    pub registry: RegistryOptions,
    /// Key (and its password, if encrypted) to sign the imageset manifest with.
    pub sign_key: Option<(PathBuf, Option<String>)>,
    /// Parity files to add.
    pub parity: u32,
    /// The imageset format version to write.
    pub imageset_format: ImagesetFormat,
    /// Release selection, signatures and graph data.
    pub releases: ReleaseOptions,
    /// Signatures and referrers.
    pub policy: PolicyOptions,
    /// Leave out images that cannot be pulled, naming them in `missing.txt`,
    /// instead of failing (oc-mirror's `--continue-on-error`).
    pub continue_on_error: bool,
}

/// The imageset format version to write (`--imageset-format`, `imagesetFormat`):
/// version 2 unless a site's disconnected agent reads only version 1
/// (docs/imageset-format.md). The variants' docs are `--help`'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImagesetFormat {
    /// airlock.imageset/v1, which every disconnected agent reads; writing it
    /// hashes every byte once more
    V1,
    /// airlock.imageset/v2
    #[default]
    V2,
}

impl ImagesetFormat {
    /// The format's version.
    pub fn version(self) -> airlock_imageset::Version {
        match self {
            ImagesetFormat::V1 => airlock_imageset::Version::V1,
            ImagesetFormat::V2 => airlock_imageset::Version::V2,
        }
    }
}

/// What `create` did.
#[derive(Debug, Clone)]
pub struct CreateReport {
    /// The imageset manifest (for a dry run: as planned, without chunk hashes).
    pub manifest: ImagesetManifest,
    /// The chunk files written (empty for a dry run).
    pub chunks: Vec<PathBuf>,
    /// Files written by a dry run.
    pub dry_run_files: Vec<PathBuf>,
    /// Bytes of blob content carried.
    pub blob_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Set when nothing changed since this sequence, and no imageset was made.
    pub unchanged_since: Option<u64>,
    /// Images the policy (`blockedImages`, `blockedBaseImages`) left out.
    pub blocked: Vec<Blocked>,
    /// Images left out because they could not be pulled, and the `missing.txt`
    /// that names them.
    pub missing: Vec<Missing>,
    /// `missing.txt`, when images were left out.
    pub missing_file: Option<PathBuf>,
}

/// How source registries are reached: `registries_conf` (else the containers
/// default files) decides where reads of source images really go.
pub fn source_options(
    tls_verify: bool,
    cert_dir: Option<PathBuf>,
    auth_file: Option<PathBuf>,
    registries_conf: Option<&Path>,
) -> Result<RegistryOptions, Error> {
    let mut options = RegistryOptions {
        tls_verify,
        cert_dir,
        auth: airlock_registry::auth::AuthSource::new(auth_file),
        mirrors: None,
    };
    options.mirrors = airlock_registry::mirrors::Mirrors::load(registries_conf, options.clone())
        .map_err(|e| Error::Usage(format!("registries.conf: {e}")))?;
    Ok(options)
}

/// Loads a configuration and refuses anything this build would not act on.
pub fn load_config(path: &Path) -> Result<(LoadedConfig, Vec<ImageSpec>), Error> {
    let loaded = config::load(path)?;
    loaded.validate()?;
    loaded.check_supported()?;
    crate::helm::check_config(&loaded)?;
    let images = loaded.additional_images()?;
    let operators = loaded
        .config
        .mirror
        .as_ref()
        .is_some_and(|m| !m.operators.is_empty());
    if images.is_empty()
        && release::platform(&loaded).is_none()
        && !operators
        && !crate::helm::any(&loaded)
    {
        return Err(Error::Usage(format!(
            "{}: the configuration selects no images; add mirror.platform channels, mirror.operators, mirror.additionalImages or mirror.helm",
            path.display()
        )));
    }
    Ok((loaded, images))
}

/// What an imageset (or a `mirror` run) of a configuration holds.
#[derive(Debug)]
pub struct Gathered {
    /// Every image, manifest and blob.
    pub collected: Collected,
    /// The selected releases, with their signatures.
    pub releases: Vec<ReleaseRecord>,
    /// Images the policy (`blockedImages`, `blockedBaseImages`) left out.
    pub blocked: Vec<Blocked>,
    /// The bundles that brought each operator image, by pull spec.
    pub bundles: HashMap<String, Vec<Owner>>,
    /// Images left out because they could not be pulled (`--continue-on-error`).
    pub missing: Vec<Missing>,
}

/// Resolves every image of the configuration: the selected releases with their
/// components first (each release's signature verified), then `additionalImages`,
/// then the Helm charts and their images, then the graph image (`platform.graph`).
///
/// Everything local (keys, URLs, the base image name) is checked before anything is
/// fetched. With `tolerate`, an image that cannot be resolved is left out and
/// named in [`Gathered::missing`] instead of failing the whole run; releases,
/// catalogs and the graph image are never left out (each is a whole).
pub async fn gather(
    loaded: &LoadedConfig,
    additional: Vec<ImageSpec>,
    pool: &Pool,
    opts: &ReleaseOptions,
    policy: &PolicyOptions,
    tolerate: bool,
    shipped: &HashSet<&Digest>,
) -> Result<Gathered, Error> {
    let keys = match policy.require_signatures.as_slice() {
        [] => None,
        paths => Some(cosign::Keys::load(paths)?),
    };
    let secure = policy
        .secure_policy
        .as_deref()
        .map(|p| SecurePolicy::load(p, policy.registries_d.as_deref()))
        .transpose()?;
    let platform = release::platform(loaded);
    let signatures = match platform {
        Some(_) => SignatureCheck::new(opts)?,
        None => None,
    };
    let graph = match platform {
        Some(p) if p.graph => {
            let base = opts
                .graph_base
                .as_deref()
                .unwrap_or(graph_image::GRAPH_BASE_IMAGE);
            let base: ImageRef = base
                .parse()
                .map_err(|e| Error::Usage(format!("--graph-base-image {base:?}: {e}")))?;
            let url = opts
                .graph_data_url
                .clone()
                .unwrap_or_else(|| graph_image::GRAPH_DATA_URL.to_string());
            Some((base, url))
        }
        _ => None,
    };
    let mut images = Vec::new();
    let mut records = Vec::new();
    if platform.is_some() {
        let updates = UpdateService::new(opts.update_url.clone()).map_err(Error::Registry)?;
        let mut releases = release::resolve(loaded, pool, &updates).await?;
        if let Some(check) = &signatures {
            check.sign(&mut releases.records).await?;
        }
        images = releases.images;
        records = releases.records;
    }
    let operators = loaded
        .config
        .mirror
        .as_ref()
        .map(|m| m.operators.as_slice())
        .unwrap_or_default();
    let catalogs = crate::catalog::content::gather(pool, operators).await?;
    check_bases(&catalogs.bases, pool, keys.as_ref(), secure.as_ref()).await?;
    if let Some((base, _)) = &graph {
        // The graph image's base is held to the policy, which may trust its
        // registry as it stands; --require-signatures does not apply to it (see
        // docs/policy.md).
        let base = ImageSpec {
            name: base.to_string(),
            source: base.clone(),
            target_repo: None,
            target_tag: None,
            kind: ImageKind::Generic,
            subject: None,
            platforms: Vec::new(),
        };
        check_bases(&[base], pool, None, secure.as_ref()).await?;
    }
    let bundles = catalogs.owners;
    images.extend(catalogs.images);
    images.extend(additional);
    let charts = crate::helm::gather(loaded, pool).await?;
    images.extend(charts.images);
    images.extend(charts.oci);
    let (mut collected, blocked, missing) = collect_allowed(
        loaded,
        images,
        pool,
        policy,
        (keys.as_ref(), secure.as_ref()),
        tolerate,
        shipped,
    )
    .await?;
    for built in catalogs.rebuilt.into_iter().chain(charts.artifacts) {
        collected.add_built(built);
    }
    if let Some((base, url)) = graph {
        let data = graph_image::fetch_data(&url).await?;
        let layer = graph_image::data_layer(&data, &url)?;
        let built = graph_image::build(pool, &base, &layer).await?;
        tracing::info!(url = %url, files = layer.files, layer = %layer.layer.digest, base = %base, digest = %built.image.digest, "graph image built");
        collected.add_built(built);
    }
    // A catalog's CatalogSource template travels on its record, to be applied
    // where the CatalogSource is written: at the site.
    // Matched by where the entry places its catalog (repository and tag), so
    // that two entries for one catalog keep their own templates.
    for (op, template) in loaded.catalog_source_templates()? {
        let source = crate::catalog::image::recorded_name(op);
        let tag = op.target_tag.clone().or_else(|| {
            source
                .parse::<ImageRef>()
                .ok()
                .and_then(|r| r.tag().map(str::to_string))
        });
        for r in collected.images.iter_mut().filter(|r| {
            r.kind == ImageKind::Catalog
                && r.source == source
                && r.target_repository == op.target_catalog
                && r.tag == tag
        }) {
            r.catalog_source = Some(template.clone());
        }
    }
    Ok(Gathered {
        collected,
        releases: records,
        blocked,
        bundles,
        missing,
    })
}

/// Holds the images Airlock builds on (a rebuilt catalog's source, the graph
/// image's base) to the signature requirements the images shipped as they are
/// meet: their layers ship inside the built images.
async fn check_bases(
    bases: &[ImageSpec],
    pool: &Pool,
    keys: Option<&cosign::Keys>,
    secure: Option<&SecurePolicy>,
) -> Result<(), Error> {
    if bases.is_empty() || (keys.is_none() && secure.is_none()) {
        return Ok(());
    }
    let resolved = collect::resolve_all(bases, pool).await?;
    let (specs, trees) = referrers::discover(bases, &resolved, pool).await?;
    if let Some(keys) = keys {
        cosign::require(keys, pool, bases, &resolved, &specs, &trees).await?;
    }
    if let Some(secure) = secure {
        secure.check(pool, bases, &resolved, &specs, &trees).await?;
    }
    Ok(())
}

/// Resolves what the policy of the configuration lets through: images that
/// `blockedImages` names are never contacted; the others are resolved to their
/// manifests, and those built on a `blockedBaseImages` base are left out before
/// any of their blobs is pulled. The signatures and referrers of what is left
/// come along unless `--remove-signatures`; with `--require-signatures`, every
/// image must have a valid cosign signature among them, and with
/// `--secure-policy` every image must meet the policy.
async fn collect_allowed(
    loaded: &LoadedConfig,
    images: Vec<ImageSpec>,
    pool: &Pool,
    policy: &PolicyOptions,
    (keys, secure): (Option<&cosign::Keys>, Option<&SecurePolicy>),
    tolerate: bool,
    shipped: &HashSet<&Digest>,
) -> Result<(Collected, Vec<Blocked>, Vec<Missing>), Error> {
    let blocklist = loaded.blocked_images();
    let (images, mut blocked) = policy::apply_blocklist(images, &blocklist)?;
    let bases = BaseImages::resolve(loaded.blocked_base_images(), pool).await?;
    let (mut images, mut resolved, mut missing) = if tolerate {
        collect::resolve_available(images, pool).await?
    } else {
        let resolved = collect::resolve_all(&images, pool).await?;
        (images, resolved, Vec::new())
    };
    blocked.extend(policy::apply_base_rules(
        &mut images,
        &mut resolved,
        &bases,
    )?);
    if tolerate {
        collect::leave_out_unavailable(&mut images, &mut resolved, &mut missing, pool, shipped)
            .await;
    }
    if !policy.remove_signatures || keys.is_some() || secure.is_some() {
        let (specs, trees) = referrers::discover(&images, &resolved, pool).await?;
        if let Some(keys) = keys {
            cosign::require(keys, pool, &images, &resolved, &specs, &trees).await?;
        }
        if let Some(secure) = secure {
            secure
                .check(pool, &images, &resolved, &specs, &trees)
                .await?;
        }
        if !policy.remove_signatures {
            let (mut specs, mut trees) = (specs, trees);
            blocked.extend(policy::apply_resolved(
                &mut specs, &mut trees, &blocklist, &bases,
            )?);
            images.extend(specs);
            resolved.extend(trees);
        }
    }
    Ok((collect::assemble(&images, &resolved), blocked, missing))
}

/// The workspace directory to use.
pub fn workspace_dir(explicit: Option<&Path>, config: &LoadedConfig) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = config.local_storage_path() {
        return Ok(p);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".airlock/connected"))
        .ok_or_else(|| Error::Usage("no --workspace given and HOME is not set".into()))
}

/// Where an image lands, relative to the mirror's prefix: its repository path (or
/// `targetRepo`) and its tag.
fn destination_path(image: &airlock_imageset::ImageRecord) -> String {
    let source: ImageRef = image
        .repository
        .parse()
        .expect("recorded repositories parse");
    let repo = image
        .target_repository
        .clone()
        .unwrap_or_else(|| source.repository().to_string());
    match &image.tag {
        Some(t) => format!("{repo}:{t}"),
        None => format!("{repo}@{}", image.digest),
    }
}

/// Runs `create`.
pub async fn create(opts: &CreateOptions) -> Result<CreateReport, Error> {
    let started = Instant::now();
    let (loaded, additional) = load_config(&opts.config)?;
    let limit = opts.limit.or(loaded.archive_size()).unwrap_or_else(|| {
        tracing::info!(limit = %DEFAULT_LIMIT, "no --limit and no archiveSize: using oc-mirror's default");
        DEFAULT_LIMIT
    });
    let ws_dir = workspace_dir(opts.workspace.as_deref(), &loaded)?;
    let Opened {
        workspace,
        remote,
        current,
    } = open_workspace(
        &ws_dir,
        &loaded,
        &opts.registry,
        opts.full,
        opts.dry_run,
        &opts.out,
    )
    .await?;
    let pool = Pool::new(opts.registry.clone());
    let current = current.filter(|_| !opts.full);
    let (uuid, sequence) = match &current {
        Some(s) => (s.uuid, s.sequence + 1),
        None => (uuid::Uuid::new_v4(), 1),
    };
    let shipped: HashSet<&Digest> = current
        .iter()
        .flat_map(|s| s.shipped.iter().map(|(d, _)| d))
        .collect();
    let Gathered {
        collected,
        releases,
        blocked,
        bundles,
        mut missing,
    } = gather(
        &loaded,
        additional,
        &pool,
        &opts.releases,
        &opts.policy,
        // A dry run always completes: it is where a user finds out.
        opts.continue_on_error || opts.dry_run,
        &shipped,
    )
    .await?;
    let previous = current
        .as_ref()
        .and_then(|c| c.contents.as_ref().filter(|p| p.sequence == c.sequence));
    // With --continue-on-error, a blob the source stops serving while the
    // imageset is written costs its images, not the run: they are left out and
    // the imageset is written again without them (a few times at most).
    let mut pristine = collected;
    let mut rounds = 0;
    loop {
        let leave_out = opts.continue_on_error && rounds < MAX_ROUNDS;
        // Kept as gathered only while it may be needed for another round.
        let mut collected = match leave_out {
            true => pristine.clone(),
            false => std::mem::take(&mut pristine),
        };
        let carried = match previous {
            Some(previous) if !missing.is_empty() => {
                carry_over(previous, &mut missing, &mut collected)
            }
            _ => HashSet::new(),
        };
        if opts.full && !missing.is_empty() {
            tracing::warn!(
                missing = missing.len(),
                "--full starts afresh, so images left out are not carried over: the site removes those it had when it publishes this imageset"
            );
        }
        let missing_file = write_missing(&opts.out, &missing)?;
        if collected.images.is_empty() && !missing.is_empty() {
            return Err(Error::Usage(format!(
                "none of the configuration's images could be pulled; {} names each with why",
                missing_file
                    .as_deref()
                    .unwrap_or(Path::new("missing.txt"))
                    .display()
            )));
        }
        tracing::info!(workspace = %ws_dir.display(), %uuid, sequence, limit = limit.0, images = collected.images.len(), releases = releases.len(), "creating imageset");
        let skeleton = ImagesetManifest {
            format: FORMAT.to_string(),
            uuid,
            sequence,
            // Sequence 1 starts a workspace and ships everything; later imagesets ship
            // only what no earlier imageset of the workspace carried.
            full: sequence == 1,
            created: write::now(),
            limit: limit.0,
            chunks: Vec::new(),
            parity: Vec::new(),
            images: collected.images.clone(),
            blobs: collected.blobs.clone(),
            releases: releases.clone(),
            deletes: Vec::new(),
        };
        // Manifests always travel: they are small, and they are the desired state.
        // Manifests travel in every imageset, except those of images carried over
        // from the last one (`--continue-on-error`): not pulled this time, they are
        // at the site already, as their layers are.
        let carry: Vec<usize> = (0..skeleton.blobs.len())
            .filter(|&i| {
                let b = &skeleton.blobs[i];
                match &b.media_type {
                    Some(_) => collected.manifests.contains_key(&b.digest),
                    None => !shipped.contains(&b.digest),
                }
            })
            .collect();
        let blob_bytes = carry.iter().map(|&i| skeleton.blobs[i].size).sum();
        tracing::info!(
            blobs = skeleton.blobs.len(),
            carried = carry.len(),
            shipped_before = skeleton.blobs.len() - carry.len(),
            bytes = blob_bytes,
            "differential selection"
        );

        // Nothing new to ship and the same desired state as the last imageset: a new
        // imageset would change nothing at the site (oc-mirror: "no updates detected").
        let unchanged = current.as_ref().is_some_and(|c| {
            c.imagesets.last().is_some_and(|last| {
                last.desired_state == desired_state(&skeleton.images)
                    || last.desired_state == desired_state_in_order(&skeleton.images)
            }) && skeleton.blobs.iter().all(|b| shipped.contains(&b.digest))
        });
        if unchanged && !opts.dry_run {
            let last = current.as_ref().map_or(0, |c| c.sequence);
            // A workspace whose last imageset was made before its contents were
            // recorded learns them here, from the same images: `delete` needs them.
            if let (Some(ws), Some(state)) = (&workspace, &current)
                && state.contents.as_ref().is_none_or(|c| c.sequence != last)
            {
                ws.record_contents(
                    &uuid,
                    &Contents::new(
                        last,
                        &skeleton.images,
                        &skeleton.releases,
                        &skeleton.blobs,
                        &collected.manifests,
                        &bundles,
                    ),
                )?;
            }
            tracing::info!(
                sequence = last,
                "no updates since the last imageset; nothing created"
            );
            return Ok(CreateReport {
                manifest: skeleton,
                chunks: Vec::new(),
                dry_run_files: Vec::new(),
                blob_bytes: 0,
                elapsed: started.elapsed(),
                unchanged_since: Some(last),
                blocked,
                missing,
                missing_file,
            });
        }

        if opts.dry_run {
            let files = write_dry_run(&opts.out, &skeleton, &carry, &blocked)?;
            return Ok(CreateReport {
                manifest: skeleton,
                chunks: Vec::new(),
                dry_run_files: files,
                blob_bytes,
                elapsed: started.elapsed(),
                unchanged_since: None,
                blocked,
                missing,
                missing_file,
            });
        }
        let workspace = workspace.as_ref().expect("opened for a real run");
        let contents = Contents::with_carried(
            sequence,
            &skeleton.images,
            &skeleton.releases,
            &skeleton.blobs,
            &collected.manifests,
            &bundles,
            previous.map(|p| (p, &carried)),
        );
        let written = write_and_record(
            Recording {
                workspace,
                remote: remote.as_ref(),
                current: current.clone(),
                out: &opts.out,
                sign_key: opts.sign_key.as_ref(),
                parity: opts.parity,
                imageset_format: opts.imageset_format,
            },
            skeleton,
            Fill {
                carry: &carry,
                collected: &collected,
                pool: &pool,
                parallel: opts.parallel,
                leave_out,
            },
            &[],
            &contents,
        )
        .await;
        let (manifest, chunks) = match written {
            Err(Error::Unpulled(failed)) => {
                rounds += 1;
                let before = pristine.images.len();
                leave_out_unpulled(&mut pristine, &mut missing, failed)?;
                tracing::warn!(
                    left_out = before - pristine.images.len(),
                    "blobs failed while the imageset was written: it is written again without their images (--continue-on-error)"
                );
                continue;
            }
            written => written?,
        };
        return Ok(CreateReport {
            manifest,
            chunks,
            dry_run_files: Vec::new(),
            blob_bytes,
            elapsed: started.elapsed(),
            unchanged_since: None,
            blocked,
            missing,
            missing_file,
        });
    }
}

/// A connected workspace opened for a run: local, and the registry copy
/// (`storageConfig.registry`) reconciled with it.
pub(crate) struct Opened {
    /// `None` for a dry run where no workspace exists (a dry run never creates one).
    pub workspace: Option<Workspace>,
    /// Where the state is kept in a registry.
    pub remote: Option<RemoteState>,
    /// The state to continue from (the later of the local and the registry copy).
    pub current: Option<WorkspaceState>,
}

/// Opens the workspace at `ws_dir`, takes over the registry copy of its state when
/// that is ahead, and (unless `dry_run`) finishes what an interrupted run left in
/// `out`'s staging directory.
pub(crate) async fn open_workspace(
    ws_dir: &Path,
    loaded: &LoadedConfig,
    registry: &RegistryOptions,
    full: bool,
    dry_run: bool,
    out: &Path,
) -> Result<Opened, Error> {
    // A dry run must not create a workspace; it reads one if it exists.
    let workspace = if dry_run && !Workspace::exists(ws_dir) {
        None
    } else {
        Some(Workspace::open(ws_dir)?)
    };
    let remote = loaded.storage_registry().map(|(image, skip_tls)| {
        let mut options = registry.clone();
        options.tls_verify &= !skip_tls;
        // The state is written to that registry and read back from it, never
        // from a registries.conf mirror of it (a stale cache would hand back an
        // older state).
        options.mirrors = None;
        RemoteState::new(image, Pool::new(options))
    });
    let local = workspace
        .as_ref()
        .map(Workspace::export)
        .transpose()?
        .flatten();
    let remote_state = match &remote {
        Some(r) => r.pull().await?,
        None => None,
    };
    let remote_name = remote
        .as_ref()
        .map(|r| r.image().to_string())
        .unwrap_or_default();
    let (current, from_remote) = remote::reconcile(local, remote_state, full, &remote_name)?;
    if let (true, Some(state), Some(ws), false) = (from_remote, &current, &workspace, dry_run) {
        tracing::info!(image = %remote_name, uuid = %state.uuid, sequence = state.sequence, "continuing from the workspace state kept in the registry");
        ws.import(state)?;
    }
    if !dry_run {
        recover_staging(
            &out.join(STAGING),
            out,
            current.as_ref().map(|s| (s.uuid, s.sequence)),
        )?;
    }
    Ok(Opened {
        workspace,
        remote,
        current,
    })
}

/// Where a new imageset is recorded.
pub(crate) struct Recording<'a> {
    pub workspace: &'a Workspace,
    pub remote: Option<&'a RemoteState>,
    /// The state the new imageset follows.
    pub current: Option<WorkspaceState>,
    pub out: &'a Path,
    pub sign_key: Option<&'a (PathBuf, Option<String>)>,
    pub parity: u32,
    pub imageset_format: ImagesetFormat,
}

/// What fills the chunks: the blobs at positions `carry` of the manifest, from
/// `collected` (built content) or their source registries.
pub(crate) struct Fill<'a> {
    pub carry: &'a [usize],
    pub collected: &'a Collected,
    pub pool: &'a Pool,
    pub parallel: usize,
    /// `--continue-on-error`: a blob that cannot be pulled fails the write with
    /// [`Error::Unpulled`], naming every such blob, so that their images can be
    /// left out and the imageset written again without them.
    pub leave_out: bool,
}

/// Writes the imageset `skeleton` describes into the staging directory, records it
/// (in the registry copy first, then locally) and moves its files into `out`; see
/// docs/workspace.md for why in this order. `freed` digests stop counting as
/// shipped; `contents` is what the new imageset holds.
pub(crate) async fn write_and_record(
    at: Recording<'_>,
    skeleton: ImagesetManifest,
    fill_with: Fill<'_>,
    freed: &[Digest],
    contents: &Contents,
) -> Result<(ImagesetManifest, Vec<PathBuf>), Error> {
    let started = Instant::now();
    let (uuid, sequence) = (skeleton.uuid, skeleton.sequence);
    let staging = at.out.join(STAGING);
    let signer = at
        .sign_key
        .map(|(path, password)| Signer::load(path, password.clone()))
        .transpose()?;
    let options = write::Options {
        signer: signer.as_ref(),
        parity: at.parity,
        version: at.imageset_format.version(),
    };
    let prepared = write::prepare(&staging, skeleton, fill_with.carry, &options)?;
    tracing::info!(chunks = prepared.manifest().chunks.len(), "chunks laid out");
    let failed = fill(
        &prepared,
        fill_with.collected,
        fill_with.carry,
        fill_with.pool,
        fill_with.parallel.max(1),
    )
    .await;
    if !failed.is_empty() {
        // A local failure (the disk, the staging) is the run's; a blob the
        // source would not serve is, with --continue-on-error, its images'.
        let pulled = |e: &Error| {
            matches!(
                e,
                Error::Registry(_) | Error::Write(WriteError::Content { .. })
            )
        };
        if fill_with.leave_out && failed.iter().all(|(_, e)| pulled(e)) {
            return Err(Error::Unpulled(failed));
        }
        let at = failed.iter().position(|(_, e)| !pulled(e)).unwrap_or(0);
        return Err(failed.into_iter().nth(at).expect("not empty").1);
    }
    crash_point("filled");
    let (manifest, staged) = prepared.finish(signer.as_ref()).await?;
    crash_point("renamed");
    let bytes = manifest.chunks.iter().map(|c| c.size).sum();
    let record = ImagesetRecord {
        uuid,
        sequence,
        created: manifest.created.clone(),
        full: manifest.full,
        chunks: manifest.chunks.iter().map(|c| c.name.clone()).collect(),
        bytes,
        images: manifest.images.len(),
        desired_state: desired_state(&manifest.images),
    };
    let carried: Vec<Digest> = fill_with
        .carry
        .iter()
        .map(|&i| manifest.blobs[i].digest.clone())
        .collect();
    if let Some(remote) = at.remote {
        let mut state = at.current.unwrap_or_else(|| WorkspaceState {
            format: STATE_FORMAT.to_string(),
            uuid,
            sequence: 0,
            imagesets: Vec::new(),
            shipped: Vec::new(),
            contents: None,
        });
        state.sequence = sequence;
        state.imagesets.push(record.clone());
        let freed_set: HashSet<&Digest> = freed.iter().collect();
        state.shipped.retain(|(d, _)| !freed_set.contains(d));
        state
            .shipped
            .extend(carried.iter().map(|d| (d.clone(), sequence)));
        state.contents = Some(contents.clone());
        if let Err(e) = remote.push(&state).await {
            // The imageset is not recorded anywhere, so its files must never be
            // carried: they never leave the staging directory.
            for c in &staged {
                let _ = std::fs::remove_file(c);
            }
            return Err(Error::Remote(format!(
                "the workspace state could not be stored at {}: {e}; nothing of sequence {sequence} was recorded or left in {}; run the command again when the registry is reachable",
                remote.image(),
                at.out.display()
            )));
        }
        crash_point("state-pushed");
    }
    at.workspace.commit(&record, &carried, freed, contents)?;
    crash_point("committed");
    let chunks = publish_staged(&staged, at.out)?;
    tracing::info!(%uuid, sequence, chunks = chunks.len(), bytes, elapsed_ms = started.elapsed().as_millis() as u64, "imageset created");
    Ok((manifest, chunks))
}

/// The digest of an image list as a set, for [`ImagesetRecord::desired_state`]:
/// the order is nothing to the site, and an image carried over while its
/// source was down is listed last, where the next run, its source back, lists
/// it in the configuration's order; that must not make an imageset.
fn desired_state(images: &[airlock_imageset::ImageRecord]) -> Digest {
    let mut each: Vec<Vec<u8>> = images
        .iter()
        .map(|i| serde_json::to_vec(i).expect("image records serialise"))
        .collect();
    each.sort();
    Digest::of(&serde_json::to_vec(&each).expect("byte lists serialise"))
}

/// The digest earlier versions recorded, of the list in order: still taken as
/// "unchanged", so that an upgrade does not make an imageset of its own.
fn desired_state_in_order(images: &[airlock_imageset::ImageRecord]) -> Digest {
    Digest::of(&serde_json::to_vec(images).expect("image records serialise"))
}

/// Directory (inside `--out`) where chunk files are written until their imageset is
/// recorded. Only then do they move into `--out`, so that a transfer station watching
/// `--out` never takes files of an imageset that a crash or a failure left
/// unrecorded, and that a later run would make again differently.
pub const STAGING: &str = ".airlock-staging";

/// Moves staged chunk files into `out` (a rename within one file system) and syncs it.
fn publish_staged(staged: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut moved = Vec::with_capacity(staged.len());
    for f in staged {
        let target = out.join(f.file_name().expect("staged files have names"));
        std::fs::rename(f, &target).map_err(|e| Error::io(&target, e))?;
        moved.push(target);
    }
    std::fs::File::open(out)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(out, e))?;
    // An empty staging directory is not left behind for people listing --out.
    if let Some(dir) = staged.first().and_then(|f| f.parent()) {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(moved)
}

/// Finishes what an interrupted run left in the staging directory: chunk files of
/// an imageset the workspace recorded (`recorded` is its UUID and last sequence) move
/// into `out`; anything else was never recorded and is removed.
fn recover_staging(
    staging: &Path,
    out: &Path,
    recorded: Option<(uuid::Uuid, u64)>,
) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(staging) else {
        return Ok(());
    };
    let mut keep = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(staging, e))?.path();
        let head = airlock_imageset::read::read_head(&path).ok();
        let is_recorded = head.is_some_and(|h| {
            recorded
                .is_some_and(|(uuid, last)| h.manifest.uuid == uuid && h.manifest.sequence <= last)
        });
        if is_recorded {
            keep.push(path);
        } else {
            tracing::info!(file = %path.display(), "removing a file of an interrupted, unrecorded run");
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    if !keep.is_empty() {
        tracing::info!(
            files = keep.len(),
            "moving the files of a recorded imageset out of staging"
        );
        publish_staged(&keep, out)?;
    }
    Ok(())
}

/// Images that could not be pulled this time but the last imageset listed are
/// carried over from it, with their referrers: the site deletes what the newest
/// imageset no longer lists, and a source registry that failed for an hour must
/// not take images away from clusters. Their blobs travelled then; only their
/// records come along. Returns the digests of the images carried.
fn carry_over(
    previous: &Contents,
    missing: &mut [Missing],
    collected: &mut Collected,
) -> HashSet<Digest> {
    let mut carried: Vec<usize> = (0..previous.images.len())
        .filter(|&k| missing.iter().any(|m| m.image == previous.images[k].source))
        .collect();
    let tree = |k: usize| {
        previous.trees[k]
            .iter()
            .filter_map(|&p| previous.blobs.get(p as usize))
    };
    with_referrers(
        &previous.images,
        |k| tree(k).map(|b| &b.digest),
        &mut carried,
    );
    let mut have: HashSet<Digest> = collected.blobs.iter().map(|b| b.digest.clone()).collect();
    let mut digests = HashSet::new();
    for &k in &carried {
        let image = &previous.images[k];
        // The same image placed elsewhere (another entry's targetRepo or
        // targetTag) is another record: both stay at the site.
        let listed = collected.images.iter().any(|i| {
            i.source == image.source
                && i.digest == image.digest
                && i.target_repository == image.target_repository
                && i.tag == image.tag
        });
        if listed {
            continue;
        }
        collected.images.push(image.clone());
        digests.insert(image.digest.clone());
        for b in tree(k) {
            if have.insert(b.digest.clone()) {
                collected.blobs.push(b.clone());
            }
        }
    }
    for m in missing.iter_mut() {
        if previous.images.iter().any(|i| i.source == m.image) {
            m.carried_from = Some(previous.sequence);
        }
    }
    digests
}

/// Adds to `chosen` (indexes into `images`) the images whose subject is in the
/// `tree` of a chosen one: their signatures and other referrers, and theirs, to
/// the end of the chain.
fn with_referrers<'a, T: Iterator<Item = &'a Digest>>(
    images: &[airlock_imageset::ImageRecord],
    tree: impl Fn(usize) -> T,
    chosen: &mut Vec<usize>,
) {
    loop {
        let held: HashSet<&Digest> = chosen.iter().flat_map(|&k| tree(k)).collect();
        let more: Vec<usize> = (0..images.len())
            .filter(|k| !chosen.contains(k))
            .filter(|&k| images[k].subject.as_ref().is_some_and(|s| held.contains(s)))
            .collect();
        if more.is_empty() {
            return;
        }
        chosen.extend(more);
    }
}

/// How many times an imageset is written again without the images whose blobs
/// the source stopped serving (`--continue-on-error`).
const MAX_ROUNDS: u32 = 3;

/// Leaves out of `collected` (into `missing`) the images whose trees hold a
/// blob of `failed`, and the referrers about them, to the end of the chain;
/// their manifests and blobs go with them unless a remaining image needs them.
/// A release, its components, a catalog or the graph image needing one is the
/// run's failure, as when its blobs cannot be asked for.
fn leave_out_unpulled(
    collected: &mut Collected,
    missing: &mut Vec<Missing>,
    failed: Vec<(Digest, Error)>,
) -> Result<(), Error> {
    let trees: Vec<Vec<Digest>> = collected
        .images
        .iter()
        .map(|i| crate::contents::tree(&i.digest, &collected.manifests))
        .collect();
    let failing = |k: usize| failed.iter().find(|(d, _)| trees[k].contains(d));
    let needing: Vec<usize> = (0..collected.images.len())
        .filter(|&k| failing(k).is_some())
        .collect();
    // The run's error: the first failure of a whole, else the first one.
    let fatal = |failed: Vec<(Digest, Error)>, whole: Option<usize>| {
        let at = whole
            .and_then(|k| failed.iter().position(|(d, _)| trees[k].contains(d)))
            .unwrap_or(0);
        failed.into_iter().nth(at).expect("a blob failed").1
    };
    if let Some(&k) = needing
        .iter()
        .find(|&&k| collect::whole(collected.images[k].kind))
    {
        tracing::error!(image = %collected.images[k].source, "a blob of a part of a whole cannot be pulled: it is not left out");
        return Err(fatal(failed, Some(k)));
    }
    if needing.is_empty() {
        return Err(fatal(failed, None));
    }
    for &k in &needing {
        let (d, e) = failing(k).expect("it needs a failed blob");
        let reason = format!("blob {d} cannot be pulled: {e}");
        collect::leave_out(missing, &collected.images[k].source, &reason);
    }
    // Their signatures go with them, unlisted, as when an image is left out
    // before writing (the last imageset's are carried over with it).
    let mut out = needing;
    with_referrers(&collected.images, |k| trees[k].iter(), &mut out);
    let kept: Vec<usize> = (0..collected.images.len())
        .filter(|k| !out.contains(k))
        .collect();
    let needed: HashSet<&Digest> = kept.iter().flat_map(|&k| &trees[k]).collect();
    collected.blobs.retain(|b| needed.contains(&b.digest));
    collected.manifests.retain(|d, _| needed.contains(d));
    let images = std::mem::take(&mut collected.images);
    collected.images = kept.into_iter().map(|k| images[k].clone()).collect();
    Ok(())
}

/// Writes `missing.txt` in `out` (one line per image left out: the image, then
/// why, and whether it was carried over), or removes a stale one. Returns it
/// when written.
pub(crate) fn write_missing(out: &Path, missing: &[Missing]) -> Result<Option<PathBuf>, Error> {
    let path = out.join("missing.txt");
    if missing.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&path, e)),
            _ => return Ok(None),
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let text: String = missing.iter().map(|m| format!("{m}\n")).collect();
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    Ok(Some(path))
}

/// Writes `mapping.txt` (oc-mirror's `source=destination` lines, the destination
/// being the path under the mirror prefix), `to-ship.txt` (every blob that would
/// travel: digest, size, source repository) and, when rules left images out,
/// `blocked.txt` (image, rule field, pattern or base, and for base rules the
/// platform and how it was found).
fn write_dry_run(
    out: &Path,
    m: &ImagesetManifest,
    carry: &[usize],
    blocked: &[Blocked],
) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut mapping = String::new();
    // The mapping lists images copied as they are; the graph image is built here
    // (its blobs are in to-ship.txt).
    for image in m.images.iter().filter(|i| i.kind != ImageKind::GraphData) {
        let source = image
            .source
            .strip_prefix("docker://")
            .unwrap_or(&image.source);
        mapping.push_str(&format!(
            "docker://{source}=file://{}\n",
            destination_path(image)
        ));
    }
    let mut ship = String::new();
    for b in carry.iter().map(|&i| &m.blobs[i]) {
        ship.push_str(&format!("{} {} {}\n", b.digest, b.size, b.repository));
    }
    let mut files = vec![
        (out.join("mapping.txt"), mapping),
        (out.join("to-ship.txt"), ship),
    ];
    if !blocked.is_empty() {
        let text: String = blocked.iter().map(|b| format!("{b}\n")).collect();
        files.push((out.join("blocked.txt"), text));
    }
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Writes the bytes of every blob of `carry` into its place (manifests and
/// built blobs from memory, the rest downloaded); returns each blob that could
/// not be written, with why (every blob is tried, so that all are named at once).
async fn fill(
    prepared: &Prepared,
    collected: &Collected,
    carry: &[usize],
    pool: &Pool,
    parallel: usize,
) -> Vec<(Digest, Error)> {
    let total: u64 = carry
        .iter()
        .map(|&i| prepared.manifest().blobs[i].size)
        .sum();
    let progress = Arc::new(Bar::bytes("create", total));
    let sized = carry
        .iter()
        .map(|&i| (prepared.manifest().blobs[i].size, i));
    let results: Vec<Result<(), (Digest, Error)>> = admitted(sized, parallel, |i| {
        let progress = progress.clone();
        async move {
            fill_blob(prepared, collected, i, pool, progress.as_ref())
                .await
                .map_err(|e| (prepared.manifest().blobs[i].digest.clone(), e))
        }
    })
    .collect()
    .await;
    progress.finish();
    results.into_iter().filter_map(Result::err).collect()
}

/// Runs `transfer` for each item of `sized` (its size first): up to `parallel`
/// of those of [`LARGE_BLOB`] or more at once, and up to
/// [`SMALL_BLOBS_PER_SLOT`] times `parallel` in all.
fn admitted<'a, T, Fut>(
    sized: impl Iterator<Item = (u64, T)> + 'a,
    parallel: usize,
    transfer: impl Fn(T) -> Fut + 'a,
) -> impl futures::Stream<Item = Fut::Output> + 'a
where
    Fut: std::future::Future + 'a,
{
    let large = Arc::new(Semaphore::new(parallel));
    futures::stream::iter(sized)
        .map(move |(size, item)| {
            let large = (size >= LARGE_BLOB).then(|| large.clone());
            let transfer = transfer(item);
            async move {
                let _slot = match large {
                    Some(l) => Some(l.acquire_owned().await.expect("never closed")),
                    None => None,
                };
                transfer.await
            }
        })
        .buffer_unordered(parallel * SMALL_BLOBS_PER_SLOT)
}

async fn fill_blob(
    prepared: &Prepared,
    collected: &Collected,
    index: usize,
    pool: &Pool,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let blob = &prepared.manifest().blobs[index];
    let held = collected
        .manifests
        .get(&blob.digest)
        .map(|m| &m.bytes)
        .or_else(|| collected.built.get(&blob.digest));
    if let Some(bytes) = held {
        let mut w = prepared.blob_writer(index);
        w.write(bytes.clone()).await?;
        w.finish().await?;
        progress.add(blob.size);
        return Ok(());
    }
    let source: ImageRef = blob
        .repository
        .parse()
        .expect("recorded repositories parse");
    let client = pool.client(source.registry()).await?;
    // Bytes of the attempt under way, taken back from the progress when it
    // fails: a retry downloads the blob again from its start.
    let written = AtomicU64::new(0);
    let policy = download_policy();
    policy
        .run(
            &policy.budget(),
            || async {
                written.store(0, Ordering::Relaxed);
                // The stream ends with an error when the bytes do not hash to
                // the digest, and the writer is finished only when it ended
                // without one.
                let mut w = prepared.blob_writer(index).checked_by_source();
                let transfer: Result<(), Error> = async {
                    let mut stream = client
                        .blob_stream(source.repository(), &blob.digest)
                        .await?;
                    while let Some(bytes) = stream.next().await {
                        let bytes = bytes?;
                        let n = bytes.len() as u64;
                        w.write(bytes).await?;
                        written.fetch_add(n, Ordering::Relaxed);
                        progress.add(n);
                    }
                    Ok(())
                }
                .await;
                match transfer {
                    Ok(()) => w.finish().await.map_err(|e| Attempt(e.into())),
                    Err(e) => {
                        w.abandon().await;
                        Err(Attempt(e))
                    }
                }
            },
            |retry| {
                progress.sub(written.load(Ordering::Relaxed));
                tracing::warn!(digest = %blob.digest, repository = %blob.repository, attempt = retry.attempt, wait_ms = retry.wait.as_millis() as u64, error = %retry.error.0, "blob transfer failed; retrying");
            },
        )
        .await
        .map_err(|Attempt(e)| e)?;
    tracing::debug!(digest = %blob.digest, size = blob.size, repository = %blob.repository, "blob stored");
    Ok(())
}

/// How blob downloads are retried: [`ATTEMPTS`] attempts, waiting 0.5 s
/// doubling (with jitter, so that downloads failed by one blip do not all
/// come back at once), or the registry's `Retry-After`, as the agent's other
/// reads of a source wait ([`crate::reads`]).
fn download_policy() -> RetryPolicy {
    RetryPolicy {
        first: Duration::from_millis(500),
        cap: Duration::from_secs(4),
        attempts: ATTEMPTS,
        per_image: ATTEMPTS,
        max_retry_after: crate::reads::MAX_RETRY_AFTER,
    }
}

/// A failed download attempt, told transient or final.
struct Attempt(Error);

impl Retryable for Attempt {
    /// Broader than a registry request's verdict (`airlock_registry::retry`):
    /// a refused connection and a body longer than declared are tried again
    /// too.
    fn verdict(&self) -> Verdict {
        match &self.0 {
            Error::Registry(r) => match r.kind() {
                Some(ErrorKind::Unavailable { retry_after }) => Verdict::Retry { retry_after },
                Some(ErrorKind::Network | ErrorKind::Unreachable) => {
                    Verdict::Retry { retry_after: None }
                }
                _ => Verdict::Final,
            },
            Error::Write(WriteError::Content { .. }) => Verdict::Retry { retry_after: None },
            _ => Verdict::Final,
        }
    }

    /// The last attempt's error, as it was: the log has told of each retry.
    fn gave_up(self, _: u32, _: Limit) -> Self {
        self
    }
}

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        Error::Registry(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_imageset::{BlobRecord, ImageRecord};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Blobs of 1 MiB and up are downloaded `--parallel` at once, smaller ones
    /// up to four times as many: with 2, three large blobs then ten small
    /// ones start two large and five small (the third large one holds a place
    /// while it waits); once a large one is done, the third large one starts,
    /// and a small one in the place the done one left.
    #[tokio::test]
    async fn small_blobs_share_more_places_than_large_ones() {
        let sizes = [2 << 20, 2 << 20, 2 << 20]
            .into_iter()
            .chain([4 << 10; 10])
            .enumerate()
            .map(|(i, size)| (size, (i, size)));
        let (large, small) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let done = Semaphore::new(0);
        let (large, small, done) = (&large, &small, &done);
        let mut transfers = std::pin::pin!(admitted(sizes, 2, |(i, size)| async move {
            let started = if size >= LARGE_BLOB { large } else { small };
            started.fetch_add(1, Ordering::SeqCst);
            done.acquire().await.expect("open").forget();
            i
        }));
        let started = || (large.load(Ordering::SeqCst), small.load(Ordering::SeqCst));
        assert!(futures::poll!(transfers.next()).is_pending());
        assert_eq!(started(), (2, 5));
        done.add_permits(1);
        let first = transfers.next().await.expect("one done");
        assert_eq!(first, 0, "the first large blob took the permit");
        assert!(futures::poll!(transfers.next()).is_pending());
        assert_eq!(started(), (3, 6));
    }

    /// The recorded state is of the set of images: their order changes
    /// nothing; what is in the list does.
    #[test]
    fn the_desired_state_does_not_depend_on_the_order() {
        let record = |tag: &str| ImageRecord {
            source: format!("quay.io/team/app:{tag}"),
            repository: "quay.io/team/app".into(),
            tag: Some(tag.into()),
            by_digest: false,
            digest: Digest::of(tag.as_bytes()),
            target_repository: None,
            kind: ImageKind::Generic,
            subject: None,
            catalog_source: None,
            platforms: Vec::new(),
        };
        let (a, b, c) = (record("1"), record("2"), record("3"));
        let list = [a.clone(), b.clone()];
        assert_eq!(desired_state(&list), desired_state(&[b.clone(), a.clone()]));
        assert_ne!(desired_state(&list), desired_state(&[a.clone(), c]));
        assert_ne!(
            desired_state_in_order(&list),
            desired_state_in_order(&[b, a])
        );
    }

    /// Regression: an image configured twice with different targetRepo, whose
    /// source was down, was carried over once: the first placement carried
    /// made the second look listed already, and the site pruned it.
    #[test]
    fn each_placement_of_an_image_left_out_is_carried_over() {
        let digest = Digest::of(b"manifest");
        let record = |target: &str| ImageRecord {
            source: "quay.io/team/app:1".into(),
            repository: "quay.io/team/app".into(),
            tag: Some("1".into()),
            by_digest: false,
            digest: digest.clone(),
            target_repository: Some(target.into()),
            kind: ImageKind::Generic,
            subject: None,
            catalog_source: None,
            platforms: Vec::new(),
        };
        let blob = BlobRecord {
            digest: digest.clone(),
            size: 10,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            repository: "quay.io/team/app".into(),
            parts: Vec::new(),
        };
        let previous = Contents {
            sequence: 4,
            images: vec![record("a/app"), record("b/app")],
            releases: Vec::new(),
            blobs: vec![blob],
            owners: vec![Vec::new(), Vec::new()],
            trees: vec![vec![0], vec![0]],
        };
        let mut collected = Collected::default();
        let mut missing = vec![Missing {
            image: "quay.io/team/app:1".into(),
            reason: "unreachable".into(),
            carried_from: None,
        }];
        carry_over(&previous, &mut missing, &mut collected);
        let mut placed: Vec<_> = collected
            .images
            .iter()
            .map(|i| i.target_repository.clone().unwrap())
            .collect();
        placed.sort();
        assert_eq!(placed, ["a/app", "b/app"]);
        assert_eq!(collected.blobs.len(), 1, "the shared manifest once");
        assert_eq!(missing[0].carried_from, Some(4));
    }

    /// An image of one manifest over `blobs` (config first), as collect makes it.
    fn image_of(
        collected: &mut Collected,
        name: &str,
        kind: ImageKind,
        blobs: &[&Digest],
    ) -> Digest {
        let d = |x: &Digest| serde_json::json!({"mediaType": "application/octet-stream", "digest": x.as_str(), "size": 1});
        let bytes = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": airlock_oci::manifest::OCI_MANIFEST,
            "config": d(blobs[0]),
            "layers": blobs[1..].iter().map(|b| d(b)).collect::<Vec<_>>(),
        })
        .to_string();
        let m = airlock_registry::RawManifest::from_bytes(
            bytes.into(),
            airlock_oci::manifest::OCI_MANIFEST.into(),
        );
        let record = |digest: &Digest, media_type: Option<&str>| BlobRecord {
            digest: digest.clone(),
            size: 1,
            media_type: media_type.map(str::to_string),
            repository: format!("quay.io/team/{name}"),
            parts: Vec::new(),
        };
        collected
            .blobs
            .push(record(&m.digest, Some(airlock_oci::manifest::OCI_MANIFEST)));
        for b in blobs {
            if !collected.blobs.iter().any(|r| r.digest == **b) {
                collected.blobs.push(record(b, None));
            }
        }
        collected.images.push(ImageRecord {
            source: format!("quay.io/team/{name}:1"),
            repository: format!("quay.io/team/{name}"),
            tag: Some("1".into()),
            by_digest: false,
            digest: m.digest.clone(),
            target_repository: None,
            kind,
            subject: None,
            catalog_source: None,
            platforms: Vec::new(),
        });
        let digest = m.digest.clone();
        collected.manifests.insert(digest.clone(), m);
        digest
    }

    fn unreachable(d: &Digest) -> (Digest, Error) {
        let e = airlock_registry::RegistryError::Request {
            operation: "pull blob",
            target: d.to_string(),
            kind: ErrorKind::Unavailable { retry_after: None },
            message: "HTTP 500".into(),
        };
        (d.clone(), Error::Registry(e))
    }

    /// A blob that fails while the imageset is written costs every image that
    /// needs it (two sharing a layer), and their signatures, silently; what
    /// only they needed goes too, and the rest stays as it was.
    #[test]
    fn a_failed_blob_leaves_out_every_image_needing_it_and_their_signatures() {
        let b = |s: &str| Digest::of(s.as_bytes());
        let mut collected = Collected::default();
        let a = image_of(
            &mut collected,
            "a",
            ImageKind::Generic,
            &[&b("ca"), &b("shared"), &b("la")],
        );
        image_of(
            &mut collected,
            "b",
            ImageKind::Generic,
            &[&b("cb"), &b("shared")],
        );
        image_of(
            &mut collected,
            "c",
            ImageKind::Generic,
            &[&b("cc"), &b("lc")],
        );
        image_of(
            &mut collected,
            "sig",
            ImageKind::Referrer,
            &[&b("cs"), &b("ls")],
        );
        collected.images[3].subject = Some(a);
        let mut missing = Vec::new();
        leave_out_unpulled(
            &mut collected,
            &mut missing,
            vec![unreachable(&b("shared"))],
        )
        .unwrap();
        let left: Vec<&str> = missing.iter().map(|m| m.image.as_str()).collect();
        assert_eq!(left, ["quay.io/team/a:1", "quay.io/team/b:1"]);
        assert!(
            missing[0]
                .reason
                .contains(&format!("blob {} cannot be pulled", b("shared")))
        );
        let kept: Vec<&str> = collected.images.iter().map(|i| i.source.as_str()).collect();
        assert_eq!(kept, ["quay.io/team/c:1"]);
        let blobs: HashSet<&Digest> = collected.blobs.iter().map(|r| &r.digest).collect();
        assert_eq!(blobs.len(), 3, "c's manifest, config and layer");
        assert!(blobs.contains(&b("lc")) && !blobs.contains(&b("la")) && !blobs.contains(&b("ls")));
        assert_eq!(collected.manifests.len(), 1);
    }

    /// A part of a whole needing a failed blob fails the run with that blob's
    /// error, whichever failed first.
    #[test]
    fn a_failed_blob_of_a_release_fails_the_run_with_its_own_error() {
        let b = |s: &str| Digest::of(s.as_bytes());
        let mut collected = Collected::default();
        image_of(
            &mut collected,
            "app",
            ImageKind::Generic,
            &[&b("c1"), &b("l1")],
        );
        image_of(
            &mut collected,
            "cli",
            ImageKind::ReleaseComponent,
            &[&b("c2"), &b("l2")],
        );
        let mut missing = Vec::new();
        let e = leave_out_unpulled(
            &mut collected,
            &mut missing,
            vec![unreachable(&b("l1")), unreachable(&b("l2"))],
        )
        .unwrap_err();
        assert!(e.to_string().contains(b("l2").as_str()), "{e}");
        assert!(missing.is_empty());
        assert_eq!(collected.images.len(), 2, "nothing changed");
    }
}
