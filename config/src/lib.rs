//! oc-mirror's `ImageSetConfiguration`: loading, validation, and what this build acts on.
//!
//! Three steps, each with errors that name the file, the line and the field path:
//!
//! 1. [`load`] / [`load_all`] parse the YAML strictly (unknown fields and wrong types
//!    fail, as in oc-mirror) and check `apiVersion`, `kind`, and that each field
//!    belongs to the file's schema version.
//! 2. [`LoadedConfig::validate`] applies oc-mirror's semantic rules (duplicate
//!    channels, exclusive version filters, valid image references, ...).
//! 3. [`LoadedConfig::check_supported`] refuses fields this build parses but does not
//!    act on yet. A user's config must never be half-honoured in silence: mirroring
//!    fewer images than asked looks like success until a cluster cannot upgrade.
//!
//! Invariants: nothing is read from a registry or written anywhere while a
//! configuration is loaded and checked; every error names the file, line, column
//! and field path.

mod position;
pub mod schema;

use std::fmt;
use std::path::{Path, PathBuf};

pub use position::{Pos, Positions};
pub use schema::ImageSetConfiguration;

use airlock_common::size::ByteSize;
use airlock_imageset::CatalogSourceTemplate;
use airlock_oci::reference::{ImageRef, valid_repository, valid_tag};

/// oc-mirror v1's schema version.
pub const V1ALPHA2: &str = "mirror.openshift.io/v1alpha2";
/// oc-mirror v2's schema version.
pub const V2ALPHA1: &str = "mirror.openshift.io/v2alpha1";
/// The configuration kind `create` takes.
pub const KIND: &str = "ImageSetConfiguration";
/// oc-mirror v2's deletion configuration kind.
pub const DELETE_KIND: &str = "DeleteImageSetConfiguration";

/// Fields that exist in only one schema version, as field-path patterns (`[*]`
/// stands for any index).
pub const VERSION_ONLY_FIELDS: &[(&str, &str)] = &[
    ("storageConfig", V1ALPHA2),
    ("mirror.operators[*].targetName", V1ALPHA2),
    ("mirror.operators[*].originalRef", V1ALPHA2),
    ("mirror.operators[*].packages[*].minBundle", V1ALPHA2),
    (
        "mirror.operators[*].packages[*].channels[*].minBundle",
        V1ALPHA2,
    ),
    ("delete", V2ALPHA1),
    ("mirror.platform.platforms", V2ALPHA1),
    ("mirror.platform.release", V2ALPHA1),
    ("mirror.platform.kubeVirtContainer", V2ALPHA1),
    ("mirror.operators[*].targetCatalogSourceTemplate", V2ALPHA1),
    ("mirror.operators[*].platforms", V2ALPHA1),
    ("mirror.additionalImages[*].targetRepo", V2ALPHA1),
    ("mirror.additionalImages[*].targetTag", V2ALPHA1),
    ("mirror.additionalImages[*].platforms", V2ALPHA1),
    ("mirror.helm.repositories[*].charts[*].platforms", V2ALPHA1),
    ("mirror.helm.local[*].platforms", V2ALPHA1),
];

const ARCHITECTURES: &[&str] = &["amd64", "arm64", "ppc64le", "s390x", "multi"];

/// One thing wrong in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, when known.
    pub pos: Option<Pos>,
    /// The field path (`mirror.additionalImages[0].name`), empty for the document.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read and is wrong; every problem found is listed.
    #[error("{}", render(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems, when the file was readable.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// A `targetCatalogSourceTemplate` file, read and checked; relative paths are
/// relative to the working directory, as oc-mirror reads them.
fn read_template(path: &str) -> Result<CatalogSourceTemplate, TemplateFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateFileError::Read {
        path: path.to_string(),
        source,
    })?;
    airlock_registry::resources::catalog_source_template(&text).map_err(|source| {
        TemplateFileError::Template {
            path: path.to_string(),
            source,
        }
    })
}

