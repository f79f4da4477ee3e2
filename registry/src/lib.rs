//! Airlock's registry side: a client that keeps manifests byte for byte, putting
//! images into a registry and taking away what an imageset no longer lists, and
//! the cluster resources that point clusters at what was put there.
//!
//! - the client (this module), with [`auth`], [`layout`] (OCI layouts read as a
//!   registry), [`mirrors`] (`registries.conf`) and [`retry`];
//! - [`publish`] and [`prune`]: the one implementation of both, whatever the
//!   source of content (the agent's store or a source registry);
//! - [`resources`]: mirror sets and the other objects derived from what was mirrored;
//! - [`progress`]: how long transfers report their bytes.
//!
//! Invariants: a manifest is handled as the bytes it is and never re-serialised
//! (its digest is its identity); nothing here draws on a terminal, parses
//! arguments or knows which agent calls it; every error names what it concerns
//! (a registry error its registry, repository and digest; a layout error its
//! file; a proxy error the URL, without its password).
//!
//! ## The client
//!
//! `oci-client` does the HTTP, token authentication and upload protocol. Airlock
//! wraps it for three reasons, written down in `docs/registry-client.md`:
//!
//! - its typed `push_manifest` re-serialises the manifest, which changes the digest;
//!   Airlock pushes the exact bytes it pulled with `push_manifest_raw`, first by
//!   digest (the registry then checks the bytes hash to the digest) and only then by tag;
//! - `pull_manifest_raw` does not return the `Content-Type`; the media type is read
//!   from the manifest itself (see [`airlock_oci::manifest::parse`]);
//! - it knows nothing of containers-auth.json, `certs.d` or `--tls-verify=false`, which
//!   every mirroring user relies on; [`auth`] and [`RegistryOptions`] add them.

pub mod auth;
mod direct;
pub mod layout;
mod lookups;
pub use lookups::TagList;
pub mod mirrors;
pub mod progress;
pub mod prune;
pub mod publish;
pub mod resources;
pub mod retry;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use airlock_oci::digest::Digest;
use airlock_oci::manifest::{self, ACCEPTED, Manifest, ManifestError};
use auth::{AuthFileError, AuthSource, Credentials};
use retry::Limit;

/// How to reach registries on one side of a transfer (`--src-*` or `--dest-*` flags).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Require HTTPS with a trusted certificate. `false` allows plain HTTP and
    /// untrusted certificates, as `skopeo --tls-verify=false` does.
    pub tls_verify: bool,
    /// A directory of `*.crt` CA files to trust, instead of the per-registry
    /// `/etc/containers/certs.d/HOST[:PORT]/` and `/etc/docker/certs.d/HOST[:PORT]/`.
    pub cert_dir: Option<PathBuf>,
    /// Where credentials come from.
    pub auth: AuthSource,
    /// `registries.conf` rules that send reads elsewhere (sources only).
    pub mirrors: Option<std::sync::Arc<mirrors::Mirrors>>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            tls_verify: true,
            cert_dir: None,
            auth: AuthSource::new(None),
            mirrors: None,
        }
    }
}

/// What went wrong talking to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The manifest or blob does not exist (404).
    NotFound,
    /// Credentials missing or refused (401, 403).
    Unauthorized,
    /// The connection broke or timed out.
    Network,
    /// Nothing answered: the connection was refused or the host not found. The
    /// registry is down, not flaky, and asking again at once would only add noise;
    /// a publish fails, and the agent retries the cluster with its own backoff.
    Unreachable,
    /// The registry is failing or overloaded (5xx, 408, 429): asking again later
    /// may succeed.
    Unavailable {
        /// How long the registry asked to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// The registry answered something other than the protocol allows.
    Protocol,
    /// Content did not hash to its digest.
    Digest,
}

/// An error talking to a registry, naming the registry and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A request failed.
    #[error("{operation} {target}: {message}")]
    Request {
        /// What was being done ("pull manifest", "push blob", ...).
        operation: &'static str,
        /// The image or blob (`host/repo@sha256:...`).
        target: String,
        /// Classification, for exit codes and retries.
        kind: ErrorKind,
        /// Details from the registry or the transport, with a hint where one helps.
        message: String,
    },
    /// A manifest that was pulled cannot be mirrored.
    #[error("{target}: {source}")]
    Manifest {
        /// The image.
        target: String,
        /// Why.
        source: ManifestError,
    },
    /// The credentials file is unusable.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// A CA certificate file could not be read.
    #[error("cannot read CA certificate {}: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A local file to upload could not be read.
    #[error("push blob {target}: cannot read {}: {source}", path.display())]
    LocalFile {
        /// The blob.
        target: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `registries.conf` refuses the image (`blocked = true`).
    #[error("{target}: {message}")]
    Blocked {
        /// The image's repository.
        target: String,
        /// Which file and rule block it.
        message: String,
    },
    /// A transient failure that went on past the retry bounds.
    #[error("{last} (gave up after {attempts} attempts{})", match limit {
        Limit::Attempts => "",
        Limit::Budget => "; the image's retry budget is spent",
    })]
    GaveUp {
        /// Attempts made of the request that failed last.
        attempts: u32,
        /// The bound that was reached.
        limit: Limit,
        /// The failure of the last attempt.
        last: Box<RegistryError>,
    },
}

impl RegistryError {
    /// The classification of a request error.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            RegistryError::Request { kind, .. } => Some(*kind),
            RegistryError::GaveUp { last, .. } => last.kind(),
            _ => None,
        }
    }
}

impl airlock_common::exit_codes::ExitCode for RegistryError {
    fn exit_code(&self) -> i32 {
        use airlock_common::exit_codes as code;
        match self {
            RegistryError::Request {
                kind: ErrorKind::Digest,
                ..
            }
            | RegistryError::Manifest { .. } => code::DATA,
            RegistryError::Request { .. } => code::UNAVAILABLE,
            RegistryError::GaveUp { last, .. } => last.exit_code(),
            RegistryError::AuthFile(_)
            | RegistryError::Certificate { .. }
            | RegistryError::Blocked { .. } => code::CONFIG,
            RegistryError::LocalFile { .. } => code::IO,
        }
    }
}

/// What a registry did with a manifest delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted.
    Deleted,
    /// Not there (deleted earlier, or never pushed): nothing to do.
    Absent,
    /// The registry does not delete (disabled, or not this kind of reference);
    /// its answer.
    Refused(String),
}

/// A manifest as pulled: its exact bytes, their digest and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// The bytes, never re-encoded.
    pub bytes: Bytes,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
}

impl RawManifest {
    /// Wraps bytes whose digest and media type are known from a trusted record (an
    /// imageset manifest); the digest is recomputed and checked.
    pub fn from_bytes(bytes: Bytes, media_type: String) -> Self {
        let digest = Digest::of(&bytes);
        RawManifest {
            bytes,
            digest,
            media_type,
        }
    }

    /// The parsed view, for finding references.
    pub fn parse(&self) -> Result<Manifest, ManifestError> {
        manifest::parse(&self.bytes, Some(&self.media_type))
    }
}

/// A client for one registry host.
///
/// Reads go through `oci-client`. Writes (blob uploads, manifest pushes) are sent
/// here with reqwest, authorised with `oci-client`'s token flow: `oci-client`
/// does not hand out response headers, and a retry needs the `Retry-After` of a
/// 429 and the exact status of every failed step of an upload.
pub struct RegistryClient {
    host: String,
    client: Client,
    http: reqwest::Client,
    /// `{scheme}://{registry}/`, the base of every write.
    base: reqwest::Url,
    /// The registry's credential: what the auth file has for the host (or, with
    /// only repository-scoped keys, the first of them); `None`: anonymous.
    credentials: Option<Credentials>,
    /// Where credentials come from, for those of a repository: the most specific
    /// key wins (`host/ns/repo` over `host/ns` over `host`), so one auth file
    /// holds a robot account per namespace.
    auth: AuthSource,
    /// Each repository's credential once looked up, and whether it differs from
    /// the registry's.
    by_repository: std::sync::Mutex<HashMap<String, (Option<Credentials>, bool)>>,
    /// Repositories with their own credential whose pull token oci-client was
    /// given (it would otherwise ask with the registry's), once per repository.
    pulls_authorised:
        tokio::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::OnceCell<()>>>>,
    /// The bearer token to push to each repository, `None` when the registry
    /// asks for none; fetched on first use and again after a 401.
    tokens: tokio::sync::Mutex<HashMap<String, Option<String>>>,
    /// Tokens for the scopes registries asked for beyond pull and push (a
    /// delete needs `repository:NAME:delete`), by scope.
    scoped: tokio::sync::Mutex<HashMap<String, String>>,
    /// What `/v2/` answered a request without credentials, asked once (see
    /// [`RegistryClient::version_check`]).
    v2: tokio::sync::OnceCell<V2Answer>,
    /// What the registry's answers said of its referrers API.
    referrers_api: lookups::ReferrersApi,
    /// Bounds the manifests read from this registry at once, whoever asks:
    /// callers resolve images, and each image its platforms, at once, and
    /// their product would otherwise reach the registry in one burst.
    manifest_reads: tokio::sync::Semaphore,
    /// Where reads of this registry's images may be sent instead
    /// (`registries.conf`); see [`mirrors`].
    mirrors: Option<std::sync::Arc<mirrors::Mirrors>>,
    /// For [`layout::HOST`]: the local OCI layouts its reads come from.
    layouts: Option<std::sync::Arc<layout::Layouts>>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("host", &self.host)
            .finish()
    }
}

/// The kind of an HTTP error status. 408, 429 and 5xx say "not now"; every other
/// status is the registry's answer.
pub(crate) fn status_kind(code: u16, retry_after: Option<Duration>) -> ErrorKind {
    match code {
        401 | 403 => ErrorKind::Unauthorized,
        404 => ErrorKind::NotFound,
        c if retry::transient(c) => ErrorKind::Unavailable { retry_after },
        _ => ErrorKind::Protocol,
    }
}

/// A client for what is not a registry (update graphs, signature stores, graph
/// data): the proxy (`use_proxy`), Airlock's user agent, a 30 s connect timeout
/// and `timeout` for a whole request. The one place such clients are made, so that
/// every one goes through the proxy and none panics when it cannot be built;
/// `target` names what it is for, in the error.
pub fn http_client(target: &str, timeout: Duration) -> Result<reqwest::Client, RegistryError> {
    proxied(reqwest::Client::builder())
        .connect_timeout(Duration::from_secs(30))
        .timeout(timeout)
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| RegistryError::Request {
            operation: "make an HTTP client",
            target: target.to_string(),
            kind: ErrorKind::Protocol,
            message: error_chain(&e),
        })
}

