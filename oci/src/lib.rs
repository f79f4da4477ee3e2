//! The OCI model every Airlock crate speaks: digests, image references and
//! destinations, the four manifest types, and quoting of untrusted text.
//!
//! Invariant: this crate does no I/O and has no network dependency. A value of
//! its types has been validated when it was made: a [`digest::Digest`] is a
//! well-formed `sha256:<64 hex>` and safe as a path component, a
//! [`reference::Reference`] a well-formed name, and text quoted by [`quote`] is
//! bounded and printable, whatever the input was. The format crate
//! (`airlock-imageset`) relies on this at the trust boundary.

pub mod digest;
pub mod manifest;
pub mod quote;
pub mod reference;