/// Why a `targetCatalogSourceTemplate` file cannot be used.
#[derive(Debug, thiserror::Error)]
enum TemplateFileError {
    /// It cannot be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// It is not a template a CatalogSource can take.
    #[error("{path}: {source}")]
    Template {
        path: String,
        source: airlock_registry::resources::TemplateError,
    },
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            let at = match p.pos {
                Some(pos) => format!("{}:{}:{}", path.display(), pos.line, pos.column),
                None => path.display().to_string(),
            };
            if p.field.is_empty() {
                format!("{at}: {}", p.message)
            } else {
                format!("{at}: {}: {}", p.field, p.message)
            }
        })
        .collect();
    lines.join("\n")
}

/// A parsed configuration document and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The file.
    pub file: PathBuf,
    /// Index of the document in the file (0 for the first).
    pub document: usize,
    /// The parsed document.
    pub config: ImageSetConfiguration,
    positions: Positions,
}

/// An image the configuration asks to mirror, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The source, with `latest` as tag when the config named neither tag nor digest.
    pub source: ImageRef,
    /// The configuration entry as written (for mapping files and messages).
    pub name: String,
    /// Repository path at the mirror instead of the source's (`targetRepo`).
    pub target_repo: Option<String>,
    /// Tag at the mirror instead of the source's (`targetTag`).
    pub target_tag: Option<String>,
    /// What the image is, for grouping cluster resources.
    pub kind: airlock_imageset::ImageKind,
    /// For a referrer (signature, SBOM): the manifest it is about.
    pub subject: Option<airlock_oci::digest::Digest>,
    /// The platforms to keep of a multi-platform image (`linux/amd64`), from
    /// the configuration's `platforms`; empty keeps every platform.
    pub platforms: Vec<String>,
}

/// A configuration's `platforms` as an imageset records them: `os/architecture`,
/// sorted, each once.
pub fn platform_filter(platforms: &[schema::InstancePlatform]) -> Vec<String> {
    let mut out: Vec<String> = platforms
        .iter()
        .map(|p| format!("{}/{}", p.os, p.architecture))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One `mirror.blockedImages` entry: oc-mirror's semantics, a Go (RE2) regular
/// expression searched, unanchored, in the image's source reference and in its
/// destination; a plain name is a pattern that matches itself.
#[derive(Debug, Clone)]
pub struct BlockRule {
    /// The field (`mirror.blockedImages[2]`).
    pub field: String,
    /// The pattern as written.
    pub pattern: String,
    /// Whether the rule may leave out part of a release (`evenWhenRequired`).
    pub even_when_required: bool,
    regex: regex::Regex,
}

/// One `mirror.blockedBaseImages` entry.
#[derive(Debug, Clone)]
pub struct BaseRule {
    /// The field (`mirror.blockedBaseImages[0]`).
    pub field: String,
    /// The base image (`latest` when named without tag or digest).
    pub image: ImageRef,
    /// Whether the rule may leave out part of a release (`evenWhenRequired`).
    pub even_when_required: bool,
}

/// The compiled `mirror.blockedImages`.
#[derive(Debug, Clone, Default)]
pub struct BlockList(Vec<BlockRule>);

impl BlockList {
    /// The first rule that blocks an image with this source reference (without
    /// `docker://`) or destination (path and tag under the mirror prefix).
    pub fn matching(&self, source: &str, destination: &str) -> Option<&BlockRule> {
        let source = source.strip_prefix("docker://").unwrap_or(source);
        self.0
            .iter()
            .find(|r| r.regex.is_match(source) || r.regex.is_match(destination))
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses a release version of `mirror.platform.channels[]` (`minVersion`,
/// `maxVersion`); the error says what is expected.
pub fn release_version(v: &str) -> Result<semver::Version, String> {
    semver::Version::parse(v).map_err(|e| {
        format!("{v:?} is not a release version (expected MAJOR.MINOR.PATCH, e.g. 4.14.3): {e}")
    })
}

/// Reads every document of an ImageSetConfiguration file.
pub fn load_all(path: &Path) -> Result<Vec<LoadedConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_all(path, &text)
}

/// Reads an ImageSetConfiguration file that holds exactly one document.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let mut docs = load_all(path)?;
    if docs.len() != 1 {
        let problem = Problem {
            pos: docs.get(1).and_then(|d| d.positions.of("")),
            field: String::new(),
            message: format!(
                "the file holds {} ImageSetConfiguration documents; give one configuration per file",
                docs.len()
            ),
        };
        return Err(invalid(path, vec![problem]));
    }
    Ok(docs.remove(0))
}

fn invalid(path: &Path, mut problems: Vec<Problem>) -> ConfigError {
    problems.sort_by_key(|p| p.pos.map(|p| (p.line, p.column)));
    ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    }
}

/// Parses configuration text; `path` is used in messages only.
pub fn parse_all(path: &Path, text: &str) -> Result<Vec<LoadedConfig>, ConfigError> {
    let docs = parse_documents::<ImageSetConfiguration>(path, text, |message| {
        if message.contains("missing field `apiVersion`")
            || message.contains("missing field `kind`")
        {
            format!(
                "{message}: an ImageSetConfiguration starts with apiVersion: {V2ALPHA1} (or {V1ALPHA2}) and kind: {KIND}"
            )
        } else {
            message
        }
    })?;
    let mut loaded = Vec::new();
    for (document, (config, positions)) in docs.into_iter().enumerate() {
        let doc = LoadedConfig {
            file: path.to_path_buf(),
            document,
            config,
            positions,
        };
        let problems = doc.schema_problems();
        if !problems.is_empty() {
            return Err(invalid(path, problems));
        }
        loaded.push(doc);
    }
    if loaded.is_empty() {
        return Err(invalid(
            path,
            vec![Problem {
                pos: None,
                field: String::new(),
                message: format!("the file holds no YAML document; expected an {KIND}"),
            }],
        ));
    }
    Ok(loaded)
}

/// Parses every YAML document of `text` strictly into `T`, each with the positions
/// of its fields. A serde error becomes a [`ConfigError`] naming the file, line,
/// column and field path; `explain` may add advice to its message.
pub fn parse_documents<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    explain: impl Fn(String) -> String,
) -> Result<Vec<(T, Positions)>, ConfigError> {
    let positions = position::index(text);
    let mut docs = Vec::new();
    for (document, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = T::deserialize(de).map_err(|e| {
            let pos = e.location().map(|l| Pos {
                line: l.line(),
                column: l.column(),
            });
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            invalid(
                path,
                vec![Problem {
                    pos,
                    field: String::new(),
                    message: explain(message),
                }],
            )
        })?;
        docs.push((value, positions.get(document).cloned().unwrap_or_default()));
    }
    Ok(docs)
}

