//! Small documents over plain HTTP(S): update graphs, the graph data tarball,
//! release signatures and chart repositories. Each is read whole into memory, so
//! every read is bounded; a wrong URL cannot make `create` hold gigabytes. Each
//! request waits out a 408, 429 or 5xx, or a connection that broke before the
//! answer was whole, and is sent again ([`send`]): a service being redeployed
//! or rate limiting should not end a run that asking again completes.

use airlock_registry::RegistryError;
use airlock_registry::retry::{self, Limit, Retryable, Verdict};

use crate::reads::Reads;

/// An attempt that did not end in a document to judge.
enum Failed {
    /// The server answered 408, 429 or 5xx: asked to wait, or failed in passing.
    Answer {
        status: reqwest::StatusCode,
        retry_after: Option<std::time::Duration>,
        body: Vec<u8>,
    },
    /// No answer.
    Transport(reqwest::Error),
    /// The answer broke off, or was too large.
    Body(BodyError),
}

/// Errors that asking again cannot mend: nothing listens there (or the URL
/// is wrong), or the request's whole time ran out, which four times over
/// would stall a run for as long again each.
fn final_transport(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_builder() || e.is_redirect() || e.is_timeout()
}

impl Retryable for Failed {
    fn verdict(&self) -> Verdict {
        match self {
            Failed::Answer { retry_after, .. } => Verdict::Retry {
                retry_after: *retry_after,
            },
            Failed::Transport(e) | Failed::Body(BodyError::Read(e)) if !final_transport(e) => {
                Verdict::Retry { retry_after: None }
            }
            _ => Verdict::Final,
        }
    }

    fn gave_up(self, _: u32, _: Limit) -> Self {
        self
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Answer { status, .. } => write!(f, "HTTP {status}"),
            Failed::Transport(e) => write!(f, "{e}"),
            Failed::Body(e) => write!(f, "{e}"),
        }
    }
}

/// Why [`send`] got no document.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server did not answer.
    #[error("{0}")]
    Request(reqwest::Error),
    /// The answer broke off or was too large.
    #[error("{0}")]
    Body(#[from] BodyError),
}

/// Sends the request `build` makes and reads its answer whole (at most
/// `limit` bytes), again while the server answers 408, 429 or 5xx (after its
/// `Retry-After`, at most a minute) or the connection breaks before the
/// answer is whole: four attempts. Returns the last answer's status and body,
/// whatever the status, for the caller to judge; `what` and `url` name the
/// request in the log.
pub async fn send(
    what: &'static str,
    url: &str,
    limit: usize,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Vec<u8>), SendError> {
    let attempt = || async {
        let resp = build().send().await.map_err(Failed::Transport)?;
        let status = resp.status();
        let retry_after = retry::retry_after(&resp);
        let body = read_limited(resp, limit).await.map_err(Failed::Body)?;
        if retry::transient(status.as_u16()) {
            return Err(Failed::Answer {
                status,
                retry_after,
                body,
            });
        }
        Ok((status, body))
    };
    match Reads::new().run(what, url, attempt).await {
        Ok(answer) => Ok(answer),
        Err(Failed::Answer { status, body, .. }) => Ok((status, body)),
        Err(Failed::Transport(e)) => Err(SendError::Request(e)),
        Err(Failed::Body(e)) => Err(SendError::Body(e)),
    }
}

/// Why a response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection broke off.
    #[error("{0}")]
    Read(#[from] reqwest::Error),
    /// More than the caller's bound.
    #[error("the response is larger than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a GET of a small document failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// No HTTP client for the URL (a bad proxy setting).
    #[error("{0}")]
    Client(#[from] RegistryError),
    /// The server did not answer.
    #[error("{source}; {hint}")]
    Request {
        /// Why.
        source: reqwest::Error,
        /// What to check (the flag that names another server).
        hint: &'static str,
    },
    /// The server answered with an error.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The body broke off or was too large.
    #[error("{0}")]
    Body(#[from] BodyError),
}

/// GETs `url` whole, at most `limit` bytes (`what` names it in the log);
/// `hint` says what to check when the server does not answer.
pub async fn get(
    client: &reqwest::Client,
    what: &'static str,
    url: &str,
    limit: usize,
    hint: &'static str,
) -> Result<Vec<u8>, GetError> {
    let (status, body) = send(what, url, limit, || client.get(url))
        .await
        .map_err(|e| match e {
            SendError::Request(source) => GetError::Request { source, hint },
            SendError::Body(e) => GetError::Body(e),
        })?;
    if !status.is_success() {
        return Err(GetError::Status(status));
    }
    Ok(body)
}
