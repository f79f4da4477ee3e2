//! File-based catalogs (FBC): every blob of a catalog directory, read as opm reads
//! it, and the typed view filtering needs.
//!
//! opm's loader parses every regular file as a stream of JSON objects or YAML
//! documents, whatever its name. Each object is a "blob" with a `schema`. The four
//! OLM schemas are read into types; any other schema is kept as it is. Every blob
//! also keeps its exact JSON value, so a filtered catalog is written back with
//! everything a selected package had (icons, properties, CSV metadata).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// A catalog that cannot be read or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum FbcError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not a stream of JSON objects or YAML documents.
    #[error("{file}: {problem}")]
    Parse {
        /// The file, relative to the catalog root.
        file: String,
        /// What is wrong, with the position where known.
        problem: String,
    },
    /// A blob is malformed, or blobs disagree.
    #[error("{file}: {problem}")]
    Invalid {
        /// The file, relative to the catalog root.
        file: String,
        /// What is wrong.
        problem: String,
    },
}

/// A `{group, version, kind}` API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Gvk {
    /// API group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl std::fmt::Display for Gvk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}, Kind={}", self.group, self.version, self.kind)
    }
}

/// One entry of a channel: a bundle and the edges into it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The bundle.
    pub name: String,
    /// The bundle this one upgrades from (possibly pruned from the catalog).
    #[serde(default)]
    pub replaces: Option<String>,
    /// Bundles this one may be installed over directly.
    #[serde(default)]
    pub skips: Vec<String>,
    /// Versions this one may be installed over directly (blang/semver range).
    #[serde(default)]
    pub skip_range: Option<String>,
}

/// An `olm.channel`.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Channel name.
    pub name: String,
    /// Entries, in file order.
    pub entries: Vec<Entry>,
    /// The blob as read.
    pub raw: Value,
}

/// An `olm.bundle`, with what selection and mirroring need.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Bundle name (`foo.v1.2.3`).
    pub name: String,
    /// Bundle image pull spec.
    pub image: String,
    /// Version from the `olm.package` property.
    pub version: semver::Version,
    /// Every `relatedImages[].image`, in order.
    pub related_images: Vec<String>,
    /// `olm.package.required`: package and version range.
    pub required_packages: Vec<(String, String)>,
    /// `olm.gvk.required`.
    pub required_gvks: Vec<Gvk>,
    /// `olm.gvk`: APIs this bundle provides.
    pub provided_gvks: Vec<Gvk>,
    /// The blob as read.
    pub raw: Value,
}

/// Everything of one package.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// `defaultChannel`.
    pub default_channel: Option<String>,
    /// The `olm.package` blob as read.
    pub raw: Value,
    /// Channels by name.
    pub channels: BTreeMap<String, Channel>,
    /// Bundles by name.
    pub bundles: BTreeMap<String, Bundle>,
    /// The `olm.deprecations` blob, if any.
    pub deprecations: Option<Value>,
    /// Blobs of other schemas that name this package.
    pub others: Vec<Value>,
    /// The files its blobs are in, relative to the catalog root.
    pub files: std::collections::BTreeSet<String>,
}

/// A whole catalog.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Packages by name.
    pub packages: BTreeMap<String, Package>,
    /// Blobs of other schemas that name no package.
    pub others: Vec<Value>,
    /// Read with [`Builder::light`]: bundles lack the properties selection does
    /// not read.
    pub light: bool,
}

/// Blobs collected file by file, checked and typed by [`Builder::finish`].
#[derive(Debug, Default)]
pub struct Builder {
    /// (file, blob) in the order read.
    blobs: Vec<(String, Value)>,
    /// Keep of each bundle only what selection needs.
    light: bool,
}

/// The bundle properties selection and mirroring read; a light catalog keeps
/// only these (the embedded CSVs and CRDs of `olm.bundle.object` and
/// `olm.csv.metadata` are most of a real catalog's size).
const SELECTION_PROPERTIES: [&str; 4] = [
    "olm.package",
    "olm.package.required",
    "olm.gvk.required",
    "olm.gvk",
];