/// Builds the error for `problems` found in `path`, in file order.
pub fn problems_error(path: &Path, problems: Vec<Problem>) -> ConfigError {
    invalid(path, problems)
}

/// Whether a concrete field path (`a.b[3].c`) matches a pattern with `[*]`.
fn path_matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern;
    let mut p = path;
    loop {
        match pat.find("[*]") {
            None => return pat == p,
            Some(i) => {
                let Some(rest) = p.strip_prefix(&pat[..i]) else {
                    return false;
                };
                let Some(rest) = rest.strip_prefix('[') else {
                    return false;
                };
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let Some(rest) = rest[digits..].strip_prefix(']') else {
                    return false;
                };
                if digits == 0 {
                    return false;
                }
                pat = &pat[i + 3..];
                p = rest;
            }
        }
    }
}

impl LoadedConfig {
    /// A problem with `field`, placed at its line and column in the file.
    pub fn problem(&self, field: impl Into<String>, message: impl Into<String>) -> Problem {
        let field = field.into();
        Problem {
            pos: self.positions.of(&field),
            field,
            message: message.into(),
        }
    }

    fn err(&self, problems: Vec<Problem>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(invalid(&self.file, problems))
        }
    }

    /// The position of a field, for messages about it elsewhere.
    pub fn position_of(&self, field: &str) -> Option<Pos> {
        self.positions.of(field)
    }

    /// `file:line:col` of a field.
    pub fn locate(&self, field: &str) -> String {
        match self.positions.of(field) {
            Some(p) => format!("{}:{}:{}", self.file.display(), p.line, p.column),
            None => self.file.display().to_string(),
        }
    }

    fn schema_problems(&self) -> Vec<Problem> {
        let c = &self.config;
        let mut problems = Vec::new();
        let versions = [V1ALPHA2, V2ALPHA1];
        if !versions.contains(&c.api_version.as_str()) {
            problems.push(self.problem(
                "apiVersion",
                format!(
                    "unknown apiVersion {:?}: expected {V2ALPHA1} or {V1ALPHA2}",
                    c.api_version
                ),
            ));
            return problems;
        }
        let kinds: &[&str] = if c.api_version == V2ALPHA1 {
            &[KIND, DELETE_KIND]
        } else {
            &[KIND]
        };
        if !kinds.contains(&c.kind.as_str()) {
            problems.push(self.problem(
                "kind",
                format!(
                    "unknown kind {:?} for {}: expected {}",
                    c.kind,
                    c.api_version,
                    kinds.join(" or ")
                ),
            ));
        }
        let mut keys: Vec<&String> = self.positions.keys().collect();
        keys.sort();
        for key in keys {
            for (pattern, version) in VERSION_ONLY_FIELDS {
                if *version != c.api_version && path_matches(pattern, key) {
                    problems.push(self.problem(
                        key.clone(),
                        format!(
                            "field exists only in {version}, but this file is {}: change apiVersion or remove the field",
                            c.api_version
                        ),
                    ));
                }
            }
        }
        problems
    }

    /// oc-mirror's semantic rules, with its messages where it has one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let mut problems = Vec::new();
        if let Some(size) = c.archive_size
            && size < 0
        {
            problems.push(self.problem(
                "archiveSize",
                format!("must be a whole number of GiB, 0 or more; got {size}"),
            ));
        }
        let (stanza, body) = if c.kind == DELETE_KIND {
            if c.mirror.is_some() {
                problems.push(self.problem(
                    "mirror",
                    "mirror: is not allowed in DeleteImageSetConfiguration; use delete:",
                ));
            }
            ("delete", c.delete.as_ref())
        } else {
            if c.delete.is_some() {
                problems.push(
                    self.problem("delete", "delete: is not allowed in ImageSetConfiguration"),
                );
            }
            ("mirror", c.mirror.as_ref())
        };
        let Some(m) = body else {
            problems.push(self.problem("", format!("configuration missing the `{stanza}` stanza")));
            return self.err(problems);
        };
        if let Some(platform) = &m.platform {
            self.validate_platform(stanza, platform, &mut problems);
        }
        self.validate_operators(stanza, &m.operators, &mut problems);
        for (i, image) in m.additional_images.iter().enumerate() {
            let at = format!("{stanza}.additionalImages[{i}]");
            self.check_platforms(&at, &image.platforms, &mut problems);
            if let Err(e) = image.name.parse::<ImageRef>() {
                problems.push(self.problem(format!("{at}.name"), e.to_string()));
            }
            self.check_target(
                &at,
                image.target_repo.as_deref(),
                "targetRepo",
                image.target_tag.as_deref(),
                &mut problems,
            );
        }
        if let Some(r) = c
            .storage_config
            .as_ref()
            .and_then(|sc| sc.registry.as_ref())
        {
            match r.image_url.parse::<ImageRef>() {
                Err(e) => problems.push(self.problem("storageConfig.registry.imageURL", e.to_string())),
                Ok(i) if i.digest().is_some() => problems.push(self.problem(
                    "storageConfig.registry.imageURL",
                    "must name a tag, not a digest: the workspace state is rewritten by every create",
                )),
                Ok(_) => {}
            }
        }
        for (i, b) in m.blocked_images.iter().enumerate() {
            let field = format!("{stanza}.blockedImages[{i}].name");
            if b.name.trim().is_empty() {
                problems.push(self.problem(field, "must not be empty"));
            } else if let Err(e) = regex::Regex::new(&b.name) {
                problems.push(self.problem(
                    field,
                    format!(
                        "blocked image {:?}: invalid regular expression: {e}",
                        b.name
                    ),
                ));
            }
        }
        for (i, b) in m.blocked_base_images.iter().enumerate() {
            if let Err(e) = b.name.parse::<ImageRef>() {
                problems.push(self.problem(
                    format!("{stanza}.blockedBaseImages[{i}].name"),
                    format!("base image {:?}: {e}; expected a reference by tag or digest such as registry.example.com/ubi9/ubi:9.4", b.name),
                ));
            }
        }
        self.err(problems)
    }

    fn validate_platform(
        &self,
        stanza: &str,
        platform: &schema::Platform,
        problems: &mut Vec<Problem>,
    ) {
        let mut seen = std::collections::HashSet::new();
        for (i, ch) in platform.channels.iter().enumerate() {
            let at = format!("{stanza}.platform.channels[{i}]");
            if ch.name.is_empty() {
                problems
                    .push(self.problem(format!("{at}.name"), "release channel requires a name"));
            }
            for (field, value) in [
                ("minVersion", &ch.min_version),
                ("maxVersion", &ch.max_version),
            ] {
                if let Some(v) = value
                    && let Err(message) = release_version(v)
                {
                    problems.push(self.problem(format!("{at}.{field}"), message));
                }
            }
            let kind = ch.channel_type.as_deref().unwrap_or("ocp");
            if !["ocp", "okd"].contains(&kind) {
                problems.push(self.problem(
                    format!("{at}.type"),
                    format!("unknown release type {kind:?}: expected ocp or okd"),
                ));
            }
            if !seen.insert((kind, ch.name.as_str())) {
                problems.push(self.problem(
                    format!("{at}.name"),
                    format!(
                        "release channel {:?}: duplicate found in configuration",
                        ch.name
                    ),
                ));
            }
        }
        for (i, arch) in platform.architectures.iter().enumerate() {
            if !ARCHITECTURES.contains(&arch.as_str()) {
                problems.push(self.problem(
                    format!("{stanza}.platform.architectures[{i}]"),
                    format!(
                        "unknown architecture {arch:?}: expected one of {}",
                        ARCHITECTURES.join(", ")
                    ),
                ));
            }
        }
        if let Some(release) = &platform.release
            && let Err(e) = release.parse::<ImageRef>()
        {
            problems.push(self.problem(format!("{stanza}.platform.release"), e.to_string()));
        }
        self.check_platforms(&format!("{stanza}.platform"), &platform.platforms, problems);
        if !platform.platforms.is_empty() && !platform.architectures.is_empty() {
            problems.push(self.problem(
                format!("{stanza}.platform.platforms"),
                "platform.platforms and platform.architectures cannot be used together; use platform.platforms (architectures is deprecated)",
            ));
        }
    }

    /// A `platforms` list: each entry an `os` and an `architecture` as image
    /// indexes spell them (`linux`, `amd64`), so that the filter an imageset
    /// records passes the disconnected side's check.
    fn check_platforms(
        &self,
        at: &str,
        platforms: &[schema::InstancePlatform],
        problems: &mut Vec<Problem>,
    ) {
        for (i, p) in platforms.iter().enumerate() {
            let named = format!("{}/{}", p.os, p.architecture);
            if !airlock_oci::manifest::valid_platform(&named) {
                problems.push(self.problem(
                    format!("{at}.platforms[{i}]"),
                    format!(
                        "platform {:?}: os and architecture must each be 1 to 32 lowercase letters, digits or '_', as image indexes name them (os: linux, architecture: amd64)",
                        airlock_oci::quote::clip(&named)
                    ),
                ));
            }
        }
    }

    /// A target repository and tag as the disconnected side will accept them
    /// (`imageset::validate`): refused here, not after the imageset crossed.
    fn check_target(
        &self,
        at: &str,
        repo: Option<&str>,
        repo_field: &str,
        tag: Option<&str>,
        problems: &mut Vec<Problem>,
    ) {
        if let Some(repo) = repo
            && (repo.len() > 255 || !valid_repository(repo))
        {
            problems.push(self.problem(
                    format!("{at}.{repo_field}"),
                    format!("invalid repository path {}: at most 255 characters, lowercase letters and digits separated by '.', '_', '__', '-' or '/'", airlock_oci::quote::clip(repo)),
                ));
        }
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            problems.push(self.problem(
                    format!("{at}.targetTag"),
                    format!("invalid tag {}: 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", airlock_oci::quote::clip(tag)),
                ));
        }
    }

    fn validate_operators(
        &self,
        stanza: &str,
        operators: &[schema::Operator],
        problems: &mut Vec<Problem>,
    ) {
        let mut catalogs = std::collections::HashSet::new();
        for (o, op) in operators.iter().enumerate() {
            let at = format!("{stanza}.operators[{o}]");
            self.check_platforms(&at, &op.platforms, problems);
            let key = (
                op.catalog.as_str(),
                op.target_catalog.as_deref().or(op.target_name.as_deref()),
                op.target_tag.as_deref(),
            );
            if !catalogs.insert(key) {
                problems.push(self.problem(
                    format!("{at}.catalog"),
                    format!("catalog {:?}: duplicate found in configuration", op.catalog),
                ));
            }
            self.check_target(
                &at,
                op.target_catalog.as_deref(),
                "targetCatalog",
                op.target_tag.as_deref(),
                problems,
            );
            let mut packages = std::collections::HashSet::new();
            for (p, pkg) in op.packages.iter().enumerate() {
                let at = format!("{at}.packages[{p}]");
                if pkg.name.is_empty() {
                    problems.push(
                        self.problem(format!("{at}.name"), format!("package {p} requires a name")),
                    );
                } else if !packages.insert(pkg.name.as_str()) {
                    problems.push(self.problem(
                        format!("{at}.name"),
                        format!(
                            "catalog {:?}: duplicate package entry {:?}",
                            op.catalog, pkg.name
                        ),
                    ));
                }
                if pkg.min_version.is_some() && pkg.min_bundle.is_some() {
                    problems.push(self.problem(
                        format!("{at}.minBundle"),
                        "minimum version and bundle are mutually exclusive",
                    ));
                }
                let package_range = pkg.min_version.is_some() || pkg.max_version.is_some();
                let mut channels = std::collections::HashSet::new();
                for (h, ch) in pkg.channels.iter().enumerate() {
                    let at = format!("{at}.channels[{h}]");
                    if ch.name.is_empty() {
                        problems.push(self.problem(
                            format!("{at}.name"),
                            format!("package {}: channel {h} requires a name", pkg.name),
                        ));
                    } else if !channels.insert(ch.name.as_str()) {
                        problems.push(self.problem(
                            format!("{at}.name"),
                            format!(
                                "catalog {:?}: operator {:?}: duplicate channel entry {:?}",
                                op.catalog, pkg.name, ch.name
                            ),
                        ));
                    }
                    if ch.min_version.is_some() && ch.min_bundle.is_some() {
                        problems.push(self.problem(
                            format!("{at}.minBundle"),
                            "minimum version and bundle are mutually exclusive",
                        ));
                    }
                    if package_range && (ch.min_version.is_some() || ch.max_version.is_some()) {
                        problems.push(self.problem(
                            format!("{at}.minVersion"),
                            format!(
                                "catalog {:?}: operator {:?}: mixing both filtering by minVersion/maxVersion and filtering by channel minVersion/maxVersion is not allowed",
                                op.catalog, pkg.name
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Refuses every field this build parses but does not act on yet, all at once,
    /// each with its position, so a user learns everything from one run.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let mut problems = Vec::new();
        if c.kind == DELETE_KIND {
            problems.push(self.problem(
                "kind",
                "a DeleteImageSetConfiguration is what `airlock-connected delete` takes; create takes an ImageSetConfiguration",
            ));
        }
        if let Some(m) = &c.mirror {
            if !m.samples.is_empty() {
                problems.push(self.problem(
                    "mirror.samples",
                    "mirroring sample images (oc-mirror does not implement them either) is not supported by this build; remove mirror.samples to mirror the rest",
                ));
            }
            for (i, op) in m.operators.iter().enumerate() {
                let at = format!("mirror.operators[{i}]");
                let refuse = [(
                    op.target_name.is_some() || op.original_ref.is_some(),
                    format!("{at}.targetName"),
                    "the deprecated targetName and originalRef are not supported; use targetCatalog",
                )];
                for (present, field, why) in refuse {
                    if present {
                        problems.push(self.problem(field, why));
                    }
                }
                let layout = airlock_registry::layout::catalog(
                    &op.catalog,
                    op.target_catalog.as_deref(),
                    op.target_tag.as_deref(),
                );
                if let Some(Err(e)) =
                    layout.map(|l| l.and_then(|(dir, _)| airlock_registry::layout::check(&dir)))
                {
                    problems.push(self.problem(format!("{at}.catalog"), e.to_string()));
                }
                if let Some(Err(e)) = op
                    .target_catalog_source_template
                    .as_deref()
                    .map(read_template)
                {
                    problems.push(
                        self.problem(format!("{at}.targetCatalogSourceTemplate"), e.to_string()),
                    );
                }
            }
        }
        self.err(problems)
    }

    /// Each `mirror.operators[]` entry with a `targetCatalogSourceTemplate`, with
    /// the template read (checked by [`Self::check_supported`] already).
    pub fn catalog_source_templates(
        &self,
    ) -> Result<Vec<(&schema::Operator, CatalogSourceTemplate)>, ConfigError> {
        let operators = self.config.mirror.iter().flat_map(|m| &m.operators);
        let mut out = Vec::new();
        for (i, op) in operators.enumerate() {
            if let Some(path) = &op.target_catalog_source_template {
                let t = read_template(path).map_err(|e| {
                    invalid(
                        &self.file,
                        vec![self.problem(
                            format!("mirror.operators[{i}].targetCatalogSourceTemplate"),
                            e.to_string(),
                        )],
                    )
                })?;
                out.push((op, t));
            }
        }
        Ok(out)
    }

    /// For `delete`: the file is a `DeleteImageSetConfiguration`, and its `delete:`
    /// section uses only fields that say what to delete. Filters that choose how
    /// to mirror (`shortestPath`, `minBundle`, platforms, policy lists) have no
    /// meaning there and are refused rather than silently ignored.
    pub fn check_delete(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if c.kind != DELETE_KIND {
            return self.err(vec![self.problem(
                "kind",
                format!("{:?}: delete takes a {DELETE_KIND} (apiVersion {V2ALPHA1}) with a delete: section", c.kind),
            )]);
        }
        let Some(d) = &c.delete else {
            return self.err(vec![self.problem(
                "delete",
                "missing: say what to delete under delete: (platform, operators, additionalImages)",
            )]);
        };
        let mut problems = Vec::new();
        let mut refuse = |present: bool, field: String, why: &str| {
            if present {
                problems.push(self.problem(field, why.to_string()));
            }
        };
        let policy = "has no meaning in a delete; remove it";
        refuse(
            !d.blocked_images.is_empty(),
            "delete.blockedImages".into(),
            policy,
        );
        refuse(
            !d.blocked_base_images.is_empty(),
            "delete.blockedBaseImages".into(),
            policy,
        );
        refuse(!d.samples.is_empty(), "delete.samples".into(), policy);
        refuse(
            d.helm.is_some(),
            "delete.helm".into(),
            "Helm charts are not mirrored by this build, so there is nothing to delete",
        );
        if let Some(p) = &d.platform {
            refuse(
                !p.platforms.is_empty(),
                "delete.platform.platforms".into(),
                policy,
            );
            for (i, ch) in p.channels.iter().enumerate() {
                refuse(
                    ch.shortest_path,
                    format!("delete.platform.channels[{i}].shortestPath"),
                    "a delete removes every release of the channel between minVersion and maxVersion; remove shortestPath",
                );
            }
        }
        for (i, op) in d.operators.iter().enumerate() {
            refuse(
                !op.platforms.is_empty(),
                format!("delete.operators[{i}].platforms"),
                policy,
            );
            refuse(
                op.full,
                format!("delete.operators[{i}].full"),
                "a catalog without packages deletes the catalog and all its bundles; remove full",
            );
            refuse(
                op.skip_dependencies,
                format!("delete.operators[{i}].skipDependencies"),
                "a delete removes exactly the bundles it selects; remove skipDependencies",
            );
            refuse(
                op.target_catalog_source_template.is_some(),
                format!("delete.operators[{i}].targetCatalogSourceTemplate"),
                policy,
            );
            for (j, p) in op.packages.iter().enumerate() {
                let at = format!("delete.operators[{i}].packages[{j}]");
                refuse(
                    p.min_bundle.is_some(),
                    format!("{at}.minBundle"),
                    "select bundles to delete by minVersion and maxVersion",
                );
                refuse(
                    p.default_channel.is_some(),
                    format!("{at}.defaultChannel"),
                    policy,
                );
                for (k, ch) in p.channels.iter().enumerate() {
                    refuse(
                        ch.min_bundle.is_some(),
                        format!("{at}.channels[{k}].minBundle"),
                        "select bundles to delete by minVersion and maxVersion",
                    );
                }
            }
        }
        for (i, image) in d.additional_images.iter().enumerate() {
            refuse(
                !image.platforms.is_empty(),
                format!("delete.additionalImages[{i}].platforms"),
                "a delete removes the whole image; remove platforms",
            );
        }
        self.err(problems)
    }

    /// The images of `mirror.additionalImages`, resolved. Call [`Self::validate`] first;
    /// an invalid name is still reported here, with its position.
    pub fn additional_images(&self) -> Result<Vec<ImageSpec>, ConfigError> {
        let Some(m) = &self.config.mirror else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, image) in m.additional_images.iter().enumerate() {
            match image.name.parse::<ImageRef>() {
                Ok(source) => out.push(ImageSpec {
                    source: source.with_default_tag(),
                    name: image.name.clone(),
                    target_repo: image.target_repo.clone(),
                    target_tag: image.target_tag.clone(),
                    kind: airlock_imageset::ImageKind::Generic,
                    subject: None,
                    platforms: platform_filter(&image.platforms),
                }),
                Err(e) => problems.push(
                    self.problem(format!("mirror.additionalImages[{i}].name"), e.to_string()),
                ),
            }
        }
        self.err(problems)?;
        Ok(out)
    }

    /// `mirror.blockedImages`, compiled (the configuration was validated, so every
    /// pattern compiles).
    pub fn blocked_images(&self) -> BlockList {
        let rules = self
            .config
            .mirror
            .iter()
            .flat_map(|m| m.blocked_images.iter().enumerate())
            .filter_map(|(i, b)| {
                regex::Regex::new(&b.name).ok().map(|regex| BlockRule {
                    field: format!("mirror.blockedImages[{i}]"),
                    pattern: b.name.clone(),
                    even_when_required: b.even_when_required,
                    regex,
                })
            })
            .collect();
        BlockList(rules)
    }

    /// `mirror.blockedBaseImages`: each base with its field and `evenWhenRequired`
    /// (the configuration was validated, so every name parses). A base named
    /// without tag or digest means `latest`, as everywhere else.
    pub fn blocked_base_images(&self) -> Vec<BaseRule> {
        self.config
            .mirror
            .iter()
            .flat_map(|m| m.blocked_base_images.iter().enumerate())
            .filter_map(|(i, b)| {
                let base: ImageRef = b.name.parse().ok()?;
                Some(BaseRule {
                    field: format!("mirror.blockedBaseImages[{i}]"),
                    image: base.with_default_tag(),
                    even_when_required: b.even_when_required,
                })
            })
            .collect()
    }

    /// `archiveSize` in bytes, when set to more than zero (oc-mirror treats 0 as unset).
    pub fn archive_size(&self) -> Option<ByteSize> {
        self.config
            .archive_size
            .filter(|s| *s > 0)
            .and_then(|s| ByteSize::gib(s as u64))
    }

    /// `storageConfig.registry`: the image that keeps a copy of the workspace state,
    /// (with `latest` as tag when none is given, as oc-mirror does) and whether to skip
    /// TLS verification for it. Call [`Self::validate`] first.
    pub fn storage_registry(&self) -> Option<(ImageRef, bool)> {
        let r = self.config.storage_config.as_ref()?.registry.as_ref()?;
        let image = r.image_url.parse::<ImageRef>().ok()?.with_default_tag();
        Some((image, r.skip_tls))
    }

    /// `storageConfig.local.path`, where oc-mirror v1 users keep their workspace.
    pub fn local_storage_path(&self) -> Option<PathBuf> {
        // Relative paths are relative to the working directory, as in oc-mirror.
        let path = &self.config.storage_config.as_ref()?.local.as_ref()?.path;
        Some(PathBuf::from(path))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[cfg(test)]
mod tests;
