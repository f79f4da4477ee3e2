//! A local OpenShift update service: serves update graphs by channel and
//! architecture, as `GET <url>?channel=C&arch=A` does upstream, plus any other file
//! by path (release signatures, graph data). Unknown channels get an empty graph,
//! as the real service answers. The graphs are real fixture documents or ones a test
//! builds; the server only routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;

/// Content the server holds.
#[derive(Default)]
struct Content {
    graphs: HashMap<(String, String), Vec<u8>>,
    files: HashMap<String, Vec<u8>>,
    requests: Vec<String>,
    /// Requests whose path contains the first field get its status instead
    /// (0: their content, broken off halfway), as many times as the third
    /// says.
    faults: Vec<(String, u16, u32)>,
    /// Faults answered so far.
    failed: u32,
}

/// A running update service on a free loopback port; stops when dropped.
pub struct UpdateService {
    /// Serving until dropped.
    _server: crate::http::Server,
    content: Arc<Mutex<Content>>,
    port: u16,
}

impl UpdateService {
    /// Starts an empty service.
    pub fn start() -> Result<Self> {
        let content = Arc::new(Mutex::new(Content::default()));
        let c = content.clone();
        let server = crate::http::Server::start(move |req| {
            let accept = req.header("Accept").unwrap_or_default();
            let mut c = c.lock().expect("not poisoned");
            c.requests.push(format!("{} accept={accept}", req.target));
            let path = req.target.split('?').next().unwrap_or_default().to_string();
            let fault = c
                .faults
                .iter_mut()
                .find(|(part, _, left)| *left > 0 && path.contains(part.as_str()));
            let mut broken = false;
            if let Some((_, status, left)) = fault {
                *left -= 1;
                let status = *status;
                c.failed += 1;
                if status != 0 {
                    return crate::http::Reply::new(status, None, b"try again later".to_vec());
                }
                broken = true;
            }
            match route(&c, &req.target) {
                Some(b) if broken => crate::http::Reply {
                    broken,
                    ..crate::http::Reply::new(200, None, b)
                },
                Some(b) => crate::http::Reply::new(200, None, b),
                None => crate::http::Reply::new(404, None, b"not found".to_vec()),
            }
        })?;
        let port = server.port();
        Ok(UpdateService {
            _server: server,
            content,
            port,
        })
    }

    /// The graph URL to give Airlock (`--update-url`, `UPDATE_URL_OVERRIDE`).
    pub fn graph_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/upgrades_info/v1/graph", self.port)
    }

    /// The base URL of served files.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serves `graph` for `channel` and `arch` (replacing any earlier one).
    pub fn set_graph(&self, channel: &str, arch: &str, graph: Vec<u8>) {
        self.content
            .lock()
            .expect("not poisoned")
            .graphs
            .insert((channel.into(), arch.into()), graph);
    }

    /// Serves `bytes` at `path` (starting with `/`).
    pub fn set_file(&self, path: &str, bytes: Vec<u8>) {
        self.content
            .lock()
            .expect("not poisoned")
            .files
            .insert(path.into(), bytes);
    }

    /// Answers the next `times` requests whose path contains `part` with
    /// `status` (a 503 while the service is redeployed, a 429 of its rate
    /// limit) instead of their content.
    pub fn fail_next(&self, part: &str, status: u16, times: u32) {
        self.content
            .lock()
            .expect("not poisoned")
            .faults
            .push((part.into(), status, times));
    }

    /// Breaks the connection off halfway through the answer to the next
    /// `times` requests whose path contains `part`.
    pub fn break_next(&self, part: &str, times: u32) {
        self.fail_next(part, 0, times);
    }

    /// How many requests got a fault of [`UpdateService::fail_next`] or
    /// [`UpdateService::break_next`].
    pub fn failed(&self) -> u32 {
        self.content.lock().expect("not poisoned").failed
    }

    /// Every request so far: URL and Accept header.
    pub fn requests(&self) -> Vec<String> {
        self.content.lock().expect("not poisoned").requests.clone()
    }
}

fn route(c: &Content, url: &str) -> Option<Vec<u8>> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if path.ends_with("/graph") {
        let mut channel = "";
        let mut arch = "amd64";
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("channel", v)) => channel = v,
                Some(("arch", v)) => arch = v,
                _ => {}
            }
        }
        return Some(
            c.graphs
                .get(&(channel.to_string(), arch.to_string()))
                .cloned()
                .unwrap_or_else(|| {
                    br#"{"version":1,"nodes":[],"edges":[],"conditionalEdges":[]}"#.to_vec()
                }),
        );
    }
    c.files.get(path).cloned()
}
