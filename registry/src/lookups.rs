//! The reads that find an image's signatures and referrers: the referrers API
//! and the repository's tag list.
//!
//! Looking for them one by one costs four requests for every manifest (cosign's
//! `.sig`, `.att` and `.sbom` tags and the referrers API, plus the referrers tag
//! where there is no API), nearly all of them answered "not here": with
//! catalog-sized work that was half the requests of a `create`
//! (docs/benchmarks.md, stop 49). Two things cut them down:
//!
//! - A registry without the referrers API is not asked it again (see
//!   [`ReferrersApi`]).
//! - One `tags/list` names every tag of a repository, cosign's and the
//!   referrers tag among them, when the registry sends them all in one answer.
//!   An answer with a `Link` (a next page), or too large, or not naming the
//!   repository asked about, is not used: the tags are then asked for one by
//!   one, as before. Whether a list that looks whole is whole is for the
//!   caller to judge too (`connected-agent`'s `referrers` module).
//!
//! Neither is used for a repository that `registries.conf` routes: the rules
//! send each read where they say, and a mirror's answer is not the source's.
//! (A mirror's own client has no rules, so it does remember that the mirror
//! has no referrers API: that is the mirror's answer about itself.)
//!
//! These reads go out on Airlock's own HTTP client, authorised as every other
//! read (nothing where the registry asks for nothing, a pull token for the
//! repository where it asks for tokens, the user and password where it takes
//! Basic), rather than through oci-client, whose referrers read falls back to
//! the referrers tag by itself and would hide both the missing API and the
//! tag's answer.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use airlock_oci::digest::Digest;
use airlock_oci::manifest::OCI_INDEX;

use crate::direct::body_within;
use crate::{
    BearerChallenge, ErrorKind, RegistryClient, RegistryError, basic, error_body, error_document,
    response_error, transport_error,
};

/// The largest tag list read: about fifteen thousand tags. A repository with
/// more has more tags than its manifests have lookups to save.
pub(crate) const TAG_LIST_BYTES: usize = 1 << 20;

/// Repositories whose referrers API answered a plain 404 before the registry
/// is taken to have none.
const MISSING_IN_REPOSITORIES: usize = 3;

/// What a registry's answers said of its referrers API, for as long as its
/// client lives (one run, or one publishing pass).
///
/// A 405 or 501 says the route is not there at all. A 404 with a registry's
/// error document is an answer about the repository or subject (zot and Harbor
/// answer so for one they do not know), but a plain 404, the router's, is what
/// a registry without the API (distribution 2.8) answers; as one page of an
/// ingress in front of a registry with the API could look the same, the
/// registry is taken to have none only once [`MISSING_IN_REPOSITORIES`]
/// repositories answered so. Once the API answered, it is asked always.
#[derive(Debug, Default)]
pub(crate) struct ReferrersApi(Mutex<ApiState>);

#[derive(Debug, Default)]
struct ApiState {
    answered: bool,
    missing: bool,
    missing_in: HashSet<String>,
}

impl ReferrersApi {
    fn missing(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .missing
    }

    /// The API answered: it is there, whatever answers without it came first
    /// (lookups run several at once).
    fn answered(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.answered = true;
        state.missing = false;
    }

    /// Records that `repository` answered without the API (`plain_404`: a 404
    /// that is no error document; else 405 or 501); true when the registry is
    /// now taken to have none.
    fn not_there(&self, repository: &str, plain_404: bool) -> bool {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.answered || state.missing {
            return false;
        }
        state.missing_in.insert(repository.to_string());
        state.missing = !plain_404 || state.missing_in.len() >= MISSING_IN_REPOSITORIES;
        state.missing
    }
}

/// What [`RegistryClient::list_tags`] found.
#[derive(Debug)]
pub enum TagList {
    /// Every tag of the repository, in one answer.
    Whole(HashSet<String>),
    /// An answer that does not hold them all: it has a `Link` to a next page,
    /// is larger than 1 MiB, or is the list of another repository.
    NotWhole,
    /// Not asked: the tags are not this registry's to say (an OCI layout's are
    /// read from its index; `registries.conf` may send the repository's reads
    /// elsewhere).
    NotAsked,
}

impl RegistryClient {
    /// Whether `registries.conf` has rules for reads of `repository`.
    pub(crate) fn routed_elsewhere(&self, repository: &str) -> bool {
        self.mirrors
            .as_ref()
            .is_some_and(|m| !matches!(m.route(&self.host, repository, true), Ok(None)))
    }

