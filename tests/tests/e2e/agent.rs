//! A running disconnected agent and its site directories, shared by the suites
//! that run `airlock-disconnected run`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_tests::bins;
use airlock_tests::registry::Registry;

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
        let text = format!(
            "workspace: {0}/ws\ndropDir: {0}/drop\nquarantineDir: {0}/quarantine\nafterPublish: archive\narchiveDir: {0}/archive\nsettleSeconds: 1\nrescanSeconds: 1\n{extra}clusters:\n- name: site-a\n  registry: docker://{1}/m\n  tlsVerify: false\n",
            self.tmp.path().display(),
            dest.addr()
        );
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
