//! `delete`: the next imageset of a workspace, made to remove content (oc-mirror
//! v2's `DeleteImageSetConfiguration`).
//!
//! A delete imageset is an ordinary next sequence: chunked, signed, parity-protected
//! and ordered like any other. Its `images` are the last imageset's minus what the
//! `delete:` section selects, its `deletes` the images that leaves without a reason
//! to stay, and it carries no blob: everything it lists was published with the
//! sequence before it. The selection is matched against what the workspace recorded
//! the last imageset to hold ([`crate::contents`]), never against the sources, so it
//! deletes exactly what was shipped; an image another kept release, bundle or entry
//! still needs stays, and is reported.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use airlock_common::size::ByteSize;
use airlock_config::{self as config, ConfigError, LoadedConfig, Problem, schema::Mirror};
use airlock_imageset::write;
use airlock_imageset::{FORMAT, ImageRecord, ImagesetManifest};
use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RegistryOptions};

use crate::collect::Collected;
use crate::contents::{Contents, Owner};
use crate::create::{self, DEFAULT_LIMIT, Fill, Opened, Recording};
use crate::error::Error;
use crate::select::DEFAULT_ARCH;

/// What `delete` is asked to do.
#[derive(Debug, Clone)]
pub struct DeleteOptions {
    /// The DeleteImageSetConfiguration file.
    pub config: PathBuf,
    /// Where the chunk files go.
    pub out: PathBuf,
    /// The workspace directory; defaults as for `create`.
    pub workspace: Option<PathBuf>,
    /// Largest chunk file; defaults to `archiveSize`, then [`DEFAULT_LIMIT`].
    pub limit: Option<ByteSize>,
    /// Say what would be deleted and kept; write nothing.
    pub dry_run: bool,
    /// How to reach the registry that keeps the workspace state, if configured.
    pub registry: RegistryOptions,
    /// Key (and its password) to sign the imageset manifest with.
    pub sign_key: Option<(PathBuf, Option<String>)>,
    /// Parity files to add.
    pub parity: u32,
    /// The imageset format version to write.
    pub imageset_format: create::ImagesetFormat,
}

