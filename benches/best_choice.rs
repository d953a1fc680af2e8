//! Latency of the best-choice search (`pricing::best`) alone, without RPC or
//! database: a member with 300 coupons across 60 sellers (240 seller coupons,
//! 60 platform coupons, varied minimums, regular-price-only flags and discount
//! kinds) and a 100-line cart, a fresh random instance per run.
//!
//! cargo bench --bench best_choice -- --runs 2000
//!
//! Without `--runs` (as when `cargo test --all-targets` runs the bench target)
//! it does nothing.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use loyalty::domain::ids::{AccountId, CategoryId, LineId, OrderId, ProductId, SellerId};
use loyalty::domain::money::Currency;
use loyalty::domain::pricing::{
    self, BEST_CHOICE_BUDGET, CheckoutLine, CheckoutOrder, CouponStatus, CouponTerms, Discount, Issuer,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Parser)]
struct Args {
    /// Instances to time; without it the bench does nothing.
    #[arg(long)]
    runs: Option<usize>,
    /// Seed of the instances (the same seed gives the same instances).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 60)]
    sellers: usize,
    #[arg(long, default_value_t = 100)]
    lines: usize,
    /// Seller coupons per seller.
    #[arg(long, default_value_t = 4)]
    per_seller: usize,
    #[arg(long, default_value_t = 60)]
    platform: usize,
    /// cargo passes `--bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    let Some(runs) = args.runs else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now: DateTime<Utc> = "2026-06-15T12:00:00Z".parse().expect("an instant");
    let mut times = Vec::with_capacity(runs);
    let mut discounts = 0i64;
    for _ in 0..runs {
        let (order, coupons) = instance(&mut rng, &args, now);
        let started = Instant::now();
        let (_, pricing) = pricing::best(&order, &coupons, now, started + BEST_CHOICE_BUDGET);
        times.push(started.elapsed());
        discounts += pricing.discount;
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let over = times.iter().filter(|t| **t >= BEST_CHOICE_BUDGET).count();
    println!(
        "best_choice: {runs} runs, {} sellers, {} lines, {} coupons ({} platform): \
         p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {over} at the {} ms budget \
         (mean discount {})",
        args.sellers,
        args.lines,
        args.sellers * args.per_seller + args.platform,
        args.platform,
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0)),
        BEST_CHOICE_BUDGET.as_millis(),
        discounts / runs.max(1) as i64,
    );
}

/// A random cart and a member's coupons for it.
fn instance(rng: &mut StdRng, args: &Args, now: DateTime<Utc>) -> (CheckoutOrder, Vec<CouponTerms>) {
    let account = AccountId::parse("bench").expect("an account id");
    let usd = Currency::parse("USD").expect("a currency");
    let seller = |s: usize| SellerId::parse(&format!("s{s}")).expect("a seller id");
    let mut seller_amounts = vec![0i64; args.sellers];
    let lines: Vec<CheckoutLine> = (0..args.lines)
        .map(|l| {
            // Every seller has a line; the rest at random.
            let s = if l < args.sellers {
                l
            } else {
                rng.gen_range(0..args.sellers)
            };
            let line = CheckoutLine {
                line_id: LineId::parse(&format!("l{l}")).expect("a line id"),
                seller_id: seller(s),
                product_id: ProductId::parse(&format!("p{l}")).expect("a product id"),
                category_id: CategoryId::parse("c").expect("a category id"),
                unit_price: rng.gen_range(500..20_000),
                quantity: rng.gen_range(1..4),
                sale_price: rng.gen_bool(0.25),
            };
            seller_amounts[s] += line.unit_price * i64::from(line.quantity);
            line
        })
        .collect();
    let subtotal: i64 = seller_amounts.iter().sum();
    let order = CheckoutOrder::new(
        OrderId::parse("o").expect("an order id"),
        account.clone(),
        usd,
        lines,
    )
    .expect("a valid order");

    let mut coupons = Vec::new();
    let mut terms = |rng: &mut StdRng, issuer: Issuer, discount: Discount, min_purchase: i64| {
        coupons.push(CouponTerms {
            coupon_id: coupons.len() as i64 + 1,
            account_id: account.clone(),
            status: CouponStatus::Valid,
            order_id: None,
            issuer,
            discount,
            currency: usd,
            min_purchase,
            regular_price_only: rng.gen_bool(0.5),
            valid_from: now - TimeDelta::days(1),
            expires_at: now + TimeDelta::days(rng.gen_range(1..60)),
        });
    };
    for (s, amount) in seller_amounts.iter().enumerate() {
        for _ in 0..args.per_seller {
            let discount = random_discount(rng, 100..3_000, 500..3_000);
            let min_purchase = if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(0..=*amount)
            };
            terms(rng, Issuer::Seller(seller(s)), discount, min_purchase);
        }
    }
    for _ in 0..args.platform {
        let discount = random_discount(rng, 500..20_000, 300..2_000);
        // Some minimums close to the cart, where skipping seller coupons pays.
        let min_purchase = match rng.gen_range(0..3) {
            0 => 0,
            1 => rng.gen_range(0..=subtotal),
            _ => subtotal - rng.gen_range(0..=subtotal / 10),
        };
        terms(rng, Issuer::Platform, discount, min_purchase);
    }
    (order, coupons)
}

fn random_discount(
    rng: &mut StdRng,
    amounts: std::ops::Range<i64>,
    basis_points: std::ops::Range<u32>,
) -> Discount {
    if rng.gen_bool(0.5) {
        Discount::AmountOff(rng.gen_range(amounts))
    } else {
        Discount::PercentOff {
            basis_points: rng.gen_range(basis_points),
            max_minor: rng
                .gen_bool(0.5)
                .then(|| rng.gen_range(amounts.start * 2..amounts.end * 2)),
        }
    }
}
