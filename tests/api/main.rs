//! End-to-end tests: the real server on port 0, typed gRPC clients over a real
//! socket, and a fresh PostgreSQL database per test (`#[sqlx::test]`).

mod audit;
mod best_choice;
mod bounds;
mod call_context;
mod checkout;
mod checkout_orders;
mod code_batches;
mod concurrency;
mod coupon_concurrency;
mod coupons;
mod database_tls;
mod engagement;
mod events;
mod events_relay;
mod fuzz;
mod helpers;
mod ledger;
mod levels;
mod members;
mod orders;
mod page_tokens;
mod plans;
mod routing;
mod server;
mod template_stock;
mod time_zones;
mod tls;
