//! Airlock's shared library: everything both agents agree on beyond the OCI model
//! (`airlock-oci`) and the imageset format (`airlock-imageset`).
//!
//! - [`config`]: oc-mirror's `ImageSetConfiguration`, parsed strictly.
//! - [`registry`]: a registry client that keeps manifests byte for byte.
//! - [`publish`], [`prune`]: putting images into a registry and taking away what
//!   an imageset no longer lists.
//! - [`resources`]: cluster resources (mirror sets) derived from what was mirrored.
//! - [`state`]: opening a workspace's database.
//! - [`progress`]: how long transfers report their bytes.
//! - [`size`]: `700MiB`-style sizes.
//! - [`exit_codes`]: the process exit codes of every binary.
//!
//! Invariants: no knowledge of either agent, and nothing that draws on a
//! terminal, parses arguments, talks to systemd or serves HTTP (that is
//! `airlock-cli`, which only binaries use); manifests are handled as the bytes
//! they are, never re-serialised.

pub mod config;
pub mod exit_codes;
pub mod progress;
pub mod prune;
pub mod publish;
pub mod registry;
pub mod resources;
pub mod size;
pub mod state;
