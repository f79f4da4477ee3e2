//! Where charts come from: classic repositories (`index.yaml`), OCI registries
//! (`oci://`), and local archives or directories.

use std::path::Path;
use std::time::Duration;

use airlock_config::platform_filter;
use airlock_config::schema::{Helm, HelmChart};
use airlock_oci::digest::{Digest, DigestError};
use airlock_oci::reference::{ImageRef, ReferenceError};
use airlock_registry::auth::AuthFileError;
use airlock_registry::{Pool, RegistryError};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::Deserialize;

use super::chart::{Chart, ChartError};
use super::render::ImagePath;
use super::template::funcs::semver_compare;
use crate::http::{BodyError, SendError};
use crate::reads::Reads;

/// The largest chart archive or repository index read.
const MAX_DOWNLOAD: usize = 64 << 20;

/// Media type of a chart's config in an OCI registry.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.helm.config.v1+json";
/// Media type of the chart archive layer in an OCI registry.
pub const CHART_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// The layer type of charts pushed by Helm before 3.7 (`helm chart save`).
const LEGACY_CHART_MEDIA_TYPE: &str = "application/tar+gzip";

/// Why a chart could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A repository, its index or an archive could not be fetched.
    #[error("{entry}: {url}: {source}")]
    Fetch {
        /// The configuration entry (`mirror.helm.repositories[0]`).
        entry: String,
        /// What was fetched.
        url: String,
        /// What went wrong (boxed: the error stays small).
        source: Box<FetchCause>,
    },
    /// What was fetched is not what the index or manifest says it is.
    #[error("{entry}: {url}: {message}")]
    Corrupt {
        /// The configuration entry.
        entry: String,
        /// What was fetched.
        url: String,
        /// What differs.
        message: String,
    },
    /// The repository has no chart or version as asked.
    #[error("{entry}: {message}")]
    NotFound {
        /// The configuration entry.
        entry: String,
        /// What is missing and what there is.
        message: String,
    },
    /// The archive is not a chart Airlock can read.
    #[error("{entry}: {source}")]
    Chart {
        /// The configuration entry.
        entry: String,
        /// What is wrong with it.
        source: ChartError,
    },
}