/// opm's per-directory ignore file.
const IGNORE_FILE: &str = ".indexignore";

/// Largest FBC file accepted: Red Hat's biggest package files (bundle objects
/// embedded) are tens of MiB.
pub const MAX_FILE: u64 = 256 << 20;

impl Builder {
    /// A builder that keeps of each bundle only what selection needs, for reading
    /// a whole catalog of which a few packages are wanted. Its catalog cannot be
    /// written back ([`Catalog::light`]); read the selected packages' files again
    /// with [`Builder::default`] for that.
    pub fn light() -> Self {
        Builder {
            blobs: Vec::new(),
            light: true,
        }
    }

    /// Reads one file: a stream of JSON objects (first non-space byte `{`) or of
    /// YAML documents, as opm's YAML-or-JSON decoder does. Empty documents are
    /// skipped; anything but an object is an error.
    pub fn add_file(&mut self, file: &str, bytes: &[u8]) -> Result<(), FbcError> {
        let parse = |problem: String| FbcError::Parse {
            file: file.to_string(),
            problem,
        };
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let values: Vec<Value> = match first {
            None => Vec::new(),
            Some(b'{') => serde_json::Deserializer::from_slice(bytes)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .map_err(|e| parse(e.to_string()))?,
            Some(_) => {
                let text = std::str::from_utf8(bytes).map_err(|e| parse(e.to_string()))?;
                let mut out = Vec::new();
                for doc in serde_yaml_ng::Deserializer::from_str(text) {
                    let v = Value::deserialize(doc).map_err(|e| parse(e.to_string()))?;
                    if !v.is_null() {
                        out.push(v);
                    }
                }
                out
            }
        };
        for (i, v) in values.into_iter().enumerate() {
            if !v.is_object() {
                return Err(parse(format!("document {} is not an object", i + 1)));
            }
            let mut v = v;
            if self.light
                && v.get("schema").and_then(Value::as_str) == Some("olm.bundle")
                && let Some(props) = v.get_mut("properties").and_then(Value::as_array_mut)
            {
                props.retain(|p| {
                    p.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| SELECTION_PROPERTIES.contains(&t))
                });
            }
            self.blobs.push((file.to_string(), v));
        }
        Ok(())
    }

    /// Reads every regular file under `root` (symbolic links are not followed: a
    /// catalog from an image has none that matter), as [`Builder::add_tree`] does.
    pub fn add_dir(&mut self, root: &Path) -> Result<(), FbcError> {
        let mut stack = vec![root.to_path_buf()];
        let mut files = BTreeMap::new();
        while let Some(dir) = stack.pop() {
            let io = |source| FbcError::Io {
                path: dir.clone(),
                source,
            };
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let kind = entry.file_type().map_err(io)?;
                let path = entry.path();
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let io = |source| FbcError::Io {
                        path: path.clone(),
                        source,
                    };
                    let rel = path
                        .strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string();
                    let len = std::fs::metadata(&path).map_err(io)?.len();
                    if len > MAX_FILE {
                        return Err(FbcError::Invalid {
                            file: rel,
                            problem: format!("{len} bytes; more than {MAX_FILE} is refused"),
                        });
                    }
                    files.insert(rel, std::fs::read(&path).map_err(io)?);
                }
            }
        }
        self.add_tree(&files)
    }

    /// Reads a catalog's files (by path under its root), in path order, as opm's
    /// loader does: every file, except those an `.indexignore` in its directory or
    /// a parent matches (gitignore syntax; `!` re-includes within the same file).
    pub fn add_tree(&mut self, files: &BTreeMap<String, Vec<u8>>) -> Result<(), FbcError> {
        let mut matchers = Vec::new();
        for (path, bytes) in files {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            if name != IGNORE_FILE {
                continue;
            }
            let invalid = |problem: String| FbcError::Invalid {
                file: path.clone(),
                problem,
            };
            let mut b = ignore::gitignore::GitignoreBuilder::new(Path::new("/").join(dir));
            for line in String::from_utf8_lossy(bytes).lines() {
                b.add_line(None, line).map_err(|e| invalid(e.to_string()))?;
            }
            matchers.push((dir, b.build().map_err(|e| invalid(e.to_string()))?));
        }
        for (path, bytes) in files {
            if path.rsplit('/').next() == Some(IGNORE_FILE) {
                continue;
            }
            let absolute = Path::new("/").join(path);
            let ignored = matchers.iter().any(|(dir, m)| {
                (dir.is_empty() || path.starts_with(&format!("{dir}/")))
                    && m.matched_path_or_any_parents(&absolute, false).is_ignore()
            });
            if ignored {
                tracing::debug!(file = %path, "ignored by .indexignore");
                continue;
            }
            self.add_file(path, bytes)?;
        }
        Ok(())
    }

    /// Types the blobs and checks that they hold together: one `olm.package` per
    /// package, channels and bundles of known packages, channel entries naming
    /// bundles of the package, bundle versions that are semver.
    pub fn finish(self) -> Result<Catalog, FbcError> {
        let mut catalog = Catalog {
            light: self.light,
            ..Catalog::default()
        };
        let mut rest = Vec::new();
        for (file, v) in self.blobs {
            let invalid = |problem: String| FbcError::Invalid {
                file: file.clone(),
                problem,
            };
            let schema = v.get("schema").and_then(Value::as_str).unwrap_or_default();
            if schema != "olm.package" {
                rest.push((file, v));
                continue;
            }
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct P {
                name: String,
                #[serde(default)]
                default_channel: Option<String>,
            }
            let p: P = serde_json::from_value(v.clone())
                .map_err(|e| invalid(format!("olm.package: {e}")))?;
            if p.name.is_empty() {
                return Err(invalid("olm.package with an empty name".into()));
            }
            if catalog.packages.contains_key(&p.name) {
                return Err(invalid(format!("package {:?} is declared twice", p.name)));
            }
            catalog.packages.insert(
                p.name.clone(),
                Package {
                    name: p.name,
                    default_channel: p.default_channel.filter(|c| !c.is_empty()),
                    raw: v,
                    channels: BTreeMap::new(),
                    bundles: BTreeMap::new(),
                    deprecations: None,
                    others: Vec::new(),
                    files: [file.clone()].into(),
                },
            );
        }
        for (file, v) in rest {
            let invalid = |problem: String| FbcError::Invalid {
                file: file.clone(),
                problem,
            };
            let schema = v
                .get("schema")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a blob has no schema".into()))?
                .to_string();
            let package_name = v.get("package").and_then(Value::as_str).map(str::to_string);
            let known = matches!(
                schema.as_str(),
                "olm.channel" | "olm.bundle" | "olm.deprecations"
            );
            let package = match &package_name {
                Some(name) => match catalog.packages.get_mut(name) {
                    Some(p) => {
                        p.files.insert(file.clone());
                        p
                    }
                    None => {
                        return Err(invalid(format!(
                            "{schema} names package {name:?}, which has no olm.package"
                        )));
                    }
                },
                None if known => {
                    return Err(invalid(format!("{schema} without a package")));
                }
                None => {
                    catalog.others.push(v);
                    continue;
                }
            };
            match schema.as_str() {
                "olm.channel" => {
                    let c = read_channel(&v).map_err(|e| invalid(format!("olm.channel: {e}")))?;
                    if package.channels.contains_key(&c.name) {
                        return Err(invalid(format!(
                            "channel {:?} of package {:?} is declared twice",
                            c.name, package.name
                        )));
                    }
                    package.channels.insert(c.name.clone(), c);
                }
                "olm.bundle" => {
                    let b = read_bundle(&v).map_err(|e| {
                        invalid(format!(
                            "olm.bundle {:?}: {e}",
                            v.get("name").and_then(Value::as_str).unwrap_or_default()
                        ))
                    })?;
                    if package.bundles.contains_key(&b.name) {
                        return Err(invalid(format!(
                            "bundle {:?} of package {:?} is declared twice",
                            b.name, package.name
                        )));
                    }
                    package.bundles.insert(b.name.clone(), b);
                }
                "olm.deprecations" => {
                    if package.deprecations.is_some() {
                        return Err(invalid(format!(
                            "package {:?} has two olm.deprecations blobs",
                            package.name
                        )));
                    }
                    package.deprecations = Some(v);
                }
                _ => package.others.push(v),
            }
        }
        for p in catalog.packages.values() {
            for c in p.channels.values() {
                if let Some(e) = c.entries.iter().find(|e| !p.bundles.contains_key(&e.name)) {
                    return Err(FbcError::Invalid {
                        file: p.name.clone(),
                        problem: format!(
                            "channel {:?} of package {:?} names bundle {:?}, which is not in the catalog",
                            c.name, p.name, e.name
                        ),
                    });
                }
            }
        }
        Ok(catalog)
    }
}