    /// A `GET` of `url`, a read of `repository`, authorised as a registry client
    /// does: a token to pull `repository` from the realm of the registry's
    /// challenge (the one `/v2/` gave, or, from this registry's own origin, this
    /// response's), else the auth file's user and password, else nothing. A
    /// token the registry refuses is asked for again, once. Returns the
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
        let mut challenge = self.bearer().await;
        let mut fresh = false;
        loop {
            let response = match &mut challenge {
                Some(c) => {
                    c.scope = format!("repository:{repository}:pull");
                    if fresh {
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
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || fresh {
                return Ok(response);
            }
            if challenge.is_some() {
                fresh = true;
                continue;
            }
            // The registry did not challenge `/v2/` (or could not be asked
            // then) but challenges this read: its challenge says where tokens
            // come from, if it is this registry's (reqwest follows redirects).
            let own = response.url().origin() == self.base.origin();
            challenge = own
                .then(|| BearerChallenge::all(response.headers()).next())
                .flatten();
            if challenge.is_none() {
                return Ok(response);
            }
        }
    }

    /// The digests the registry's referrers API lists for `subject`; `None`
    /// when the registry has no such API (see [`ReferrersApi`]), refuses the
    /// request as malformed (400), or answers 404 with an error document (it
    /// does not know the subject): the referrers tag is read then.
    pub(crate) async fn referrers_api(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Option<Vec<String>>, RegistryError> {
        const OPERATION: &str = "list referrers";
        let remembered = !self.routed_elsewhere(repository);
        if remembered && self.referrers_api.missing() {
            return Ok(None);
        }
        let (target, url) = self.v2_url(repository, "referrers", subject.as_str(), OPERATION)?;
        let response = self
            .get_read(repository, OPERATION, &target, &url, Some(OCI_INDEX))
            .await?;
        let status = response.status().as_u16();
        match status {
            400 => return Ok(None),
            404 | 405 | 501 => {
                let plain_404 =
                    status == 404 && error_document(&error_body(response).await).is_none();
                if remembered
                    && (status != 404 || plain_404)
                    && self.referrers_api.not_there(repository, plain_404)
                {
                    tracing::info!(registry = %self.host, status, "the registry has no referrers API; the referrers tag is read instead");
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
        self.referrers_api.answered();
        Ok(Some(
            listed.manifests.into_iter().map(|e| e.digest).collect(),
        ))
    }

    /// Every tag of `repository`, from one `tags/list` answer, when one answer
    /// holds them all (see [`TagList`]).
    pub async fn list_tags(&self, repository: &str) -> Result<TagList, RegistryError> {
        const OPERATION: &str = "list tags";
        if self.layouts.is_some() || self.routed_elsewhere(repository) {
            return Ok(TagList::NotAsked);
        }
        let target = format!("{}/{repository}", self.host);
        let url = self.url(&format!("v2/{repository}/tags/list"), OPERATION, &target)?;
        let response = self
            .get_read(repository, OPERATION, &target, &url, None)
            .await?;
        if !response.status().is_success() {
            return Err(response_error(OPERATION, target, response).await);
        }
        if response.headers().contains_key(http::header::LINK) {
            return Ok(TagList::NotWhole);
        }
        let body = match body_within(response, TAG_LIST_BYTES).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => return Ok(TagList::NotWhole),
            Err(e) => return Err(transport_error(OPERATION, &target, &e)),
        };
        #[derive(serde::Deserialize)]
        struct Listed {
            name: String,
            // Required, but `null` for a repository without tags, as
            // distribution sends it: a body without it is not a tag list.
            #[serde(deserialize_with = "nullable")]
            tags: Vec<String>,
        }
        fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
            Ok(<Option<Vec<String>> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
        }
        let listed: Listed = serde_json::from_slice(&body).map_err(|e| RegistryError::Request {
            operation: OPERATION,
            target: target.clone(),
            kind: ErrorKind::Protocol,
            message: format!("not a tag list: {e}"),
        })?;
        if listed.name != repository {
            tracing::debug!(registry = %self.host, repository, listed = %listed.name, "a tag list of another repository; not used");
            return Ok(TagList::NotWhole);
        }
        Ok(TagList::Whole(listed.tags.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_taken_to_lack_the_referrers_api_only_as_its_answers_show() {
        // 405 or 501: the route is not there.
        let api = ReferrersApi::default();
        assert!(api.not_there("a", false));
        assert!(api.missing());
        // A plain 404 counts once per repository, up to MISSING_IN_REPOSITORIES.
        let api = ReferrersApi::default();
        for _ in 0..5 {
            assert!(!api.not_there("a", true));
        }
        assert!(!api.not_there("b", true));
        assert!(!api.missing());
        assert!(api.not_there("c", true));
        assert!(api.missing());
        // Once the API answered, it is asked always, even after plain 404s
        // that came first from lookups under way at the same time.
        let api = ReferrersApi::default();
        for repo in ["a", "b", "c"] {
            api.not_there(repo, true);
        }
        assert!(api.missing());
        api.answered();
        assert!(!api.missing());
        let api = ReferrersApi::default();
        api.answered();
        for repo in ["a", "b", "c", "d"] {
            assert!(!api.not_there(repo, true));
        }
        assert!(!api.not_there("e", false));
        assert!(!api.missing());
    }
}