/// The text of an error and of its sources, joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn classify(e: &OciDistributionError) -> (ErrorKind, String) {
    use OciDistributionError as E;
    // oci-client does not hand out response headers: a 429 it reports has no
    // `Retry-After`, and is retried after the backoff.
    let status_kind = |code: u16| status_kind(code, None);
    match e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => (
            ErrorKind::Unauthorized,
            format!(
                "{e}: check the credentials for this registry in the auth file (REGISTRY_AUTH_FILE, --authfile, ~/.docker/config.json)"
            ),
        ),
        E::ImageManifestNotFoundError(_) => (ErrorKind::NotFound, e.to_string()),
        E::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let codes: Vec<&C> = envelope.errors.iter().map(|x| &x.code).collect();
            let kind = if codes.iter().any(|c| {
                matches!(
                    c,
                    C::BlobUnknown | C::ManifestUnknown | C::NameUnknown | C::NotFound
                )
            }) {
                ErrorKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, C::Unauthorized | C::Denied))
            {
                ErrorKind::Unauthorized
            } else if codes.iter().any(|c| matches!(c, C::Toomanyrequests)) {
                ErrorKind::Unavailable { retry_after: None }
            } else {
                ErrorKind::Protocol
            };
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|x| format!("{:?}: {}", x.code, x.message))
                .collect();
            (kind, msgs.join("; "))
        }
        E::ServerError { code, message, .. } => (
            status_kind(*code),
            format!(
                "HTTP {code}{}{}",
                if message.is_empty() { "" } else { ": " },
                message.trim()
            ),
        ),
        E::RequestError(r) => transport(r),
        E::DigestError(_) => (ErrorKind::Digest, e.to_string()),
        E::IoError(io) => (ErrorKind::Network, io.to_string()),
        _ => (ErrorKind::Protocol, e.to_string()),
    }
}

/// The kind and text of a reqwest failure: a status is classified as one, anything
/// else (refused, reset, timed out, TLS) is the network's.
fn transport(r: &reqwest::Error) -> (ErrorKind, String) {
    let mut msg = error_chain(r);
    let kind = match r.status() {
        Some(s) => status_kind(s.as_u16(), None),
        None if r.is_connect() => ErrorKind::Unreachable,
        None => ErrorKind::Network,
    };
    if msg.contains("certificate") || msg.contains("UnknownIssuer") {
        msg.push_str(": trust the registry's CA with --src-cert-dir/--dest-cert-dir or /etc/containers/certs.d/HOST:PORT/ca.crt, or use --src-tls-verify=false/--dest-tls-verify=false for a test registry");
    }
    // reqwest names the registry, not the proxy it went through: a proxy that is
    // down or refuses would read as the registry being down.
    if matches!(kind, ErrorKind::Unreachable | ErrorKind::Network) {
        let env = |k: &str| std::env::var(k).ok();
        let named = r.url().and_then(|u| match PROXY.get() {
            Some(p) => (!exempt(u, &env)).then(|| (p.clone(), "--proxy".to_string())),
            None => env_proxy(u, &env),
        });
        if let Some((proxy, var)) = named {
            let proxy = redact(&proxy);
            msg.push_str(&format!(
                ": through the proxy {proxy} ({var}); check that it runs and lets this registry through, or exempt the registry with NO_PROXY"
            ));
        }
    }
    (kind, msg)
}

/// The proxy reqwest takes from the environment for `url`, and the variable it
/// came from: `HTTPS_PROXY` (https) or `HTTP_PROXY` (http), either case, then
/// `ALL_PROXY`; none when `NO_PROXY` exempts the host (`*`, the host, or a domain
/// it is in).
fn env_proxy(url: &reqwest::Url, var: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    if exempt(url, var) {
        return None;
    }
    let names: &[&str] = if url.scheme() == "https" {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    names
        .iter()
        .find_map(|k| var(k).filter(|v| !v.is_empty()).map(|v| (v, k.to_string())))
}

/// Whether `NO_PROXY` exempts `url`'s host: `*`, the host, or a domain it is in.
fn exempt(url: &reqwest::Url, var: &dyn Fn(&str) -> Option<String>) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    ["NO_PROXY", "no_proxy"]
        .iter()
        .filter_map(|k| var(k))
        .flat_map(|v| {
            v.split(',')
                .map(|e| e.trim().to_string())
                .collect::<Vec<_>>()
        })
        .any(|e| {
            let domain = e.trim_start_matches('.');
            e == "*"
                || (!domain.is_empty() && (host == domain || host.ends_with(&format!(".{domain}"))))
        })
}

/// A `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: String,
    scope: String,
}

impl BearerChallenge {
    /// The `Bearer` challenges of a 401's `WWW-Authenticate` headers.
    fn all(headers: &http::HeaderMap) -> impl Iterator<Item = Self> + '_ {
        headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(BearerChallenge::parse)
    }

    fn parse(header: &str) -> Option<Self> {
        let rest = header
            .strip_prefix("Bearer ")
            .or(header.strip_prefix("bearer "))?;
        let mut c = BearerChallenge {
            realm: String::new(),
            service: String::new(),
            scope: String::new(),
        };
        // key=value pairs, commas between them (RFC 9110 auth-params): a value
        // is quoted, and may then hold commas itself (`pull,push`), or a bare
        // token, as some registries send `service`.
        let mut s = rest.trim();
        while let Some((key, after)) = s.split_once('=') {
            let (value, tail) = match after.strip_prefix('"') {
                Some(quoted) => quoted.split_once('"')?,
                None => after.split_once(',').unwrap_or((after, "")),
            };
            match key.trim() {
                "realm" => c.realm = value.to_string(),
                "service" => c.service = value.to_string(),
                "scope" => c.scope = value.to_string(),
                _ => {}
            }
            s = tail.trim_start_matches(',').trim_start();
        }
        (!c.realm.is_empty()).then_some(c)
    }

    /// Whether its scope asks for an action other than pull and push.
    fn beyond_pull_and_push(&self) -> bool {
        self.scope.split(' ').any(|scope| {
            scope
                .rsplit(':')
                .next()
                .is_some_and(|actions| actions.split(',').any(|a| a != "pull" && a != "push"))
        })
    }
}

/// `bytes` as a manifest: they hash to the digest the registry `reported` (when
/// it reported one) and parse as one of the mirrorable manifest types.
fn checked_manifest(
    bytes: Bytes,
    reported: Option<&str>,
    target: String,
) -> Result<RawManifest, RegistryError> {
    let computed = Digest::of(&bytes);
    if let Some(reported) = reported
        && reported != computed.as_str()
    {
        return Err(RegistryError::Request {
            operation: "pull manifest",
            target,
            kind: ErrorKind::Digest,
            message: format!(
                "registry reported digest {reported} but the bytes hash to {computed}"
            ),
        });
    }
    let parsed = manifest::parse(&bytes, None).map_err(|source| RegistryError::Manifest {
        target: target.clone(),
        source,
    })?;
    Ok(RawManifest {
        bytes,
        digest: computed,
        media_type: parsed.media_type,
    })
}

/// The error for a response with an unexpected status: its kind from the status
/// (with `Retry-After`), its text from the distribution error codes of the body.
async fn response_error(
    operation: &'static str,
    target: String,
    response: reqwest::Response,
) -> RegistryError {
    let (kind, message) = response_problem(response).await;
    RegistryError::Request {
        operation,
        target,
        kind,
        message,
    }
}

/// What a caller of [`RegistryClient::referrers`] knows of the subject's
/// referrers tag (`sha256-<hex>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrersTag {
    /// Nothing: it is read where the referrers API lists nothing.
    Unknown,
    /// The repository's tag list does not name it.
    Absent,
}

/// What a registry's `/v2/` answers a request without credentials.
#[derive(Debug)]
pub(crate) enum V2Answer {
    /// 2xx: the registry asks for no credential (see [`direct`]).
    Open,
    /// 401, with the `Bearer` challenge when it gave one.
    Challenged(Option<BearerChallenge>),
}

/// The error for a request that got no response (or whose body broke off).
fn transport_error(operation: &'static str, target: &str, e: &reqwest::Error) -> RegistryError {
    let (kind, message) = transport(e);
    RegistryError::Request {
        operation,
        target: target.to_string(),
        kind,
        message,
    }
}

/// The start of an error response's body: enough for the registry's error
/// codes, and no more whatever a hostile registry sends.
async fn error_body(mut response: reqwest::Response) -> String {
    const LIMIT: usize = 64 << 10;
    let mut body = Vec::new();
    while body.len() < LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(LIMIT - body.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// One entry of a registry's error document.
#[derive(serde::Deserialize)]
struct ErrorEntry {
    code: String,
    #[serde(default)]
    message: String,
}

/// The entries of a registry's error document (`{"errors": [...]}`, the
/// distribution spec's error body); `None` for any other body (a router's or
/// a proxy's page).
fn error_document(body: &str) -> Option<Vec<ErrorEntry>> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<ErrorEntry>,
    }
    serde_json::from_str::<Envelope>(body)
        .ok()
        .map(|e| e.errors)
}

/// The kind and text of an error response.
async fn response_problem(response: reqwest::Response) -> (ErrorKind, String) {
    let status = response.status();
    let retry_after = retry::retry_after(&response);
    let body = error_body(response).await;
    let detail = match error_document(&body) {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .map(|x| format!("{}: {}", x.code, x.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.trim().to_string(),
    };
    let kind = status_kind(status.as_u16(), retry_after);
    let mut message = format!("HTTP {}", status.as_u16());
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&airlock_oci::quote::clipped(&detail));
    }
    if kind == ErrorKind::Unauthorized {
        message.push_str(": check the credentials for this registry in the auth file (REGISTRY_AUTH_FILE, --authfile, ~/.docker/config.json)");
    }
    (kind, message)
}

/// A local file's bytes as a streamed request body.
async fn file_body(target: &str, path: &Path) -> Result<reqwest::Body, RegistryError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| RegistryError::LocalFile {
            target: target.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    let file = file.into_std().await;
    Ok(reqwest::Body::wrap_stream(file_blocks(file, u64::MAX)))
}

