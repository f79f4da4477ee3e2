//! The project's binaries, run as a user runs them.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;

/// Where the binaries are: `AIRLOCK_BIN_DIR`, or the cargo target directory of the
/// running executable (a test in `target/<profile>/deps/`, or a binary such as the
/// demo in `target/<profile>/`).
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

fn command(name: &str) -> Command {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test does)",
        path.display()
    );
    let mut cmd = Command::new(path);
    // A developer's own credentials must never leak into a test; tests that need
    // credentials pass --authfile or set REGISTRY_AUTH_FILE themselves.
    cmd.env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", std::env::temp_dir().join("airlock-tests-home"))
        .env("RUST_LOG", "info");
    cmd
}

/// `airlock-connected`.
pub fn connected() -> Command {
    command("airlock-connected")
}

/// `airlock-disconnected`.
pub fn disconnected() -> Command {
    command("airlock-disconnected")
}

/// The outcome of a command, printable in assertion messages.
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
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
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd` and asserts it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert_eq!(out.code, 0, "{cmd:?} failed:\n{out}");
    out
}
