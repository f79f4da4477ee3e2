//! What an agent shows a site's monitoring over HTTP (`metrics: {listen}` in its
//! configuration): `GET /metrics` in the Prometheus text exposition format,
//! `GET /healthz` (200 while the agent's loop comes round, 503 once it has not for
//! longer than it ever should) and `GET /readyz` (200 once the agent is ready to
//! work, 503 before). Plain HTTP on purpose: it carries no secret and Prometheus
//! scrapes it; bind it to an address only the monitoring network reaches.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// `metrics:` in an agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` to serve on (`127.0.0.1:9464`).
    pub listen: String,
}

impl MetricsConfig {
    /// The address, checked (before anything is bound).
    pub fn address(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|e| {
            format!(
                "{:?}: {e}; expected IP:PORT, such as 127.0.0.1:9464 or 0.0.0.0:9464",
                airlock_oci::quote::clip(&self.listen)
            )
        })
    }
}

/// Whether the agent is ready and its loop alive.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    started: Instant,
    /// Milliseconds after `started` of the loop's last round.
    beat: AtomicU64,
    /// How long the loop may go without a round before it counts as stuck.
    stall: Duration,
}

impl Health {
    /// Not ready, and alive as of now; stuck after `stall` without a [`Self::beat`].
    pub fn new(stall: Duration) -> Self {
        Health {
            ready: AtomicBool::new(false),
            started: Instant::now(),
            beat: AtomicU64::new(0),
            stall,
        }
    }

    /// The agent is ready to work (its configuration checked, its state opened).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The loop came round.
    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.beat.store(now, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        let last = Duration::from_millis(self.beat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) <= self.stall
    }
}

/// What an agent shows its monitoring: its metrics and health, served once
/// [`Self::serve`] has bound an address, until this is dropped.
#[derive(Debug)]
pub struct Endpoint {
    /// What `/healthz` and `/readyz` answer.
    pub health: Arc<Health>,
    registry: Arc<Mutex<Registry>>,
    stop: CancellationToken,
}

impl Endpoint {
    /// The endpoint of `registry`, stuck after `stall` without a beat.
    pub fn new(registry: Arc<Mutex<Registry>>, stall: Duration) -> Self {
        Endpoint {
            health: Arc::new(Health::new(stall)),
            registry,
            stop: CancellationToken::new(),
        }
    }

    /// Binds `addr` and serves on it; binding fails now, so that a port in use
    /// stops the agent at start rather than leaving it half up.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(serve(
            listener,
            self.registry.clone(),
            self.health.clone(),
            self.stop.clone(),
        ));
        Ok(())
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connections served at once: a scrape is one short request, so a few
/// suffice, and a client that opens many cannot take the agent's file
/// descriptors.
const MAX_CONNECTIONS: usize = 32;
/// How long a connection may take to send its request head, and to be served.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Mutex<Registry>>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics: cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer(req.uri().path(), req.method(), &registry, &health);
                async move { Ok::<_, Infallible>(answer) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(io, service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: connection ended"),
                Err(_) => tracing::debug!("metrics: connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn answer(
    path: &str,
    method: &hyper::Method,
    registry: &Mutex<Registry>,
    health: &Health,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a response of fixed parts")
    };
    let plain = "text/plain; charset=utf-8";
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        let mut refused = reply(StatusCode::METHOD_NOT_ALLOWED, plain, "GET only\n".into());
        refused.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return refused;
    }
    let state = |ok: bool, yes: &str, no: &str| match ok {
        true => reply(StatusCode::OK, plain, format!("{yes}\n")),
        false => reply(StatusCode::SERVICE_UNAVAILABLE, plain, format!("{no}\n")),
    };
    match path {
        "/metrics" => {
            let mut text = String::new();
            // A panic while encoding must not stop every later scrape.
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, plain, format!("{e}\n")),
            }
        }
        "/healthz" => state(
            health.alive(),
            "ok",
            &format!(
                "stuck: the agent's loop has not come round for more than {} s",
                health.stall.as_secs()
            ),
        ),
        "/readyz" => state(
            health.ready.load(Ordering::Relaxed),
            "ready",
            "not ready: the agent is still starting",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            plain,
            "not found: /metrics, /healthz and /readyz are served\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(path: &str, registry: &Mutex<Registry>, health: &Health) -> StatusCode {
        answer(path, &hyper::Method::GET, registry, health).status()
    }

    #[test]
    fn ready_once_told_and_stuck_once_the_loop_is_away_longer_than_allowed() {
        let registry = Mutex::new(Registry::default());
        let health = Health::new(Duration::from_secs(3600));
        assert_eq!(
            status_of("/readyz", &registry, &health),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready();
        assert_eq!(status_of("/readyz", &registry, &health), StatusCode::OK);
        assert_eq!(status_of("/healthz", &registry, &health), StatusCode::OK);
        // No time at all allowed: any moment since the last round is too long.
        let impatient = Health::new(Duration::ZERO);
        let waited = Instant::now();
        while waited.elapsed().is_zero() {}
        assert_eq!(
            status_of("/healthz", &registry, &impatient),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_of("/metrics", &registry, &health), StatusCode::OK);
        assert_eq!(
            status_of("/other", &registry, &health),
            StatusCode::NOT_FOUND
        );
        let post = answer("/metrics", &hyper::Method::POST, &registry, &health);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[hyper::header::ALLOW], "GET, HEAD");
    }

    #[test]
    fn a_listen_address_is_host_and_port() {
        let at = |s: &str| MetricsConfig { listen: s.into() }.address();
        assert_eq!(at("127.0.0.1:9464").unwrap().port(), 9464);
        assert!(at("localhost").unwrap_err().contains("expected IP:PORT"));
    }
}
