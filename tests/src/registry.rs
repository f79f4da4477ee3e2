//! A real CNCF distribution registry (`docker-registry serve`) on a free loopback port.
//!
//! Each test starts its own registries, so tests run in parallel without sharing
//! state. The registry is a child process, stopped when the value is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::tls::TestCa;
use crate::token::{Grant, ISSUER, SERVICE, TokenAuth, TokenIssuer};

/// How a registry is set up.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate from a test CA.
    pub tls: bool,
    /// Require these credentials (htpasswd with bcrypt).
    pub htpasswd: Option<(String, String)>,
    /// Answer deletes with 405 UNSUPPORTED, as distribution does by default
    /// (tests' registries otherwise allow them, as production mirrors that are
    /// pruned must).
    pub refuse_deletes: bool,
    /// Bearer-token authentication (`auth: token`) with tokens from a
    /// [`TokenIssuer`] set up so; the first grant's user is the registry's
    /// [`Registry::credentials`].
    pub token: Option<TokenAuth>,
}

/// A running registry.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    options: RegistryOptions,
    child: Option<Child>,
    ca_pem: Option<String>,
    issuer: Option<TokenIssuer>,
    /// Sent back by the registry in a response header, so that readiness is
    /// only declared when *this* process answers — not another test's registry
    /// that took the port between our probe for a free port and our bind.
    instance: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.addr())
    }
}

/// The response header that identifies a registry instance.
const INSTANCE_HEADER: &str = "X-Airlock-Test-Registry";

/// How long a registry may take to answer `/v2/` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a registry may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago. The listener is dropped before the
/// registry binds, so another process may take it first; [`Registry::start`]
/// retries with a new port when that happens.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An address where nothing listens, for a test's "not there" endpoint: port 1
/// (tcpmux), which no test binds and no service here runs. A free port is not:
/// a test running in parallel may start a registry or proxy on it, and then
/// the connection hangs instead of being refused.
pub const NOTHING_LISTENS: &str = "127.0.0.1:1";

impl Registry {
    /// Plain HTTP, no authentication.
    pub fn plain() -> Result<Self> {
        Self::start(RegistryOptions::default())
    }

    /// HTTPS with a test CA, no authentication.
    pub fn tls() -> Result<Self> {
        Self::start(RegistryOptions {
            tls: true,
            ..RegistryOptions::default()
        })
    }

