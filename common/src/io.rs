//! Local files: the one error for a file or directory that could not be
//! used, so that every binary names the path the same way and exits with
//! [`exit_codes::IO`](crate::exit_codes::IO); and reading a file in blocks.

use std::io::Read;
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

/// Reads `r` to its end in blocks of `block` bytes, each read straight into a
/// buffer of its own, and hands each to `send`, an error as the last. Stops
/// early when `send` says the receiver is gone (returns `false`). For a
/// thread that reads ahead of a consumer: the buffers are moved, not copied.
pub fn read_blocks(
    mut r: impl Read,
    block: u64,
    mut send: impl FnMut(std::io::Result<Vec<u8>>) -> bool,
) {
    loop {
        let mut buf = Vec::with_capacity(block as usize);
        match (&mut r).take(block).read_to_end(&mut buf) {
            Ok(0) => return,
            Ok(_) if send(Ok(buf)) => {}
            Ok(_) => return,
            Err(e) => {
                send(Err(e));
                return;
            }
        }
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

    #[test]
    fn a_reader_is_read_in_blocks_until_it_ends_fails_or_the_receiver_goes() {
        let data: Vec<u8> = (0..=255).cycle().take(10).collect();
        let mut got = Vec::new();
        read_blocks(&data[..], 4, |b| {
            got.push(b.unwrap());
            true
        });
        assert_eq!(got, [&data[..4], &data[4..8], &data[8..]]);

        let mut calls = 0;
        read_blocks(&data[..], 4, |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1, "nothing is read once the receiver is gone");

        /// Yields one byte, then fails.
        struct Failing(bool);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(std::io::Error::other("disk"));
                }
                buf[0] = 7;
                Ok(1)
            }
        }
        let mut got = Vec::new();
        read_blocks(Failing(false), 4, |b| {
            got.push(b.map_err(|e| e.to_string()));
            true
        });
        assert_eq!(
            got,
            [Err("disk".to_string())],
            "a block cut by an error is not sent"
        );
    }
}
