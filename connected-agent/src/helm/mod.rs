//! `mirror.helm`: Helm charts and the images they deploy.
//!
//! Charts are fetched ([`source`]), read ([`chart`]) and rendered with their
//! default values ([`render`], on the engine in [`template`]) to find the images
//! they name. Those images travel as `additionalImages` do. The charts travel
//! too, as OCI artifacts ([`artifact`]), and are published at
//! `<destination>/charts/<name>:<version>`.

use std::collections::BTreeMap;

use airlock_common::exit_codes::{self, ExitCode};
use airlock_config::{ConfigError, ImageSpec, LoadedConfig};
use airlock_imageset::ImageKind;
use airlock_oci::reference::{ImageRef, valid_repository, valid_tag};
use airlock_registry::Pool;
use serde::Serialize;

use crate::derive::Derived;

pub mod artifact;
pub mod chart;
pub mod render;
pub mod source;
pub mod template;

/// Where charts are published, under the destination's prefix.
pub const CHARTS_REPOSITORY: &str = "charts";

/// Why the charts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// A chart could not be fetched or read.
    #[error(transparent)]
    Source(#[from] source::SourceError),
    /// A chart could not be rendered.
    #[error("{entry}: chart {name} {version}: {source}; nothing was written")]
    Render {
        /// The configuration entry.
        entry: String,
        /// The chart's name.
        name: String,
        /// Its version.
        version: String,
        /// What went wrong, with template file and line.
        source: Box<render::RenderFailure>,
    },
    /// A chart's name or version cannot be a repository or tag.
    #[error(
        "{entry}: chart {name:?} version {version:?} cannot be published as charts/NAME:VERSION; chart names are lowercase letters, digits, '-' and '.', versions SemVer"
    )]
    Name {
        /// The configuration entry.
        entry: String,
        /// The chart's name.
        name: String,
        /// Its version.
        version: String,
    },
}

impl ExitCode for HelmError {
    fn exit_code(&self) -> i32 {
        match self {
            HelmError::Source(source::SourceError::Fetch { .. }) => exit_codes::UNAVAILABLE,
            HelmError::Source(source::SourceError::NotFound { .. }) => exit_codes::CONFIG,
            HelmError::Source(
                source::SourceError::Chart { .. } | source::SourceError::Corrupt { .. },
            )
            | HelmError::Render { .. }
            | HelmError::Name { .. } => exit_codes::DATA,
        }
    }
}

/// One chart and what it names, for `list charts` and the logs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChartImages {
    /// The configuration entry (`mirror.helm.repositories[0].charts[1]`).
    pub entry: String,
    /// The chart's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where it came from: a URL, `oci://…` or a path.
    pub origin: String,
    /// Where it is published, under the destination's prefix.
    pub published_as: String,
    /// The images it names, each once, sorted.
    pub images: Vec<String>,
    /// Values at image paths that are not image references, with the template
    /// that rendered them: left out, and logged.
    pub not_images: Vec<String>,
}

/// Everything `mirror.helm` adds to an imageset.
#[derive(Debug, Default)]
pub struct Charts {
    /// Each chart with its images.
    pub charts: Vec<ChartImages>,
    /// The images the charts name, each once, as `additionalImages` entries.
    pub images: Vec<ImageSpec>,
    /// Charts from repositories and local files, made into OCI artifacts here.
    pub artifacts: Vec<Derived>,
    /// Charts from OCI registries, copied as they are.
    pub oci: Vec<ImageSpec>,
}

/// Checks `mirror.helm` beyond its shape: what each entry needs, the URL
/// schemes, and that every `imagePaths` entry is a JSON path. All problems at
/// once, each with its position.
pub fn check_config(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let Some(helm) = loaded.config.mirror.as_ref().and_then(|m| m.helm.as_ref()) else {
        return Ok(());
    };
    let paths = |at: &str, c: &airlock_config::schema::HelmChart| {
        c.image_paths
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                let e = render::ImagePath::parse(p).err()?;
                Some(loaded.problem(
                    format!("{at}.imagePaths[{k}]"),
                    format!("{p:?}: {e}; expected kubectl's form, e.g. {{.spec.template.spec.containers[*].image}}"),
                ))
            })
            .collect::<Vec<_>>()
    };
    let mut problems = Vec::new();
    for (i, c) in helm.local.iter().enumerate() {
        let at = format!("mirror.helm.local[{i}]");
        if c.path.as_deref().is_none_or(str::is_empty) {
            problems.push(loaded.problem(
                format!("{at}.path"),
                "missing; give the path of a packaged chart (.tgz) or of a chart directory",
            ));
        }
        problems.extend(paths(&at, c));
    }
    for (i, r) in helm.repositories.iter().enumerate() {
        let at = format!("mirror.helm.repositories[{i}]");
        let oci = r.url.starts_with("oci://");
        if !(oci || r.url.starts_with("https://") || r.url.starts_with("http://")) {
            problems.push(loaded.problem(
                format!("{at}.url"),
                format!("{:?}: expected an https:// (or http://) chart repository, or an oci:// registry path", r.url),
            ));
        }
        if oci && r.charts.is_empty() {
            problems.push(loaded.problem(
                format!("{at}.charts"),
                "empty; an oci:// registry has no index to list, so name each chart (and its version)",
            ));
        }
        for (j, c) in r.charts.iter().enumerate() {
            let at = format!("{at}.charts[{j}]");
            if c.name.is_empty() {
                problems.push(loaded.problem(format!("{at}.name"), "missing; name the chart"));
            }
            if oci && c.version.as_deref().is_none_or(str::is_empty) {
                problems.push(loaded.problem(
                    format!("{at}.version"),
                    "missing; a chart in an oci:// registry is named by its version (its tag)",
                ));
            }
            if c.path.is_some() {
                problems.push(loaded.problem(
                    format!("{at}.path"),
                    "set on a repository's chart; path is for mirror.helm.local",
                ));
            }
            problems.extend(paths(&at, c));
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(airlock_config::problems_error(&loaded.file, problems)),
    }
}

