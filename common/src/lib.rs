//! Airlock's shared library: everything both agents agree on beyond the OCI model
//! (`airlock-oci`) and the imageset format (`airlock-imageset`).
//!
//! - [`config`]: oc-mirror's `ImageSetConfiguration`, parsed strictly.
//! - [`registry`]: a registry client that keeps manifests byte for byte.
//! - [`resources`]: cluster resources (mirror sets) derived from what was mirrored.
//! - [`exit_codes`]: the process exit codes of every binary.

pub mod config;
pub mod exit_codes;
pub mod progress;
pub mod prune;
pub mod publish;
pub mod registry;
pub mod resources;
pub mod size;
pub mod state;
