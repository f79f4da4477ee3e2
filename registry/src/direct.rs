//! Reads sent straight to a registry that takes no credential.
//!
//! oci-client caches an authorisation only when there is one (a token, or a
//! user and password): for a registry that asks for none, it sends `GET /v2/`
//! again before every request to find out, so every manifest, tag check,
//! referrers list and blob costs two round trips. With catalog-sized work (two
//! thousand images, six requests each) that is half of all the requests a
//! `create` makes. When the registry answered `/v2/` with 2xx to a request
//! without credentials and the auth file holds nothing for the repository,
//! there is nothing to authorise, and these reads
//! go out directly on the same HTTP client (same TLS, same proxy), checked the
//! same way: digests of manifests and blobs, errors from the status and the
//! registry's error body, a stale pooled connection sent again.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use airlock_oci::digest::{Digest, Hasher};
use airlock_oci::manifest::{ACCEPTED, MAX_MANIFEST_BYTES, ManifestError};

use crate::{
    ErrorKind, RawManifest, RegistryClient, RegistryError, STALE_CONNECTIONS, V2Answer,
    checked_manifest, response_error, transport, transport_error,
};

impl RegistryClient {
    /// Whether reads of `repository` carry no credential: the auth file names
    /// nothing for it and the registry answered `/v2/` with 2xx. Only a definite
    /// answer counts: a registry that could not be asked, or answered anything
    /// but 2xx or 401, is read through oci-client, which authorises as needed.
    pub(crate) async fn anonymous(&self, repository: &str) -> bool {
        if self.credentials_for(repository).0.is_some() {
            return false;
        }
        matches!(self.version_check().await, Some(V2Answer::Open))
    }

    /// Sends a read built by `build`, again when a pooled connection turns out
    /// to have been closed while idle; the response whatever its status.
    pub(crate) async fn direct(
        &self,
        operation: &'static str,
        target: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut tries = 0;
        loop {
            match build(&self.http).send().await {
                Ok(response) => return Ok(response),
                Err(e) => {
                    let (kind, message) = transport(&e);
                    let stale = message.contains("closed before message completed");
                    if kind == ErrorKind::Network
                        && (tries == 0 || stale)
                        && tries < STALE_CONNECTIONS
                    {
                        tries += 1;
                        continue;
                    }
                    return Err(transport_error(operation, target, &e));
                }
            }
        }
    }

    /// The target (for messages) and URL of `v2/REPOSITORY/KIND/REFERENCE`.
    pub(crate) fn v2_url(
        &self,
        repository: &str,
        kind: &str,
        reference: &str,
        operation: &'static str,
    ) -> Result<(String, reqwest::Url), RegistryError> {
        let target = self.target(repository, reference);
        let url = self.url(
            &format!("v2/{repository}/{kind}/{reference}"),
            operation,
            &target,
        )?;
        Ok((target, url))
    }

