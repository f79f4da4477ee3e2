//! The project's binaries, run as a user runs them — but never with the user's own
//! credentials or home directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

/// Where the binaries are: `AIRLOCK_BIN_DIR`, or the cargo target directory of the
/// running executable (a test in `target/<profile>/deps/`, or a binary such as the
/// demo in `target/<profile>/`). Tests do not build the binaries themselves: cargo
/// builds integration-test binaries of this crate without the other packages' bins.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIRLOCK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable has a directory");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The project's binary `name` (`airlock-connected`, `airlock-disconnected`,
/// `airlockctl`), with an isolated environment (see [`isolate_env`]).
pub fn named(name: &str) -> Command {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test does), \
         or point AIRLOCK_BIN_DIR at the directory holding the binaries",
        path.display()
    );
    let mut cmd = Command::new(path);
    isolate_env(&mut cmd);
    cmd.env("RUST_LOG", "info");
    cmd
}

/// `airlock-connected`, with an isolated environment (see [`isolate_env`]).
pub fn connected() -> Command {
    named("airlock-connected")
}

/// `airlock-disconnected`, with an isolated environment (see [`isolate_env`]).
pub fn disconnected() -> Command {
    named("airlock-disconnected")
}

/// `airlockctl`, with an isolated environment (see [`isolate_env`]).
pub fn airlockctl() -> Command {
    named("airlockctl")
}

/// `airlock-demo` (what `scripts/demo` runs once it has built), with an
/// isolated environment (see [`isolate_env`]).
pub fn demo() -> Command {
    let mut cmd = named("airlock-demo");
    // The demo starts docker-registry itself, which reads every REGISTRY_*
    // variable as configuration; its own children are isolated by the demo.
    cmd.env_remove("REGISTRY_AUTH_FILE");
    cmd
}

const SCRATCH_PREFIX: &str = "airlock-tests-pid-";

/// A directory for this test process's throwaway files (homes, skopeo's policy).
///
/// `Command` cannot own a `TempDir`, and a spawned process may outlive the value
/// that built it, so these directories are not removed on drop. Instead each
/// process gets one directory named after its PID, and directories of processes
/// that no longer run are swept when the next test process starts.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        sweep_stale(&tmp);
        let dir = tmp.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        // Left by an earlier process that had the same PID: stale by definition.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    })
}

/// Removes scratch directories whose process is gone. Without `/proc` nothing can
/// be told apart, so nothing is removed.
fn sweep_stale(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A new, empty directory under [`scratch_dir`].
pub fn fresh_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(scratch_dir())
        .expect("scratch directory")
        .keep()
}

/// Points every place a container tool looks for credentials and state at a fresh,
/// empty home, so a developer's `~/.docker/config.json`, podman login
/// (`$XDG_RUNTIME_DIR/containers/auth.json`, or `/run/containers/$UID/auth.json`
/// when that variable is unset) or default workspace never reaches a test, and
/// tests running in parallel never share a default workspace.
///
/// `REGISTRY_AUTH_FILE` is set to a file that does not exist (both skopeo and
/// Airlock treat that as "no credentials"); a test that needs credentials sets it,
/// or passes `--authfile`, after calling this — the later `env` wins. A test of
/// the default search order removes it and writes files under the `HOME` set here.
/// `CONTAINERS_REGISTRIES_CONF` names an empty file in place of the machine's
/// registries.conf (its drop-ins still apply, as they do to podman). Proxy variables are removed because every registry in a test is on loopback,
/// and a developer's proxy would otherwise see (or refuse) the traffic.
pub fn isolate_env(cmd: &mut Command) -> &mut Command {
    let home = fresh_dir("home");
    let runtime = home.join("run");
    // skopeo warns when XDG_RUNTIME_DIR names a directory that does not exist.
    std::fs::create_dir_all(&runtime).expect("scratch runtime directory");
    // No registries.conf mirror or block of this machine's applies.
    let registries = home.join("registries.conf");
    std::fs::write(&registries, "").expect("scratch registries.conf");
    cmd.env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("REGISTRY_AUTH_FILE", home.join("no-credentials.json"))
        .env("CONTAINERS_REGISTRIES_CONF", &registries)
        .env_remove("DOCKER_CONFIG")
        .env_remove("AIRLOCK_SERVER")
        .env_remove("AIRLOCK_CA")
        .env_remove("AIRLOCK_CERT")
        .env_remove("AIRLOCK_KEY")
        .env_remove("UPDATE_URL_OVERRIDE")
        .env_remove("OCP_SIGNATURE_URL");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The outcome of a command, printable in assertion messages.
pub struct Output {
    /// How the process ended.
    pub status: ExitStatus,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether the process exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Runs `cmd` to completion.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Output {
        status: out.status,
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` and asserts it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(out.success(), "{cmd:?} failed:\n{out}");
    out
}
