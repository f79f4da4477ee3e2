//! The reads that find an image's signatures and referrers: the referrers API
//! and the repository's tag list.
//!
//! Looking for them one by one costs four requests for every manifest (cosign's
//! `.sig`, `.att` and `.sbom` tags and the referrers API, plus the referrers tag
//! where there is no API), nearly all of them answered "not here": with
//! catalog-sized work that was half the requests of a `create`
//! (docs/benchmarks.md, stop 49). Two things cut them down:
//!
//! - A registry without the referrers API says so with a 404 that is not a
//!   registry's error document (the API's route is unknown; the distribution
//!   spec forbids a registry with the API to answer it 404), with 405 or 501.
//!   It is then not asked again: the API is a property of the registry, not of
//!   the repository.
//! - One `tags/list` names every tag of a repository, cosign's and the
//!   referrers tag among them, when the registry sends them all in one answer.
//!   An answer with a `Link` (a next page) or too large is not used: the tags
//!   are then asked for one by one, as before.
//!
//! These reads go out on Airlock's own HTTP client, authorised as every other
//! read (nothing where the registry asks for nothing, a pull token for the
//! repository, or the user and password), rather than through oci-client,
//! whose referrers read falls back to the referrers tag by itself and would
//! hide both the missing API and the tag's answer.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use airlock_oci::digest::Digest;
use airlock_oci::manifest::OCI_INDEX;

use crate::{ErrorKind, RegistryClient, RegistryError, basic, response_error, transport_error};

/// The largest tag list read: about fifteen thousand tags. A repository with
/// more has more tags than its manifests have lookups to save.
pub const TAG_LIST_BYTES: usize = 1 << 20;

impl RegistryClient {
    /// A `GET` of `url`, a read of `repository`, authorised as a registry client
    /// does: nothing where the registry asks for nothing, a token to pull
    /// `repository` from the realm of the registry's challenge (the one `/v2/`
    /// gave, or this response's), else the auth file's user and password. A
    /// cached token the registry refuses is asked for again, once. Returns the
    /// response whatever its status.
    async fn get_read(
        &self,
        repository: &str,
        operation: &'static str,
        target: &str,
        url: &reqwest::Url,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let get = |c: &reqwest::Client| {
            let request = c.get(url.clone());
            match accept {
                Some(a) => request.header(reqwest::header::ACCEPT, a),
                None => request,
            }
        };
        if self.anonymous(repository).await {
            return self.direct(operation, target, get).await;
        }
        let mut challenge = self.bearer().await;
        let mut renew = false;
        loop {
            let response = match &mut challenge {
                Some(c) => {
                    c.scope = format!("repository:{repository}:pull");
                    if renew {
                        self.scoped.lock().await.remove(&c.scope);
                    }
                    let token = self.scoped_token(c, operation, target).await?;
                    self.direct(operation, target, |h| get(h).bearer_auth(&token))
                        .await?
                }
                None => {
                    let credentials = self.credentials_for(repository).0;
                    self.direct(operation, target, |h| match basic(&credentials) {
                        Some((user, password)) => get(h).basic_auth(user, Some(password)),
                        None => get(h),
                    })
                    .await?
                }
            };
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || renew {
                return Ok(response);
            }
            if challenge.is_none() {
                // The registry did not challenge `/v2/` (or could not be asked
                // then) but challenges this read: its challenge says where from.
                challenge = response
                    .headers()
                    .get_all(http::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(crate::BearerChallenge::parse);
                if challenge.is_none() {
                    return Ok(response);
                }
            }
            renew = true;
        }
    }

    /// The digests the registry's referrers API lists for `subject`; `None`
    /// when the registry has no such API, which is then remembered (see the
    /// module's documentation), or refuses the request as malformed (400).
    pub(crate) async fn referrers_api(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<String>>, RegistryError> {
        const OPERATION: &str = "list referrers";
        if self.no_referrers_api.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (target, url) = self.v2_url(repository, "referrers", subject.as_str(), OPERATION)?;
        let response = self
            .get_read(repository, OPERATION, &target, &url, Some(OCI_INDEX))
            .await?;
        match response.status().as_u16() {
            400 => return Ok(None),
            404 | 405 | 501 => {
                let status = response.status().as_u16();
                let body = self.bounded_body(OPERATION, &target, response).await?;
                if status != 404 || !is_error_document(&body) {
                    tracing::debug!(registry = %self.host, status, "no referrers API; the referrers tag is read instead");
                    self.no_referrers_api.store(true, Ordering::Relaxed);
                }
                return Ok(None);
            }
            s if !(200..300).contains(&s) => {
                return Err(response_error(OPERATION, target, response).await);
            }
            _ => {}
        }
        let bytes = self.bounded_body(OPERATION, &target, response).await?;
        #[derive(serde::Deserialize)]
        struct Listed {
            #[serde(default)]
            manifests: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            digest: String,
        }
        let listed: Listed =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Request {
                operation: OPERATION,
                target: target.clone(),
                kind: ErrorKind::Protocol,
                message: format!("not a referrers index: {e}"),
            })?;
        Ok(Some(
            listed.manifests.into_iter().map(|e| e.digest).collect(),
        ))
    }

    /// Every tag of `repository`, from one `tags/list` answer. `None` when one
    /// answer does not hold them all (it has a `Link` to a next page, or is
    /// larger than [`TAG_LIST_BYTES`]), or when the tags are not this
    /// registry's to say: an OCI layout's are read from its index, and
    /// `registries.conf` may send this repository's reads elsewhere.
    pub async fn list_tags(
        &self,
        repository: &str,
    ) -> Result<Option<HashSet<String>>, RegistryError> {
        const OPERATION: &str = "list tags";
        if self.layouts.is_some() {
            return Ok(None);
        }
        if let Some(m) = &self.mirrors
            && !matches!(m.route(&self.host, repository, true), Ok(None))
        {
            return Ok(None);
        }
        let target = format!("{}/{repository}", self.host);
        let url = self.url(&format!("v2/{repository}/tags/list"), OPERATION, &target)?;
        let mut response = self
            .get_read(repository, OPERATION, &target, &url, None)
            .await?;
        if !response.status().is_success() {
            return Err(response_error(OPERATION, target, response).await);
        }
        if response.headers().contains_key(http::header::LINK) {
            return Ok(None);
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > TAG_LIST_BYTES => return Ok(None),
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(transport_error(OPERATION, &target, &e)),
            }
        }
        #[derive(serde::Deserialize)]
        struct Listed {
            // `null` for a repository without tags, as distribution sends it.
            tags: Option<Vec<String>>,
        }
        let listed: Listed = serde_json::from_slice(&body).map_err(|e| RegistryError::Request {
            operation: OPERATION,
            target: target.clone(),
            kind: ErrorKind::Protocol,
            message: format!("not a tag list: {e}"),
        })?;
        Ok(Some(listed.tags.unwrap_or_default().into_iter().collect()))
    }
}

/// Whether a response body is a registry's error document
/// (`{"errors": [...]}`): a registry with the referrers API may answer 404 with
/// one (an unknown repository); a registry without it answers its router's 404.
fn is_error_document(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("errors").is_some_and(serde_json::Value::is_array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_error_document_is_told_from_a_router_404() {
        assert!(is_error_document(
            br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#
        ));
        assert!(!is_error_document(b"404 page not found\n"));
        assert!(!is_error_document(b""));
        assert!(!is_error_document(br#"{"detail":"Not Found"}"#));
    }
}
