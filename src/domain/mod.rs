//! The rules of the loyalty program. Knows nothing of protobuf; calls `db`.

pub mod audit;
pub mod calendar;
pub mod coupons;
pub mod events;
pub mod ids;
pub mod levels;
pub mod members;
pub mod membership;
pub mod money;
pub mod points;
pub mod pricing;
pub mod text;
