//! A Helm chart read from its packaged archive (`.tgz`) or its directory, with
//! the subcharts under `charts/` (packaged or not).
//!
//! A chart comes from a repository the site does not control, so the archive
//! is read with limits (size, entries, nesting) and no entry name is ever used as
//! a path: files stay in memory, keyed by their name inside the chart.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use serde::Deserialize;
use serde_json::Value as Json;

use crate::derive::{Entry, Layer};

/// What a chart may expand to in memory, its subcharts included.
const MAX_UNPACKED: u64 = 256 << 20;
/// How many entries a chart archive may have.
const MAX_ENTRIES: usize = 20_000;
/// How deep subcharts may nest.
const MAX_DEPTH: usize = 8;

/// Why a chart could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ChartError {
    /// The archive or directory, and the file inside it when one is at fault.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

impl ChartError {
    fn new(origin: impl Into<String>, message: impl Into<String>) -> ChartError {
        ChartError {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

/// `Chart.yaml`, the fields Airlock reads (others are kept for `.Chart`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The chart's name.
    pub name: String,
    /// Its SemVer version.
    pub version: String,
    /// The version of the application it deploys.
    #[serde(default)]
    pub app_version: Option<String>,
    /// `application` or `library` (a library renders nothing).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Subcharts and when each is enabled (apiVersion v2).
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

/// An entry of `dependencies` (or of a v1 chart's `requirements.yaml`).
#[derive(Debug, Clone, Deserialize)]
pub struct Dependency {
    /// The subchart's name.
    pub name: String,
    /// The name its values and templates go by, if not `name`.
    #[serde(default)]
    pub alias: Option<String>,
    /// Comma-separated value paths; the first that holds a boolean decides.
    #[serde(default)]
    pub condition: Option<String>,
    /// Tags under `tags:` in the values that enable it.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Requirements {
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

/// A chart in memory.
#[derive(Debug, Clone)]
pub struct Chart {
    /// `Chart.yaml`.
    pub metadata: Metadata,
    /// `Chart.yaml` as it is, for `.Chart`.
    pub chart_yaml: Json,
    /// `values.yaml` (an empty map when the chart has none).
    pub values: Json,
    /// `templates/**`, by name inside the chart (`templates/deployment.yaml`).
    pub templates: BTreeMap<String, String>,
    /// Every other file, for `.Files`.
    pub files: BTreeMap<String, String>,
    /// Subcharts under `charts/`.
    pub subcharts: Vec<Chart>,
}

/// Files of a chart by name, before they are sorted into a [`Chart`].
type Entries = BTreeMap<String, Vec<u8>>;

impl Chart {
    /// Reads a packaged chart (`helm package`'s gzipped tar), named `origin` in
    /// errors.
    pub fn from_archive(bytes: &[u8], origin: &str) -> Result<Chart, ChartError> {
        let mut budget = MAX_UNPACKED;
        Chart::archive(bytes, origin, 0, &mut budget)
    }

    /// Reads a chart directory, leaving out what its `.helmignore` names, and
    /// packages it as `helm package` would lay it out (every file under the
    /// chart's name). The archive is deterministic (sorted entries, fixed owner,
    /// modes and times, gzip without a timestamp): an unchanged directory gives
    /// the same digest, so it is not shipped again.
    pub fn package_dir(dir: &Path) -> Result<(Chart, Vec<u8>), ChartError> {
        let origin = dir.display().to_string();
        let entries = read_dir(dir, &origin)?;
        let mut budget = MAX_UNPACKED;
        let chart = Chart::from_entries(entries.clone(), &origin, 0, &mut budget)?;
        let files: Vec<(String, Entry<'_>)> = entries
            .iter()
            .map(|(name, data)| {
                let file = Entry::File {
                    mtime: 0,
                    data: std::borrow::Cow::Borrowed(data),
                };
                (format!("{}/{name}", chart.metadata.name), file)
            })
            .collect();
        let layer = Layer::of_entries(files.iter().map(|(n, e)| (n.clone(), e)))
            .map_err(|e| ChartError::new(&origin, format!("packaging: {e}")))?;
        Ok((chart, layer.bytes.to_vec()))
    }

    fn archive(
        bytes: &[u8],
        origin: &str,
        depth: usize,
        budget: &mut u64,
    ) -> Result<Chart, ChartError> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let mut entries = Entries::new();
        let mut top: Option<String> = None;
        let iter = tar
            .entries()
            .map_err(|e| ChartError::new(origin, format!("not a gzipped tar: {e}")))?;
        for (n, entry) in iter.enumerate() {
            if n >= MAX_ENTRIES {
                return Err(ChartError::new(
                    origin,
                    format!("more than {MAX_ENTRIES} entries"),
                ));
            }
            let mut entry =
                entry.map_err(|e| ChartError::new(origin, format!("not a gzipped tar: {e}")))?;
            let kind = entry.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            }
            let raw = entry
                .path()
                .map_err(|e| ChartError::new(origin, format!("entry name: {e}")))?
                .into_owned();
            let name = entry_name(&raw).ok_or_else(|| {
                ChartError::new(
                    origin,
                    format!("entry {raw:?} is not a plain relative path"),
                )
            })?;
            if !kind.is_file() {
                return Err(ChartError::new(
                    origin,
                    format!("entry {name:?} is a link or device; a chart holds only files"),
                ));
            }
            // Every entry is under one top directory, the chart's name.
            let (dir, rest) = name.split_once('/').ok_or_else(|| {
                ChartError::new(
                    origin,
                    format!("entry {name:?} is not inside the chart's directory"),
                )
            })?;
            match &top {
                None => top = Some(dir.to_string()),
                Some(t) if t != dir => {
                    return Err(ChartError::new(
                        origin,
                        format!(
                            "entries under both {t:?} and {dir:?}; a chart archive has one top directory"
                        ),
                    ));
                }
                Some(_) => {}
            }
            take(budget, entry.header().size().unwrap_or(0), origin)?;
            let mut data = Vec::new();
            (&mut entry)
                .take(*budget + 1)
                .read_to_end(&mut data)
                .map_err(|e| ChartError::new(format!("{origin}: {name}"), e.to_string()))?;
            entries.insert(rest.to_string(), data);
        }
        Chart::from_entries(entries, origin, depth, budget)
    }

    fn from_entries(
        mut entries: Entries,
        origin: &str,
        depth: usize,
        budget: &mut u64,
    ) -> Result<Chart, ChartError> {
        // Every subchart, packaged or not, comes through here.
        if depth > MAX_DEPTH {
            return Err(ChartError::new(
                origin,
                format!("subcharts nest more than {MAX_DEPTH} deep"),
            ));
        }
        let yaml = |entries: &mut Entries, file: &str| -> Result<Option<Json>, ChartError> {
            entries
                .remove(file)
                .map(|data| {
                    serde_yaml_ng::from_slice::<Json>(&data)
                        .map_err(|e| ChartError::new(format!("{origin}: {file}"), e.to_string()))
                })
                .transpose()
        };
        let chart_yaml = yaml(&mut entries, "Chart.yaml")?
            .ok_or_else(|| ChartError::new(origin, "no Chart.yaml: this is not a Helm chart"))?;
        let mut metadata: Metadata = serde_json::from_value(chart_yaml.clone())
            .map_err(|e| ChartError::new(format!("{origin}: Chart.yaml"), e.to_string()))?;
        if let Some(req) = yaml(&mut entries, "requirements.yaml")? {
            let req: Requirements = serde_json::from_value(req).map_err(|e| {
                ChartError::new(format!("{origin}: requirements.yaml"), e.to_string())
            })?;
            metadata.dependencies.extend(req.dependencies);
        }
        let values = match yaml(&mut entries, "values.yaml")? {
            None | Some(Json::Null) => Json::Object(Default::default()),
            Some(v @ Json::Object(_)) => v,
            Some(_) => {
                return Err(ChartError::new(
                    format!("{origin}: values.yaml"),
                    "not a YAML mapping",
                ));
            }
        };
        let mut chart = Chart {
            metadata,
            chart_yaml,
            values,
            templates: BTreeMap::new(),
            files: BTreeMap::new(),
            subcharts: Vec::new(),
        };
        // Subchart directories, by their name under charts/.
        let mut dirs: BTreeMap<String, Entries> = BTreeMap::new();
        for (name, data) in entries {
            if name.starts_with("templates/") {
                chart.templates.insert(name, text(data));
            } else if let Some(rest) = name.strip_prefix("charts/") {
                match rest.split_once('/') {
                    Some((dir, inner)) => {
                        dirs.entry(dir.to_string())
                            .or_default()
                            .insert(inner.to_string(), data);
                    }
                    None if rest.ends_with(".tgz") || rest.ends_with(".tar.gz") => {
                        let inner = format!("{origin}: charts/{rest}");
                        chart
                            .subcharts
                            .push(Chart::archive(&data, &inner, depth + 1, budget)?);
                    }
                    None => {}
                }
            } else {
                chart.files.insert(name, text(data));
            }
        }
        for (dir, inner) in dirs {
            let inner_origin = format!("{origin}: charts/{dir}");
            chart.subcharts.push(Chart::from_entries(
                inner,
                &inner_origin,
                depth + 1,
                budget,
            )?);
        }
        Ok(chart)
    }

    /// Whether this is a library chart, which renders nothing of its own.
    pub fn is_library(&self) -> bool {
        self.metadata.kind.as_deref() == Some("library")
    }
}

/// The files of a chart directory, by name inside it.
fn read_dir(dir: &Path, origin: &str) -> Result<Entries, ChartError> {
    let mut entries = Entries::new();
    let mut budget = MAX_UNPACKED;
    let ignore = dir.join(".helmignore");
    let mut matcher = ignore::gitignore::GitignoreBuilder::new(dir);
    if ignore.is_file()
        && let Some(e) = matcher.add(&ignore)
    {
        return Err(ChartError::new(
            format!("{origin}/.helmignore"),
            e.to_string(),
        ));
    }
    let matcher = matcher
        .build()
        .map_err(|e| ChartError::new(format!("{origin}/.helmignore"), e.to_string()))?;
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .hidden(false)
        // Helm follows links in a chart directory (a shared `charts/common`).
        .follow_links(true)
        .sort_by_file_name(Ord::cmp)
        .build();
    for entry in walker {
        let entry = entry.map_err(|e| ChartError::new(origin, e.to_string()))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
        if path == dir
            || matcher
                .matched_path_or_any_parents(path, is_dir)
                .is_ignore()
        {
            continue;
        }
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let name = path
            .strip_prefix(dir)
            .expect("the walk stays under dir")
            .to_string_lossy()
            .replace('\\', "/");
        let len = entry.metadata().map_or(0, |m| m.len());
        take(&mut budget, len, origin)?;
        let data = std::fs::read(path)
            .map_err(|e| ChartError::new(path.display().to_string(), e.to_string()))?;
        if data.len() as u64 > len {
            take(&mut budget, data.len() as u64 - len, origin)?;
        }
        entries.insert(name, data);
        if entries.len() > MAX_ENTRIES {
            return Err(ChartError::new(
                origin,
                format!("more than {MAX_ENTRIES} files"),
            ));
        }
    }
    Ok(entries)
}

fn text(data: Vec<u8>) -> String {
    String::from_utf8(data).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn take(budget: &mut u64, n: u64, origin: &str) -> Result<(), ChartError> {
    *budget = budget.checked_sub(n).ok_or_else(|| {
        ChartError::new(
            origin,
            format!("expands to more than {} MiB", MAX_UNPACKED >> 20),
        )
    })?;
    Ok(())
}

/// An archive entry's name if it is a plain relative path (no `..`, no root).
fn entry_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
pub(crate) mod tests;
