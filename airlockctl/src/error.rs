//! What stops an `airlockctl` command, and the exit code of each.

use airlock_common::exit_codes::{self, ExitCode};

/// Everything that stops a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or file given on the command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] airlock_proto::tls::TlsError),
    /// The agent cannot be reached, or refused the connection.
    #[error("{server}: {message}")]
    Connect {
        /// The `--server` URL.
        server: String,
        /// What failed, with every cause, and a hint.
        message: String,
    },
    /// The agent answered with an error.
    #[error("{server}: {message}")]
    Rpc {
        /// The `--server` URL.
        server: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// A file to send cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ExitCode for Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Tls(_) | Error::Read { .. } => exit_codes::CONFIG,
            Error::Connect { .. } => exit_codes::UNAVAILABLE,
            Error::Rpc { code, .. } => match code {
                tonic::Code::InvalidArgument => exit_codes::DATA,
                tonic::Code::NotFound | tonic::Code::FailedPrecondition => exit_codes::CONFIG,
                tonic::Code::ResourceExhausted => exit_codes::IO,
                _ => exit_codes::UNAVAILABLE,
            },
        }
    }
}
