//! `airlockctl`, the admin CLI of the disconnected agent, as a library: the binary
//! is a thin shell over [`cli::run`].
//!
//! It speaks `airlock.v1.Control` ([`client`]) over mutual TLS only, and prints
//! what it gets as tables for people or JSON for scripts ([`output`]; the JSON
//! keys are a contract, documented in `docs/airlockctl.md`).

pub mod cli;
pub mod client;
pub mod error;
pub mod output;

pub use error::Error;
