//! Airlock's end-to-end suites, one test binary: real `docker-registry` processes,
//! the built binaries, and skopeo as the independent check.

mod agent;
mod compat;
mod control;
mod delete;
mod differential;
mod dropdir;
mod fleet;
mod foundation;
mod helm;
mod hostile;
mod oneway;
mod operations;
mod operators;
mod package;
mod platforms;
mod policy;
mod pruning;
mod registries;
mod releases;
mod reports;
mod retries;
mod scheduled;
mod staging;
mod supply_chain;
mod util;
