//! Opening the sled database that holds an agent's workspace state.
//!
//! Both agents keep their state in sled, one database per workspace directory. sled
//! takes an exclusive file lock, so two processes can never write the same
//! workspace; the error says so in words an operator can act on.
//!
//! Invariant: sled is opened and locked only here; each agent's workspace module
//! keeps its trees private, so no public signature names a sled type.

use std::path::{Path, PathBuf};

/// Why workspace state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the workspace.
    #[error("workspace {} is in use by another Airlock process; wait for it to finish", path.display())]
    Locked {
        /// The workspace directory.
        path: PathBuf,
    },
    /// The database could not be opened, read or written.
    #[error("workspace {}: {message}", path.display())]
    Storage {
        /// The workspace directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl StateError {
    /// A storage error for the workspace at `path`.
    pub fn storage(path: &Path, e: impl std::fmt::Display) -> Self {
        StateError::Storage {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// Opens (creating if needed) the state database of the workspace at `dir`.
pub fn open(dir: &Path) -> Result<sled::Db, StateError> {
    std::fs::create_dir_all(dir).map_err(|e| StateError::storage(dir, e))?;
    sled::open(dir.join("state")).map_err(|e| match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
            StateError::Locked {
                path: dir.to_path_buf(),
            }
        }
        other => StateError::storage(dir, other),
    })
}

/// Whether a workspace database exists at `dir` (without creating one).
pub fn exists(dir: &Path) -> bool {
    dir.join("state").exists()
}

/// A u64 as a sled key that sorts numerically.
pub fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads a u64 stored with [`key`].
pub fn read_u64(dir: &Path, v: &[u8]) -> Result<u64, StateError> {
    let bytes: [u8; 8] = v
        .try_into()
        .map_err(|_| StateError::storage(dir, "corrupt number in workspace state"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A test hook for crash recovery: with `AIRLOCK_CRASH_AT=<point>` in the
/// environment, the process aborts at that point as a SIGKILL would stop it, so that
/// tests can check the recovery from a crash at each step without timing games.
/// The points are listed in `docs/workspace.md`.
pub fn crash_point(point: &str) {
    if std::env::var("AIRLOCK_CRASH_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "AIRLOCK_CRASH_AT: aborting");
        std::process::abort();
    }
}

/// Free bytes on the file system holding `dir`. A test hook,
/// `AIRLOCK_TEST_FREE_SPACE=<bytes>`, stands in for a full disk, which tests cannot
/// make without mounting a small file system.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    if let Some(bytes) = std::env::var("AIRLOCK_TEST_FREE_SPACE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Ok(bytes);
    }
    fs4::available_space(dir)
}
