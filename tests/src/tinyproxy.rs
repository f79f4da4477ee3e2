//! A real HTTP proxy (Debian's `tinyproxy`) on a free loopback port, as the
//! connected side of many sites reaches registries only through one.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::registry::free_port;

/// A running `tinyproxy`; stopped when dropped.
pub struct Tinyproxy {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Tinyproxy {
    /// Starts a proxy that lets loopback clients through to any port (CONNECT
    /// included), logging every request.
    pub fn start() -> Result<Self> {
        Self::start_binding(None)
    }

    /// [`Tinyproxy::start`], its outgoing connections made from `bind` (a
    /// loopback address such as 127.0.0.3), which a [`crate::proxy::Gate`] lets
    /// through when it lets nothing else.
    pub fn start_binding(bind: Option<std::net::IpAddr>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Info\nMaxClients 256\nAllow 127.0.0.1\n{}",
                dir.path().join("tinyproxy.log").display(),
                bind.map(|b| format!("Bind {b}\n")).unwrap_or_default()
            ),
        )?;
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start tinyproxy; install the Debian package tinyproxy (scripts/install-deps)")?;
        let mut proxy = Tinyproxy { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut backoff = Duration::from_millis(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proxy.child.try_wait()? {
                bail!("tinyproxy exited with {status}:\n{}", proxy.log());
            }
            if Instant::now() > deadline {
                bail!("tinyproxy did not listen on {port}:\n{}", proxy.log());
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
        Ok(proxy)
    }

    /// `http://127.0.0.1:PORT`, as `HTTP_PROXY` and `HTTPS_PROXY` name it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.log")
    }

    /// What the proxy logged so far (one line per request it forwarded).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
