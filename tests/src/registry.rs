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

/// How a registry is set up.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate from a test CA.
    pub tls: bool,
    /// Require these credentials (htpasswd with bcrypt).
    pub htpasswd: Option<(String, String)>,
}

/// A running registry.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    options: RegistryOptions,
    child: Option<Child>,
    ca_pem: Option<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.addr())
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Registry {
    /// Plain HTTP, no authentication.
    pub fn plain() -> Result<Self> {
        Self::start(RegistryOptions::default())
    }

    /// HTTPS with a test CA, no authentication.
    pub fn tls() -> Result<Self> {
        Self::start(RegistryOptions {
            tls: true,
            htpasswd: None,
        })
    }

    /// HTTPS with a test CA and htpasswd authentication.
    pub fn tls_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start(RegistryOptions {
            tls: true,
            htpasswd: Some((user.into(), password.into())),
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
        let mut registry = Registry {
            dir,
            port: 0,
            options,
            child: None,
            ca_pem,
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
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: airlock-test-secret\n",
            root.join("storage").display(),
            self.port
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
        c
    }

    fn spawn(&mut self) -> Result<()> {
        let root = self.dir.path().to_path_buf();
        std::fs::write(root.join("config.yml"), self.config())?;
        if let Some((user, password)) = &self.options.htpasswd {
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
        let deadline = Instant::now() + Duration::from_secs(20);
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
                if resp.status().is_success() || resp.status() == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "docker-registry did not answer on {url} within 20 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// A blocking HTTP client that trusts this registry.
    pub fn http_client(&self) -> Result<reqwest::blocking::Client> {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
        if let Some(pem) = &self.ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
        }
        Ok(b.build()?)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

    /// A directory holding `ca.crt`, for `--cert-dir` / `--src-cert-dir`.
    pub fn ca_cert_dir(&self) -> Option<PathBuf> {
        self.options.tls.then(|| self.dir.path().join("certs"))
    }

    /// The credentials, if the registry requires them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.options
            .htpasswd
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A containers auth.json with this registry's credentials.
    pub fn auth_file(&self) -> Option<PathBuf> {
        self.options
            .htpasswd
            .as_ref()
            .map(|_| self.dir.path().join("auth.json"))
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

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage.
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
