//! The connected agent's errors, and the exit code of each.

use std::path::Path;

use airlock_common::exit_codes::{self, ExitCode};
use airlock_common::io::FileError;
use airlock_config::ConfigError;
use airlock_imageset::write::WriteError;
use airlock_registry::RegistryError;

use crate::catalog::image::CatalogError;
use crate::collect::CollectError;
use crate::graph_image::GraphImageError;
use crate::release_signature::SignatureError;
use crate::workspace::WorkspaceError;

/// Everything that can stop a connected-agent command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is malformed or asks for something unsupported.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A command-line value or combination is wrong.
    #[error("{0}")]
    Usage(String),
    /// A registry failed.
    #[error(transparent)]
    Registry(RegistryError),
    /// An image could not be resolved.
    #[error(transparent)]
    Collect(#[from] CollectError),
    /// Chunk files could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The workspace refused.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// An image could not be mirrored.
    #[error(transparent)]
    Publish(airlock_registry::publish::PublishError),
    /// The workspace state kept in a registry could not be read or stored.
    #[error("{0}")]
    Remote(String),
    /// The local workspace and the state kept in a registry disagree.
    #[error("{0}")]
    Conflict(String),
    /// The signing key could not be used.
    #[error(transparent)]
    Signing(#[from] airlock_imageset::signing::SigningError),
    /// The update graph could not be read, or does not have what the configuration asks for.
    #[error(transparent)]
    Select(#[from] crate::select::SelectError),
    /// A release payload could not be read.
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),
    /// A release signature could not be had or trusted.
    #[error(transparent)]
    ReleaseSignature(#[from] crate::release_signature::SignatureError),
    /// The update-graph data image could not be built.
    #[error(transparent)]
    GraphImage(#[from] crate::graph_image::GraphImageError),
    /// A Helm chart could not be fetched, read or rendered (boxed: its
    /// messages name entry, chart, file and line, and would make every
    /// `Result` of the crate that much larger).
    #[error(transparent)]
    Helm(Box<crate::helm::HelmError>),
    /// `--require-signatures` refused images (each entry names one and why).
    #[error(
        "--require-signatures: {} image(s) without a valid cosign signature by the given keys:\n  - {}\nsign them (cosign sign --key), pass the key that signed them, or leave them out of the configuration",
        .0.len(),
        .0.join("\n  - ")
    )]
    Unsigned(Vec<String>),
    /// `--secure-policy` refused images (each entry names one, the scope that
    /// decided, and why).
    #[error(
        "--secure-policy: {} image(s) refused by {}:\n  - {}\nsign them as the policy asks (cosign sign --key), change the policy, or leave them out of the configuration",
        images.len(),
        policy.display(),
        images.join("\n  - ")
    )]
    Refused {
        /// The policy file.
        policy: std::path::PathBuf,
        /// One entry per requirement an image does not meet.
        images: Vec<String>,
    },
    /// An operator catalog could not be read or filtered.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::image::CatalogError),
    /// Blobs the source would not serve while the imageset was written, with
    /// `--continue-on-error`: their images are left out and the imageset written
    /// again (`create` handles it; it is never the run's error).
    #[error("{} blobs could not be pulled: {}", .0.len(), .0.iter().map(|(d, e)| format!("{d}: {e}")).collect::<Vec<_>>().join("; "))]
    Unpulled(Vec<(airlock_oci::digest::Digest, Error)>),
    /// A local file could not be written.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl From<crate::helm::HelmError> for Error {
    fn from(e: crate::helm::HelmError) -> Self {
        Error::Helm(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io(FileError::new(path, source))
    }
}

impl ExitCode for Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) => exit_codes::CONFIG,
            Error::Remote(_) => exit_codes::UNAVAILABLE,
            Error::Signing(_) => exit_codes::CONFIG,
            Error::Publish(e) => e.exit_code(),
            Error::Conflict(_) => exit_codes::STATE,
            Error::Unsigned(_) | Error::Refused { .. } => exit_codes::DATA,
            Error::Catalog(CatalogError::Registry { source, .. }) => source.exit_code(),
            Error::Catalog(CatalogError::Invalid { .. } | CatalogError::Layer { .. }) => {
                exit_codes::DATA
            }
            Error::Catalog(CatalogError::Filter { .. }) => exit_codes::CONFIG,
            Error::Registry(e) => e.exit_code(),
            // create turns it into its images' absence or the first failure;
            // the arm keeps the match whole.
            Error::Unpulled(failed) => failed
                .first()
                .map_or(exit_codes::UNAVAILABLE, |(_, e)| e.exit_code()),
            Error::Collect(CollectError::Registry { source, .. }) => source.exit_code(),
            Error::Collect(CollectError::Inconsistent { .. }) => exit_codes::DATA,
            Error::Write(WriteError::Content { .. }) => exit_codes::DATA,
            Error::Write(WriteError::Sign(_)) => exit_codes::CONFIG,
            Error::Write(WriteError::Layout(_)) => exit_codes::CONFIG,
            Error::Write(WriteError::Io { .. }) | Error::Io(_) => exit_codes::IO,
            Error::Select(crate::select::SelectError::Config { .. }) => exit_codes::CONFIG,
            Error::Select(
                crate::select::SelectError::Graph { .. } | crate::select::SelectError::Fetch { .. },
            ) => exit_codes::UNAVAILABLE,
            Error::Payload(crate::payload::PayloadError::Registry { source, .. }) => {
                source.exit_code()
            }
            Error::Payload(
                crate::payload::PayloadError::Invalid { .. }
                | crate::payload::PayloadError::Layer { .. },
            ) => exit_codes::DATA,
            Error::ReleaseSignature(
                SignatureError::Keyring { .. }
                | SignatureError::StoreUrl { .. }
                | SignatureError::StoreClient(_),
            ) => exit_codes::CONFIG,
            Error::ReleaseSignature(SignatureError::Fetch { .. }) => exit_codes::UNAVAILABLE,
            Error::ReleaseSignature(SignatureError::Invalid { .. }) => exit_codes::DATA,
            Error::GraphImage(GraphImageError::Data { .. }) => exit_codes::DATA,
            Error::GraphImage(GraphImageError::Fetch { .. } | GraphImageError::Base { .. }) => {
                exit_codes::UNAVAILABLE
            }
            Error::Helm(e) => e.exit_code(),
            Error::Workspace(WorkspaceError::Locked { .. }) => exit_codes::STATE,
            Error::Workspace(WorkspaceError::Storage { .. }) => exit_codes::IO,
        }
    }
}
