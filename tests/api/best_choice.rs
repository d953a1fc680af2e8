//! Best choice over the socket on a member whose coupons make 2^40 subsets:
//! it answers within its budget with the exact combination, and the search
//! does not hold up other calls.

use std::time::{Duration, Instant};

use loyalty::pb;
use sqlx::PgPool;

use crate::helpers::{
    checkout, checkout_line, platform_template, seller_template, spawn_app, usd, usd_cents,
};

#[sqlx::test]
async fn best_choice_over_40_sellers_is_exact_fast_and_leaves_other_calls_alone(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    // Seller s<i> gives 5% + 0.1% * i off its one 10.00 line: 0.50 + 0.01 * i.
    let mut sellers = Vec::new();
    for i in 0..40 {
        let template = format!("s{i}-off");
        app.create_template(seller_template(&template, &format!("s{i}"), 500 + 10 * i))
            .await;
        sellers.push(app.issue("alice", &template).await.unwrap().coupon_id);
    }
    // 30.00 off the whole cart of 400.00 if 372.70 are left after the seller
    // coupons: room for 27.30 of them, all but s0's 0.50 (27.80 in all).
    let mut big = platform_template("big", 3000);
    big.min_purchase = Some(usd(40_000 - 2_730));
    big.regular_price_only = Some(false);
    app.create_template(big).await;
    let big = app.issue("alice", "big").await.unwrap().coupon_id;
    app.create_template(platform_template("small", 100)).await;
    app.issue("alice", "small").await.unwrap();
    let lines = (0..40)
        .map(|i| checkout_line(&format!("l{i}"), &format!("s{i}"), 1000, 1, false))
        .collect();
    let order = checkout("alice", "o-1", lines);

    // Balance calls for another member all along the searches.
    let balances = {
        let app_points = app.points.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let started = Instant::now();
                app_points
                    .clone()
                    .get_balance(pb::GetBalanceRequest {
                        account_id: "bob".into(),
                    })
                    .await
                    .expect("balance");
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slowest
        })
    };
    let searches: Vec<_> = (0..4)
        .map(|_| {
            let mut coupons = app.coupons.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let best = coupons
                    .best_coupons(pb::BestCouponsRequest { order: Some(order) })
                    .await
                    .expect("a best choice")
                    .into_inner();
                (best, started.elapsed())
            })
        })
        .collect();

    let mut expected: Vec<i64> = sellers[1..].to_vec();
    expected.push(big);
    expected.sort();
    for search in searches {
        let (best, elapsed) = search.await.unwrap();
        assert!(elapsed < Duration::from_secs(2), "BestCoupons took {elapsed:?}");
        let mut ids = best.coupon_ids.clone();
        ids.sort();
        assert_eq!(ids, expected, "every seller coupon but s0's, and the 30.00 one");
        let pricing = best.pricing.unwrap();
        assert_eq!(usd_cents(&pricing.discount), 2_730 + 3_000);
        assert!(pricing.coupons.iter().all(|c| c.applicable));
    }
    let slowest = balances.await.unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "a balance call took {slowest:?}"
    );
}
