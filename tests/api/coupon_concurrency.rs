//! SPEC §4 concurrency rules, with real concurrent calls.

use futures::StreamExt;
use futures::future::join_all;
use loyalty::pb;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;

use crate::helpers::{checkout, checkout_line, platform_template, reason, spawn_app};

async fn pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    options.max_connections(16).connect_with(connect).await.unwrap()
}

/// Members m1 to m`count`.
async fn insert_members(pool: &PgPool, count: i32) {
    sqlx::query(
        "insert into member (account_id, registered_at) \
         select 'm' || g, '2026-01-01T00:00:00Z' from generate_series(1, $1) g",
    )
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test]
async fn a_hundred_concurrent_reserves_of_one_coupon_let_exactly_one_win(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;
    for round in 0..5 {
        let template = format!("t{round}");
        app.create_template(platform_template(&template, 100)).await;
        let coupon = app.issue("alice", &template).await.unwrap();

        let calls = (0..100).map(|i| {
            let order = checkout(
                "alice",
                &format!("o-{round}-{i}"),
                vec![checkout_line("l1", "s1", 1000, 1, false)],
            );
            app.reserve(order, vec![coupon.coupon_id])
        });
        let results = join_all(calls).await;

        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}");
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(
                (error.code(), reason(error).as_str()),
                (Code::FailedPrecondition, "COUPON_NOT_APPLICABLE")
            );
        }
        let held = app.coupon("alice", coupon.coupon_id).await;
        assert_eq!(
            held.coupon.unwrap().order_id,
            winners[0].order.as_ref().unwrap().coupons[0].order_id
        );
        assert_eq!(held.history.iter().filter(|t| t.action == "reserve").count(), 1);
    }
}

