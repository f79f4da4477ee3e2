//! Airlock's gRPC contract, `proto/airlock/v1/control.proto`, and the mutual-TLS
//! setup both ends share.
//!
//! The disconnected agent serves [`v1::control_server::Control`]; `airlockctl` is
//! its reference client. There is no plaintext mode: [`tls`] builds the only
//! configurations either end accepts.

pub mod tls;

/// Generated from `airlock/v1/control.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("airlock.v1");
}
