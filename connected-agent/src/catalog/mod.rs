//! Operator catalogs: file-based catalogs read natively (no `opm`), filtered
//! with oc-mirror's rules.

pub mod content;
pub mod fbc;
pub mod filter;
pub mod image;
pub mod range;
pub mod rebuild;

#[cfg(test)]
mod tests;
