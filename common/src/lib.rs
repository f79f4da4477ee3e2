//! The vocabulary every Airlock crate shares, and nothing else: the process
//! [`exit_codes`] scripts branch on, and the units configuration files and
//! flags are written in: [`size`]s (`700MiB`) and [`duration`]s (`30s`, `5m`).
//!
//! Invariants: no I/O, no knowledge of registries, imagesets or either agent;
//! a value's meaning, once published, does not change (scripts depend on it).

pub mod duration;
pub mod exit_codes;
pub mod size;