/// Why a chart, an index or a repository could not be fetched. Typed, so a
/// registry's or the network's own error stays the source in the log.
#[derive(Debug, thiserror::Error)]
pub enum FetchCause {
    /// A repository or archive URL does not parse.
    #[error("not a URL: {0}")]
    Url(#[from] url::ParseError),
    /// An `oci://` location is not an image reference.
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    /// The registry refused or failed.
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// The auth file holding the repository's credentials is unreadable.
    #[error("{0}")]
    AuthFile(#[from] AuthFileError),
    /// The request did not get an answer.
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    /// The repository answered with an error status.
    #[error("HTTP {status}{hint}")]
    Status {
        /// The status.
        status: reqwest::StatusCode,
        /// What to check for this status (`; check the repository URL`).
        hint: &'static str,
    },
    /// The body broke off or was too large.
    #[error("{0}")]
    Body(#[from] BodyError),
    /// The artifact's manifest is not JSON.
    #[error("manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    /// The artifact has no chart layer.
    #[error("not a Helm chart: the manifest has no layer of type {CHART_MEDIA_TYPE}")]
    NotAChart,
    /// The chart layer's digest does not parse.
    #[error("chart layer digest: {0}")]
    LayerDigest(#[source] DigestError),
    /// The chart layer is not what its digest says.
    #[error("the chart layer does not match its digest {0}")]
    LayerMismatch(Digest),
    /// The repository's `index.yaml` is not an index.
    #[error("not a chart repository index: {0}")]
    Index(#[source] serde_yaml_ng::Error),
    /// A `local` entry's file could not be read.
    #[error("{0}; give the path of a packaged chart (.tgz) or a chart directory")]
    Local(#[source] std::io::Error),
}

/// Where a chart came from, as recorded in the imageset.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A classic repository's archive at this URL.
    Http(String),
    /// An OCI registry's artifact, pulled again (byte-exact) by the collector.
    Oci(ImageRef),
    /// A file or directory on the connected side.
    Local(String),
}

/// A chart fetched and read.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The configuration entry it answers (`mirror.helm.local[0]`).
    pub entry: String,
    /// The chart.
    pub chart: Chart,
    /// The packaged archive, as it will be published.
    pub archive: Bytes,
    /// Where it came from.
    pub origin: Origin,
    /// The entry's `imagePaths`.
    pub image_paths: Vec<ImagePath>,
    /// The entry's `platforms`, for the chart's images (empty: every platform).
    pub platforms: Vec<String>,
}

/// `index.yaml` of a classic repository.
#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    entries: std::collections::BTreeMap<String, Vec<IndexEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
struct IndexEntry {
    name: String,
    version: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Fetches every chart `helm` names, in the order of the configuration.
pub async fn fetch_all(helm: &Helm, pool: &Pool) -> Result<Vec<Fetched>, SourceError> {
    let mut out = Vec::new();
    for (i, c) in helm.local.iter().enumerate() {
        out.push(local(&format!("mirror.helm.local[{i}]"), c)?);
    }
    for (i, repo) in helm.repositories.iter().enumerate() {
        let entry = format!("mirror.helm.repositories[{i}]");
        if let Some(path) = repo.url.strip_prefix("oci://") {
            for (j, c) in repo.charts.iter().enumerate() {
                out.push(oci(&format!("{entry}.charts[{j}]"), path, c, pool).await?);
            }
        } else {
            out.extend(classic(&entry, &repo.url, &repo.charts, pool).await?);
        }
    }
    Ok(out)
}

fn paths(c: &HelmChart) -> Vec<ImagePath> {
    // The configuration was validated: every path parses.
    c.image_paths
        .iter()
        .filter_map(|p| ImagePath::parse(p).ok())
        .collect()
}

fn chart_err(entry: &str) -> impl Fn(ChartError) -> SourceError + '_ {
    move |source| SourceError::Chart {
        entry: entry.to_string(),
        source,
    }
}

/// A `local` entry: a packaged chart, or a directory packaged here.
fn local(entry: &str, c: &HelmChart) -> Result<Fetched, SourceError> {
    let path = c.path.as_deref().unwrap_or_default();
    let p = Path::new(path);
    let (chart, archive) = if p.is_dir() {
        let (chart, archive) = Chart::package_dir(p).map_err(chart_err(entry))?;
        (chart, Bytes::from(archive))
    } else {
        let bytes = std::fs::read(p).map_err(|e| SourceError::Fetch {
            entry: entry.to_string(),
            url: path.to_string(),
            source: Box::new(FetchCause::Local(e)),
        })?;
        let chart = Chart::from_archive(&bytes, path).map_err(chart_err(entry))?;
        (chart, Bytes::from(bytes))
    };
    if let Some(v) = &c.version
        && *v != chart.metadata.version
    {
        return Err(SourceError::NotFound {
            entry: entry.to_string(),
            message: format!(
                "version {v:?} was asked for, but the chart at {path} is version {}",
                chart.metadata.version
            ),
        });
    }
    Ok(Fetched {
        entry: entry.to_string(),
        chart,
        archive,
        origin: Origin::Local(path.to_string()),
        image_paths: paths(c),
        platforms: platform_filter(&c.platforms),
    })
}

/// An `oci://` chart: the artifact's manifest, and its chart layer.
async fn oci(entry: &str, path: &str, c: &HelmChart, pool: &Pool) -> Result<Fetched, SourceError> {
    let version = c.version.as_deref().unwrap_or_default();
    let text = format!(
        "{}/{}:{}",
        path.trim_end_matches('/'),
        c.name,
        oci_tag(version)
    );
    let fetch_err = |cause: FetchCause| SourceError::Fetch {
        entry: entry.to_string(),
        url: format!("oci://{text}"),
        source: Box::new(cause),
    };
    let reference: ImageRef = text.parse().map_err(|e| fetch_err(FetchCause::from(e)))?;
    let client = pool
        .client(reference.registry())
        .await
        .map_err(|e| fetch_err(e.into()))?;
    let reads = Reads::new();
    let manifest_reference = reference.manifest_reference();
    let manifest = reads
        .run("manifest read", &text, || {
            client.get_manifest(reference.repository(), &manifest_reference)
        })
        .await
        .map_err(|e| fetch_err(e.into()))?;
    // The artifact the collector copies is the one rendered here, even if the
    // tag moves meanwhile.
    let pinned: ImageRef = format!("{text}@{}", manifest.digest)
        .parse()
        .map_err(|e: ReferenceError| fetch_err(e.into()))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&manifest.bytes).map_err(|e| fetch_err(FetchCause::Manifest(e)))?;
    let layer = doc["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| {
            matches!(
                l["mediaType"].as_str(),
                Some(CHART_MEDIA_TYPE | LEGACY_CHART_MEDIA_TYPE)
            )
        })
        .ok_or_else(|| fetch_err(FetchCause::NotAChart))?;
    let digest: Digest = layer["digest"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| fetch_err(FetchCause::LayerDigest(e)))?;
    let of = format!("{}@{digest}", reference.name());
    let stream = reads
        .run("chart read", &of, || {
            client.blob_stream(reference.repository(), &digest)
        })
        .await
        .map_err(|e| fetch_err(e.into()))?;
    let bytes = read_stream(stream).await.map_err(fetch_err)?;
    if Digest::of(&bytes) != digest {
        return Err(fetch_err(FetchCause::LayerMismatch(digest)));
    }
    let chart = Chart::from_archive(&bytes, &format!("oci://{text}")).map_err(chart_err(entry))?;
    Ok(Fetched {
        entry: entry.to_string(),
        chart,
        archive: bytes,
        origin: Origin::Oci(pinned),
        image_paths: paths(c),
        platforms: platform_filter(&c.platforms),
    })
}

async fn read_stream(
    mut stream: futures::stream::BoxStream<'static, Result<Bytes, RegistryError>>,
) -> Result<Bytes, FetchCause> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        if out.len() + chunk.len() > MAX_DOWNLOAD {
            return Err(BodyError::TooLarge {
                limit: MAX_DOWNLOAD,
            }
            .into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The tag of a chart version in an OCI registry: `+` is not allowed in tags,
/// and Helm writes it as `_`.
pub fn oci_tag(version: &str) -> String {
    version.replace('+', "_")
}

/// A classic repository: its index, then each chart asked for (or every
/// version of every application chart when none is named, as oc-mirror does).
async fn classic(
    entry: &str,
    url: &str,
    charts: &[HelmChart],
    pool: &Pool,
) -> Result<Vec<Fetched>, SourceError> {
    let base = reqwest::Url::parse(&format!("{}/", url.trim_end_matches('/'))).map_err(|e| {
        SourceError::Fetch {
            entry: entry.to_string(),
            url: url.to_string(),
            source: Box::new(e.into()),
        }
    })?;
    let index_url = base.join("index.yaml").expect("a relative path joins");
    let http = Http::new(entry, &base, pool)?;
    let index_bytes = http.get(&index_url).await?;
    let index: Index = serde_yaml_ng::from_slice(&index_bytes).map_err(|e| SourceError::Fetch {
        entry: entry.to_string(),
        url: index_url.to_string(),
        source: Box::new(FetchCause::Index(e)),
    })?;
    type Wanted = (String, IndexEntry, Vec<ImagePath>, Vec<String>);
    let mut wanted: Vec<Wanted> = Vec::new();
    if charts.is_empty() {
        for versions in index.entries.values() {
            for v in versions
                .iter()
                .filter(|v| v.kind.as_deref() != Some("library"))
            {
                wanted.push((entry.to_string(), v.clone(), Vec::new(), Vec::new()));
            }
        }
    } else {
        for (j, c) in charts.iter().enumerate() {
            let at = format!("{entry}.charts[{j}]");
            let v = pick(&index, c).map_err(|message| SourceError::NotFound {
                entry: at.clone(),
                message: format!("{message} in {index_url}"),
            })?;
            wanted.push((at, v, paths(c), platform_filter(&c.platforms)));
        }
    }
    let mut out = Vec::new();
    for (at, v, image_paths, platforms) in wanted {
        let raw = v.urls.first().ok_or_else(|| SourceError::NotFound {
            entry: at.clone(),
            message: format!("{} {} has no urls in {index_url}", v.name, v.version),
        })?;
        let archive_url = index_url.join(raw).map_err(|e| SourceError::Fetch {
            entry: at.clone(),
            url: raw.clone(),
            source: Box::new(e.into()),
        })?;
        let bytes = http.get(&archive_url).await?;
        if let Some(want) = v.digest.as_deref().filter(|d| !d.is_empty()) {
            let got = Digest::of(&bytes);
            if got.hex() != want.trim_start_matches("sha256:") {
                return Err(SourceError::Corrupt {
                    entry: at,
                    url: archive_url.to_string(),
                    message: format!(
                        "the archive's sha256 is {}, the index says {want}; the repository or a proxy changed it",
                        got.hex()
                    ),
                });
            }
        }
        let chart = Chart::from_archive(&bytes, archive_url.as_str()).map_err(chart_err(&at))?;
        if chart.metadata.name != v.name || chart.metadata.version != v.version {
            return Err(SourceError::NotFound {
                entry: at,
                message: format!(
                    "{archive_url} holds {} {}, not {} {} as the index says",
                    chart.metadata.name, chart.metadata.version, v.name, v.version
                ),
            });
        }
        out.push(Fetched {
            entry: at,
            chart,
            archive: Bytes::from(bytes),
            origin: Origin::Http(archive_url.to_string()),
            image_paths,
            platforms,
        });
    }
    Ok(out)
}

/// The index entry of chart `c`: its `version` exactly or as a constraint
/// (`~6.5`), else the newest release that is not a prerelease.
fn pick(index: &Index, c: &HelmChart) -> Result<IndexEntry, String> {
    let versions = index
        .entries
        .get(&c.name)
        .ok_or_else(|| format!("no chart {:?}", c.name))?;
    let mut candidates: Vec<(semver::Version, &IndexEntry)> = versions
        .iter()
        .filter_map(|v| {
            semver::Version::parse(v.version.trim_start_matches('v'))
                .ok()
                .map(|s| (s, v))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0));
    let listed = || {
        candidates
            .iter()
            .take(10)
            .map(|(_, v)| v.version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match &c.version {
        Some(want) => versions.iter().find(|v| v.version == *want).or_else(|| {
            candidates
                .iter()
                .find(|(_, v)| semver_compare(want, &v.version).unwrap_or(false))
                .map(|(_, v)| *v)
        }),
        None => candidates
            .iter()
            .find(|(s, _)| s.pre.is_empty())
            .map(|(_, v)| *v),
    };
    found.cloned().ok_or_else(|| match &c.version {
        Some(want) => format!(
            "chart {:?} has no version {want:?} (newest: {})",
            c.name,
            listed()
        ),
        None => format!(
            "chart {:?} has no release version (it has: {})",
            c.name,
            listed()
        ),
    })
}

/// `host[:port]` of `url`, as auth files and image names write a registry.
pub fn host_port(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(
        url.port()
            .map_or(host.to_string(), |p| format!("{host}:{p}")),
    )
}

/// An HTTP client for one repository, with the credentials the auth file holds
/// for its host (Helm's `--username`/`--password` for `helm repo add`).
struct Http {
    entry: String,
    client: reqwest::Client,
    /// The repository's URL: credentials go to its origin only.
    base: reqwest::Url,
    credentials: Option<airlock_registry::auth::Credentials>,
}

impl Http {
    fn new(entry: &str, base: &reqwest::Url, pool: &Pool) -> Result<Http, SourceError> {
        let host = host_port(base).unwrap_or_default();
        let err = |cause: FetchCause| SourceError::Fetch {
            entry: entry.to_string(),
            url: base.to_string(),
            source: Box::new(cause),
        };
        let client = airlock_registry::http_client(base.as_str(), Duration::from_secs(600))
            .map_err(|e| err(e.into()))?;
        let credentials = pool
            .options()
            .auth
            .lookup(&host, "")
            .map_err(|e| err(e.into()))?;
        Ok(Http {
            entry: entry.to_string(),
            client,
            base: base.clone(),
            credentials,
        })
    }

    async fn get(&self, url: &reqwest::Url) -> Result<Vec<u8>, SourceError> {
        let err = |cause: FetchCause| SourceError::Fetch {
            entry: self.entry.clone(),
            url: url.to_string(),
            source: Box::new(cause),
        };
        let request = || {
            let req = self.client.get(url.clone());
            // Credentials go to the repository's own origin (scheme, host and
            // port) only, as Helm does unless told `--pass-credentials`: an
            // index may list archives anywhere.
            match (&self.credentials, url.origin() == self.base.origin()) {
                (Some(c), true) => req.basic_auth(&c.username, Some(&c.password)),
                _ => req,
            }
        };
        let fetched =
            crate::http::send("chart repository read", url.as_str(), MAX_DOWNLOAD, request).await;
        let (status, body) = fetched.map_err(|e| {
            err(match e {
                SendError::Request(e) => e.into(),
                SendError::Body(e) => e.into(),
            })
        })?;
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => {
                    "; put the repository's user and password in the auth file under its host"
                }
                404 => "; check the repository URL",
                _ => "",
            };
            return Err(err(FetchCause::Status { status, hint }));
        }
        Ok(body)
    }
}
