//! The hot calls' statements keep a generic plan: PostgreSQL plans a prepared
//! statement anew on every execution while it judges its generic plan dearer
//! than a custom one, and planning can cost more than running the statement
//! (`ValidateCoupons` read its coupons that way, about a third of its database
//! time). The server runs on a pool of two connections, one of which the event
//! log's listener keeps, so every statement the calls prepare is in the other
//! session's `pg_prepared_statements`, with how often PostgreSQL planned it
//! each way.

use loyalty::pb;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{checkout, checkout_line, on_citus, platform_template, spawn_app, usd};

/// PostgreSQL's `plan_cache_mode = auto` tries five custom plans before it
/// compares them with the generic one.
const CUSTOM_PLANS_BEFORE_CHOOSING: i64 = 5;
const CALLS: usize = 12;

#[sqlx::test]
async fn hot_statements_are_not_planned_on_every_call(pool: PgPool) {
    let single = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let app = spawn_app(single.clone()).await;
    let mut coupons = app.coupons.clone();
    app.create_template(platform_template("five-off", 500)).await;
    coupons
        .create_public_code(pb::CreatePublicCodeRequest {
            template_id: "five-off".into(),
            code: "HOT-CODE".into(),
        })
        .await
        .unwrap();
    // PostgreSQL prices plans from the tables' statistics: give the member and
    // coupon tables those of the benchmark's data (a few coupons per member).
    // The other tables stay small, so for their statements this shows that
    // plans stay generic on small tables only.
    sqlx::query(
        "insert into member (account_id, registered_at) \
         select 'bulk-' || g, '2025-01-01T00:00:00Z' from generate_series(1, 10000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into coupon (account_id, template_id, status, name, issuer, discount_kind, \
             amount_off_minor, currency, min_purchase_minor, regular_price_only, valid_from, \
             expires_at, source, issuance_id, issued_at, updated_at) \
         select 'bulk-' || (g % 10000 + 1), 'five-off', 'valid', 'five off', 'platform', 'amount', \
             500, 'USD', 0, false, now(), now() + interval '1 year', 'issuance', 'bulk-' || g, \
             now(), now() \
         from generate_series(1, 30000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("analyze member, coupon")
        .execute(&pool)
        .await
        .unwrap();
    for n in 0..CALLS {
        let account = format!("m{n}");
        app.register(&account).await;
        let coupon = coupons
            .claim_coupon(pb::ClaimCouponRequest {
                account_id: account.clone(),
                code: "HOT-CODE".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .coupon
            .unwrap();
        let order = checkout(
            &account,
            &format!("o{n}"),
            vec![
                checkout_line("l1", "s1", 2000, 1, false),
                checkout_line("l2", "s2", 1500, 2, false),
            ],
        );
        let priced = coupons
            .validate_coupons(pb::ValidateCouponsRequest {
                order: Some(order.clone()),
                coupon_ids: vec![coupon.coupon_id],
            })
            .await
            .unwrap()
            .into_inner()
            .pricing
            .unwrap();
        assert_eq!(priced.discount, Some(usd(500)), "{priced:?}");
        app.reserve(order, vec![coupon.coupon_id]).await.unwrap();
        app.complete(&account, &format!("o{n}")).await.unwrap();
        app.confirm_order(
            &account,
            &format!("p{n}"),
            2500,
            "2026-06-15T11:00:00Z",
            &[("p1", "c1"), ("p2", "c2")],
        )
        .await
        .unwrap();
    }

    // On Citus the coordinator plans a distributed statement on each execution
    // whatever PostgreSQL's plan cache decides (docs/scale-out.md): what this
    // test measures is plain PostgreSQL's.
    if on_citus(&pool).await {
        return;
    }
    let mut conn = single.acquire().await.unwrap();
    let plans: Vec<(String, i64, i64)> =
        sqlx::query_as("select statement, generic_plans, custom_plans from pg_prepared_statements")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    let used = |needle: &str| {
        plans
            .iter()
            .find(|(statement, _, _)| statement.contains(needle))
            .unwrap_or_else(|| panic!("no prepared statement contains {needle:?}"))
    };
    // The statements of every hot call ran at least CALLS times on this session.
    for needle in [
        "coupon_id between $4 and $5", // validate's read
        "loyalty_put_order",           // the reservation
        "loyalty_record_order",        // the award
        "from claim_code",             // the claim
    ] {
        let (_, generic, custom) = used(needle);
        assert!(generic + custom >= CALLS as i64, "{needle}: {generic} + {custom}");
    }
    let replanned: Vec<_> = plans
        .iter()
        .filter(|(_, _, custom)| *custom > CUSTOM_PLANS_BEFORE_CHOOSING)
        .collect();
    assert!(
        replanned.is_empty(),
        "statements planned anew on each call: {replanned:#?}"
    );
}
