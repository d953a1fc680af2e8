//! The loyalty service: member points, membership levels and coupons over gRPC.
//!
//! - [`config`]: flags and environment.
//! - [`startup`]: builds the server ([`startup::Application`]) the binary and the
//!   tests both run.
//! - [`grpc`]: one adapter per gRPC service, wire types <-> domain types.
//! - [`domain`]: the rules (earning, caps, members).
//! - [`db`]: SQL, one module per area; the caller owns the transaction.
//! - [`error`]: the one error enum and its mapping to `tonic::Status`.
//! - [`events`]: the event log's background work (slices, wake-ups, pruning,
//!   the NATS relay); events themselves are written by [`db`] with each change.
//! - [`call`]: what every call goes through: deadline, load shedding, size and
//!   framing checks, request id, the caller's trace, retries of aborted
//!   transactions.
//! - [`connections`]: client connections, bounded in number and idle time.
//! - [`codec`]: the protobuf codec; malformed bodies are bad input.
//! - [`tls`]: TLS served by the service, client certificates, reload.
//! - [`auth`]: bearer tokens, client certificates, and scopes.
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: the tracing subscriber: logs, and OpenTelemetry traces over
//!   OTLP when configured.
//! - [`clock`]: the injected source of "now".
//!
//! Data flows one way: `grpc` -> `domain` -> `db`.

pub mod auth;
pub mod call;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connections;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod metrics;
pub mod startup;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/loyalty/v1` by `build.rs`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("loyalty.v1");

    /// The encoded descriptors of every proto file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loyalty_descriptor");
}
