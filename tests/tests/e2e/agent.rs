//! A running disconnected agent and its site directories, shared by the suites
//! that run `airlock-disconnected run`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::bins::{self, Output, run};
use airlock_tests::registry::{Registry, free_port};
use airlock_tests::tls::Issued;
use serde_json::Value;

/// Waits until `ready` holds, polling with a short backoff, or fails after `timeout`.
pub fn eventually(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    while !ready() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n--- agent log\n{}", log());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A running `airlock-disconnected run`.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let log = config.with_extension("log");
        let mut cmd = bins::disconnected();
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the agent.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// CPU time (user + system) the agent has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let hz = run(Command::new("getconf").arg("CLK_TCK"))
            .stdout
            .trim()
            .parse::<u64>()
            .unwrap();
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Whether the agent still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Site {
    tmp: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["drop", "quarantine", "archive"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        Site { tmp }
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    pub fn config(&self, dest: &Registry, extra: &str) -> PathBuf {
        self.config_fleet(&[("site-a", dest, None)], extra)
    }

    /// A configuration with one cluster per `(name, registry, kubeconfig)`.
    pub fn config_fleet(
        &self,
        clusters: &[(&str, &Registry, Option<&Path>)],
        extra: &str,
    ) -> PathBuf {
        // Tests that do not test signatures run unsigned, as they must say.
        let unsigned = if extra.contains("trust:") {
            ""
        } else {
            "allowUnsigned: true\n"
        };
        let mut text = format!(
            "workspace: {0}/ws\ndropDir: {0}/drop\nquarantineDir: {0}/quarantine\nafterPublish: archive\narchiveDir: {0}/archive\nsettleSeconds: 1\nrescanSeconds: 1\n{unsigned}{extra}clusters:\n",
            self.tmp.path().display(),
        );
        for (name, registry, kubeconfig) in clusters {
            text.push_str(&format!(
                "- name: {name}\n  registry: docker://{}/m\n  tlsVerify: false\n",
                registry.addr()
            ));
            if let Some(k) = kubeconfig {
                text.push_str(&format!("  kubeconfig: {}\n", k.display()));
            }
        }
        let p = self.path("agent.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn files(&self, dir: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

/// The site's certificates, made by `deploy/make-certs.sh` as the documentation
/// says: the agent's server certificate and the CA clients must be signed by, a
/// client of that CA, and a client of another CA made by a second run.
pub struct Pki {
    pub ca: PathBuf,
    pub server: Issued,
    pub client: Issued,
    pub stranger: Issued,
}

fn make_certs(dir: &Path, names: &str) {
    let script = airlock_tests::repo_dir().join("deploy/make-certs.sh");
    let made = run(Command::new(script).arg(dir).arg(names).arg("admin"));
    assert_eq!(made.code, 0, "{made}");
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        make_certs(&dir.join("site"), "127.0.0.1,localhost");
        make_certs(&dir.join("other"), "127.0.0.1");
        let issued = |d: &str, name: &str| Issued {
            cert: dir.join(format!("{d}/{name}.crt")),
            key: dir.join(format!("{d}/{name}.key")),
        };
        Pki {
            ca: dir.join("site/ca.crt"),
            server: issued("site", "agent"),
            client: issued("site/clients", "admin"),
            stranger: issued("other/clients", "admin"),
        }
    }

    pub fn grpc_section(&self, port: u16) -> String {
        format!(
            "grpc:\n  listen: 127.0.0.1:{port}\n  tls:\n    cert: {}\n    key: {}\n    clientCA: {}\n",
            self.server.cert.display(),
            self.server.key.display(),
            self.ca.display()
        )
    }
}

/// An agent with its control plane on a free port.
pub struct Served {
    pub site: Site,
    pub agent: Agent,
    pub pki: Pki,
    pub url: String,
}

impl Served {
    pub fn start(dest: &Registry) -> Self {
        Self::start_with(|site, grpc| site.config(dest, grpc))
    }

    /// An agent publishing to `clusters` (name, registry, kubeconfig) and
    /// checking their APIs every second.
    pub fn fleet(clusters: &[(&str, &Registry, Option<&Path>)]) -> Self {
        Self::start_with(|site, grpc| {
            site.config_fleet(clusters, &format!("reconcileSeconds: 1\n{grpc}"))
        })
    }

    /// An agent whose configuration `config` writes, given the `grpc` section.
    pub fn start_with(config: impl FnOnce(&Site, &str) -> PathBuf) -> Self {
        Self::start_with_env(config, &[])
    }

    /// The same, with `env` set for the agent.
    pub fn start_with_env(
        config: impl FnOnce(&Site, &str) -> PathBuf,
        env: &[(&str, &str)],
    ) -> Self {
        let site = Site::new();
        let pki = Pki::new(&site.path("pki"));
        let port = free_port().unwrap();
        let agent = Agent::start(&config(&site, &pki.grpc_section(port)), env);
        eventually(
            Duration::from_secs(30),
            "the control plane to listen",
            || agent.log().contains("control plane listening"),
            || agent.log(),
        );
        Served {
            site,
            agent,
            pki,
            url: format!("https://127.0.0.1:{port}"),
        }
    }

    pub fn ctl_as(&self, client: &Issued, args: &[&str]) -> Output {
        let mut cmd = bins::airlockctl();
        cmd.arg("--server")
            .arg(&self.url)
            .arg("--ca")
            .arg(&self.pki.ca)
            .arg("--cert")
            .arg(&client.cert)
            .arg("--key")
            .arg(&client.key)
            .args(args);
        run(&mut cmd)
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_as(&self.pki.client, args)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ctl(&all);
        assert_eq!(out.code, 0, "{out}\n--- agent\n{}", self.agent.log());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

/// Copies an imageset's chunk files into the drop directory, complete at once.
pub fn deliver(out: &Path, drop: &Path) {
    for f in crate::util::chunk_files(out) {
        deliver_one(&f, drop);
    }
}

/// Copies one file into the drop directory, complete at once (renamed in).
pub fn deliver_one(f: &Path, drop: &Path) {
    let name = f.file_name().unwrap();
    let part = drop.join(format!("{}.part", name.to_string_lossy()));
    std::fs::copy(f, &part).unwrap();
    std::fs::rename(&part, drop.join(name)).unwrap();
}
