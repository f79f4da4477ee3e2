//! Renders a chart as oc-mirror does to find its images: the chart's own default
//! values, subcharts enabled by their `condition` and `tags`, every template
//! executed, and image references read from the rendered objects at
//! oc-mirror's default JSON paths plus the chart's `imagePaths`.
//!
//! Hooks are read too (oc-mirror leaves their images out, and an install at the
//! site then fails on a missing hook image); `NOTES.txt` is not rendered.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};
use serde_json_path::JsonPath;

use super::chart::Chart;
use super::template::{Engine, RenderError, values::from_json};

/// The paths oc-mirror reads images at: containers and init containers of pods
/// and of pod templates.
pub const DEFAULT_IMAGE_PATHS: [&str; 4] = [
    "{.spec.template.spec.initContainers[*].image}",
    "{.spec.template.spec.containers[*].image}",
    "{.spec.initContainers[*].image}",
    "{.spec.containers[*].image}",
];

/// The Kubernetes version charts see in `.Capabilities.KubeVersion` (that of
/// OpenShift 4.18).
pub const KUBE_VERSION: &str = "v1.31.0";

/// The API versions in `.Capabilities.APIVersions`: those a Kubernetes 1.31
/// cluster serves as generally available. Helm's own default set also lists
/// beta versions and `group/version/Kind` entries; charts test for GA groups.
const API_VERSIONS: &[&str] = &[
    "v1",
    "admissionregistration.k8s.io/v1",
    "apiextensions.k8s.io/v1",
    "apiregistration.k8s.io/v1",
    "apps/v1",
    "authentication.k8s.io/v1",
    "authorization.k8s.io/v1",
    "autoscaling/v1",
    "autoscaling/v2",
    "batch/v1",
    "certificates.k8s.io/v1",
    "coordination.k8s.io/v1",
    "discovery.k8s.io/v1",
    "events.k8s.io/v1",
    "flowcontrol.apiserver.k8s.io/v1",
    "networking.k8s.io/v1",
    "node.k8s.io/v1",
    "policy/v1",
    "rbac.authorization.k8s.io/v1",
    "scheduling.k8s.io/v1",
    "storage.k8s.io/v1",
];

/// A JSON path to images in rendered objects, in kubectl's `{.a.b[*].c}` form.
#[derive(Debug, Clone)]
pub struct ImagePath {
    /// As written.
    pub text: String,
    path: JsonPath,
}

impl ImagePath {
    /// Reads kubectl's form (`{.spec.containers[*].image}`); the braces may be
    /// left out.
    pub fn parse(text: &str) -> Result<ImagePath, String> {
        let inner = text.trim();
        let inner = inner
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(inner)
            .trim();
        let rooted = match inner.strip_prefix('$') {
            Some(_) => inner.to_string(),
            None if inner.starts_with('.') || inner.starts_with('[') => format!("${inner}"),
            None => format!("$.{inner}"),
        };
        let path = JsonPath::parse(&rooted).map_err(|e| format!("not a JSON path: {e}"))?;
        Ok(ImagePath {
            text: text.to_string(),
            path,
        })
    }
}

/// An image a chart names, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// The reference as the rendered object writes it.
    pub image: String,
    /// The template it was rendered from.
    pub template: String,
}

/// Why a chart's images could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    /// A template could not be parsed or executed.
    #[error("{0}")]
    Template(#[from] RenderError),
    /// The renderer itself failed.
    #[error("{0}")]
    Internal(String),
    /// A template rendered something that is not YAML.
    #[error("{template}: the rendered output is not YAML: {message}")]
    Yaml {
        /// The template.
        template: String,
        /// What the parser said.
        message: String,
    },
}

/// One chart of the tree with the values it renders with.
struct Unit<'a> {
    chart: &'a Chart,
    /// `top` or `top/charts/sub`: where its templates are named.
    prefix: String,
    values: Json,
    depth: usize,
    /// Whether its templates render (those of a library only define).
    renders: bool,
}