/// The first `len` bytes of `file`, 256 KiB at a time. A blocking thread reads
/// each block straight into the buffer that is sent, at most two blocks ahead
/// of the sender. `tokio::fs` reads into a buffer of its own and copies each
/// block out again: a copy of every byte a publish uploads, and a task handed
/// to the blocking pool for every block (docs/benchmarks.md, stop 52). The
/// thread starts when the stream is first polled, so a body built before its
/// upload session opens holds no thread meanwhile, and ends at the end of the
/// file, at an error, or when the stream is dropped.
pub(crate) fn file_blocks(
    file: std::fs::File,
    len: u64,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    use std::io::Read;
    futures::stream::once(async move {
        let (send, blocks) = tokio::sync::mpsc::channel(1);
        tokio::task::spawn_blocking(move || {
            airlock_common::io::read_blocks(file.take(len), 256 << 10, |block| {
                send.blocking_send(block.map(Bytes::from)).is_ok()
            })
        });
        futures::stream::unfold(blocks, |mut blocks| async move {
            blocks.recv().await.map(|block| (block, blocks))
        })
    })
    .flatten()
    .boxed()
}

/// The upload session `response` opened: its `Location`, against `base`.
fn location(base: &reqwest::Url, response: &reqwest::Response) -> Option<reqwest::Url> {
    let location = response
        .headers()
        .get(http::header::LOCATION)?
        .to_str()
        .ok()?;
    base.join(location).ok()
}

/// Whether a credential is an identity token (an OAuth2 refresh token, only
/// ever exchanged at the token service).
fn is_identity(credentials: &Option<Credentials>) -> bool {
    credentials
        .as_ref()
        .is_some_and(|c| c.identity_token.is_some())
}

/// The user name and password a credential sends as basic auth: none for an
/// identity token, which never goes to a registry.
fn basic(credentials: &Option<Credentials>) -> Option<(&str, &str)> {
    credentials
        .as_ref()
        .filter(|_| !is_identity(credentials))
        .map(|c| (c.username.as_str(), c.password.as_str()))
}

/// What oci-client is given for a credential: never an identity token, which it
/// would send as an access token (it is a refresh token, exchanged here).
fn oci_auth(credentials: &Option<Credentials>) -> RegistryAuth {
    match basic(credentials) {
        Some((user, password)) => RegistryAuth::Basic(user.into(), password.into()),
        None => RegistryAuth::Anonymous,
    }
}

fn request_error(
    operation: &'static str,
    target: String,
    e: OciDistributionError,
) -> RegistryError {
    let (kind, message) = classify(&e);
    RegistryError::Request {
        operation,
        target,
        kind,
        message,
    }
}

/// The CA certificates to trust for `host`.
fn ca_certificates(host: &str, cert_dir: Option<&Path>) -> Result<Vec<Certificate>, RegistryError> {
    let dirs: Vec<PathBuf> = match cert_dir {
        Some(d) => vec![d.to_path_buf()],
        None => vec![
            Path::new("/etc/containers/certs.d").join(host),
            Path::new("/etc/docker/certs.d").join(host),
        ],
    };
    let mut certs = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for path in files {
            let data = std::fs::read(&path).map_err(|source| RegistryError::Certificate {
                path: path.clone(),
                source,
            })?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
    }
    Ok(certs)
}

/// Reads sent again, at most, when each fails on a pooled connection closed
/// while idle (one per connection the pool may hold stale).
const STALE_CONNECTIONS: usize = 8;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Manifests read from one registry at once: enough that a catalog's
/// thousands are read in round trips, not one after another; as many as
/// Airlock downloads small blobs at once by default.
const MANIFEST_READS_AT_ONCE: usize = 32;
/// Longest silence on a connection before it counts as broken (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(300);
const USER_AGENT: &str = concat!("airlock/", env!("CARGO_PKG_VERSION"));

/// With `--tls-verify=false`, a registry may speak plain HTTP or HTTPS with an
/// untrusted certificate; like containers/image, try HTTPS first and fall back to
/// HTTP when HTTP answers. A registry that answers neither (down, not reachable
/// yet) is an error, not a guess: a client fixed to the wrong scheme would fail
/// for as long as it is kept, while a failed connect is tried again (by the
/// agent's backoff per cluster, by the user's next run).
async fn speaks_https(host: &str) -> Result<bool, RegistryError> {
    let client = proxied(reqwest::Client::builder())
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| RegistryError::Request {
            operation: "connect",
            target: host.to_string(),
            kind: ErrorKind::Protocol,
            message: error_chain(&e),
        })?;
    let answers = |scheme: &str| client.get(format!("{scheme}://{host}/v2/")).send();
    let https = match answers("https").await {
        Ok(_) => return Ok(true),
        Err(e) => e,
    };
    match answers("http").await {
        Ok(_) => Ok(false),
        Err(http) => {
            // Both, since either may be the one that matters (a proxy may
            // stand in the way of one scheme only).
            let (https_kind, over_https) = transport(&https);
            let (http_kind, over_http) = transport(&http);
            // Something that answered HTTPS with other than TLS says nothing
            // about whether the registry is down; the HTTP attempt does then.
            let kind = match https_kind {
                ErrorKind::Protocol => http_kind,
                kind => kind,
            };
            Err(RegistryError::Request {
                operation: "connect",
                target: host.to_string(),
                kind,
                message: format!("over HTTPS: {over_https}; over plain HTTP: {over_http}"),
            })
        }
    }
}

/// The proxy for every registry this process talks to, set once (`--proxy`, the
/// connected agent's `source.proxy`); without it the environment's
/// `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` apply, as reqwest reads them.
/// `NO_PROXY` exempts hosts either way.
static PROXY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why a URL cannot be the proxy. The URL is shown without its password.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not a URL.
    #[error("{shown:?}: {source}; expected http://HOST:PORT")]
    Unparsable {
        /// The URL, redacted.
        shown: String,
        /// The parse error.
        source: <reqwest::Url as std::str::FromStr>::Err,
    },
    /// A URL, but not an HTTP(S) one with a host.
    #[error("{shown:?}: expected http://HOST:PORT (or https://)")]
    NotHttp {
        /// The URL, redacted.
        shown: String,
    },
    /// The HTTP client refuses it as a proxy.
    #[error("{shown:?}: {source}")]
    Refused {
        /// The URL, redacted.
        shown: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// Another proxy was set for this process already.
    #[error("a proxy is set already: {shown}")]
    AlreadySet {
        /// That proxy, redacted.
        shown: String,
    },
}

/// Whether `url` can be used as a proxy: `http://` or `https://` and a host.
pub fn check_proxy(url: &str) -> Result<(), ProxyError> {
    let shown = redact(url);
    let parsed = reqwest::Url::parse(url).map_err(|source| ProxyError::Unparsable {
        shown: shown.clone(),
        source,
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ProxyError::NotHttp { shown });
    }
    // Without the URL, which would carry the password into the message.
    reqwest::Proxy::all(url).map_err(|e| ProxyError::Refused {
        shown,
        source: e.without_url(),
    })?;
    Ok(())
}

/// `url` without the user name and password it may carry
/// (`http://user:pass@proxy:3128`), for messages and logs.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_password(None);
            let _ = u.set_username("****");
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Sends every registry request of this process through the proxy at `url`
/// (checked first), CONNECT for TLS registries.
pub fn use_proxy(url: &str) -> Result<(), ProxyError> {
    check_proxy(url)?;
    if let Some(p) = PROXY.get().filter(|p| *p != url) {
        return Err(ProxyError::AlreadySet { shown: redact(p) });
    }
    let _ = PROXY.set(url.to_string());
    Ok(())
}

/// `builder` with the proxy of [`use_proxy`], if set: every HTTP client of the
/// process that reaches outside (registries, update graphs, signatures).
pub fn proxied(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    match PROXY.get().and_then(|p| reqwest::Proxy::all(p).ok()) {
        Some(proxy) => builder.proxy(proxy.no_proxy(reqwest::NoProxy::from_env())),
        None => builder,
    }
}

impl RegistryClient {
    /// A client for `host` (`quay.io`, `localhost:5000`). With `tls_verify` off it
    /// probes whether the registry speaks HTTPS.
    pub async fn connect(host: &str, opts: &RegistryOptions) -> Result<Self, RegistryError> {
        let certificates = ca_certificates(host, opts.cert_dir.as_deref())?;
        let mut http = proxied(reqwest::Client::builder())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(USER_AGENT)
            .danger_accept_invalid_certs(!opts.tls_verify);
        for c in &certificates {
            let cert =
                reqwest::Certificate::try_from(c).map_err(|e| RegistryError::Certificate {
                    path: opts
                        .cert_dir
                        .clone()
                        .unwrap_or_else(|| Path::new("/etc/containers/certs.d").join(host)),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                })?;
            http = http.tls_certs_merge([cert]);
        }
        let mut config = ClientConfig {
            extra_root_certificates: certificates,
            platform_resolver: None,
            use_monolithic_push: true,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: USER_AGENT,
            https_proxy: PROXY.get().cloned(),
            http_proxy: PROXY.get().cloned(),
            no_proxy: std::env::var("NO_PROXY")
                .or_else(|_| std::env::var("no_proxy"))
                .ok(),
            ..ClientConfig::default()
        };
        let mut scheme = "https";
        if !opts.tls_verify {
            config.accept_invalid_certificates = true;
            if !speaks_https(host).await? {
                config.protocol = ClientProtocol::Http;
                scheme = "http";
            }
        }
        let client = Client::new(config);
        let http = http.build().map_err(|e| RegistryError::Request {
            operation: "connect",
            target: host.to_string(),
            kind: ErrorKind::Protocol,
            message: error_chain(&e),
        })?;
        // oci-client keeps one credential per registry, under the registry name it
        // resolves to (docker.io becomes index.docker.io).
        let credentials = opts.auth.lookup(host, "")?;
        let resolved = Reference::with_tag(host.to_string(), "library/x".into(), "latest".into());
        client
            .store_auth_if_needed(resolved.resolve_registry(), &oci_auth(&credentials))
            .await;
        let base = format!("{scheme}://{}/", resolved.resolve_registry());
        let base = reqwest::Url::parse(&base).map_err(|e| RegistryError::Request {
            operation: "connect",
            target: host.to_string(),
            kind: ErrorKind::Protocol,
            message: format!("{base}: {e}"),
        })?;
        Ok(RegistryClient {
            host: host.to_string(),
            client,
            http,
            base,
            credentials,
            auth: opts.auth.clone(),
            by_repository: Default::default(),
            pulls_authorised: Default::default(),
            tokens: Default::default(),
            scoped: Default::default(),
            v2: Default::default(),
            referrers_api: Default::default(),
            manifest_reads: tokio::sync::Semaphore::new(MANIFEST_READS_AT_ONCE),
            mirrors: opts.mirrors.clone(),
            layouts: None,
        })
    }

