//! Airlock's disconnected agent as a library: the binary `airlock-disconnected` is a
//! thin shell over [`cli::run`], and tests call the same functions.

pub mod agent_config;
pub mod cli;
pub mod cluster_api;
pub mod control;
pub mod daemon;
pub mod describe;
pub mod early;
pub mod error;
pub mod fanout;
pub mod ingest;
pub mod messages;
pub mod metrics;
pub mod publish;
pub mod scan;
mod settle;
pub mod site;
pub mod source;
pub mod status;
pub mod store;
pub mod verify;
pub mod workspace;

pub use error::Error;
