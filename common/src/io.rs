//! The one error for a local file or directory that could not be used, so
//! that every binary names the path the same way and exits with
//! [`exit_codes::IO`](crate::exit_codes::IO).

use std::path::{Path, PathBuf};

use crate::exit_codes::{self, ExitCode};

/// A local file or directory that could not be read or written (disk full,
/// permissions, missing), with its path.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file or directory.
    pub path: PathBuf,
    /// What the system said.
    pub source: std::io::Error,
}

impl FileError {
    /// `source`, about `path`.
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        FileError {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl ExitCode for FileError {
    fn exit_code(&self) -> i32 {
        exit_codes::IO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_path_and_exits_with_the_io_code() {
        let e = FileError::new(
            Path::new("/var/lib/airlock/drop"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.to_string(), "/var/lib/airlock/drop: permission denied");
        assert_eq!(e.exit_code(), exit_codes::IO);
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