    /// The client of [`layout::HOST`]: its reads come from `layouts`. Files, not
    /// a network: no probe, no certificates, no mirrors, and no credential is
    /// ever looked up (which could run a credential helper).
    fn for_layouts(layouts: std::sync::Arc<layout::Layouts>) -> Result<Self, RegistryError> {
        let host = layout::HOST;
        let fail = |message: String| RegistryError::Request {
            operation: "connect",
            target: host.to_string(),
            kind: ErrorKind::Protocol,
            message,
        };
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| fail(error_chain(&e)))?;
        let base =
            reqwest::Url::parse(&format!("https://{host}/")).map_err(|e| fail(e.to_string()))?;
        Ok(RegistryClient {
            host: host.to_string(),
            client: Client::new(ClientConfig::default()),
            http,
            base,
            credentials: None,
            auth: AuthSource::new(None),
            by_repository: Default::default(),
            pulls_authorised: Default::default(),
            tokens: Default::default(),
            scoped: Default::default(),
            v2: Default::default(),
            referrers_api: Default::default(),
            manifest_reads: tokio::sync::Semaphore::new(MANIFEST_READS_AT_ONCE),
            mirrors: None,
            layouts: Some(layouts),
        })
    }

    /// Sends a read of `repository` where `registries.conf` says, in order, and
    /// returns the first success or the last error; straight here without rules.
    async fn routed<T>(
        &self,
        repository: &str,
        by_digest: bool,
        operation: &'static str,
        call: impl for<'a> Fn(
            &'a RegistryClient,
            String,
        ) -> futures::future::BoxFuture<'a, Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let Some(m) = &self.mirrors else {
            return call(self, repository.to_string()).await;
        };
        let endpoints = match m.route(&self.host, repository, by_digest) {
            Ok(None) => return call(self, repository.to_string()).await,
            Ok(Some(e)) => e,
            Err(blocked) => {
                return Err(RegistryError::Blocked {
                    target: format!("{}/{repository}", self.host),
                    message: blocked,
                });
            }
        };
        let mut last = None;
        let mut mirrors_failed = Vec::new();
        let mut said_absent: Option<RegistryError> = None;
        // A mirror that refused (credentials, throttling, a fault) gave no
        // answer either, and one mirror's "not here" must not hide it.
        let mut mirror_refused = false;
        // A mirror that asked to wait (429, 5xx): when the source is out of
        // reach, waiting for the mirror is what can still succeed.
        let mut mirror_throttled = None;
        for e in endpoints {
            let result = if e.host == self.host && !e.insecure {
                call(self, e.repository.clone()).await
            } else {
                match m.client(&e.host, e.insecure).await {
                    Ok(c) => call(&c, e.repository.clone()).await,
                    Err(err) => Err(err),
                }
            };
            match result {
                Ok(v) => {
                    if e.mirror {
                        tracing::debug!(source = %format!("{}/{repository}", self.host), mirror = %format!("{}/{}", e.host, e.repository), operation, "read from a registries.conf mirror");
                    }
                    return Ok(v);
                }
                Err(err) => {
                    tracing::debug!(endpoint = %format!("{}/{}", e.host, e.repository), error = %err, operation, "registries.conf endpoint failed; trying the next");
                    if e.mirror {
                        mirrors_failed.push(err.to_string());
                        match err.kind() {
                            Some(ErrorKind::NotFound) => {
                                said_absent.get_or_insert(err);
                                continue;
                            }
                            Some(ErrorKind::Unreachable | ErrorKind::Network) => {}
                            Some(k @ ErrorKind::Unavailable { .. }) => {
                                mirror_refused = true;
                                mirror_throttled.get_or_insert(k);
                            }
                            _ => mirror_refused = true,
                        }
                    }
                    last = Some(err);
                }
            }
        }
        let last = last.expect("the primary location is always an endpoint");
        // A mirror that answered "not here" gave an answer; a source out of
        // reach gave none. The answer stands, so that a site that reaches its
        // sources only through a cache learns that something is absent rather
        // than that the source is down; unless another mirror refused.
        let last = match (said_absent, last.kind()) {
            (Some(absent), Some(ErrorKind::Unreachable | ErrorKind::Network))
                if !mirror_refused =>
            {
                absent
            }
            (_, _) => last,
        };
        // The source's own error, with what each mirror said: a cache that
        // refused the credentials matters more than a source that is out of reach.
        // A source out of reach behind a throttling mirror is classified as the
        // mirror's answer, so that a retry loop waits for the mirror.
        match last {
            RegistryError::Request {
                operation,
                target,
                kind,
                message,
            } if !mirrors_failed.is_empty() => Err(RegistryError::Request {
                operation,
                target,
                kind: match (kind, mirror_throttled) {
                    (ErrorKind::Unreachable, Some(throttled)) => throttled,
                    (kind, _) => kind,
                },
                message: format!(
                    "{message} (its registries.conf mirrors failed too: {})",
                    mirrors_failed.join("; ")
                ),
            }),
            other => Err(other),
        }
    }

    /// The registry host.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn by_digest(&self, repository: &str, digest: &Digest) -> Reference {
        Reference::with_digest(
            self.host.clone(),
            repository.to_string(),
            digest.to_string(),
        )
    }

    fn by_reference(&self, repository: &str, reference: &str) -> Reference {
        match reference.parse::<Digest>() {
            Ok(d) => self.by_digest(repository, &d),
            Err(_) => Reference::with_tag(
                self.host.clone(),
                repository.to_string(),
                reference.to_string(),
            ),
        }
    }

    fn target(&self, repository: &str, reference: &str) -> String {
        let sep = if reference.contains(':') { '@' } else { ':' };
        format!("{}/{repository}{sep}{reference}", self.host)
    }

    /// Pulls a manifest by tag or digest, with its exact bytes. The bytes are checked
    /// against the requested digest (or the registry's `Docker-Content-Digest`) and must
    /// parse as one of the four mirrorable manifest types.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        if let Some(l) = &self.layouts {
            return l.get_manifest(repository, reference, &self.target(repository, reference));
        }
        let by_digest = digest_bound(reference);
        let reference = reference.to_string();
        self.routed(repository, by_digest, "pull manifest", move |c, repo| {
            let reference = reference.clone();
            Box::pin(async move { c.get_manifest_here(&repo, &reference).await })
        })
        .await
    }

    async fn get_manifest_here(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<RawManifest, RegistryError> {
        let _read = self.manifest_reads.acquire().await.expect("never closed");
        if self.anonymous(repository).await {
            return self.get_manifest_direct(repository, reference).await;
        }
        let target = self.target(repository, reference);
        let r = self.by_reference(repository, reference);
        let (bytes, digest) = self
            .reading(repository, || {
                self.client
                    .pull_manifest_raw(&r, &RegistryAuth::Anonymous, ACCEPTED)
            })
            .await
            .map_err(|e| request_error("pull manifest", target.clone(), e))?;
        checked_manifest(bytes, Some(&digest), target)
    }

    /// [`Self::get_manifest`], with `None` when the registry has no such manifest
    /// (a tag not pushed yet, a manifest deleted).
    pub async fn find_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<RawManifest>, RegistryError> {
        match self.get_manifest(repository, reference).await {
            Err(e) if e.kind() == Some(ErrorKind::NotFound) => Ok(None),
            result => result.map(Some),
        }
    }

    /// Whether the repository has a manifest with this digest.
    pub async fn has_manifest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if let Some(l) = &self.layouts {
            return l.has(
                repository,
                digest,
                &self.target(repository, digest.as_str()),
            );
        }
        self.exists(repository, digest.as_str(), "check manifest")
            .await
    }

    /// Pushes manifest bytes unchanged: under `tag` when one is given, and by
    /// digest unless the tag push answered with that digest (a registry checks
    /// the digest in a URL against the bytes, and names the digest it stored).
    /// A registry that stored the bytes under another digest changed them, and
    /// is refused: clusters pull by the digest the imageset lists.
    pub async fn put_manifest(
        &self,
        repository: &str,
        manifest: &RawManifest,
        tag: Option<&str>,
    ) -> Result<(), RegistryError> {
        let content_type = http::HeaderValue::from_str(&manifest.media_type).map_err(|_| {
            RegistryError::Request {
                operation: "push manifest",
                target: self.target(repository, manifest.digest.as_str()),
                kind: ErrorKind::Protocol,
                message: format!(
                    "media type {:?} is not a valid header value",
                    manifest.media_type
                ),
            }
        })?;
        for reference in tag.into_iter().chain([manifest.digest.as_str()]) {
            let target = self.target(repository, reference);
            let url = self.url(
                &format!("v2/{repository}/manifests/{reference}"),
                "push manifest",
                &target,
            )?;
            let response = self
                .send(repository, "push manifest", &target, |http| {
                    http.put(url.clone())
                        .header(http::header::CONTENT_TYPE, content_type.clone())
                        .body(manifest.bytes.clone())
                })
                .await?;
            if response.status() != reqwest::StatusCode::CREATED {
                return Err(response_error("push manifest", target, response).await);
            }
            match direct::reported_digest(&response) {
                Some(stored) if stored == manifest.digest.as_str() => break,
                Some(stored) => {
                    return Err(RegistryError::Request {
                        operation: "push manifest",
                        target,
                        kind: ErrorKind::Protocol,
                        message: format!(
                            "the registry stored it as {stored}: it changed the bytes, and clusters pull by {}",
                            manifest.digest
                        ),
                    });
                }
                None => {}
            }
        }
        Ok(())
    }

    /// `path` under the registry's base URL.
    fn url(
        &self,
        path: &str,
        operation: &'static str,
        target: &str,
    ) -> Result<reqwest::Url, RegistryError> {
        self.base.join(path).map_err(|e| RegistryError::Request {
            operation,
            target: target.to_string(),
            kind: ErrorKind::Protocol,
            message: format!("{path}: {e}"),
        })
    }

    /// The bearer token to push to `repository` (`None` when the registry needs
    /// none), through `oci-client`'s token flow; `fresh` asks for a new one.
    async fn token(
        &self,
        repository: &str,
        target: &str,
        fresh: bool,
    ) -> Result<Option<String>, RegistryError> {
        let mut tokens = self.tokens.lock().await;
        if !fresh && let Some(t) = tokens.get(repository) {
            return Ok(t.clone());
        }
        let r = self.by_reference(repository, "latest");
        let credentials = self.credentials_for(repository).0;
        let token = if !fresh && self.anonymous(repository).await {
            // oci-client would ask `/v2/` again for every repository, to learn
            // what the version check already said. A registry that wants a token
            // after all answers 401, and the fresh ask goes through oci-client.
            None
        } else if is_identity(&credentials) {
            Some(
                self.identity_access(repository, "pull,push", fresh, target)
                    .await?,
            )
        } else {
            self.client
                .auth(&r, &oci_auth(&credentials), RegistryOperation::Push)
                .await
                .map_err(|e| request_error("authenticate", target.to_string(), e))?
        };
        tokens.insert(repository.to_string(), token.clone());
        Ok(token)
    }

    /// The credential for `repository`, and whether it differs from the
    /// registry's (oci-client keeps one per registry and must then be given it).
    /// A file that cannot be read now was read at connect: the registry's stands.
    fn credentials_for(&self, repository: &str) -> (Option<Credentials>, bool) {
        if let Some(c) = self
            .by_repository
            .lock()
            .expect("not poisoned")
            .get(repository)
        {
            return c.clone();
        }
        // Looked up outside the lock: a credential helper may take its time.
        let own = match self.auth.lookup(&self.host, repository) {
            Ok(Some(c)) => Some(c),
            Ok(None) => self.credentials.clone(),
            Err(e) => {
                tracing::warn!(registry = %self.host, %repository, error = %e, "no credential of its own for this repository; using the registry's");
                self.credentials.clone()
            }
        };
        let differs = own != self.credentials;
        self.by_repository
            .lock()
            .expect("not poisoned")
            .insert(repository.to_string(), (own.clone(), differs));
        (own, differs)
    }

    /// Runs an oci-client read, once more on a network failure, and once more
    /// after a new token when the registry answers 401: oci-client keeps a token until the expiry its token service
    /// announced, and a registry may refuse it before (it expired during a long
    /// run; the clocks differ). The credential is still good, so that is no
    /// reason to fail a publish of hours.
    async fn reading<T, Fut>(
        &self,
        repository: &str,
        call: impl Fn() -> Fut,
    ) -> Result<T, OciDistributionError>
    where
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let (credentials, own) = self.credentials_for(repository);
        let r = self.by_reference(repository, "latest");
        let identity = is_identity(&credentials);
        // oci-client would ask with the registry's credential, and can do nothing
        // with an identity token: it is given this repository's pull token.
        let authorise = |fresh: bool| {
            let (r, credentials) = (&r, &credentials);
            async move {
                let auth = if identity {
                    // The token service's own answer is what tells an operator
                    // that the identity token expired: kept for the error.
                    let token = self
                        .identity_access(repository, "pull", fresh, &r.whole())
                        .await
                        .map_err(|e| OciDistributionError::AuthenticationFailure(e.to_string()))?;
                    RegistryAuth::Bearer(token)
                } else {
                    oci_auth(credentials)
                };
                self.client
                    .auth(r, &auth, RegistryOperation::Pull)
                    .await
                    .map(|_| ())
            }
        };
        if own || identity {
            let once = self
                .pulls_authorised
                .lock()
                .await
                .entry(repository.to_string())
                .or_default()
                .clone();
            // Reads of one repository at once wait for its first authorisation:
            // one sent before it would go without, and oci-client would ask the
            // token service anonymously. A failure shows in the call itself.
            once.get_or_init(|| async {
                let _ = authorise(false).await;
            })
            .await;
        }
        match call().await {
            Err(e) if classify(&e).0 == ErrorKind::Unauthorized => {
                if let Err(refused) = authorise(true).await {
                    return Err(if identity { refused } else { e });
                }
                call().await
            }
            // A pooled connection that a proxy or the registry closed while it was
            // idle fails the request that reuses it ("connection closed before
            // message completed"); a read is safe to send again. Several pooled
            // connections may have been closed at once (a proxy that does not
            // keep connections alive), each failing one attempt; anything else
            // on the network is tried once more.
            Err(e) if classify(&e).0 == ErrorKind::Network => {
                let mut last = call().await;
                for _ in 0..STALE_CONNECTIONS {
                    match &last {
                        Err(e) if classify(e).1.contains("closed before message completed") => {
                            last = call().await;
                        }
                        _ => break,
                    }
                }
                last
            }
            other => other,
        }
    }

    /// `request` with the credentials for `repository` when it goes to this
    /// registry; never elsewhere (an upload `Location` may point at another host,
    /// and credentials must not leak there, CVE-2020-15157).
    async fn authorised(
        &self,
        repository: &str,
        target: &str,
        fresh: bool,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        Ok(match self.token(repository, target, fresh).await? {
            Some(token) => request.bearer_auth(token),
            None => match basic(&self.credentials_for(repository).0) {
                Some((user, password)) => request.basic_auth(user, Some(password)),
                None => request,
            },
        })
    }

    /// Sends a request to this registry built by `build`, again with a fresh token
    /// when the registry answers 401 (a token expired during a long run), and with
    /// a token for exactly the scope the registry's challenge names when that is
    /// more than pull and push (oci-client asks for those two only; a delete
    /// needs `delete`). The response is returned whatever its status.
    async fn send(
        &self,
        repository: &str,
        operation: &'static str,
        target: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let transport = |e: reqwest::Error| transport_error(operation, target, &e);
        let mut fresh = false;
        let mut scoped: Option<(BearerChallenge, String)> = None;
        loop {
            let request = match &scoped {
                Some((_, token)) => build(&self.http).bearer_auth(token),
                None => {
                    self.authorised(repository, target, fresh, build(&self.http))
                        .await?
                }
            };
            let response = request.send().await.map_err(transport)?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if let Some((challenge, _)) = scoped.take() {
                // A cached token refused: it expired. Once more with a new one.
                if fresh {
                    return Ok(response);
                }
                fresh = true;
                self.scoped.lock().await.remove(&challenge.scope);
                let token = self.scoped_token(&challenge, operation, target).await?;
                scoped = Some((challenge, token));
                continue;
            }
            let wider = BearerChallenge::all(response.headers()).find(|c| c.beyond_pull_and_push());
            match wider {
                Some(challenge) => {
                    let token = self.scoped_token(&challenge, operation, target).await?;
                    scoped = Some((challenge, token));
                }
                None if !fresh => fresh = true,
                None => return Ok(response),
            }
        }
    }

    /// A token from the challenge's realm for its scope, cached by scope; asked
    /// with this registry's credentials, as every registry client does.
    async fn scoped_token(
        &self,
        challenge: &BearerChallenge,
        operation: &'static str,
        target: &str,
    ) -> Result<String, RegistryError> {
        // Not held while the token is asked: one slow token service (or
        // credential helper) must not hold up every other scope.
        if let Some(t) = self.scoped.lock().await.get(&challenge.scope) {
            return Ok(t.clone());
        }
        // A token service out of reach or answering 429 or 5xx is "not now",
        // retried as the registry would be; only its refusal is Unauthorized.
        let failed = |kind: ErrorKind, message: String| RegistryError::Request {
            operation,
            target: target.to_string(),
            kind,
            message,
        };
        // The credential of the repository the (first) scope names.
        let repository = challenge.scope.split(':').nth(1).unwrap_or_default();
        let credentials = self.credentials_for(repository).0;
        let identity = is_identity(&credentials);
        let request = match credentials {
            // An identity token is an OAuth2 refresh token: POSTed to the realm
            // (distribution's oauth flow, as containers/image does), the scopes
            // space-separated in one parameter.
            Some(Credentials {
                identity_token: Some(refresh),
                ..
            }) => self.http.post(&challenge.realm).form(&[
                ("grant_type", "refresh_token"),
                ("service", challenge.service.as_str()),
                ("client_id", "airlock"),
                ("refresh_token", refresh.as_str()),
                ("scope", challenge.scope.as_str()),
            ]),
            // One `scope` parameter per scope, as the token protocol has it.
            credentials => {
                let mut query = vec![("service", challenge.service.as_str())];
                query.extend(challenge.scope.split(' ').map(|s| ("scope", s)));
                let request = self.http.get(&challenge.realm).query(&query);
                match credentials {
                    Some(c) => request.basic_auth(c.username, Some(c.password)),
                    None => request,
                }
            }
        };
        let response = request.send().await.map_err(|e| {
            let (kind, message) = transport(&e);
            failed(
                kind,
                format!(
                    "token for {} from {}: {message}",
                    challenge.scope, challenge.realm,
                ),
            )
        })?;
        let status = response.status();
        let kind = match status_kind(status.as_u16(), retry::retry_after(&response)) {
            unavailable @ ErrorKind::Unavailable { .. } => unavailable,
            _ => ErrorKind::Unauthorized,
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .filter(|_| status.is_success())
            .ok_or_else(|| {
                // What the service said (OAuth2's error and description, or
                // distribution's details), then what to do.
                let said: Vec<&str> = ["error", "error_description", "details"]
                    .iter()
                    .filter_map(|k| body[*k].as_str())
                    .collect();
                let said = match said.is_empty() {
                    true => String::new(),
                    false => format!(" ({})", airlock_oci::quote::clipped(&said.join(": "))),
                };
                let what = if identity {
                    "the identity token in the auth file was refused (they expire: log in again, e.g. az acr login or docker login)".to_string()
                } else {
                    format!(
                        "check that the credential in the auth file may {}",
                        challenge.scope.rsplit(':').next().unwrap_or_default()
                    )
                };
                failed(
                    kind,
                    format!(
                        "the token service {} answered {status}{said} for {}; {what}",
                        challenge.realm, challenge.scope,
                    ),
                )
            })?
            .to_string();
        self.scoped
            .lock()
            .await
            .insert(challenge.scope.clone(), token.clone());
        Ok(token)
    }

    /// An access token for `actions` on `repository` in exchange for its
    /// credential's identity token, from the realm of the registry's challenge;
    /// `fresh` drops a cached one the registry refused.
    async fn identity_access(
        &self,
        repository: &str,
        actions: &str,
        fresh: bool,
        target: &str,
    ) -> Result<String, RegistryError> {
        let Some(mut challenge) = self.bearer().await else {
            return Err(RegistryError::Request {
                operation: "authenticate",
                target: target.to_string(),
                kind: ErrorKind::Unauthorized,
                message: format!(
                    "the auth file holds an identity token for {}, but the registry asks for no token (it answered /v2/ without a Bearer challenge); log in with a user name and password instead",
                    self.host
                ),
            });
        };
        challenge.scope = format!("repository:{repository}:{actions}");
        if fresh {
            self.scoped.lock().await.remove(&challenge.scope);
        }
        self.scoped_token(&challenge, "authenticate", target).await
    }

    /// Deletes a manifest by digest (which removes every tag pointing at it) or a
    /// tag alone. Space is freed only by the registry's own garbage collection.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Deletion, RegistryError> {
        const OPERATION: &str = "delete manifest";
        let target = self.target(repository, reference);
        let url = self.url(
            &format!("v2/{repository}/manifests/{reference}"),
            OPERATION,
            &target,
        )?;
        let response = self
            .send(repository, OPERATION, &target, |http| {
                http.delete(url.clone())
            })
            .await?;
        let status = response.status().as_u16();
        Ok(match status {
            200..=299 => Deletion::Deleted,
            404 => Deletion::Absent,
            // 405 is distribution's answer with `storage.delete.enabled: false`
            // (and Docker Hub's). Distribution 2.x deletes by digest only and
            // answers a tag with 400 DIGEST_INVALID.
            405 => Deletion::Refused(response_problem(response).await.1),
            400 if reference.parse::<Digest>().is_err() => {
                Deletion::Refused(response_problem(response).await.1)
            }
            _ => return Err(response_error(OPERATION, target, response).await),
        })
    }

    /// Whether `tag` exists in the repository.
    pub async fn has_tag(&self, repository: &str, tag: &str) -> Result<bool, RegistryError> {
        if let Some(l) = &self.layouts {
            return l.has_tag(repository, tag, &self.target(repository, tag));
        }
        let by_digest = digest_bound(tag);
        let tag = tag.to_string();
        let result = self
            .routed(repository, by_digest, "check tag", move |c, repo| {
                let tag = tag.clone();
                Box::pin(async move { present(c.exists(&repo, &tag, "check tag").await, &repo) })
            })
            .await;
        absent_as_false(result)
    }

    async fn exists(
        &self,
        repository: &str,
        reference: &str,
        operation: &'static str,
    ) -> Result<bool, RegistryError> {
        if self.anonymous(repository).await {
            return self.exists_direct(repository, reference, operation).await;
        }
        let r = self.by_reference(repository, reference);
        match self
            .reading(repository, || {
                self.client
                    .fetch_manifest_digest(&r, &RegistryAuth::Anonymous)
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match classify(&e).0 {
                ErrorKind::NotFound => Ok(false),
                _ => Err(request_error(
                    operation,
                    self.target(repository, reference),
                    e,
                )),
            },
        }
    }

    /// The manifests that name `subject` as their OCI 1.1 `subject`: from the
    /// referrers API, and from the referrers tag schema (`sha256-<hex>`, an index
    /// that clients keep on registries without the API). The tag is read whenever
    /// the API lists nothing or is missing (400, 404, 405, 501; a registry that
    /// showed it has none is not asked again, see [`lookups`]); only a missing
    /// tag means none (oci-client's own fallback took any error with a body for
    /// "no referrers", which could drop signatures silently). Any other failure
    /// is an error. The API's `Link` pagination is not followed. `tag` says what
    /// the caller already knows of the referrers tag (from
    /// [`RegistryClient::list_tags`]): a tag known absent is not asked for,
    /// unless `registries.conf` routes the repository (a list is then never the
    /// source's).
    pub async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        tag: ReferrersTag,
    ) -> Result<Vec<Digest>, RegistryError> {
        if self.layouts.is_some() {
            // A layout has no referrers API; its cosign tags are found by has_tag.
            return Ok(Vec::new());
        }
        let tag = if self.routed_elsewhere(repository) {
            ReferrersTag::Unknown
        } else {
            tag
        };
        let subject = subject.clone();
        // "None" from one registries.conf endpoint is a not-found answer, as for
        // existence checks (see `present`): a partial cache that lacks a
        // signature must not decide that there is none.
        let result = self
            .routed(repository, true, "list referrers", move |c, repo| {
                let subject = subject.clone();
                Box::pin(async move {
                    match c.referrers_here(&repo, &subject, tag).await? {
                        found if found.is_empty() => Err(RegistryError::Request {
                            operation: "list referrers",
                            target: repo,
                            kind: ErrorKind::NotFound,
                            message: "none here".into(),
                        }),
                        found => Ok(found),
                    }
                })
            })
            .await;
        match result {
            Err(e) if e.kind() == Some(ErrorKind::NotFound) => Ok(Vec::new()),
            other => other,
        }
    }

    async fn referrers_here(
        &self,
        repository: &str,
        subject: &Digest,
        tag: ReferrersTag,
    ) -> Result<Vec<Digest>, RegistryError> {
        let target = self.target(repository, subject.as_str());
        let mut index = self
            .referrers_api(repository, subject)
            .await?
            .unwrap_or_default();
        if index.is_empty() {
            if tag == ReferrersTag::Absent {
                return Ok(Vec::new());
            }
            let tagged = match self
                .get_manifest_here(repository, &subject.tag_form())
                .await
            {
                Err(e) if e.kind() == Some(ErrorKind::NotFound) => None,
                result => Some(result?),
            };
            if let Some(raw) = tagged {
                let parsed = raw.parse().map_err(|source| RegistryError::Manifest {
                    target: target.clone(),
                    source,
                })?;
                return Ok(parsed.children().iter().map(|c| c.digest.clone()).collect());
            }
        }
        index.dedup();
        index
            .iter()
            .map(|digest| {
                digest
                    .parse::<Digest>()
                    .map_err(|e| RegistryError::Request {
                        operation: "list referrers",
                        target: target.clone(),
                        kind: ErrorKind::Protocol,
                        message: format!("referrer digest {digest:?}: {e}"),
                    })
            })
            .collect()
    }

    /// Whether the repository has (or can serve) a blob.
    pub async fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool, RegistryError> {
        if let Some(l) = &self.layouts {
            return l.has(
                repository,
                digest,
                &self.target(repository, digest.as_str()),
            );
        }
        let digest = digest.clone();
        let result = self
            .routed(repository, true, "check blob", move |c, repo| {
                let digest = digest.clone();
                Box::pin(async move { present(c.has_blob_here(&repo, &digest).await, &repo) })
            })
            .await;
        absent_as_false(result)
    }

    async fn has_blob_here(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if self.anonymous(repository).await {
            return self.has_blob_direct(repository, digest).await;
        }
        let r = self.by_digest(repository, digest);
        self.reading(repository, || self.client.blob_exists(&r, digest.as_str()))
            .await
            .map_err(|e| request_error("check blob", self.target(repository, digest.as_str()), e))
    }

    /// Streams a blob. The stream ends with an error if the bytes do not hash to
    /// `digest`, on every path (direct, oci-client's verifying stream, an OCI
    /// layout): a caller that saw it end without one has the blob, and need
    /// not hash the bytes again (`create` does not).
    pub async fn blob_stream(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        if let Some(l) = &self.layouts {
            return l
                .blob_stream(
                    repository,
                    digest,
                    &self.target(repository, digest.as_str()),
                )
                .await;
        }
        let digest = digest.clone();
        self.routed(repository, true, "pull blob", move |c, repo| {
            let digest = digest.clone();
            Box::pin(async move { c.blob_stream_here(&repo, &digest).await })
        })
        .await
    }

    async fn blob_stream_here(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        if self.anonymous(repository).await {
            return self.blob_stream_direct(repository, digest).await;
        }
        let target = self.target(repository, digest.as_str());
        let r = self.by_digest(repository, digest);
        let sized = self
            .reading(repository, || {
                self.client.pull_blob_stream(&r, digest.as_str())
            })
            .await
            .map_err(|e| request_error("pull blob", target.clone(), e))?;
        Ok(sized
            .stream
            .map_err(move |e| RegistryError::Request {
                operation: "pull blob",
                target: target.clone(),
                kind: if e.to_string().to_lowercase().contains("digest") {
                    ErrorKind::Digest
                } else {
                    ErrorKind::Network
                },
                message: e.to_string(),
            })
            .boxed())
    }

    /// Asks the registry to link a blob it already holds in `from` into `repository`.
    /// Returns `false` when the registry declines (it then expects an upload).
    ///
    /// Under token auth the token must grant pull on `from` as well as push on
    /// `repository` (`repository:TARGET:pull,push repository:FROM:pull`, as the
    /// distribution spec has it); without it a registry quietly starts an upload
    /// instead, so a shared layer would cross into the registry once per
    /// repository. oci-client asks for the target's scope only.
    pub async fn mount_blob(&self, repository: &str, from: &str, digest: &Digest) -> bool {
        const OPERATION: &str = "mount blob";
        let target = self.target(repository, digest.as_str());
        let Ok(mut url) = self.url(
            &format!("v2/{repository}/blobs/uploads/"),
            OPERATION,
            &target,
        ) else {
            return false;
        };
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", from);
        let (mounted, token) = match self.bearer().await {
            Some(mut challenge) => {
                challenge.scope =
                    format!("repository:{repository}:pull,push repository:{from}:pull");
                let mut answer = None;
                // A cached token refused (expired) is asked again, once.
                for renew in [false, true] {
                    if renew {
                        self.scoped.lock().await.remove(&challenge.scope);
                    }
                    let Ok(token) = self.scoped_token(&challenge, OPERATION, &target).await else {
                        return false;
                    };
                    let response = self
                        .http
                        .post(url.clone())
                        .bearer_auth(&token)
                        .header(reqwest::header::CONTENT_LENGTH, 0)
                        .send()
                        .await;
                    let refused = response
                        .as_ref()
                        .is_ok_and(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED);
                    answer = Some((response, token));
                    if !refused {
                        break;
                    }
                }
                match answer {
                    Some((Ok(response), token)) => (response, Some(token)),
                    _ => return false,
                }
            }
            None => match self
                .authorised(repository, &target, false, self.http.post(url))
                .await
            {
                Ok(request) => match request
                    .header(reqwest::header::CONTENT_LENGTH, 0)
                    .send()
                    .await
                {
                    Ok(response) => (response, None),
                    Err(_) => return false,
                },
                Err(_) => return false,
            },
        };
        let status = mounted.status();
        if status == reqwest::StatusCode::ACCEPTED {
            // Declined: the registry opened an upload session instead, which the
            // upload that follows does not use (it opens its own). Cancelled, so
            // that sessions do not pile up in the registry until it purges them.
            if let Some(session) = location(&self.base, &mounted) {
                self.cancel_upload(repository, &target, session, token.as_deref())
                    .await;
            }
        }
        let mounted = status == reqwest::StatusCode::CREATED;
        tracing::debug!(%repository, %from, %digest, mounted, "cross-repository mount");
        mounted
    }

    /// Cancels the upload session at `url` (`DELETE`), best effort: a registry
    /// that keeps it purges it later.
    async fn cancel_upload(
        &self,
        repository: &str,
        target: &str,
        url: reqwest::Url,
        token: Option<&str>,
    ) {
        // Credentials go only to this registry (CVE-2020-15157).
        let request = self.http.delete(url.clone());
        let request = match token {
            _ if url.origin() != self.base.origin() => request,
            Some(token) => request.bearer_auth(token),
            None => match self.authorised(repository, target, false, request).await {
                Ok(request) => request,
                Err(_) => return,
            },
        };
        let cancelled = request.send().await.map(|r| r.status().as_u16());
        tracing::debug!(%repository, ?cancelled, "upload session cancelled");
    }

    /// Whether `a` and `b` are reached with the same credential, so that a token
    /// for one may read the other (a mount needs pull on its source).
    pub fn same_credential(&self, a: &str, b: &str) -> bool {
        self.credentials_for(a).0 == self.credentials_for(b).0
    }

    /// What `/v2/` answers a request without credentials. Kept once it
    /// answered 2xx or 401; a registry that could not be asked, or answered
    /// anything else, is asked again next time rather than taken for one without
    /// token auth.
    pub(crate) async fn version_check(&self) -> Option<&V2Answer> {
        self.v2
            .get_or_try_init(|| async {
                let url = self.base.join("v2/").map_err(|_| ())?;
                let response = self.http.get(url).send().await.map_err(|_| ())?;
                match response.status().as_u16() {
                    200..=299 => Ok(V2Answer::Open),
                    401 => Ok(V2Answer::Challenged(
                        BearerChallenge::all(response.headers()).next(),
                    )),
                    _ => Err(()),
                }
            })
            .await
            .ok()
    }

    /// The registry's token challenge: where tokens for scopes nobody was
    /// challenged for come from (a mount needs pull on the repository it mounts
    /// from). `None` without token auth.
    async fn bearer(&self) -> Option<BearerChallenge> {
        match self.version_check().await {
            Some(V2Answer::Challenged(challenge)) => challenge.clone(),
            _ => None,
        }
    }

    /// Uploads a blob from a stream (another registry's download, or store
    /// blocks shared between clusters), without buffering it. The destination
    /// checks the digest when the upload closes.
    pub async fn push_blob_stream(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        stream: BoxStream<'static, Result<Bytes, RegistryError>>,
    ) -> Result<(), RegistryError> {
        self.upload(repository, digest, size, reqwest::Body::wrap_stream(stream))
            .await
    }

    /// Uploads `size` bytes of a local file as a blob, streaming.
    pub async fn push_blob_file(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let body = file_body(&self.target(repository, digest.as_str()), path).await?;
        self.upload(repository, digest, size, body).await
    }

    /// One monolithic upload: a `POST` opens a session, one `PUT` sends the bytes
    /// and closes it. A failure at either step fails the whole upload: a retry
    /// starts over with a new session, never continues one the registry may hold
    /// half written.
    async fn upload(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), RegistryError> {
        const OPERATION: &str = "push blob";
        let target = self.target(repository, digest.as_str());
        let mut url = self.open_upload(repository, OPERATION, &target).await?;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let put = self
            .http
            .put(url.clone())
            .header(http::header::CONTENT_LENGTH, size)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let response = self
            .send_body(repository, OPERATION, &target, url, put)
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            return Err(response_error(OPERATION, target, response).await);
        }
        Ok(())
    }

    /// Sends the bytes of a local file into a new upload session and leaves it
    /// open: the registry holds them, but no blob exists until
    /// [`RegistryClient::commit_staged`] closes the session, and nothing of it can
    /// be pulled or listed before. [`RegistryClient::cancel_staged`] drops it.
    /// A `PATCH` of the whole blob, which every registry implementing chunked
    /// uploads (the distribution spec's) takes.
    pub async fn stage_blob_file(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<StagedBlob, RegistryError> {
        const OPERATION: &str = "stage blob";
        let target = self.target(repository, digest.as_str());
        let body = file_body(&target, path).await?;
        let url = self.open_upload(repository, OPERATION, &target).await?;
        let mut patch = self
            .http
            .patch(url.clone())
            .header(http::header::CONTENT_LENGTH, size)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        if size > 0 {
            patch = patch.header(http::header::CONTENT_RANGE, format!("0-{}", size - 1));
        }
        let failure = match self
            .send_body(repository, OPERATION, &target, url.clone(), patch)
            .await
        {
            Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                // The session may move with each request (a relative location
                // is the request's); a registry that does not say where keeps
                // it where it was.
                let url = location(&url, &r).unwrap_or(url);
                return Ok(StagedBlob {
                    repository: repository.to_string(),
                    digest: digest.clone(),
                    size,
                    url,
                });
            }
            Ok(r) => response_error(OPERATION, target.clone(), r).await,
            Err(e) => e,
        };
        // A session that holds part of a blob, or none, is of no use.
        self.cancel_upload(repository, &target, url, None).await;
        Err(failure)
    }

    /// Closes a staged upload (`PUT` with the digest and no bytes): the registry
    /// checks the bytes it holds against the digest, and only then keeps them
    /// as the blob.
    pub async fn commit_staged(&self, staged: &StagedBlob) -> Result<(), RegistryError> {
        const OPERATION: &str = "commit staged blob";
        let target = self.target(&staged.repository, staged.digest.as_str());
        let mut url = staged.url.clone();
        url.query_pairs_mut()
            .append_pair("digest", staged.digest.as_str());
        let put = |http: &reqwest::Client| {
            http.put(url.clone())
                .header(http::header::CONTENT_LENGTH, 0)
        };
        // Credentials go only to this registry.
        let response = match url.origin() == self.base.origin() {
            true => {
                self.send(&staged.repository, OPERATION, &target, put)
                    .await?
            }
            false => put(&self.http)
                .send()
                .await
                .map_err(|e| transport_error(OPERATION, &target, &e))?,
        };
        if response.status() != reqwest::StatusCode::CREATED {
            return Err(response_error(OPERATION, target, response).await);
        }
        Ok(())
    }

    /// Drops a staged upload, best effort: a registry that keeps it purges it
    /// later, and it never became a blob.
    pub async fn cancel_staged(&self, staged: StagedBlob) {
        let target = self.target(&staged.repository, staged.digest.as_str());
        self.cancel_upload(&staged.repository, &target, staged.url, None)
            .await;
    }

    /// Opens an upload session in `repository` (`POST`); returns its location.
    async fn open_upload(
        &self,
        repository: &str,
        operation: &'static str,
        target: &str,
    ) -> Result<reqwest::Url, RegistryError> {
        let start = self.url(
            &format!("v2/{repository}/blobs/uploads/"),
            operation,
            target,
        )?;
        let response = self
            .send(repository, operation, target, |http| {
                http.post(start.clone())
                    .header(http::header::CONTENT_LENGTH, 0)
            })
            .await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            let status = response.status().as_u16();
            let mut e = response_error(operation, target.to_string(), response).await;
            if let (404 | 403, RegistryError::Request { message, .. }) = (status, &mut e) {
                // Harbor (404 "project … not found"), Quay (403 for a missing
                // organisation) and GitLab answer the first push to a namespace
                // that does not exist so: say what to do.
                let namespace = repository.split('/').next().unwrap_or(repository);
                message.push_str(&format!(
                    ": the registry has no project or organisation {namespace:?} that this credential may push to; create it (a Harbor project, a Quay organisation, a GitLab group) or publish under a prefix that exists"
                ));
            }
            return Err(e);
        }
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Request {
                operation,
                target: target.to_string(),
                kind: ErrorKind::Protocol,
                message: "the registry opened an upload without a Location".into(),
            })?;
        self.base
            .join(location)
            .map_err(|e| RegistryError::Request {
                operation,
                target: target.to_string(),
                kind: ErrorKind::Protocol,
                message: format!("upload location {location:?}: {e}"),
            })
    }

    /// Sends `request`, whose body is a stream sent once, into the upload
    /// session at `url`. A token that expired since the session opened is not
    /// the credential's fault: the session is cancelled and the error is one to
    /// try again from a new session.
    async fn send_body(
        &self,
        repository: &str,
        operation: &'static str,
        target: &str,
        url: reqwest::Url,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        // The token the POST just used is the one to send it with.
        // Credentials go only to this registry.
        let same_origin = url.origin() == self.base.origin();
        let bearer = match same_origin {
            true => self.token(repository, target, false).await?,
            false => None,
        };
        let request = match &bearer {
            Some(token) => request.bearer_auth(token),
            None if same_origin => self.authorised(repository, target, false, request).await?,
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(operation, target, &e))?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED && bearer.is_some() {
            self.tokens.lock().await.remove(repository);
            self.scoped
                .lock()
                .await
                .remove(&format!("repository:{repository}:pull,push"));
            let (_, message) = response_problem(response).await;
            self.cancel_upload(repository, target, url, None).await;
            return Err(RegistryError::Request {
                operation,
                target: target.to_string(),
                kind: ErrorKind::Unavailable { retry_after: None },
                message: format!(
                    "the token expired between opening the upload and sending it ({message}); asked again"
                ),
            });
        }
        Ok(response)
    }
}

