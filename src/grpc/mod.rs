//! The gRPC layer: one file per service. Each turns a request into domain types,
//! calls the domain, and maps the result back; no rules and no SQL live here.

pub mod audit;
pub mod convert;
pub mod coupons;
pub mod events;
pub mod membership;
pub mod points;