    /// HTTPS with a test CA and htpasswd authentication.
    pub fn tls_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start(RegistryOptions {
            tls: true,
            htpasswd: Some((user.into(), password.into())),
            ..RegistryOptions::default()
        })
    }

    /// Plain HTTP with bearer-token auth (`auth: token`, as Quay, Harbor and
    /// registry.redhat.io run it) from the harness's issuer, granting as
    /// `grants` say; the first grant's user is [`Registry::credentials`].
    pub fn with_tokens(grants: Vec<Grant>) -> Result<Self> {
        Self::start(RegistryOptions {
            token: Some(TokenAuth::new(grants)),
            ..RegistryOptions::default()
        })
    }

    /// Starts a registry.
    pub fn start(options: RegistryOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut ca_pem = None;
        if options.tls {
            let ca = TestCa::new("airlock test registry CA")?;
            ca.write_ca(&dir.path().join("certs"))?;
            ca.issue_server(&dir.path().join("tls"), &["127.0.0.1", "localhost"])?;
            ca_pem = Some(ca.ca_pem());
        }
        if let Some((user, password)) = &options.htpasswd {
            let hash = bcrypt::hash(password, 4)?;
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
        }
        let issuer = match &options.token {
            Some(auth) => Some(TokenIssuer::start(&dir.path().join("token"), auth.clone())?),
            None => None,
        };
        let instance = format!("{:016x}", rand::random::<u64>());
        let mut registry = Registry {
            dir,
            port: 0,
            options,
            child: None,
            ca_pem,
            issuer,
            instance,
        };
        let mut last = None;
        for _ in 0..5 {
            registry.port = free_port()?;
            match registry.spawn() {
                Ok(()) => return Ok(registry),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn config(&self) -> String {
        let root = self.dir.path();
        let mut c = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: {}\nhttp:\n  addr: 127.0.0.1:{}\n  secret: airlock-test-secret\n  headers:\n    {INSTANCE_HEADER}: [{}]\n",
            root.join("storage").display(),
            !self.options.refuse_deletes,
            self.port,
            self.instance,
        );
        if self.options.tls {
            c.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("tls/server.crt").display(),
                root.join("tls/server.key").display()
            ));
        }
        if self.options.htpasswd.is_some() {
            c.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: airlock-test\n    path: {}\n",
                root.join("htpasswd").display()
            ));
        }
        if let Some(issuer) = &self.issuer {
            c.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                issuer.realm(),
                issuer.root_cert().display()
            ));
        }
        c
    }

    fn spawn(&mut self) -> Result<()> {
        let root = self.dir.path().to_path_buf();
        std::fs::write(root.join("config.yml"), self.config())?;
        if let Some((user, password)) = self.credentials() {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            std::fs::write(
                root.join("auth.json"),
                format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr()),
            )?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(root.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start docker-registry; install the Debian package docker-registry (scripts/install-deps)")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let client = self.http_client()?;
        let url = format!("{}/v2/", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut backoff = Duration::from_millis(5);
        loop {
            if let Some(status) = self.child.as_mut().expect("spawned").try_wait()? {
                self.child = None;
                bail!(
                    "docker-registry exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(resp) = client.get(&url).send() {
                let ours = resp
                    .headers()
                    .get(INSTANCE_HEADER)
                    .is_some_and(|v| v.as_bytes() == self.instance.as_bytes());
                if ours && (resp.status().is_success() || resp.status() == 401) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "docker-registry did not answer on {url} within {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// A blocking HTTP client that trusts this registry.
    pub fn http_client(&self) -> Result<reqwest::blocking::Client> {
        // No proxy: the registry is on loopback, and a developer's HTTP_PROXY must
        // not see (or refuse) test traffic.
        let mut b = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy();
        if let Some(pem) = &self.ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
        }
        Ok(b.build()?)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The host and the port, for code that takes them apart.
    pub fn host_port(&self) -> (&'static str, u16) {
        ("127.0.0.1", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.options.tls
    }

    /// A directory holding only `ca.crt`, for skopeo's `--cert-dir` and Airlock's
    /// `--src-cert-dir` / `--dest-cert-dir` (a `certs.d`-style directory).
    pub fn ca_cert_dir(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.path().join("certs"))
    }

    /// The CA certificate (PEM) that signed the registry's certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The credentials, if the registry requires them (for a token registry: the
    /// first grant's).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match (&self.options.htpasswd, &self.options.token) {
            (Some((u, p)), _) => Some((u.as_str(), p.as_str())),
            (None, Some(auth)) => auth
                .grants
                .first()
                .map(|g| (g.user.as_str(), g.password.as_str())),
            (None, None) => None,
        }
    }

    /// A containers auth.json with this registry's credentials.
    pub fn auth_file(&self) -> Option<PathBuf> {
        self.credentials()
            .map(|_| self.dir.path().join("auth.json"))
    }

    /// A containers auth.json in `dir` holding `user` and `password` for this
    /// registry (another user than [`Registry::credentials`]).
    pub fn auth_file_for(&self, dir: &Path, user: &str, password: &str) -> Result<PathBuf> {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("auth-{user}.json"));
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr()),
        )?;
        Ok(path)
    }

    /// The token issuer of a registry with `auth: token`.
    pub fn issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// The registry's log file (access log included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The storage directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Stops the registry (its storage stays): SIGTERM, as a service manager
    /// stops it, then SIGKILL if it has not exited within a deadline. Returns once
    /// the process is gone, so the port is free for [`Registry::start_again`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let termed = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let deadline = Instant::now() + STOP_TIMEOUT;
            let mut backoff = Duration::from_millis(2);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The CPU time, user and system, that the registry process has used so
    /// far (`/proc/<pid>/stat`): on a machine whose cores it shares with the
    /// client measured, what the registry's side of a transfer costs
    /// (docs/benchmarks.md, stop 53).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let child = self.child.as_ref().context("the registry is not running")?;
        let path = format!("/proc/{}/stat", child.id());
        let stat = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        // The fields after the command name, which is in parentheses and may
        // hold spaces: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .with_context(|| format!("{path}: no command name"))?
            .1
            .split_whitespace()
            .collect();
        // A registry that exited on its own and is not yet reaped still has
        // a stat file, with figures that no longer move.
        if matches!(fields.first(), Some(&("Z" | "X"))) {
            bail!("the registry at {} has exited", self.addr());
        }
        let ticks = |i: usize| -> Result<f64> {
            let v: u64 = fields
                .get(i - 3)
                .with_context(|| format!("{path}: no field {i}"))?
                .parse()
                .with_context(|| format!("{path}: field {i}"))?;
            Ok(v as f64)
        };
        let per_second = rustix::param::clock_ticks_per_second() as f64;
        Ok((ticks(14)? + ticks(15)?) / per_second)
    }

    /// Whether the registry process is running (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the registry again on the same port, with the same storage,
    /// certificate and credentials — a registry that went down and came back.
    /// Fails (with the log) if something else took the port in the meantime.
    pub fn start_again(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// The temporary directory of this registry (config, certificates, storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
