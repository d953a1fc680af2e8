//! Load generator for the RPC path: N concurrent callers using the generated
//! gRPC client against a running `loyalty serve`, for a fixed time, reporting
//! calls/s and latency percentiles. `scripts/bench` seeds the database, runs
//! this and the matching pgbench script side by side, and prints both.
//!
//! cargo bench --bench load -- --addr http://127.0.0.1:50061 --scenario validate \
//!     --concurrency 16 --seconds 10 --members 10000
//!
//! With `--rate`, the load is open: calls start on a fixed schedule (`rate`
//! per second) whether or not the earlier ones have answered, and a call's
//! latency runs from when it was due, not from when it was sent, so a server
//! that falls behind shows it (no coordinated omission). Then it also reports
//! p99.9, and how many calls could not even start (`--max-in-flight` were
//! already waiting).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use loyalty::pb;
use loyalty::pb::coupons_client::CouponsClient;
use loyalty::pb::points_client::PointsClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scenario {
    /// ValidateCoupons of one member's coupon on a two-line order.
    Validate,
    /// ReserveCoupons then CompleteOrder, a fresh coupon each time.
    ReserveComplete,
    /// ClaimCoupon of one public code (one hot template) by a fresh member each time.
    HotClaim,
    /// RecordConfirmedOrder of a fresh order by a random member.
    AwardOrder,
    /// grpc.health.v1 Check: no SQL at all, the ceiling of the RPC hop itself.
    Health,
    /// BestCoupons for a member holding 300 coupons across 60 sellers, on a
    /// 100-line cart (the generator issues the coupons before the clock starts).
    Best,
}

#[derive(Debug, Parser)]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:50061")]
    addr: String,
    /// What to call; without it (as when `cargo test --all-targets` runs the
    /// bench target) the generator does nothing.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Members seeded as m1..mN (`bench/seed.sql`).
    #[arg(long, default_value_t = 10_000)]
    members: u64,
    /// HTTP/2 connections shared by the callers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Open load: start this many calls per second on a fixed schedule,
    /// instead of `--concurrency` callers each waiting for its answer.
    #[arg(long)]
    rate: Option<u64>,
    /// Open load: calls that may wait for their answer at once; a call due
    /// while that many wait is counted as not started.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Where the fresh coupons, members and order ids start: a second run on
    /// the same database starts past the first one's (`scripts/bench-cpu`
    /// warms the server up first), so it replays none of its calls.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Print one machine-readable line instead of a sentence.
    #[arg(long)]
    tsv: bool,
    /// cargo passes `--bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What every caller shares.
struct Shared {
    scenario: Scenario,
    members: u64,
    /// Hands out fresh coupons, members and order ids.
    sequence: AtomicU64,
}

