//! The loyalty service: member points, membership levels and coupons over gRPC.
//!
//! - [`config`]: flags and environment.
//! - [`startup`]: builds the server ([`startup::Application`]) the binary and the
//!   tests both run.
//! - [`grpc`]: one adapter per gRPC service, wire types <-> domain types.
//! - [`domain`]: the rules (earning, caps, members).
//! - [`db`]: SQL, one module per area; the caller owns the transaction.
//! - [`error`]: the one error enum and its mapping to `tonic::Status`.
//! - [`auth`]: bearer tokens and scopes.
//! - [`metrics`]: Prometheus metrics.
//! - [`clock`]: the injected source of "now".
//!
//! Data flows one way: `grpc` -> `domain` -> `db`.

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod startup;
pub mod telemetry;

/// Code generated from `proto/loyalty/v1` by `build.rs`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("loyalty.v1");

    /// The encoded descriptors of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loyalty_descriptor");
}
