//! Best choice stays bounded: a member holding a coupon from each of 40 sellers
//! gets an answer within the budget, and other calls keep answering meanwhile.

use std::time::{Duration, Instant};

use loyalty::pb;
use sqlx::PgPool;

use crate::helpers::{checkout, checkout_line, platform_template, seller_template, spawn_app};

#[sqlx::test]
async fn best_coupons_on_40_sellers_answers_in_time_while_other_calls_answer(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    for seller in 0..40 {
        let template = format!("s-{seller}");
        app.create_template(seller_template(&template, &format!("seller-{seller}"), 1000))
            .await;
        app.issue("alice", &template).await.unwrap();
    }
    for (template, amount) in [("p-500", 500), ("p-300", 300), ("p-100", 100)] {
        app.create_template(platform_template(template, amount)).await;
        app.issue("alice", template).await.unwrap();
    }
    // One 10.00 line per seller: each seller coupon takes 1.00, the best platform
    // coupon 5.00 of what is left.
    let lines = (0..40)
        .map(|seller| {
            checkout_line(
                &format!("l-{seller}"),
                &format!("seller-{seller}"),
                1000,
                1,
                false,
            )
        })
        .collect();
    let order = checkout("alice", "o-best", lines);

    let balances = {
        let points = app.points.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..20 {
                let started = Instant::now();
                points
                    .clone()
                    .get_balance(pb::GetBalanceRequest {
                        account_id: "bob".into(),
                    })
                    .await
                    .unwrap();
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            slowest
        })
    };
    let started = Instant::now();
    let mut request = tonic::Request::new(pb::BestCouponsRequest { order: Some(order) });
    request.set_timeout(Duration::from_secs(10));
    let best = app
        .coupons
        .clone()
        .best_coupons(request)
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_secs(2), "BestCoupons took {elapsed:?}");
    assert_eq!(best.coupon_ids.len(), 41);
    assert_eq!(best.pricing.unwrap().discount_minor, 40 * 100 + 500);
    let slowest = balances.await.unwrap();
    assert!(
        slowest < Duration::from_millis(500),
        "GetBalance took {slowest:?}"
    );
}
