//! Airlock's connected agent as a library: the binary `airlock-connected` is a thin
//! shell over [`cli::run`], and tests call the same functions.

pub mod agent;
pub mod catalog;
pub mod cincinnati;
pub mod cli;
pub mod collect;
pub mod contents;
pub mod cosign;
pub mod create;
pub mod delete;
pub mod derive;
pub mod error;
pub mod graph;
pub mod graph_image;
pub mod helm;
pub mod http;
pub mod layers;
pub mod metrics;
pub mod mirror;
pub mod payload;
pub mod policy;
mod reads;
pub mod referrers;
pub mod release;
pub mod release_signature;
pub mod remote;
pub mod secure_policy;
pub mod select;
pub mod workspace;

pub use error::Error;
