//! Small documents over plain HTTP(S): update graphs, the graph data tarball,
//! release signatures and chart repositories. Each is read whole into memory, so
//! every read is bounded; a wrong URL cannot make `create` hold gigabytes.

use airlock_registry::RegistryError;

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

/// GETs `url` whole, at most `limit` bytes; `hint` says what to check when the
/// server does not answer.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
    hint: &'static str,
) -> Result<Vec<u8>, GetError> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|source| GetError::Request { source, hint })?;
    if !resp.status().is_success() {
        return Err(GetError::Status(resp.status()));
    }
    Ok(read_limited(resp, limit).await?)
}
