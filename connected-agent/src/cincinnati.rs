//! Fetching update graphs from the OpenShift update service (Cincinnati).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_registry::RegistryError;

use crate::graph::{Graph, GraphError};
use crate::http::{BodyError, SendError};
use crate::select::{ChannelType, GraphSource, SelectError};

/// Red Hat's update service, for `ocp` channels.
pub const OCP_UPDATE_URL: &str = "https://api.openshift.com/api/upgrades_info/v1/graph";
/// The OKD update service, for `okd` channels.
pub const OKD_UPDATE_URL: &str = "https://origin-release.ci.openshift.org/graph";
/// The environment variable oc-mirror users set to use their own update service.
pub const UPDATE_URL_ENV: &str = "UPDATE_URL_OVERRIDE";

/// Graphs larger than this are refused: the real ones are a few hundred KiB.
const MAX_GRAPH_BYTES: usize = 64 << 20;

/// An update service client that fetches each (channel, architecture) graph once.
#[derive(Debug)]
pub struct UpdateService {
    client: reqwest::Client,
    /// Replaces both upstream URLs (`--update-url` or `UPDATE_URL_OVERRIDE`).
    url_override: Option<String>,
    cache: Mutex<HashMap<(ChannelType, String, String), Arc<Graph>>>,
}

