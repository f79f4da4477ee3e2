//! The OCI model every Airlock crate speaks: digests, image references and
//! destinations, the four manifest types, and quoting of untrusted text.
//!
//! Invariants: this crate does no I/O and has no network dependency. A
//! [`digest::Digest`] is always a well-formed `sha256:<64 hex>`, safe as a path
//! component (it is made by parsing or by hashing); the registry and repository
//! of a [`reference::ImageRef`] or [`reference::Destination`] were checked when it
//! was parsed. Text quoted by [`quote`] is bounded and has its control characters
//! escaped. The format crate (`airlock-imageset`) relies on this at the trust
//! boundary.

pub mod digest;
pub mod manifest;
pub mod quote;
pub mod reference;
