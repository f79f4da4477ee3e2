//! The disconnected agent's errors, and the exit code of each.

use std::path::Path;

use airlock_common::exit_codes::{self, ExitCode};
use airlock_common::io::FileError;
use airlock_registry::RegistryError;
use airlock_state::StateError;

/// Everything that stops a disconnected-agent command outright. Problems that only
/// concern one imageset (a missing chunk, a damaged file) are reported in the
/// command's report instead, so that the others still get published.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value or combination is wrong.
    #[error("{0}")]
    Usage(String),
    /// The agent configuration is wrong.
    #[error(transparent)]
    Config(#[from] airlock_config::ConfigError),
    /// The destination registry could not be used.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The workspace refused or failed.
    #[error(transparent)]
    Workspace(#[from] StateError),
    /// An address of the configuration (the control plane's, the metrics')
    /// cannot be listened on.
    #[error(
        "{field} {addr}: {source}; is another agent running, or is the address not this machine's?"
    )]
    Bind {
        /// The configuration field (`grpc.listen`).
        field: &'static str,
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A chunk file could not be read as one.
    #[error(transparent)]
    Chunk(airlock_imageset::read::ChunkError),
    /// A local file could not be read or written.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io(FileError::new(path, source))
    }
}

impl ExitCode for Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) => exit_codes::CONFIG,
            Error::Registry(e) => e.exit_code(),
            Error::Workspace(StateError::Locked { .. }) => exit_codes::STATE,
            Error::Workspace(StateError::Storage { .. }) | Error::Io(_) => exit_codes::IO,
            Error::Bind { .. } => exit_codes::UNAVAILABLE,
            Error::Chunk(airlock_imageset::read::ChunkError::Io { .. }) => exit_codes::IO,
            Error::Chunk(_) => exit_codes::DATA,
        }
    }
}
