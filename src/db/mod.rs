//! Queries and row types. Functions take `&mut PgConnection`, so the domain
//! operation that calls them owns the transaction. No rules live here, except
//! where a rule is a constraint (a unique key, a guarded counter).

pub mod coupons;
pub mod levels;
pub mod members;
pub mod points;

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