/// An upload session holding a whole blob, not yet closed
/// ([`RegistryClient::stage_blob_file`]).
#[derive(Debug, Clone)]
pub struct StagedBlob {
    /// The repository the session is in.
    pub repository: String,
    /// The blob it holds.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    url: reqwest::Url,
}

/// Media type of the empty JSON config of artifacts (`{}`), from the OCI image spec.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

impl RegistryClient {
    /// Stores a small document (workspace state) as a single-layer OCI artifact of
    /// type `media_type` under `repository:tag`. Airlock builds this manifest itself,
    /// so it is the one kind of manifest it serialises.
    pub async fn put_document(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        document: Bytes,
    ) -> Result<Digest, RegistryError> {
        let config = Bytes::from_static(b"{}");
        let config_digest = Digest::of(&config);
        let layer_digest = Digest::of(&document);
        for (digest, bytes) in [
            (&config_digest, config.clone()),
            (&layer_digest, document.clone()),
        ] {
            if !self.has_blob(repository, digest).await? {
                let size = bytes.len() as u64;
                self.upload(repository, digest, size, bytes.into()).await?;
            }
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "artifactType": media_type,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": media_type, "digest": layer_digest, "size": document.len()}],
        });
        let raw = RawManifest::from_bytes(
            Bytes::from(serde_json::to_vec(&manifest).expect("manifest serialises")),
            manifest::OCI_MANIFEST.to_string(),
        );
        self.put_manifest(repository, &raw, Some(tag)).await?;
        Ok(raw.digest)
    }

    /// Reads a document stored by [`Self::put_document`]; `None` when the tag does not
    /// exist. The document is refused when larger than `max` bytes.
    pub async fn get_document(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        max: u64,
    ) -> Result<Option<Bytes>, RegistryError> {
        let target = self.target(repository, tag);
        let Some(raw) = self.find_manifest(repository, tag).await? else {
            return Ok(None);
        };
        let protocol = |message: String| RegistryError::Request {
            operation: "read document",
            target: target.clone(),
            kind: ErrorKind::Protocol,
            message,
        };
        let parsed = raw.parse().map_err(|source| RegistryError::Manifest {
            target: target.clone(),
            source,
        })?;
        let layer = parsed
            .blobs()
            .find(|d| d.media_type == media_type)
            .ok_or_else(|| protocol(format!("{target} is not a document of type {media_type}")))?
            .clone();
        if layer.size > max {
            return Err(protocol(format!(
                "document of {} bytes exceeds {max}",
                layer.size
            )));
        }
        let mut stream = self.blob_stream(repository, &layer.digest).await?;
        let mut bytes = Vec::with_capacity(layer.size as usize);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() as u64 > layer.size {
                return Err(protocol(format!(
                    "blob {} is longer than declared",
                    layer.digest
                )));
            }
        }
        if Digest::of(&bytes) != layer.digest {
            return Err(RegistryError::Request {
                operation: "read document",
                target,
                kind: ErrorKind::Digest,
                message: format!("blob {} does not match its digest", layer.digest),
            });
        }
        Ok(Some(Bytes::from(bytes)))
    }
}