/// The stack a chart renders on. Rendering recurses (`include` in `include`,
/// each level with the executor's own depth); a deep but legitimate chart must
/// not overflow a tokio worker's 2 MiB. Reserved, not used, until touched.
const RENDER_STACK: usize = 256 << 20;

/// Renders `chart` (release `release`) and reads every image at the default
/// paths and `extra`, on a thread of its own with a stack of [`RENDER_STACK`].
/// Images come sorted, each once per template.
pub fn images(
    chart: &Chart,
    release: &str,
    extra: &[ImagePath],
) -> Result<Vec<Found>, RenderFailure> {
    std::thread::scope(|scope| {
        let render = std::thread::Builder::new()
            .name("chart-render".into())
            .stack_size(RENDER_STACK)
            .spawn_scoped(scope, || images_here(chart, release, extra))
            .map_err(|e| RenderFailure::Internal(format!("cannot start the renderer: {e}")))?;
        render.join().unwrap_or_else(|_| {
            Err(RenderFailure::Internal(
                "the renderer stopped on a bug (see the log); please report it with the chart"
                    .into(),
            ))
        })
    })
}

fn images_here(
    chart: &Chart,
    release: &str,
    extra: &[ImagePath],
) -> Result<Vec<Found>, RenderFailure> {
    let mut units = Vec::new();
    let name = chart.metadata.name.clone();
    let values = chart.values.clone();
    // Helm reads `tags` from the top chart's values at every depth.
    let tags = chart.values.get("tags").cloned().unwrap_or(Json::Null);
    enabled(chart, name, values, &tags, 0, &mut units);
    // Deepest first, so that a parent's `define` replaces a subchart's, as Helm
    // orders them.
    units.sort_by_key(|u| std::cmp::Reverse(u.depth));
    let mut partials = Vec::new();
    let mut templates = Vec::new();
    let mut owner = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        for (file, text) in &u.chart.templates {
            let full = format!("{}/{file}", u.prefix);
            let base = file.rsplit('/').next().unwrap_or(file);
            if base.starts_with('_') || !u.renders {
                partials.push((full, text.clone()));
            } else if base != "NOTES.txt" {
                owner.insert(full.clone(), i);
                templates.push((full, text.clone()));
            }
        }
    }
    let engine = Engine::new(&partials, &templates)?;
    let mut paths: Vec<ImagePath> = DEFAULT_IMAGE_PATHS
        .iter()
        .map(|p| ImagePath::parse(p).expect("the default paths parse"))
        .collect();
    paths.extend(extra.iter().cloned());
    let mut found = BTreeSet::new();
    for (template, _) in &templates {
        let u = &units[owner[template]];
        let data = from_json(&data(u, release, template));
        let out = engine.render(template, &data)?;
        for doc in documents(&out) {
            let object: Json = serde_yaml_ng::from_str(doc).map_err(|e| RenderFailure::Yaml {
                template: template.clone(),
                message: e.to_string(),
            })?;
            for p in &paths {
                for node in p.path.query(&object).all() {
                    // A path may end on a list (`{.spec.containers[*]}`' images as
                    // one string in kubectl); oc-mirror splits on spaces.
                    let text = match node {
                        Json::String(s) => s.clone(),
                        _ => continue,
                    };
                    for image in text.split_whitespace() {
                        found.insert(Found {
                            image: image.to_string(),
                            template: template.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(found.into_iter().collect())
}

/// The YAML documents of a rendered template, split as Helm splits them.
fn documents(out: &str) -> impl Iterator<Item = &str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in out.split_inclusive('\n') {
        if line.starts_with("---") {
            docs.push(&out[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&out[start..]);
    docs.into_iter().filter(|d| {
        d.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
    })
}

/// Adds `chart` (with `values`, its own after its parent's were coalesced in) and
/// the subcharts its values enable to `out`. As Helm does, each subchart's
/// defaults are coalesced under its key (its `alias`, else its name) before any
/// `condition` is read, so a subchart's own `enabled: false` counts, and the
/// parent sees them in `.Values.<key>`; a subchart listed under two aliases
/// renders twice.
fn enabled<'a>(
    chart: &'a Chart,
    prefix: String,
    mut values: Json,
    tags: &Json,
    depth: usize,
    out: &mut Vec<Unit<'a>>,
) {
    let mut subs = Vec::new();
    for sub in &chart.subcharts {
        let deps: Vec<&super::chart::Dependency> = chart
            .metadata
            .dependencies
            .iter()
            .filter(|d| d.name == sub.metadata.name)
            .collect();
        if deps.is_empty() {
            subs.push((sub, sub.metadata.name.clone(), None));
        }
        for d in deps {
            subs.push((
                sub,
                d.alias.clone().unwrap_or_else(|| d.name.clone()),
                Some(d),
            ));
        }
    }
    if !values.is_object() {
        values = Json::Object(Default::default());
    }
    for (sub, key, _) in &subs {
        let merged = coalesce(&sub.values, values.get(key).unwrap_or(&Json::Null));
        values[key.as_str()] = merged;
    }
    for (sub, key, dep) in subs {
        if dep.is_some_and(|d| !is_enabled(d, &values, tags)) {
            continue;
        }
        let mut sub_values = values[key.as_str()].clone();
        if let Some(global) = values.get("global") {
            let merged = coalesce(sub_values.get("global").unwrap_or(&Json::Null), global);
            sub_values["global"] = merged;
        }
        enabled(
            sub,
            format!("{prefix}/charts/{key}"),
            sub_values,
            tags,
            depth + 1,
            out,
        );
    }
    out.push(Unit {
        chart,
        renders: !chart.is_library(),
        prefix,
        values,
        depth,
    });
}

/// A dependency's `condition` (the first of its paths that holds a boolean, in
/// its parent's values), else its `tags` (in the top chart's `tags`: enabled if
/// any is true), else enabled.
fn is_enabled(dep: &super::chart::Dependency, values: &Json, tags: &Json) -> bool {
    if let Some(cond) = &dep.condition {
        for path in cond.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let v = path.split('.').try_fold(values, |v, k| v.get(k));
            if let Some(Json::Bool(b)) = v {
                return *b;
            }
        }
    }
    let set: Vec<bool> = dep
        .tags
        .iter()
        .filter_map(|t| tags.get(t).and_then(Json::as_bool))
        .collect();
    set.is_empty() || set.contains(&true)
}

/// `defaults` with `overrides` on top, deeply; a `null` override removes the key.
pub fn coalesce(defaults: &Json, overrides: &Json) -> Json {
    let mut out = match defaults {
        Json::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let Json::Object(o) = overrides {
        for (k, v) in o {
            match (out.get(k), v) {
                (_, Json::Null) => {
                    out.remove(k);
                }
                (Some(d @ Json::Object(_)), Json::Object(_)) => {
                    let merged = coalesce(d, v);
                    out.insert(k.clone(), merged);
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Json::Object(out)
}

/// Dot for one template: Helm's built-in objects.
fn data(u: &Unit<'_>, release: &str, template: &str) -> Json {
    let chart: serde_json::Map<String, Json> = u
        .chart
        .chart_yaml
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let k = match k.as_str() {
                "apiVersion" => "APIVersion".to_string(),
                other => {
                    let mut c = other.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect())
                        .unwrap_or_default()
                }
            };
            (k, v.clone())
        })
        .collect();
    let (major, minor) = {
        let mut parts = KUBE_VERSION.trim_start_matches('v').split('.');
        (parts.next().unwrap_or("1"), parts.next().unwrap_or("0"))
    };
    json!({
        "Values": u.values,
        "Chart": chart,
        "Release": {
            "Name": release,
            "Namespace": "default",
            "Service": "Helm",
            "IsInstall": true,
            "IsUpgrade": false,
            "Revision": 1,
        },
        "Capabilities": {
            "KubeVersion": {"Version": KUBE_VERSION, "GitVersion": KUBE_VERSION, "Major": major, "Minor": minor},
            "APIVersions": API_VERSIONS,
            "HelmVersion": {"Version": "v3.16.0"},
        },
        "Template": {
            "Name": template,
            "BasePath": format!("{}/templates", u.prefix),
        },
        "Files": u.chart.files,
    })
}

#[cfg(test)]
mod tests;