    /// Whether the manifest `reference` exists: one `HEAD`, checked against the
    /// digest asked for; a `GET` where the registry does not answer `HEAD`.
    pub(crate) async fn exists_direct(
        &self,
        repository: &str,
        reference: &str,
        operation: &'static str,
    ) -> Result<bool, RegistryError> {
        let (target, url) = self.v2_url(repository, "manifests", reference, operation)?;
        let response = self.head_response(url, operation, &target).await?;
        match response.status().as_u16() {
            405 | 501 => match self.get_manifest_direct(repository, reference).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == Some(ErrorKind::NotFound) => Ok(false),
                Err(e) => Err(e),
            },
            200..=299 => {
                let reported = reported_digest(&response);
                match (reference.parse::<Digest>(), reported) {
                    (Ok(asked), Some(reported)) if reported != asked.as_str() => {
                        Err(RegistryError::Request {
                            operation,
                            target,
                            kind: ErrorKind::Digest,
                            message: format!(
                                "asked for {asked}, the registry reported digest {reported}"
                            ),
                        })
                    }
                    _ => Ok(true),
                }
            }
            404 => Ok(false),
            _ => Err(response_error(operation, target, response).await),
        }
    }

    /// Whether the repository has blob `digest`: one `HEAD`.
    pub(crate) async fn has_blob_direct(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        const OPERATION: &str = "check blob";
        let (target, url) = self.v2_url(repository, "blobs", digest.as_str(), OPERATION)?;
        self.head(url, OPERATION, target).await
    }

    /// `HEAD url`: present (2xx), absent (404), or the registry's error.
    async fn head(
        &self,
        url: reqwest::Url,
        operation: &'static str,
        target: String,
    ) -> Result<bool, RegistryError> {
        let response = self.head_response(url, operation, &target).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(response_error(operation, target, response).await),
        }
    }

    async fn head_response(
        &self,
        url: reqwest::Url,
        operation: &'static str,
        target: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        self.direct(operation, target, |c| {
            c.head(url.clone())
                .header(reqwest::header::ACCEPT, ACCEPTED.join(", "))
        })
        .await
    }

    /// The manifest `reference`, its bytes as served, checked against the
    /// digest asked for and the digest the registry reports. A connection that
    /// breaks while the body is read is asked once more, as oci-client's reads were.
    pub(crate) async fn get_manifest_direct(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        const OPERATION: &str = "pull manifest";
        let (target, url) = self.v2_url(repository, "manifests", reference, OPERATION)?;
        let mut again = true;
        let (bytes, reported) = loop {
            let response = self
                .direct(OPERATION, &target, |c| {
                    c.get(url.clone())
                        .header(reqwest::header::ACCEPT, ACCEPTED.join(", "))
                })
                .await?;
            if !response.status().is_success() {
                return Err(response_error(OPERATION, target, response).await);
            }
            let reported = reported_digest(&response);
            match self.bounded_body(OPERATION, &target, response).await {
                Ok(bytes) => break (bytes, reported),
                Err(e) if again && e.kind() == Some(ErrorKind::Network) => again = false,
                Err(e) => return Err(e),
            }
        };
        if let Ok(asked) = reference.parse::<Digest>() {
            let computed = Digest::of(&bytes);
            if asked != computed {
                return Err(RegistryError::Request {
                    operation: OPERATION,
                    target,
                    kind: ErrorKind::Digest,
                    message: format!("asked for {asked}, but the bytes hash to {computed}"),
                });
            }
        }
        checked_manifest(bytes, reported.as_deref(), target)
    }

    /// A manifest's (or referrers list's) body, refused past the largest
    /// manifest accepted.
    pub(crate) async fn bounded_body(
        &self,
        operation: &'static str,
        target: &str,
        response: reqwest::Response,
    ) -> Result<Bytes, RegistryError> {
        match body_within(response, MAX_MANIFEST_BYTES).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(length)) => Err(RegistryError::Manifest {
                target: target.to_string(),
                source: ManifestError::TooLarge(length),
            }),
            Err(e) => Err(transport_error(operation, target, &e)),
        }
    }

    /// Streams blob `digest`; the stream ends with an error when the bytes do
    /// not hash to it.
    pub(crate) async fn blob_stream_direct(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        const OPERATION: &str = "pull blob";
        let (target, url) = self.v2_url(repository, "blobs", digest.as_str(), OPERATION)?;
        let response = self
            .direct(OPERATION, &target, |c| c.get(url.clone()))
            .await?;
        if !response.status().is_success() {
            return Err(response_error(OPERATION, target, response).await);
        }
        let expected = digest.clone();
        let state = (response.bytes_stream(), Some(Hasher::new()));
        Ok(futures::stream::unfold(state, move |(mut body, hasher)| {
            let (expected, target) = (expected.clone(), target.clone());
            async move {
                let mut hasher = hasher?;
                match body.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        Some((Ok(chunk), (body, Some(hasher))))
                    }
                    Some(Err(e)) => {
                        Some((Err(transport_error(OPERATION, &target, &e)), (body, None)))
                    }
                    None => {
                        let got = hasher.finish();
                        (got != expected).then(|| {
                            let error = RegistryError::Request {
                                operation: OPERATION,
                                target,
                                kind: ErrorKind::Digest,
                                message: format!(
                                    "digest mismatch: the bytes hash to {got}, not {expected}"
                                ),
                            };
                            (Err(error), (body, None))
                        })
                    }
                }
            }
        })
        .boxed())
    }
}

/// A response's body when it is at most `limit` bytes, else how many bytes it
/// reached; read no further.
pub(crate) async fn body_within(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Result<Bytes, usize>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Err(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(Bytes::from(body)))
}

/// The `Docker-Content-Digest` a response reports, if any (an empty header is
/// none, as oci-client takes it).
pub(crate) fn reported_digest(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}