fn read_channel(v: &Value) -> Result<Channel, serde_json::Error> {
    #[derive(Deserialize)]
    struct C {
        name: String,
        #[serde(default)]
        entries: Vec<Entry>,
    }
    let c: C = serde_json::from_value(v.clone())?;
    Ok(Channel {
        name: c.name,
        entries: c.entries,
        raw: v.clone(),
    })
}

fn read_bundle(v: &Value) -> Result<Bundle, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct B {
        name: String,
        #[serde(default)]
        image: String,
        #[serde(default)]
        properties: Vec<Property>,
        #[serde(default)]
        related_images: Vec<Related>,
    }
    #[derive(Deserialize)]
    struct Property {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        value: Value,
    }
    #[derive(Deserialize)]
    struct Related {
        image: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PackageProperty {
        version: String,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Required {
        package_name: String,
        version_range: String,
    }
    let b: B = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let mut version = None;
    let mut required_packages = Vec::new();
    let mut required_gvks = Vec::new();
    let mut provided_gvks = Vec::new();
    for p in b.properties {
        let field = |e: serde_json::Error| format!("property {}: {e}", p.kind);
        match p.kind.as_str() {
            "olm.package" => {
                let pp: PackageProperty = serde_json::from_value(p.value.clone()).map_err(field)?;
                version = Some(
                    semver::Version::parse(&pp.version)
                        .map_err(|e| format!("version {:?} is not semver: {e}", pp.version))?,
                );
            }
            "olm.package.required" => {
                let r: Required = serde_json::from_value(p.value.clone()).map_err(field)?;
                required_packages.push((r.package_name, r.version_range));
            }
            "olm.gvk.required" => {
                required_gvks.push(serde_json::from_value(p.value.clone()).map_err(field)?)
            }
            "olm.gvk" => {
                provided_gvks.push(serde_json::from_value(p.value.clone()).map_err(field)?)
            }
            _ => {}
        }
    }
    Ok(Bundle {
        version: version.ok_or("no olm.package property with its version")?,
        name: b.name,
        image: b.image,
        related_images: b.related_images.into_iter().map(|r| r.image).collect(),
        required_packages,
        required_gvks,
        provided_gvks,
        raw: v.clone(),
    })
}

impl Channel {
    /// The channel head: the entry no other entry replaces or skips (opm's rule;
    /// `skipRange` does not count). More or fewer than one is an error naming them.
    pub fn head(&self) -> Result<&Entry, String> {
        let pointed: std::collections::HashSet<&str> = self
            .entries
            .iter()
            .flat_map(|e| e.replaces.iter().chain(&e.skips).map(String::as_str))
            .collect();
        let heads: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| !pointed.contains(e.name.as_str()))
            .collect();
        match heads.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("channel {:?} has no head (a cycle?)", self.name)),
            many => Err(format!(
                "channel {:?} has {} heads: {}",
                self.name,
                many.len(),
                many.iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}
