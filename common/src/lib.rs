//! The vocabulary every Airlock crate shares, and nothing else: the process
//! [`exit_codes`] scripts branch on, and [`size`]s written as `700MiB`.
//!
//! Invariants: no I/O, no knowledge of registries, imagesets or either agent;
//! a value's meaning, once published, does not change (scripts depend on it).

pub mod exit_codes;
pub mod size;
