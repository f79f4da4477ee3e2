//! The shared harness of Airlock's end-to-end suites.
//!
//! Real parts only: `docker-registry` processes on free loopback ports
//! ([`registry`]), images built in real formats and pushed by an independent client
//! ([`images`]), `skopeo` to check results ([`skopeo`]), and the project's binaries
//! run as a user runs them ([`bins`]). The one double is the Kubernetes API server
//! ([`kube_api`]), which cannot be installed here.

pub mod bins;
pub mod faults;
pub mod forge;
pub mod images;
pub mod kube_api;
pub mod proxy;
pub mod registry;
pub mod release;
pub mod skopeo;
pub mod supply_chain;
pub mod tls;
pub mod update_service;

use std::path::PathBuf;

/// The real public samples shipped with the repository (`fixtures/real`).
pub fn fixtures_dir() -> PathBuf {
    repo_dir().join("fixtures/real")
}

/// The repository's root (scripts and deploy files the tests run as documented).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