/// What `delete` did, or would do.
#[derive(Debug, Clone)]
pub struct DeleteReport {
    /// The delete imageset (for a dry run, or when nothing is removed: as planned).
    pub manifest: ImagesetManifest,
    /// The chunk files written (empty for a dry run, or when nothing is removed).
    pub chunks: Vec<PathBuf>,
    /// What the selection matched.
    pub selected: Vec<Owner>,
    /// Images the selection named that stay, with what still needs them.
    pub kept: Vec<(ImageRecord, Vec<Owner>)>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// Runs `delete`.
pub async fn delete(opts: &DeleteOptions) -> Result<DeleteReport, Error> {
    let loaded = config::load(&opts.config)?;
    loaded.validate()?;
    loaded.check_delete()?;
    let ws_dir = create::workspace_dir(opts.workspace.as_deref(), &loaded)?;
    let Opened {
        workspace,
        remote,
        current,
    } = create::open_workspace(
        &ws_dir,
        &loaded,
        &opts.registry,
        false,
        opts.dry_run,
        &opts.out,
    )
    .await?;
    let Some(state) = current else {
        return Err(Error::Usage(format!(
            "workspace {} has made no imageset yet: there is nothing to delete",
            ws_dir.display()
        )));
    };
    let held = match &state.contents {
        Some(c) if c.sequence == state.sequence => c.clone(),
        _ => {
            return Err(Error::Usage(format!(
                "workspace {}: what sequence {} holds was not recorded (it was made by an earlier version of Airlock); run create once more with the current configuration, then delete",
                ws_dir.display(),
                state.sequence
            )));
        }
    };
    let selected = select(&loaded, &held)?;
    let (uuid, sequence) = (state.uuid, state.sequence + 1);
    let deleted: HashSet<&Owner> = selected.iter().collect();
    let remaining = held.without(&deleted, sequence);
    let kept: Vec<(ImageRecord, Vec<Owner>)> = held
        .images
        .iter()
        .zip(&held.owners)
        .filter(|(_, owners)| owners.iter().any(|o| deleted.contains(o)))
        .filter_map(|(image, _)| {
            let at = remaining.contents.images.iter().position(|i| i == image)?;
            Some((image.clone(), remaining.contents.owners[at].clone()))
        })
        .collect();
    let limit = opts
        .limit
        .or(loaded.archive_size())
        .unwrap_or(DEFAULT_LIMIT);
    let skeleton = ImagesetManifest {
        format: FORMAT.to_string(),
        uuid,
        sequence,
        full: false,
        created: write::now(),
        limit: limit.0,
        chunks: Vec::new(),
        parity: Vec::new(),
        images: remaining.contents.images.clone(),
        blobs: remaining.contents.blobs.clone(),
        releases: remaining.contents.releases.clone(),
        deletes: remaining.removed.clone(),
    };
    tracing::info!(%uuid, sequence, selected = selected.len(), deletes = skeleton.deletes.len(), kept = kept.len(), images = skeleton.images.len(), "delete planned");
    let mut report = DeleteReport {
        manifest: skeleton,
        chunks: Vec::new(),
        selected,
        kept,
        dry_run: opts.dry_run,
    };
    if opts.dry_run || report.manifest.deletes.is_empty() {
        return Ok(report);
    }
    let workspace = workspace.expect("opened for a real run");
    let pool = Pool::new(opts.registry.clone());
    let (manifest, chunks) = create::write_and_record(
        Recording {
            workspace: &workspace,
            remote: remote.as_ref(),
            current: Some(state),
            out: &opts.out,
            sign_key: opts.sign_key.as_ref(),
            parity: opts.parity,
            imageset_format: opts.imageset_format,
        },
        report.manifest,
        Fill {
            carry: &[],
            collected: &Collected::default(),
            pool: &pool,
            parallel: 1,
            leave_out: false,
        },
        &remaining.freed,
        &remaining.contents,
    )
    .await?;
    report.manifest = manifest;
    report.chunks = chunks;
    Ok(report)
}

/// The owners of `held` the `delete:` section selects. An entry that selects
/// nothing is an error at its line: a delete that silently does less than asked is
/// found out only when the registry fills up.
pub fn select(loaded: &LoadedConfig, held: &Contents) -> Result<Vec<Owner>, ConfigError> {
    let d: &Mirror = loaded
        .config
        .delete
        .as_ref()
        .expect("check_delete requires delete:");
    let owners: BTreeSet<&Owner> = held.owners.iter().flatten().collect();
    let mut out: BTreeSet<Owner> = BTreeSet::new();
    let mut problems: Vec<Problem> = Vec::new();
    let mut take = |field: String, what: String, found: Vec<Owner>| {
        if found.is_empty() {
            problems.push(loaded.problem(
                field,
                format!(
                    "{what} is not in sequence {} of this workspace (deleted already, or never mirrored); remove the entry",
                    held.sequence
                ),
            ));
        }
        out.extend(found);
    };
    if let Some(p) = &d.platform {
        let archs: Vec<&str> = if p.architectures.is_empty() {
            vec![DEFAULT_ARCH]
        } else {
            p.architectures.iter().map(String::as_str).collect()
        };
        for (i, ch) in p.channels.iter().enumerate() {
            let found = held
                .releases
                .iter()
                .filter(|r| archs.contains(&r.arch.as_str()) && r.channels.contains(&ch.name))
                .filter(|r| {
                    ch.full
                        || within(
                            &r.version,
                            ch.min_version.as_deref(),
                            ch.max_version.as_deref(),
                        )
                })
                .map(|r| Owner::Release {
                    version: r.version.clone(),
                    arch: r.arch.clone(),
                })
                .collect();
            take(
                format!("delete.platform.channels[{i}]"),
                format!(
                    "no release of channel {} ({}) between {} and {}",
                    ch.name,
                    archs.join(", "),
                    ch.min_version.as_deref().unwrap_or("the first"),
                    ch.max_version.as_deref().unwrap_or("the last")
                ),
                found,
            );
        }
        if let Some(release) = &p.release {
            let digest = release
                .parse::<ImageRef>()
                .ok()
                .and_then(|r| r.digest().cloned());
            let found = held
                .releases
                .iter()
                .filter(|r| r.image == *release || digest.as_ref() == Some(&r.digest))
                .map(|r| Owner::Release {
                    version: r.version.clone(),
                    arch: r.arch.clone(),
                })
                .collect();
            take(
                "delete.platform.release".into(),
                format!("release image {release} (named by digest)"),
                found,
            );
        }
        if p.graph {
            let found = owners
                .iter()
                .filter(|o| ***o == Owner::Graph)
                .map(|o| (*o).clone())
                .collect();
            take(
                "delete.platform.graph".into(),
                "the update graph image".into(),
                found,
            );
        }
    }
    for (i, op) in d.operators.iter().enumerate() {
        let named = crate::catalog::image::recorded_name(op);
        let same_catalog = |c: &str| same_image(c, &named);
        if op.packages.is_empty() {
            let found = owners
                .iter()
                .filter(|o| match o {
                    Owner::Catalog {
                        catalog,
                        target,
                        tag,
                    } => {
                        same_catalog(catalog)
                            && placed_as(target, tag, &op.target_catalog, &op.target_tag)
                    }
                    Owner::Bundle { catalog, .. } => same_catalog(catalog),
                    _ => false,
                })
                .map(|o| (*o).clone())
                .collect();
            take(
                format!("delete.operators[{i}].catalog"),
                format!("catalog {}", op.catalog),
                found,
            );
            continue;
        }
        for (j, p) in op.packages.iter().enumerate() {
            let found = owners
                .iter()
                .filter(|o| match o {
                    Owner::Bundle {
                        catalog,
                        package,
                        version,
                        channels,
                        ..
                    } => {
                        same_catalog(catalog)
                            && *package == p.name
                            && within(version, p.min_version.as_deref(), p.max_version.as_deref())
                            && (p.channels.is_empty()
                                || p.channels.iter().any(|ch| {
                                    channels.contains(&ch.name)
                                        && within(
                                            version,
                                            ch.min_version.as_deref(),
                                            ch.max_version.as_deref(),
                                        )
                                }))
                    }
                    _ => false,
                })
                .map(|o| (*o).clone())
                .collect();
            take(
                format!("delete.operators[{i}].packages[{j}]"),
                format!(
                    "no bundle of package {} in {} selected by it",
                    p.name, op.catalog
                ),
                found,
            );
        }
    }
    for (i, image) in d.additional_images.iter().enumerate() {
        let found = owners
            .iter()
            .filter(|o| {
                matches!(o, Owner::Image { name, target, tag }
                    if same_image(name, &image.name)
                        && placed_as(target, tag, &image.target_repo, &image.target_tag))
            })
            .map(|o| (*o).clone())
            .collect();
        take(
            format!("delete.additionalImages[{i}].name"),
            format!("image {}", image.name),
            found,
        );
    }
    if !problems.is_empty() {
        return Err(config::problems_error(&loaded.file, problems));
    }
    Ok(out.into_iter().collect())
}

/// Whether `version` is within `[min, max]` (either bound may be absent). Versions
/// compare as semantic versions; one that does not parse matches only a bound it
/// equals.
fn within(version: &str, min: Option<&str>, max: Option<&str>) -> bool {
    let parse = |v: &str| semver::Version::parse(v.trim_start_matches('v')).ok();
    let cmp = |bound: &str| match (parse(version), parse(bound)) {
        (Some(v), Some(b)) => Some(v.cmp(&b)),
        _ => (version == bound).then_some(std::cmp::Ordering::Equal),
    };
    min.is_none_or(|m| cmp(m).is_some_and(|o| o.is_ge()))
        && max.is_none_or(|m| cmp(m).is_some_and(|o| o.is_le()))
}

/// Whether an owner placed at `target` (repository) and `tag` is the one a
/// delete entry's `wanted_target` and `wanted_tag` name; what the entry leaves
/// out matches every placement.
fn placed_as(
    target: &Option<String>,
    tag: &Option<String>,
    wanted_target: &Option<String>,
    wanted_tag: &Option<String>,
) -> bool {
    wanted_target
        .as_ref()
        .is_none_or(|w| Some(w) == target.as_ref())
        && wanted_tag.as_ref().is_none_or(|w| Some(w) == tag.as_ref())
}

/// Whether two image names as written name the same image (`docker://`, a
/// default registry or tag spelt out or not).
fn same_image(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let norm = |s: &str| {
        s.strip_prefix("docker://")
            .unwrap_or(s)
            .parse::<ImageRef>()
            .ok()
            .map(|r| r.with_default_tag().to_string())
    };
    norm(a).is_some_and(|x| Some(x) == norm(b))
}

#[cfg(test)]
mod tests;