/// Whether the configuration names any chart.
pub fn any(loaded: &LoadedConfig) -> bool {
    loaded
        .config
        .mirror
        .as_ref()
        .and_then(|m| m.helm.as_ref())
        .is_some_and(|h| !h.local.is_empty() || !h.repositories.is_empty())
}

/// Fetches and renders every chart of the configuration. A chart that cannot be
/// fetched, read or rendered stops the run before anything is written.
pub async fn gather(loaded: &LoadedConfig, pool: &Pool) -> Result<Charts, HelmError> {
    let Some(helm) = loaded.config.mirror.as_ref().and_then(|m| m.helm.as_ref()) else {
        return Ok(Charts::default());
    };
    let mut out = Charts::default();
    let mut images: BTreeMap<String, ImageSpec> = BTreeMap::new();
    let mut published = std::collections::BTreeSet::new();
    for f in source::fetch_all(helm, pool).await? {
        let meta = &f.chart.metadata;
        let render_err = |source| HelmError::Render {
            entry: f.entry.clone(),
            name: meta.name.clone(),
            version: meta.version.clone(),
            source: Box::new(source),
        };
        let found = render::images(&f.chart, &meta.name, &f.image_paths).map_err(render_err)?;
        let filter = &f.platforms;
        let mut named = Vec::new();
        let mut not_images = Vec::new();
        for found in found {
            match found.image.parse::<ImageRef>() {
                Ok(r) => {
                    named.push(found.image.clone());
                    let spec = images
                        .entry(found.image.clone())
                        .or_insert_with(|| ImageSpec {
                            source: r.with_default_tag(),
                            name: found.image.clone(),
                            target_repo: None,
                            target_tag: None,
                            kind: ImageKind::Generic,
                            subject: None,
                            platforms: filter.clone(),
                        });
                    spec.platforms = union(&spec.platforms, filter);
                }
                Err(e) => {
                    tracing::warn!(chart = %meta.name, version = %meta.version, template = %found.template, value = %found.image, error = %e, "a value at an image path is not an image reference; left out");
                    not_images.push(format!("{} ({}): {e}", found.image, found.template));
                }
            }
        }
        named.dedup();
        let target = format!("{CHARTS_REPOSITORY}/{}", meta.name);
        let tag = source::oci_tag(&meta.version);
        if !valid_repository(&target) || !valid_tag(&tag) {
            return Err(HelmError::Name {
                entry: f.entry.clone(),
                name: meta.name.clone(),
                version: meta.version.clone(),
            });
        }
        let published_as = format!("{target}:{tag}");
        let origin = match &f.origin {
            source::Origin::Http(u) => u.clone(),
            source::Origin::Oci(r) => format!("oci://{r}"),
            source::Origin::Local(p) => p.clone(),
        };
        tracing::info!(chart = %meta.name, version = %meta.version, origin = %origin, images = named.len(), "chart rendered");
        // Two entries may bring one chart version; it is published once.
        let first = published.insert(published_as.clone());
        out.charts.push(ChartImages {
            entry: f.entry.clone(),
            name: meta.name.clone(),
            version: meta.version.clone(),
            origin,
            published_as,
            images: named,
            not_images,
        });
        match &f.origin {
            _ if !first => {}
            source::Origin::Oci(r) => out.oci.push(ImageSpec {
                source: r.clone(),
                name: r.to_string(),
                target_repo: Some(target),
                target_tag: Some(tag),
                kind: ImageKind::Chart,
                subject: None,
                platforms: Vec::new(),
            }),
            _ => out.artifacts.push(artifact::make(&f, target, tag)),
        }
    }
    out.images = images.into_values().collect();
    Ok(out)
}

#[cfg(test)]
mod tests;

/// Two platform filters as one: empty (every platform) if either is.
fn union(a: &[String], b: &[String]) -> Vec<String> {
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = a.iter().chain(b).cloned().collect();
    out.sort();
    out.dedup();
    out
}
