//! Fetching update graphs from the OpenShift update service (Cincinnati).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_registry::RegistryError;

use crate::graph::Graph;
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
        let err = |message: String| SelectError::Graph {
            channel: channel.to_string(),
            arch: arch.to_string(),
            message,
        };
        let base = self.base(kind);
        let mut url = reqwest::Url::parse(base)
            .map_err(|e| err(format!("update service URL {base:?} is not a URL: {e}")))?;
        if url.scheme() == "file" {
            return from_file(&url, channel, arch).map_err(err);
        }
        url.query_pairs_mut()
            .append_pair("channel", channel)
            .append_pair("arch", arch);
        tracing::debug!(%url, "fetching update graph");
        let resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| err(format!("GET {url}: {e}; check the network or set --update-url / {UPDATE_URL_ENV} to a reachable update service")))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_GRAPH_BYTES)
            .await
            .map_err(|e| err(format!("GET {url}: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(err(format!("GET {url}: HTTP {status}: {text}")));
        }
        Graph::parse(&body, url.as_str()).map_err(|e| err(e.to_string()))
    }
}

/// A graph from disk, for sites that fetch graphs separately (oc-mirror's
/// `UPDATE_URL_OVERRIDE=file://…`): a file is the graph of every channel and
/// architecture asked for; a directory holds one per channel and architecture,
/// `CHANNEL-ARCH.json`, as the update service answers for them.
fn from_file(url: &reqwest::Url, channel: &str, arch: &str) -> Result<Graph, String> {
    let path = url
        .to_file_path()
        .map_err(|()| format!("{url}: expected file:///ABSOLUTE/PATH"))?;
    let file = if path.is_dir() {
        path.join(format!("{channel}-{arch}.json"))
    } else {
        path
    };
    let size = std::fs::metadata(&file)
        .map_err(|e| {
            format!(
                "{}: {e}; save the update service's answer for channel {channel}, architecture {arch} there",
                file.display()
            )
        })?
        .len();
    if size > MAX_GRAPH_BYTES as u64 {
        return Err(format!(
            "{}: {size} bytes, more than the {MAX_GRAPH_BYTES}-byte bound for a graph",
            file.display()
        ));
    }
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    tracing::info!(file = %file.display(), channel, arch, "update graph read from a file");
    Graph::parse(&bytes, &file.display().to_string()).map_err(|e| e.to_string())
}

/// Reads a response body, refusing more than `limit` bytes.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the response is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
}
