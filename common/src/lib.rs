//! Airlock's shared library: everything both agents agree on.
//!
//! - [`config`]: oc-mirror's `ImageSetConfiguration`, parsed strictly.
//! - [`reference`], [`digest`], [`manifest`]: the OCI model.
//! - [`registry`]: a registry client that keeps manifests byte for byte.
//! - [`imageset`]: the chunked imageset format that crosses the air gap.
//! - [`resources`]: cluster resources (mirror sets) derived from what was mirrored.
//! - [`exit_codes`]: the process exit codes of every binary.

pub mod cli;
pub mod config;
pub mod digest;
pub mod exit_codes;
pub mod imageset;
pub mod manifest;
pub mod metrics;
pub mod prune;
pub mod publish;
pub mod quote;
pub mod reference;
pub mod registry;
pub mod resources;
pub mod service;
pub mod signing;
pub mod size;
pub mod state;
pub mod telemetry;
