//! When a failed registry request is tried again, and how long to wait first.
//!
//! Registries and the networks in front of them fail in passing: a 500 from a
//! backend being redeployed, a connection reset by a load balancer, a 429 while a
//! rate limit refills. Publishing many gigabytes is many thousands of requests, so
//! without retries one such blip fails a run that a rerun completes. Retries are
//! bounded twice: per request (a fixed number of attempts), and per image (a
//! [`Budget`] of retries shared by all of its requests), so that a registry that is
//! down fails a publish in bounded time instead of backing off forever.
//!
//! What is retried: 5xx, 408 and 429 answers, and transport failures (a reset
//! connection, a timeout). Every other answer is final: a 401, 403, 404 or a
//! 400 with a distribution error code is the registry's reply, and asking again
//! gets the same one; a refused connection or an unknown host means nothing is
//! listening there.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use super::{ErrorKind, RegistryError};

/// How often and how patiently requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The wait after the first failure; doubled after each further one.
    pub first: Duration,
    /// The longest backoff wait.
    pub cap: Duration,
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Retries per image, all its requests together.
    pub per_image: u32,
    /// The longest `Retry-After` honoured: a registry asking for an hour is
    /// treated as asking for this long, so a run never stalls unseen.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 0.5 s doubling to 30 s, 6 attempts per request (about 15 s of waiting
    /// before a request is given up), 20 retries per image.
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            attempts: 6,
            per_image: 20,
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// Whether a failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transient: try again, after `retry_after` when the registry said so.
    Retry {
        /// The registry's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The registry's answer: asking again gets the same one.
    Final,
}

/// Which bound ended the retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The request used all its attempts.
    Attempts,
    /// The image used all its retries.
    Budget,
}

/// An error that can say whether it is transient, and be marked as given up.
pub trait Retryable: Sized {
    /// Whether another attempt may succeed.
    fn verdict(&self) -> Verdict;
    /// This error, as the last of `attempts` attempts ended by `limit`.
    fn gave_up(self, attempts: u32, limit: Limit) -> Self;
}

impl Retryable for RegistryError {
    fn verdict(&self) -> Verdict {
        // Given up by a retry loop inside: one around it would multiply the
        // attempts and the waits.
        if matches!(self, RegistryError::GaveUp { .. }) {
            return Verdict::Final;
        }
        match self.kind() {
            Some(ErrorKind::Network) => Verdict::Retry { retry_after: None },
            Some(ErrorKind::Unavailable { retry_after }) => Verdict::Retry { retry_after },
            _ => Verdict::Final,
        }
    }

    fn gave_up(self, attempts: u32, limit: Limit) -> Self {
        RegistryError::GaveUp {
            attempts,
            limit,
            last: Box::new(self),
        }
    }
}

/// The retries left to one image, shared by all of its requests.
#[derive(Debug)]
pub struct Budget {
    left: AtomicU32,
}

impl Budget {
    /// A budget of `retries`.
    pub fn new(retries: u32) -> Self {
        Budget {
            left: AtomicU32::new(retries),
        }
    }

    /// Takes one retry; `false` when none is left.
    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// One retry about to happen, for counting and logging.
#[derive(Debug)]
pub struct Retry<'e, E> {
    /// The attempt that failed (1 for the first).
    pub attempt: u32,
    /// The wait before the next one.
    pub wait: Duration,
    /// Why it failed.
    pub error: &'e E,
}

/// Whether an HTTP status says "not now" (408, 429, 5xx): asking again later
/// may get another answer. Every other status is the server's answer.
pub fn transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// How long a response's `Retry-After` asks to wait, if it says.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// The value of a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110
/// 10.2.3). A date in the past means now; anything else unreadable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

impl RetryPolicy {
    /// A fresh budget for one image.
    pub fn budget(&self) -> Budget {
        Budget::new(self.per_image)
    }