#[sqlx::test]
async fn ten_thousand_claims_of_a_stock_of_a_thousand_issue_exactly_a_thousand(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool(options, connect).await;
    insert_members(&pool, 2000).await;
    let app = spawn_app(pool.clone()).await;
    let mut template = platform_template("hot", 100);
    template.total_stock = Some(1000);
    template.per_member_limit = 2;
    app.create_template(template).await;

    // 2,000 members x 5 issuances each, all at once (bounded only by the
    // client's in-flight window); each member may hold 2.
    let calls = (0..10_000).map(|i| {
        let app = &app;
        async move {
            app.issue_as(&format!("m{}", i % 2000 + 1), "hot", &format!("claim-{i}"))
                .await
        }
    });
    let results: Vec<_> = futures::stream::iter(calls).buffer_unordered(500).collect().await;

    let issued = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(issued, 1000);
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                reason(error).as_str(),
                "OUT_OF_STOCK" | "PER_MEMBER_LIMIT_REACHED"
            ),
            "unexpected {error:?}"
        );
    }
    let (coupons, max_per_member): (i64, i64) = sqlx::query_as(
        "select count(*), coalesce(max(n), 0) from \
         (select account_id, count(*) as n from coupon where template_id = 'hot' group by account_id) m \
         right join (select 1) one on true",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let total: i64 = sqlx::query_scalar("select count(*) from coupon where template_id = 'hot'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 1000, "exactly the stock");
    assert!(
        coupons > 0 && max_per_member <= 2,
        "no member over its limit ({max_per_member})"
    );
    let counted: i64 =
        sqlx::query_scalar("select issued_count from template_stock where template_id = 'hot'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(counted, 1000);
}

/// A template's changes and its issuances take turns on its stock row: an
/// admin lowering the stock to just above what is issued, again and again
/// while 2,000 issuances run, never leaves more coupons than the stock, and
/// every refusal names the stock.
#[sqlx::test]
async fn lowering_a_templates_stock_while_it_issues_never_leaves_more_than_the_stock(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool(options, connect).await;
    insert_members(&pool, 2000).await;
    let app = spawn_app(pool.clone()).await;
    let mut template = platform_template("shrinking", 100);
    template.total_stock = Some(100_000);
    app.create_template(template.clone()).await;

    let issuances = futures::stream::iter((1..=2000).map(|m| {
        let app = &app;
        async move { app.issue(&format!("m{m}"), "shrinking").await }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>();
    let lowering = async {
        let mut coupons = app.coupons.clone();
        let (mut lowered, mut stock, mut margin) = (0, 100_000, 20);
        for _ in 0..200 {
            let current = app.template("shrinking").await;
            // Never raised again: the stock only comes down towards what
            // is issued.
            let target = stock.min(current.issued_count + margin);
            if target == stock {
                continue;
            }
            let update = coupons
                .update_coupon_template(pb::UpdateCouponTemplateRequest {
                    template: Some(pb::CouponTemplate {
                        total_stock: Some(target),
                        ..template.clone()
                    }),
                })
                .await;
            match update {
                Ok(_) => (lowered, stock) = (lowered + 1, target),
                // Issuances overtook the read: the stock stays as it was,
                // and the next try leaves them more room.
                Err(error) => {
                    assert_eq!(reason(&error), "STOCK_BELOW_ISSUED", "{error:?}");
                    margin *= 2;
                }
            }
        }
        lowered
    };
    let (results, lowered) = tokio::join!(issuances, lowering);

    assert!(lowered > 0, "no lowering took");
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(error), "OUT_OF_STOCK", "{error:?}");
    }
    let (coupons, issued, stock): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from coupon where template_id = 'shrinking'), \
                (select issued_count from template_stock where template_id = 'shrinking'), \
                (select total_stock from coupon_template where template_id = 'shrinking')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((coupons, issued), (ok as i64, ok as i64));
    assert!(issued <= stock, "{issued} issued, stock {stock}");
    assert!(ok < 2000, "the lowered stock refused some issuances");
}

#[sqlx::test]
async fn two_reserves_of_the_same_coupons_in_opposite_orders_never_deadlock(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    let lines = || vec![checkout_line("l1", "s1", 1000, 1, false)];
    for round in 0..20 {
        let (p, s) = (format!("p{round}"), format!("s{round}"));
        app.create_template(platform_template(&p, 100)).await;
        app.create_template(crate::helpers::seller_template(&s, "s1", 500))
            .await;
        let a = app.issue("alice", &p).await.unwrap().coupon_id;
        let b = app.issue("alice", &s).await.unwrap().coupon_id;

        let first = app.reserve(checkout("alice", &format!("x{round}"), lines()), vec![a, b]);
        let second = app.reserve(checkout("alice", &format!("y{round}"), lines()), vec![b, a]);
        let (first, second) = tokio::join!(first, second);

        assert_eq!(
            [first.is_ok(), second.is_ok()].iter().filter(|ok| **ok).count(),
            1,
            "round {round}"
        );
        let loser = first.err().or(second.err()).unwrap();
        assert_eq!(
            reason(&loser),
            "COUPON_NOT_APPLICABLE",
            "round {round}: {loser:?}"
        );
    }
}

#[sqlx::test]
async fn one_single_use_code_claimed_by_twenty_members_at_once_goes_to_one(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    for i in 0..20 {
        app.register(&format!("m{i}")).await;
    }
    app.create_template(platform_template("gift", 100)).await;
    let code = app
        .coupons
        .clone()
        .generate_single_use_codes(pb::GenerateSingleUseCodesRequest {
            template_id: "gift".into(),
            count: 1,
            request_id: "gift-batch-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .codes
        .remove(0);

    let calls = (0..20).map(|i| {
        let mut coupons = app.coupons.clone();
        let code = code.clone();
        async move {
            coupons
                .claim_coupon(pb::ClaimCouponRequest {
                    account_id: format!("m{i}"),
                    code,
                })
                .await
        }
    });
    let results = join_all(calls).await;

    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| reason(e) == "CODE_ALREADY_USED")
    );
}

#[sqlx::test]
async fn concurrent_reserves_of_one_order_never_give_it_two_platform_coupons(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;
    for round in 0..10 {
        let (p, q) = (format!("p{round}"), format!("q{round}"));
        app.create_template(platform_template(&p, 100)).await;
        app.create_template(platform_template(&q, 100)).await;
        let a = app.issue("alice", &p).await.unwrap().coupon_id;
        let b = app.issue("alice", &q).await.unwrap().coupon_id;
        let order = || {
            checkout(
                "alice",
                &format!("o-{round}"),
                vec![checkout_line("l1", "s1", 1000, 1, false)],
            )
        };

        // Two different platform coupons for one order, and a twin retry of each.
        let results = join_all([
            app.reserve(order(), vec![a]),
            app.reserve(order(), vec![b]),
            app.reserve(order(), vec![a]),
            app.reserve(order(), vec![b]),
        ])
        .await;

        let held: Vec<i64> = [a, b]
            .into_iter()
            .filter(|id| {
                results.iter().any(|r| {
                    r.as_ref()
                        .is_ok_and(|r| r.order.as_ref().unwrap().coupons[0].coupon_id == *id)
                })
            })
            .collect();
        assert_eq!(held.len(), 1, "round {round}: one platform coupon per order");
        assert_eq!(
            results
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|r| !r.replayed))
                .count(),
            1
        );
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(
                reason(error),
                "IDEMPOTENCY_KEY_REUSED",
                "round {round}: {error:?}"
            );
        }
    }
}

#[sqlx::test]
async fn twin_retries_of_one_issuance_all_get_the_same_coupon(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 100)).await;

    let results = join_all((0..10).map(|_| {
        let mut coupons = app.coupons.clone();
        async move {
            coupons
                .issue_coupon(pb::IssueCouponRequest {
                    account_id: "alice".into(),
                    template_id: "t".into(),
                    issuance_id: "job-1".into(),
                })
                .await
        }
    }))
    .await;

    let responses: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every twin succeeds").into_inner())
        .collect();
    assert_eq!(responses.iter().filter(|r| !r.replayed).count(), 1);
    assert!(responses.iter().all(|r| r.coupon == responses[0].coupon));
}
