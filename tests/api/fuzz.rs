//! A bounded fuzz test: random and malformed messages to every RPC of the three
//! loyalty services, over a real socket to the real server.
//!
//! The methods and their request types come from the descriptor set the crate
//! embeds, so a new RPC is fuzzed without touching this file. Requests are raw
//! bytes: a pass-through codec sends whatever the generator wrote, valid or not.
//!
//! Case kinds, mixed by a seeded RNG and sent round robin over the methods:
//!
//! - `structured`: a request built from its descriptor, each field present or
//!   absent, with edge values: 0, -1, `i64::MIN`/`MAX`, unknown enum numbers,
//!   timestamps far outside PostgreSQL's range, nanos out of range, strings with
//!   NUL bytes, control characters, non-ASCII, 100 KB, ids with bad characters,
//!   repeated fields with hundreds of items.
//! - `structured+ids`: the same, but the ids are mostly those of the members,
//!   template, coupons, code and order the test set up, and nine values in ten
//!   are plausible, so that calls get past validation into the rules and the
//!   database with one or two hostile values.
//! - `malformed/<how>`: a structured request with broken wire data: invalid UTF-8
//!   in a string, a truncated or overlong varint, a wrong or invalid wire type, a
//!   length past the end, field number 0, a stray end-group, garbage in a nested
//!   message, a cut message; or valid but unknown fields.
//! - `raw-bytes`: random bytes as the whole message.
//! - `oversized`: a 5 MiB message, which must be `RESOURCE_EXHAUSTED` (or
//!   `INVALID_ARGUMENT`).
//! - `framing/<how>`: broken gRPC framing sent as a plain HTTP/2 request (empty
//!   body, compression flag 1 without `grpc-encoding` or 2, a frame shorter than
//!   announced, a partial header, two messages). The service checks the framing
//!   before tonic does (tonic would say `INTERNAL`), so these must be
//!   `INVALID_ARGUMENT`.
//!
//! Every other call must answer within the timeout with a code other than
//! `INTERNAL` and `UNKNOWN`; the server must not panic and must still report
//! `SERVING` at the end. The seed is printed; replay a run with
//! `LOYALTY_FUZZ_SEED=<seed>`, and change its size with `LOYALTY_FUZZ_CASES=<n>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use loyalty::pb;
use sqlx::PgPool;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use self::call::{Answer, call, call_raw};
use self::generate::{Case, Generator, framing_cases};
use self::report::Report;
use self::schema::Schema;
use crate::helpers::{TestApp, platform_template, spawn_app};

mod call;
mod generate;
mod report;
mod schema;
mod wire;

const DEFAULT_SEED: u64 = 0x10ca_17ee;
const DEFAULT_CASES: usize = 5000;
/// Calls in flight at once.
const IN_FLIGHT: usize = 8;
/// A call not answered by then counts as a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The ids `structured+ids` cases use; [`set_up`] creates them.
const ACCOUNTS: [&str; 5] = ["fuzz-1", "fuzz-2", "fuzz-3", "fuzz-4", "fuzz-5"];
const TEMPLATE_ID: &str = "fuzz-tpl";
const PUBLIC_CODE: &str = "FUZZ-CODE";
const ORDER_ID: &str = "fuzz-order-1";

/// Panics on the test's thread (the server runs there too: `#[sqlx::test]` uses a
/// current-thread runtime).
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[sqlx::test]
async fn random_and_malformed_requests_never_get_internal_or_unknown(pool: PgPool) {
    let seed = env_or("LOYALTY_FUZZ_SEED", DEFAULT_SEED);
    let count = env_or("LOYALTY_FUZZ_CASES", DEFAULT_CASES as u64) as usize;
    eprintln!("fuzz: seed {seed} (LOYALTY_FUZZ_SEED), {count} cases (LOYALTY_FUZZ_CASES)");
    count_panics_on_this_thread();

    let app = spawn_app(pool).await;
    set_up(&app).await;
    let schema = Schema::load();
    let mut generator = Generator::new(seed, &schema);
    let cases: Vec<Case> = (0..count).map(|number| generator.case(number)).collect();

    let started = Instant::now();
    let mut report = Report::default();
    let mut answers = futures::stream::iter(cases)
        .map(|case| {
            let channel = app.channel.clone();
            let streaming = schema.streaming.contains(&case.path);
            async move {
                let answer = call(channel, &case.path, case.body.clone(), streaming).await;
                (case, answer)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut failed_under = Vec::new();
    while let Some((case, answer)) = answers.next().await {
        match answer {
            Answer::Transport(_) => failed_under.push(case),
            answer => report.record(&case, &answer),
        }
    }
    // When the connection fails, every call in flight on it fails: retried alone,
    // only the call that broke it fails again.
    for case in failed_under {
        let streaming = schema.streaming.contains(&case.path);
        let answer = call(app.channel.clone(), &case.path, case.body.clone(), streaming).await;
        report.record(&case, &answer);
    }
    for (path, framing, body) in framing_cases() {
        let answer = call_raw(app.channel.clone(), path, body).await;
        report.record_framing(path, framing, &answer);
    }
    report.print(started.elapsed());

    let mut failures = report.offences(seed, count);
    let panics = PANICS.load(Ordering::SeqCst);
    if panics > 0 {
        failures.push(format!(
            "the server panicked {panics} time(s); see the output above"
        ));
    }
    if app.has_stopped() {
        failures.push("the server stopped".to_owned());
    }
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status);
    if health.as_ref().ok() != Some(&(ServingStatus::Serving as i32)) {
        failures.push(format!("the health check no longer answers SERVING: {health:?}"));
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
}

/// Members, a template, coupons, a public code and an order for `structured+ids`
/// cases to reach.
async fn set_up(app: &TestApp) {
    for account_id in ACCOUNTS {
        app.register(account_id).await;
    }
    app.create_template(platform_template(TEMPLATE_ID, 500)).await;
    for account_id in &ACCOUNTS[..3] {
        app.issue(account_id, TEMPLATE_ID).await.expect("coupon issued");
    }
    app.coupons
        .clone()
        .create_public_code(pb::CreatePublicCodeRequest {
            template_id: TEMPLATE_ID.to_owned(),
            code: PUBLIC_CODE.to_owned(),
        })
        .await
        .expect("public code created");
    app.confirm_order(
        ACCOUNTS[0],
        ORDER_ID,
        12_345,
        "2026-06-01T10:00:00Z",
        &[("p-1", "c-1")],
    )
    .await
    .expect("order recorded");
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name} is not a number: {value}"))
        })
        .unwrap_or(default)
}

/// Counts panics on this thread, keeping the usual panic output.
fn count_panics_on_this_thread() {
    let thread = std::thread::current().name().map(str::to_owned);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().map(str::to_owned) == thread {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
}

fn truncate(text: &str, chars: usize) -> String {
    let mut short: String = text.chars().take(chars).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}
