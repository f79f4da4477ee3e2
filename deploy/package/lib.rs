//! No code: this crate carries the metadata of the `airlock` .deb and .rpm
//! (`Cargo.toml` beside it), which scripts/package builds.