    /// The backoff after `failed` attempts (1 or more), before jitter: `first`
    /// doubled per further failure, at most `cap`.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The wait after `failed` attempts: the registry's `Retry-After` (at most
    /// `max_retry_after`) when it sent one, otherwise the backoff with jitter
    /// (between half and all of it), so that many uploads failed by the same blip
    /// do not all come back at the same instant.
    pub fn wait(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_retry_after),
            None => {
                let full = self.backoff(failed);
                full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
            }
        }
    }

    /// Runs `op` until it succeeds, fails for good, or a bound is reached. Each
    /// attempt calls `op` afresh, so a request with a body re-opens its source;
    /// `on_retry` is told of every retry before its wait.
    pub async fn run<T, E, Fut>(
        &self,
        budget: &Budget,
        mut op: impl FnMut() -> Fut,
        mut on_retry: impl FnMut(Retry<'_, E>),
    ) -> Result<T, E>
    where
        E: Retryable,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            let error = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Verdict::Retry { retry_after } = error.verdict() else {
                return Err(error);
            };
            if attempt >= self.attempts {
                return Err(error.gave_up(attempt, Limit::Attempts));
            }
            if !budget.take() {
                return Err(error.gave_up(attempt, Limit::Budget));
            }
            let wait = self.wait(attempt, retry_after);
            on_retry(Retry {
                attempt,
                wait,
                error: &error,
            });
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_kind;
    use std::cell::Cell;

    fn error(kind: ErrorKind) -> RegistryError {
        RegistryError::Request {
            operation: "push blob",
            target: "r/x@sha256:0".into(),
            kind,
            message: "boom".into(),
        }
    }

    fn http(code: u16) -> RegistryError {
        error(status_kind(code, None))
    }

    #[test]
    fn server_errors_timeouts_and_throttling_are_retried_answers_are_not() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(
                matches!(http(code).verdict(), Verdict::Retry { .. }),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 405, 409, 413, 416] {
            assert_eq!(http(code).verdict(), Verdict::Final, "{code}");
        }
        assert_eq!(
            error(ErrorKind::Network).verdict(),
            Verdict::Retry { retry_after: None }
        );
        for kind in [
            ErrorKind::Digest,
            ErrorKind::Protocol,
            ErrorKind::NotFound,
            ErrorKind::Unreachable,
        ] {
            assert_eq!(error(kind).verdict(), Verdict::Final, "{kind:?}");
        }
        let throttled = error(status_kind(429, Some(Duration::from_secs(7))));
        assert_eq!(
            throttled.verdict(),
            Verdict::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within_it() {
        let p = RetryPolicy::default();
        let waits: Vec<u64> = (1..=9).map(|n| p.backoff(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(p.backoff(1000), p.cap, "no overflow on many failures");
        for failed in 1..=8 {
            let full = p.backoff(failed);
            let w = p.wait(failed, None);
            assert!(w >= full / 2 && w <= full, "{failed}: {w:?} of {full:?}");
        }
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(86400))),
            p.max_retry_after,
            "retry-after is capped"
        );
    }

    /// `run` over an operation failing with `errors` in turn, then succeeding.
    async fn run_through(
        p: &RetryPolicy,
        budget: &Budget,
        errors: Vec<RegistryError>,
    ) -> (Result<u32, RegistryError>, u32, Vec<Duration>) {
        let calls = Cell::new(0);
        let errors = std::cell::RefCell::new(errors.into_iter());
        let mut waits = Vec::new();
        let result = p
            .run(
                budget,
                || {
                    calls.set(calls.get() + 1);
                    let next = errors.borrow_mut().next();
                    async move { next.map_or(Ok(7), Err) }
                },
                |r| waits.push(r.wait),
            )
            .await;
        (result, calls.get(), waits)
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_after_its_wait() {
        let p = RetryPolicy::default();
        let started = tokio::time::Instant::now();
        let (result, calls, waits) =
            run_through(&p, &p.budget(), vec![http(503), error(ErrorKind::Network)]).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls, 3);
        assert_eq!(waits.len(), 2);
        // Paused time moves by whole milliseconds.
        let waited = waits.iter().sum::<Duration>();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= waited && elapsed - waited < Duration::from_millis(3),
            "{elapsed:?} for {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_exactly() {
        let p = RetryPolicy::default();
        let started = tokio::time::Instant::now();
        let throttled = error(status_kind(429, Some(Duration::from_secs(1))));
        let (result, calls, waits) = run_through(&p, &p.budget(), vec![throttled]).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls, 2);
        assert_eq!(waits, [Duration::from_secs(1)]);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_not_retried() {
        let p = RetryPolicy::default();
        let (result, calls, waits) = run_through(&p, &p.budget(), vec![http(404)]).await;
        assert_eq!(result.unwrap_err().kind(), Some(ErrorKind::NotFound));
        assert_eq!((calls, waits.len()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_gives_up_after_its_attempts_naming_them() {
        let p = RetryPolicy::default();
        let errors = (0..10).map(|_| http(500)).collect();
        let (result, calls, _) = run_through(&p, &p.budget(), errors).await;
        assert_eq!(calls, p.attempts);
        let e = result.unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::GaveUp {
                    attempts: 6,
                    limit: Limit::Attempts,
                    ..
                }
            ),
            "{e:?}"
        );
        let message = e.to_string();
        assert!(
            message.contains("6 attempts") && message.contains("boom"),
            "{message}"
        );
        assert!(
            matches!(e.kind(), Some(ErrorKind::Unavailable { .. })),
            "the last error's kind is kept for exit codes"
        );
        assert_eq!(
            e.verdict(),
            Verdict::Final,
            "a retry loop around this one does not try it again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_image_budget_bounds_retries_across_requests() {
        let p = RetryPolicy {
            per_image: 3,
            ..RetryPolicy::default()
        };
        let budget = p.budget();
        let (first, calls, _) = run_through(&p, &budget, vec![http(502), http(502)]).await;
        assert!(first.is_ok());
        assert_eq!(calls, 3);
        let errors = (0..10).map(|_| error(ErrorKind::Network)).collect();
        let (second, calls, waits) = run_through(&p, &budget, errors).await;
        assert_eq!(
            (calls, waits.len()),
            (2, 1),
            "one retry was left to this request"
        );
        let e = second.unwrap_err();
        assert!(
            matches!(
                e,
                RegistryError::GaveUp {
                    attempts: 2,
                    limit: Limit::Budget,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("retry budget"), "{e}");
    }
}