impl Shared {
    fn next(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The member owning seeded coupon `c` (coupon c belongs to m((c-1) % members + 1)).
    fn owner(&self, c: u64) -> String {
        format!("m{}", (c - 1) % self.members + 1)
    }
}

/// `amount_minor` US cents on the wire.
fn usd(amount_minor: i64) -> pb::Money {
    pb::Money {
        amount_minor,
        currency_code: "USD".to_owned(),
    }
}

fn order(account_id: String, order_id: String) -> pb::CheckoutOrder {
    let line = |id: &str, seller: &str, price: i64| pb::CheckoutLine {
        line_id: id.to_owned(),
        seller_id: seller.to_owned(),
        product_id: format!("p-{id}"),
        category_id: "c1".to_owned(),
        unit_price: Some(usd(price)),
        quantity: 1,
        sale_price: false,
    };
    pb::CheckoutOrder {
        order_id,
        account_id,
        currency_code: "USD".to_owned(),
        lines: vec![line("l1", "s1", 2500), line("l2", "s2", 1333)],
    }
}

/// The clients a caller uses.
struct Clients {
    coupons: CouponsClient<Channel>,
    points: PointsClient<Channel>,
    health: HealthClient<Channel>,
}

/// The member of the `best` scenario.
const BEST_MEMBER: &str = "best-1";
/// Sellers of the `best` scenario's cart and coupons.
const BEST_SELLERS: usize = 60;

/// Gives [`BEST_MEMBER`] 300 coupons: 4 from each of 60 sellers (one template
/// each, percentages, some with a minimum, half regular-price only) and 60
/// platform coupons (6 templates of 10: amounts and capped percentages, with
/// minimums up to most of the cart). Idempotent: templates and issuance ids
/// are fixed.
async fn seed_best(channel: Channel) -> anyhow::Result<()> {
    use pb::membership_client::MembershipClient;
    let mut members = MembershipClient::new(channel.clone());
    let mut coupons = CouponsClient::new(channel);
    members
        .register_member(pb::RegisterMemberRequest {
            account_id: BEST_MEMBER.to_owned(),
            registered_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            birthday: None,
        })
        .await?;
    let percent = |basis_points: i32, max_discount_minor: i64| pb::Discount {
        kind: Some(pb::discount::Kind::PercentOff(pb::PercentOff {
            basis_points,
            max_discount: (max_discount_minor > 0).then(|| usd(max_discount_minor)),
        })),
    };
    let template =
        |template_id: String, issuer: pb::Issuer, seller_id: String, discount, min, limit, regular| {
            pb::CouponTemplate {
                template_id,
                name: "bench best".to_owned(),
                issuer: issuer.into(),
                seller_id,
                discount: Some(discount),
                currency_code: "USD".to_owned(),
                min_purchase: (min > 0).then(|| usd(min)),
                validity: Some(pb::Validity {
                    kind: Some(pb::validity::Kind::DaysFromIssuance(3650)),
                }),
                per_member_limit: limit,
                regular_price_only: Some(regular),
                ..Default::default()
            }
        };
    let mut templates = Vec::new();
    for s in 0..BEST_SELLERS {
        let n = i32::try_from(s).unwrap_or(0);
        let min = if s % 3 == 0 {
            0
        } else {
            1000 + 500 * i64::from(n % 7)
        };
        templates.push((
            template(
                format!("best-s{s}"),
                pb::Issuer::Seller,
                format!("seller-{s}"),
                percent(500 + 37 * n % 1000, 0),
                min,
                4,
                s % 2 == 0,
            ),
            4,
        ));
    }
    for p in 0..6i64 {
        let discount = if p % 2 == 0 {
            pb::Discount {
                kind: Some(pb::discount::Kind::AmountOff(usd(2000 + 1500 * p))),
            }
        } else {
            percent(800 + 200 * i32::try_from(p).unwrap_or(0), 3000 + 1000 * p)
        };
        templates.push((
            template(
                format!("best-p{p}"),
                pb::Issuer::Platform,
                String::new(),
                discount,
                40_000 * p,
                10,
                p % 3 == 0,
            ),
            10,
        ));
    }
    for (template, count) in templates {
        let template_id = template.template_id.clone();
        coupons
            .create_coupon_template(pb::CreateCouponTemplateRequest {
                template: Some(template),
            })
            .await?;
        for k in 0..count {
            coupons
                .issue_coupon(pb::IssueCouponRequest {
                    account_id: BEST_MEMBER.to_owned(),
                    template_id: template_id.clone(),
                    issuance_id: format!("{template_id}-{k}"),
                })
                .await?;
        }
    }
    Ok(())
}

/// The `best` scenario's cart: 100 lines over the 60 sellers, a quarter on sale.
fn best_cart(order_id: String) -> pb::CheckoutOrder {
    let lines = (0..100u32)
        .map(|j| pb::CheckoutLine {
            line_id: format!("l{j}"),
            seller_id: format!("seller-{}", j as usize % BEST_SELLERS),
            product_id: format!("p{j}"),
            category_id: "c1".to_owned(),
            unit_price: Some(usd(500 + i64::from(j * 137 % 5000))),
            quantity: 1 + i32::try_from(j % 3).unwrap_or(0),
            sale_price: j % 4 == 0,
        })
        .collect();
    pb::CheckoutOrder {
        order_id,
        account_id: BEST_MEMBER.to_owned(),
        currency_code: "USD".to_owned(),
        lines,
    }
}

async fn call(shared: &Shared, clients: &mut Clients) -> Result<(), tonic::Status> {
    let Clients {
        coupons,
        points,
        health,
    } = clients;
    match shared.scenario {
        Scenario::Health => {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
        }
        Scenario::Validate => {
            // Seeded coupon m belongs to member m.
            let m = shared.next() % shared.members + 1;
            coupons
                .validate_coupons(pb::ValidateCouponsRequest {
                    order: Some(order(format!("m{m}"), format!("v-{m}"))),
                    coupon_ids: vec![i64::try_from(m).unwrap_or(1)],
                })
                .await?;
        }
        Scenario::ReserveComplete => {
            let c = shared.next();
            let (account_id, order_id) = (shared.owner(c), format!("b-{c}"));
            coupons
                .reserve_coupons(pb::ReserveCouponsRequest {
                    order: Some(order(account_id.clone(), order_id.clone())),
                    coupon_ids: vec![i64::try_from(c).unwrap_or(1)],
                    ..Default::default()
                })
                .await?;
            coupons
                .complete_order(pb::CompleteOrderRequest { account_id, order_id })
                .await?;
        }
        Scenario::Best => {
            let n = shared.next();
            coupons
                .best_coupons(pb::BestCouponsRequest {
                    order: Some(best_cart(format!("best-{n}"))),
                })
                .await?;
        }
        Scenario::HotClaim => {
            let m = shared.next();
            coupons
                .claim_coupon(pb::ClaimCouponRequest {
                    account_id: format!("m{m}"),
                    code: "BENCH-HOT".to_owned(),
                })
                .await?;
        }
        Scenario::AwardOrder => {
            let n = shared.next();
            let m = n.wrapping_mul(2_654_435_761) % shared.members + 1;
            let category = |k: u64| format!("cat{}", (n + k) % 20);
            points
                .record_confirmed_order(pb::RecordConfirmedOrderRequest {
                    account_id: format!("m{m}"),
                    order_id: format!("ord-{n}"),
                    amount: Some(pb::Money {
                        amount_minor: 2590,
                        currency_code: "USD".to_owned(),
                    }),
                    confirmed_at: Some(prost_types::Timestamp {
                        seconds: 1_780_000_000 + i64::try_from(n % 86_400).unwrap_or(0),
                        nanos: 0,
                    }),
                    products: vec![
                        pb::OrderProduct {
                            product_id: "sku-1".to_owned(),
                            category_id: category(0),
                        },
                        pb::OrderProduct {
                            product_id: "sku-2".to_owned(),
                            category_id: category(7),
                        },
                    ],
                })
                .await?;
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(scenario) = args.scenario else {
        eprintln!("no --scenario: nothing to load (scripts/bench runs the scenarios)");
        return Ok(());
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args, scenario))
}

async fn run(args: Args, scenario: Scenario) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            Channel::from_shared(args.addr.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    if matches!(scenario, Scenario::Best) {
        seed_best(channels[0].clone()).await?;
    }
    let shared = Arc::new(Shared {
        scenario,
        members: args.members,
        sequence: AtomicU64::new(args.first),
    });
    if let Some(rate) = args.rate {
        return open_load(&args, scenario, shared, channels, rate).await;
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for i in 0..args.concurrency {
        let channel = channels[i % channels.len()].clone();
        let (shared, errors) = (shared.clone(), errors.clone());
        callers.push(tokio::spawn(async move {
            let mut clients = Clients {
                coupons: CouponsClient::new(channel.clone()),
                points: PointsClient::new(channel.clone()),
                health: HealthClient::new(channel),
            };
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let begun = Instant::now();
                match call(&shared, &mut clients).await {
                    Ok(()) => latencies.push(begun.elapsed()),
                    Err(status) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {status:?}");
                        }
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed;
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    let errors = errors.load(Ordering::Relaxed);
    if args.tsv {
        println!(
            "{scenario:?}\t{}\t{rate:.0}\t{:.2}\t{:.2}\t{errors}",
            latencies.len(),
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    } else {
        println!(
            "{scenario:?}: {} calls in {elapsed:.1} s = {rate:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms, {errors} errors",
            latencies.len(),
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// The open load: `rate` calls per second for `--seconds`, each measured from
/// when it was due.
async fn open_load(
    args: &Args,
    scenario: Scenario,
    shared: Arc<Shared>,
    channels: Vec<Channel>,
    rate: u64,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = rate * args.seconds;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1)));
    let errors = Arc::new(AtomicU64::new(0));
    let mut not_started = 0u64;
    let mut calls = tokio::task::JoinSet::new();
    let started = tokio::time::Instant::now();
    for k in 0..total {
        let due = started + interval.mul_f64(k as f64);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            not_started += 1;
            continue;
        };
        let channel = channels[k as usize % channels.len()].clone();
        let (shared, errors) = (shared.clone(), errors.clone());
        calls.spawn(async move {
            let _permit = permit;
            let mut clients = Clients {
                coupons: CouponsClient::new(channel.clone()),
                points: PointsClient::new(channel.clone()),
                health: HealthClient::new(channel),
            };
            match call(&shared, &mut clients).await {
                Ok(()) => Some(due.elapsed()),
                Err(status) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("first error: {status:?}");
                    }
                    None
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    while let Some(done) = calls.join_next().await {
        latencies.extend(done?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let achieved = latencies.len() as f64 / elapsed;
    let ms = |p: f64| percentile(&latencies, p).as_secs_f64() * 1000.0;
    let errors = errors.load(Ordering::Relaxed);
    if args.tsv {
        println!(
            "{scenario:?}\t{}\t{achieved:.0}\t{:.2}\t{:.2}\t{:.2}\t{errors}\t{not_started}",
            latencies.len(),
            ms(50.0),
            ms(99.0),
            ms(99.9)
        );
    } else {
        println!(
            "{scenario:?} at {rate}/s: {} calls answered = {achieved:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms, \
             p99.9 {:.2} ms, {errors} errors, {not_started} not started",
            latencies.len(),
            ms(50.0),
            ms(99.0),
            ms(99.9)
        );
    }
    Ok(())
}
