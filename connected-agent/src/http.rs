//! Small documents over plain HTTP(S): update graphs, the graph data tarball,
//! release signatures and chart repositories. Each is read whole into memory, so
//! every read is bounded; a wrong URL cannot make `create` hold gigabytes. Each
//! request waits out a 429 or 5xx, or a connection that broke, and is sent
//! again ([`send`]): a service being redeployed or rate limiting should not
//! end a run that asking again completes.

use std::time::SystemTime;

use airlock_registry::RegistryError;
use airlock_registry::retry::{Limit, Retryable, Verdict, parse_retry_after};

use crate::reads::Reads;

/// An attempt that did not get a successful answer.
enum Failed {
    /// The server answered with an error status.
    Answer(reqwest::Response),
    /// No answer.
    Transport(reqwest::Error),
}

impl Retryable for Failed {
    fn verdict(&self) -> Verdict {
        match self {
            Failed::Answer(r) if matches!(r.status().as_u16(), 408 | 429 | 500..=599) => {
                let retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                Verdict::Retry { retry_after }
            }
            // Nothing listens there (or the URL is wrong): asking again
            // gets the same.
            Failed::Transport(e) if !(e.is_connect() || e.is_builder() || e.is_redirect()) => {
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
            Failed::Answer(r) => write!(f, "HTTP {}", r.status()),
            Failed::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// Sends the request `build` makes, again while the server answers 408, 429
/// or 5xx (after its `Retry-After`, at most a minute) or the connection
/// breaks: four attempts. Returns the last answer, whatever its status, for
/// the caller to judge; `what` and `url` name the request in the log.
pub async fn send(
    what: &'static str,
    url: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let attempt = || async {
        match build().send().await {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) => Err(Failed::Answer(r)),
            Err(e) => Err(Failed::Transport(e)),
        }
    };
    match Reads::new().run(what, url, attempt).await {
        Ok(r) | Err(Failed::Answer(r)) => Ok(r),
        Err(Failed::Transport(e)) => Err(e),
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
pub async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
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
    let resp = send(what, url, || client.get(url))
        .await
        .map_err(|source| GetError::Request { source, hint })?;
    if !resp.status().is_success() {
        return Err(GetError::Status(resp.status()));
    }
    Ok(read_limited(resp, limit).await?)
}
