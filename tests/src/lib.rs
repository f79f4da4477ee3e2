//! The shared harness of Airlock's end-to-end suites.
//!
//! Real parts only: `docker-registry` processes on free loopback ports
//! ([`registry`]), images built in real formats and pushed by an independent client
//! ([`images`]), `skopeo` to check results ([`skopeo`]), and the project's binaries
//! run as a user runs them ([`bins`]). The one double is the Kubernetes API server
//! ([`kube_api`]), which cannot be installed here. Registries with bearer-token
//! auth are real too; only their token issuer is the harness's ([`token`]).

pub mod bins;
pub mod faults;
pub mod forge;
pub mod http;
pub mod images;
pub mod kube_api;
pub mod proxy;
pub mod registry;
pub mod release;
pub mod skopeo;
pub mod supply_chain;
pub mod tinyproxy;
pub mod tls;
pub mod token;
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

/// `application/x-www-form-urlencoded` decoding of one key or value of a query
/// string, for the harness's HTTP servers.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