/// Whether a manifest reference is a digest, or a tag named after one
/// (`sha256-<hex>.sig`, the referrers tag): `registries.conf` sends reads of a
/// signature where it sends reads of the image it signs, so a mirror used for
/// digests only still serves them.
fn digest_bound(reference: &str) -> bool {
    if reference.parse::<Digest>().is_ok() {
        return true;
    }
    reference
        .strip_prefix("sha256-")
        .map(|rest| rest.split_once('.').map_or(rest, |(hex, _)| hex))
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A "no" from one `registries.conf` endpoint as a not-found error, so that the
/// next endpoint (another mirror, or the source) is asked too: a partial cache
/// lacking what the source has must not decide.
fn present(answer: Result<bool, RegistryError>, repository: &str) -> Result<bool, RegistryError> {
    match answer {
        Ok(false) => Err(RegistryError::Request {
            operation: "check",
            target: repository.to_string(),
            kind: ErrorKind::NotFound,
            message: "not there".into(),
        }),
        other => other,
    }
}

/// The other half of [`present`]: not found anywhere is a "no".
fn absent_as_false(result: Result<bool, RegistryError>) -> Result<bool, RegistryError> {
    match result {
        Err(e) if e.kind() == Some(ErrorKind::NotFound) => Ok(false),
        other => other,
    }
}

/// One client per registry host, made on first use and shared, so that tokens and
/// connections are reused across images.
#[derive(Debug)]
pub struct Pool {
    options: RegistryOptions,
    clients: tokio::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<RegistryClient>>>,
    layouts: std::sync::Arc<layout::Layouts>,
}

impl Pool {
    /// A pool whose clients use `options`.
    pub fn new(options: RegistryOptions) -> Self {
        Pool {
            options,
            clients: Default::default(),
            layouts: Default::default(),
        }
    }

    /// How its clients reach registries; the credentials also serve chart
    /// repositories, which are plain HTTP servers.
    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// The local OCI layouts this pool reads as repositories of [`layout::HOST`].
    pub fn layouts(&self) -> &layout::Layouts {
        &self.layouts
    }

    /// The client for `host`, connecting on first use.
    pub async fn client(
        &self,
        host: &str,
    ) -> Result<std::sync::Arc<RegistryClient>, RegistryError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        if host == layout::HOST {
            let c = std::sync::Arc::new(RegistryClient::for_layouts(self.layouts.clone())?);
            clients.insert(host.to_string(), c.clone());
            return Ok(c);
        }
        let c = match RegistryClient::connect(host, &self.options).await {
            // With --tls-verify=false, connecting probes the registry. One that
            // does not answer may still be read through the mirrors
            // registries.conf names for it (a site that reaches the internet only
            // through its pull-through cache): its own location is tried last,
            // and then fails as unreachable.
            Err(e)
                if e.kind() == Some(ErrorKind::Unreachable)
                    && self
                        .options
                        .mirrors
                        .as_ref()
                        .is_some_and(|m| m.covers(host)) =>
            {
                let opts = RegistryOptions {
                    tls_verify: true,
                    ..self.options.clone()
                };
                RegistryClient::connect(host, &opts).await?
            }
            result => result?,
        };
        let c = std::sync::Arc::new(c);
        clients.insert(host.to_string(), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte in order across block boundaries, and no more than asked for.
    #[tokio::test]
    async fn a_file_is_streamed_whole_in_blocks_and_cut_at_its_length() {
        let bytes: Vec<u8> = (0..(2 * (256 << 10) + 17) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, &bytes).unwrap();
        let open = || std::fs::File::open(&path).unwrap();
        let blocks: Vec<Bytes> = file_blocks(open(), u64::MAX).try_collect().await.unwrap();
        assert_eq!(blocks.len(), 3, "256 KiB blocks");
        assert_eq!(blocks.concat(), bytes);
        let cut: Vec<Bytes> = file_blocks(open(), 300 << 10).try_collect().await.unwrap();
        assert_eq!(cut.concat(), &bytes[..300 << 10]);
        let empty: Vec<Bytes> = file_blocks(open(), 0).try_collect().await.unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn signature_and_referrers_tags_are_read_where_their_digest_is() {
        let hex = "a".repeat(64);
        assert!(digest_bound(&format!("sha256:{hex}")));
        assert!(digest_bound(&format!("sha256-{hex}.sig")));
        assert!(digest_bound(&format!("sha256-{hex}")));
        assert!(!digest_bound("sha256-abc.sig"));
        assert!(!digest_bound("v1.0"));
        assert!(!digest_bound(&format!("sha256-{}.sig", "g".repeat(64))));
    }

    #[test]
    fn the_proxy_named_in_errors_is_the_one_the_environment_gives_the_url() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let https = reqwest::Url::parse("https://quay.io/v2/").unwrap();
        let http = reqwest::Url::parse("http://10.0.0.5:5000/v2/").unwrap();
        let vars = env(&[
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://plain:8080"),
            ("NO_PROXY", "localhost,.internal.example.com"),
        ]);
        assert_eq!(
            env_proxy(&https, &vars),
            Some(("http://proxy:3128".into(), "HTTPS_PROXY".into()))
        );
        assert_eq!(
            env_proxy(&http, &vars),
            Some(("http://plain:8080".into(), "http_proxy".into()))
        );
        let exempt = reqwest::Url::parse("https://registry.internal.example.com/v2/").unwrap();
        assert_eq!(env_proxy(&exempt, &vars), None);
        assert_eq!(
            env_proxy(&https, &env(&[("ALL_PROXY", "socks5://s:1")]))
                .unwrap()
                .1,
            "ALL_PROXY"
        );
        assert_eq!(
            env_proxy(&https, &env(&[("HTTPS_PROXY", "x"), ("no_proxy", "*")])),
            None
        );
    }

    #[test]
    fn a_proxy_password_never_reaches_a_message() {
        assert_eq!(
            redact("http://user:s3cret@proxy:3128"),
            "http://****@proxy:3128/"
        );
        assert_eq!(redact("http://proxy:3128"), "http://proxy:3128");
        let e = check_proxy("ftp://user:s3cret@proxy").unwrap_err();
        // Neither in the message nor in what a debug log of the error shows.
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    }

    #[test]
    fn bearer_challenges_are_read_with_commas_inside_quotes_and_bare_values() {
        let c = BearerChallenge::parse(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/app:delete",error="insufficient_scope""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.example.com/token");
        assert_eq!(c.service, "registry.example.com");
        assert_eq!(c.scope, "repository:team/app:delete");
        assert!(c.beyond_pull_and_push());
        let push = BearerChallenge::parse(
            r#"Bearer realm="http://h/t", scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(push.scope, "repository:a/b:pull,push");
        assert!(!push.beyond_pull_and_push());
        assert_eq!(BearerChallenge::parse(r#"Basic realm="x""#), None);
        // A bare token is a value too (RFC 9110).
        let bare = BearerChallenge::parse(
            r#"Bearer realm="http://h/t",service=registry.example.com,scope="repository:a:pull""#,
        )
        .unwrap();
        assert_eq!(bare.service, "registry.example.com");
        assert_eq!(bare.scope, "repository:a:pull");
        assert_eq!(
            BearerChallenge::parse("Bearer service=s,realm=http://h/t").map(|c| c.realm),
            Some("http://h/t".to_string())
        );
        assert_eq!(
            BearerChallenge::parse(r#"Bearer realm="unterminated"#),
            None
        );
    }

    #[test]
    fn ca_certificates_come_from_the_given_dir_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "PEM").unwrap();
        std::fs::write(dir.path().join("client.key"), "KEY").unwrap();
        let certs = ca_certificates("localhost:5000", Some(dir.path())).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].data, b"PEM");
    }

    #[test]
    fn errors_are_classified_for_exit_codes() {
        let e = OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(classify(&e).0, ErrorKind::NotFound);
        let e = OciDistributionError::UnauthorizedError { url: "u".into() };
        let (kind, msg) = classify(&e);
        assert_eq!(kind, ErrorKind::Unauthorized);
        assert!(msg.contains("auth file"), "{msg}");
    }
}
