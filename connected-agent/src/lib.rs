//! Airlock's connected agent as a library: the binary `airlock-connected` is a thin
//! shell over [`cli::run`], and tests call the same functions.

pub mod cli;
pub mod collect;
pub mod create;
pub mod error;
pub mod mirror;
pub mod remote;
pub mod workspace;

pub use error::Error;