impl UpdateService {
    /// A client; `url_override` (else `UPDATE_URL_OVERRIDE`) replaces the upstream
    /// services for every channel type.
    pub fn new(url_override: Option<String>) -> Result<UpdateService, RegistryError> {
        let url_override =
            url_override.or_else(|| std::env::var(UPDATE_URL_ENV).ok().filter(|v| !v.is_empty()));
        if let Some(u) = &url_override {
            tracing::info!(url = %u, "using the update service override");
        }
        let client = airlock_registry::http_client(
            url_override.as_deref().unwrap_or(OCP_UPDATE_URL),
            Duration::from_secs(300),
        )?;
        Ok(UpdateService {
            client,
            url_override,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, kind: ChannelType) -> &str {
        match (&self.url_override, kind) {
            (Some(u), _) => u,
            (None, ChannelType::Ocp) => OCP_UPDATE_URL,
            (None, ChannelType::Okd) => OKD_UPDATE_URL,
        }
    }

    async fn fetch(
        &self,
        kind: ChannelType,
        channel: &str,
        arch: &str,
    ) -> Result<Graph, SelectError> {
        let err = |source: GraphFetchError| SelectError::Fetch {
            channel: channel.to_string(),
            arch: arch.to_string(),
            source: Box::new(source),
        };
        let base = self.base(kind);
        let mut url = reqwest::Url::parse(base).map_err(|source| {
            err(GraphFetchError::BadUrl {
                url: base.to_string(),
                source,
            })
        })?;
        if url.scheme() == "file" {
            return from_file(&url, channel, arch).map_err(err);
        }
        url.query_pairs_mut()
            .append_pair("channel", channel)
            .append_pair("arch", arch);
        tracing::debug!(%url, "fetching update graph");
        let fetched = crate::http::send("update graph read", url.as_str(), MAX_GRAPH_BYTES, || {
            self.client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
        })
        .await;
        let (status, body) = fetched.map_err(|e| {
            err(match e {
                SendError::Request(source) => GraphFetchError::Request {
                    url: url.to_string(),
                    source,
                },
                SendError::Body(source) => GraphFetchError::Body {
                    url: url.to_string(),
                    source,
                },
            })
        })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(err(GraphFetchError::Status {
                url: url.to_string(),
                status,
                text,
            }));
        }
        Graph::parse(&body, url.as_str()).map_err(|e| err(e.into()))
    }
}

/// Why an update graph could not be had. The network's and the file system's
/// own errors stay typed beneath it.
#[derive(Debug, thiserror::Error)]
pub enum GraphFetchError {
    /// `--update-url` or `UPDATE_URL_OVERRIDE` is not a URL.
    #[error("update service URL {url:?} is not a URL: {source}")]
    BadUrl {
        /// As given.
        url: String,
        /// Why it does not parse.
        source: url::ParseError,
    },
    /// A `file:` URL that is not an absolute path.
    #[error("{url}: expected file:///ABSOLUTE/PATH")]
    NotAFilePath {
        /// As given.
        url: String,
    },
    /// The file for this channel and architecture is not there.
    #[error(
        "{}: {source}; save the update service's answer for channel {channel}, architecture {arch} there",
        path.display()
    )]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// The channel.
        channel: String,
        /// The architecture.
        arch: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is larger than any real graph.
    #[error("{}: {size} bytes, more than the {MAX_GRAPH_BYTES}-byte bound for a graph", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The update service did not answer.
    #[error(
        "GET {url}: {source}; check the network or set --update-url / {UPDATE_URL_ENV} to a reachable update service"
    )]
    Request {
        /// The graph's URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The answer broke off or was too large.
    #[error("GET {url}: {source}")]
    Body {
        /// The graph's URL.
        url: String,
        /// Why.
        source: BodyError,
    },
    /// The update service answered with an error.
    #[error("GET {url}: HTTP {status}: {text}")]
    Status {
        /// The graph's URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the answer.
        text: String,
    },
    /// The answer is not an update graph.
    #[error("{0}")]
    Parse(#[from] GraphError),
}

/// A graph from disk, for sites that fetch graphs separately (oc-mirror's
/// `UPDATE_URL_OVERRIDE=file://…`): a file is the graph of every channel and
/// architecture asked for; a directory holds one per channel and architecture,
/// `CHANNEL-ARCH.json`, as the update service answers for them.
fn from_file(url: &reqwest::Url, channel: &str, arch: &str) -> Result<Graph, GraphFetchError> {
    let path = url
        .to_file_path()
        .map_err(|()| GraphFetchError::NotAFilePath {
            url: url.to_string(),
        })?;
    let file = if path.is_dir() {
        path.join(format!("{channel}-{arch}.json"))
    } else {
        path
    };
    let size = std::fs::metadata(&file)
        .map_err(|source| GraphFetchError::Missing {
            path: file.clone(),
            channel: channel.to_string(),
            arch: arch.to_string(),
            source,
        })?
        .len();
    if size > MAX_GRAPH_BYTES as u64 {
        return Err(GraphFetchError::TooLarge { path: file, size });
    }
    let bytes = std::fs::read(&file).map_err(|source| GraphFetchError::Read {
        path: file.clone(),
        source,
    })?;
    tracing::info!(file = %file.display(), channel, arch, "update graph read from a file");
    Ok(Graph::parse(&bytes, &file.display().to_string())?)
}

impl GraphSource for UpdateService {
    async fn graph(
        &self,
        kind: ChannelType,
        channel: &str,
        arch: &str,
    ) -> Result<Arc<Graph>, SelectError> {
        let key = (kind, channel.to_string(), arch.to_string());
        if let Some(g) = self.cache.lock().expect("not poisoned").get(&key) {
            return Ok(g.clone());
        }
        let g = Arc::new(self.fetch(kind, channel, arch).await?);
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(key, g.clone());
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/real/cincinnati/graphs")
    }

    /// A file serves every channel; a directory one file per channel and
    /// architecture; a missing one is named with what to put there.
    #[tokio::test]
    async fn graphs_are_read_from_file_urls() {
        let file = fixtures().join("stable-4.9_amd64_v1.json");
        let expected = Graph::parse(&std::fs::read(&file).unwrap(), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&file, dir.path().join("stable-4.9-amd64.json")).unwrap();
        let directory = reqwest::Url::from_directory_path(dir.path()).unwrap();
        for url in [
            reqwest::Url::from_file_path(&file).unwrap(),
            directory.clone(),
        ] {
            let service = UpdateService::new(Some(url.to_string())).unwrap();
            let g = service
                .graph(ChannelType::Ocp, "stable-4.9", "amd64")
                .await
                .unwrap();
            assert_eq!(g.nodes().len(), expected.nodes().len(), "{url}");
        }
        let service = UpdateService::new(Some(directory.to_string())).unwrap();
        let e = service
            .graph(ChannelType::Ocp, "stable-4.10", "amd64")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stable-4.10-amd64.json") && e.contains("save the update service's answer"),
            "{e}"
        );
    }

    /// The file system's error stays the typed source beneath the message, so a
    /// log shows the cause chain rather than one flattened line.
    #[tokio::test]
    async fn a_missing_graph_file_keeps_the_io_error_as_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let url = reqwest::Url::from_directory_path(dir.path()).unwrap();
        let service = UpdateService::new(Some(url.to_string())).unwrap();
        let e = service
            .graph(ChannelType::Ocp, "stable-4.16", "arm64")
            .await
            .unwrap_err();
        assert!(matches!(e, SelectError::Fetch { .. }), "{e:?}");
        let io = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .expect("an io::Error in the chain");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}
