//! Reads from source registries that wait out throttling.
//!
//! A registry in front of a catalog (quay.io, registry.redhat.io behind its CDN)
//! answers a burst of reads with 429 or 503, and asking again after a wait
//! succeeds. Every read the connected agent makes of a source registry before
//! the blobs are downloaded (manifests, tag lists, signature and referrer
//! lookups, the layers and configs of catalogs, release payloads, charts and
//! base images), and `mirror`'s blob reads, go through [`Reads::run`]: four
//! attempts, waiting 0.5, 1 and 2 s with jitter, or the registry's
//! `Retry-After` (at most [`MAX_RETRY_AFTER`]) where the client sees it: reads
//! that go through `oci-client` (a registry that asks for credentials) lose the
//! header and wait the backoff.
//!
//! The retry is here, where the agent reads, and not in the registry client:
//! publish and prune retry around the client's calls under their own policy,
//! and a retry inside would multiply the attempts and the waits. An error a
//! loop gave up on is final for any loop around it. One of these reads is
//! inside another loop: `mirror`'s blob read, opened by the publisher for each
//! upload. A source that fails to open is final there, so a throttled open is
//! waited out only here; an upload that breaks midway is the publisher's to
//! retry, and opens the source again. Blob downloads into an imageset retry in
//! `create` itself, because a download can also fail midway and is then
//! written again from its start. The small documents read over plain HTTP
//! (update graphs, graph data, release signatures, chart repositories) wait
//! out a 429 or 5xx the same way ([`crate::http::send`]).

use std::future::Future;
use std::time::Duration;

use airlock_registry::retry::{Budget, RetryPolicy, Retryable};

/// The longest `Retry-After` a read waits for: a registry asking for longer is
/// asked again after this long, so a run never stalls unseen.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Retries shared by the reads made with it: one image's while it is resolved
/// (its manifest and platforms), a manifest's lookups, a base image's or a
/// chart's reads. Elsewhere (a catalog's or a payload's layers and configs, a
/// tag list, a blob `mirror` streams) each read has one of its own, bounded by
/// its four attempts.
pub(crate) struct Reads {
    policy: RetryPolicy,
    budget: Budget,
}

impl Reads {
    /// Retries for one image: three for each of the reads it asks at once (an
    /// index's platforms; a manifest's four signature and referrer lookups),
    /// which a throttled burst may all need together. A registry failing every
    /// read without `Retry-After` fails an image in seconds.
    pub(crate) fn new() -> Self {
        let policy = RetryPolicy {
            first: Duration::from_millis(500),
            cap: Duration::from_secs(4),
            attempts: 4,
            per_image: 3 * crate::collect::PARALLEL_CHILDREN as u32,
            max_retry_after: MAX_RETRY_AFTER,
        };
        let budget = policy.budget();
        Reads { policy, budget }
    }

    /// Runs `op` (the `read` of `of`, for the log) until it succeeds, fails for
    /// good, or its attempts or this image's retries are spent.
    pub(crate) async fn run<T, E, Fut>(
        &self,
        read: &'static str,
        of: &str,
        op: impl FnMut() -> Fut,
    ) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        Fut: Future<Output = Result<T, E>>,
    {
        self.policy
            .run(&self.budget, op, |r| {
                tracing::warn!(read, of, attempt = r.attempt, wait_ms = r.wait.as_millis() as u64, error = %r.error, "{read} failed; retrying");
            })
            .await
    }
}
