//! On Citus, a member's calls touch that member's shard only: each statement
//! of a per-member call is a router query (one task, on the worker that holds
//! the member). The server's sessions run with
//! `citus.multi_task_query_log_level = error`, so that Citus refuses any
//! statement it would split into several tasks, and the call fails.
//!
//! Run with `LOYALTY_TEST_CITUS_URL` (docs/scale-out.md) to check the plans.
//! On plain PostgreSQL the setting is an unused placeholder and the test only
//! runs the calls.

use loyalty::pb;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::helpers::{TestApp, checkout, checkout_line, on_citus, platform_template, spawn_app, usd};

#[sqlx::test]
async fn a_members_calls_are_router_queries_on_citus(pool: PgPool) {
    let citus = on_citus(&pool).await;
    let strict = pool_with_setting(&pool, "citus.multi_task_query_log_level", "error").await;
    let app = spawn_app(strict.clone()).await;
    a_members_calls(&app).await;

    if citus {
        // The check is live: a statement over every member's shard is refused.
        let refused = sqlx::query("select count(*) from coupon")
            .execute(&strict)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("multi-task"), "{refused}");
    }
}

/// A pool for the server on the test's database whose sessions start with one
/// setting.
async fn pool_with_setting(pool: &PgPool, name: &str, value: &str) -> PgPool {
    let options = pool.connect_options().as_ref().clone().options([(name, value)]);
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap()
}

/// A member's calls, each kind once: an award and a visit, reads of points,
/// two issuances, validate, reserve, complete, read, refund, a second
/// reservation cancelled, and the coupon list.
async fn a_members_calls(app: &TestApp) {
    let mut coupons = app.coupons.clone();
    // Admin calls set the scene: a template's terms are in a reference table,
    // written on every node.
    app.create_template(platform_template("five-off", 500)).await;
    app.create_template(platform_template("ten-off", 1000)).await;

    let account = "router-1";
    app.register(account).await;
    app.confirm_order(
        account,
        "p1",
        2500,
        "2026-06-15T11:00:00Z",
        &[("p1", "c1"), ("p2", "c2")],
    )
    .await
    .unwrap();
    app.visit(account, "2026-06-15T11:30:00Z").await.unwrap();
    assert!(app.balance(account).await.window_points > 0);
    assert!(!app.all_entries(account).await.is_empty());

    let coupon = app.issue(account, "five-off").await.unwrap();
    let order = checkout(
        account,
        "o1",
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
    assert_eq!(priced.discount, Some(usd(500)));
    app.reserve(order, vec![coupon.coupon_id]).await.unwrap();
    app.complete(account, "o1").await.unwrap();
    app.checkout_order(account, "o1").await.unwrap();
    app.refund(account, "o1", "r1", &[("l2", 1)]).await.unwrap();
    app.coupon(account, coupon.coupon_id).await;

    let second = app.issue(account, "ten-off").await.unwrap();
    let order = checkout(account, "o2", vec![checkout_line("l1", "s1", 2000, 1, false)]);
    app.reserve(order, vec![second.coupon_id]).await.unwrap();
    app.cancel(account, "o2").await.unwrap();
    coupons
        .list_coupons(pb::ListCouponsRequest {
            account_id: account.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The write functions run where the member's rows are (the template's, for
/// its stock), called as the
/// service calls them (bound parameters, inside its transactions): counted
/// with `track_functions`, the node the server is connected to runs each on
/// plain PostgreSQL and none on a Citus coordinator, which delegates each call
/// to the member's worker. (The server's sessions here have no
/// `multi_task_query_log_level`: on Citus 13.2 a session in which a statement
/// with subplans failed stops delegating function calls, docs/scale-out.md.)
#[sqlx::test]
async fn a_members_writes_run_on_the_node_of_the_member(pool: PgPool) {
    let citus = on_citus(&pool).await;
    let counted = pool_with_setting(&pool, "track_functions", "pl").await;
    let app = spawn_app(counted).await;
    a_members_calls(&app).await;

    // The write functions, called as the service calls them: on plain
    // PostgreSQL this node runs each; on Citus the coordinator runs none, as
    // each call is delegated to the member's worker. A backend reports its
    // function counts within a second of going idle.
    let functions = [
        "loyalty_record_order",
        "loyalty_record_event",
        "loyalty_award_entries",
        "loyalty_lock_order",
        "loyalty_change_coupons",
        "loyalty_put_order",
        "loyalty_set_order_state",
        "loyalty_order_cart",
        "loyalty_take_stock",
        "loyalty_issue_coupon",
    ];
    let mut ran: Vec<String> = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ran = sqlx::query_scalar(
            "select funcname::text from pg_stat_user_functions where funcname = any($1) and calls > 0",
        )
        .bind(&functions[..])
        .fetch_all(&pool)
        .await
        .unwrap();
        if !citus && ran.len() == functions.len() {
            break;
        }
    }
    if citus {
        assert!(ran.is_empty(), "run on the coordinator, not delegated: {ran:?}");
    } else {
        ran.sort();
        let mut expected = functions.map(String::from).to_vec();
        expected.sort();
        assert_eq!(ran, expected);
    }
}

/// The plans of the award's, the checkout's and the issuance's function calls,
/// as the service sends them (inside its transaction): on Citus each is
/// delegated whole to the member's worker (the template's, for its stock), one task whose plan is the function itself,
/// and not split into subplans through the coordinator, as a statement with
/// data-modifying CTEs is (docs/scale-out.md, "One task per call").
#[sqlx::test]
async fn a_members_writes_are_delegated_to_the_members_worker(pool: PgPool) {
    let citus = on_citus(&pool).await;
    let calls = [
        (
            "loyalty_record_order",
            "select flagged, earning_event_id from loyalty_record_order('m1', 'order', 'o1', '{}', now(), \
             now(), '', '', '2026-06-15', array['c1'], 'order_points', 5, true, 'categories', 'o1', \
             array['p1'], array['c1'])",
        ),
        (
            "loyalty_award_entries",
            "select point_entry_id from loyalty_award_entries('m1', 1, array['order'], array['o1'], \
             array[5], array[null]::text[], array[now()], array['2026-06-15']::date[], now(), '', '')",
        ),
        ("loyalty_lock_order", "select loyalty_lock_order('m1', 'o1')"),
        (
            "loyalty_change_coupons",
            "select coupon_id from loyalty_change_coupons('m1', array[1]::bigint[], array['valid'], \
             array[null]::text[], array['inactive'], array['o1'], array[now()], array['reserve'], array[''], \
             now(), array['coupon_reserved'], '', '')",
        ),
        (
            "loyalty_put_order",
            "select loyalty_put_order('m1', 'o1', array['l1'], array[0], array['s1'], array['p1'], array['c1'], \
             array[100]::bigint[], array[1], array[false], array[1]::bigint[], array['l1'], array[10]::bigint[], \
             'open', 0, null, 'USD', array[1]::bigint[], now(), now(), now(), '', '')",
        ),
        (
            "loyalty_set_order_state",
            "select * from loyalty_set_order_state('m1', 'o1', 'completed', now(), '', '')",
        ),
        (
            "loyalty_order_cart",
            "select * from loyalty_order_cart('m1', 'o1')",
        ),
        // On the template's worker, not the member's.
        (
            "loyalty_take_stock",
            "select loyalty_take_stock('t1', '2026-06-15', now())",
        ),
        (
            "loyalty_issue_coupon",
            "select coupon_id from loyalty_issue_coupon('m1', 't1', now(), 'issuance', null, 'i1', now(), '', '')",
        ),
    ];
    for (function, call) in calls {
        let mut tx = pool.begin().await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(&format!("explain (costs off) {call}"))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let plan = plan.join("\n");
        // A call in the select list (`select loyalty_lock_order(…)`) plans as
        // a `Result`; one in `from`, as a scan of the function.
        if call.contains(&format!("from {function}")) {
            assert!(plan.contains(&format!("Function Scan on {function}")), "{plan}");
        }
        assert!(!plan.contains("Subplan"), "{plan}");
        if citus {
            // Not delegated, the call would run on the coordinator: a bare
            // scan or `Result`, no task.
            assert!(plan.contains("Task Count: 1"), "{function}: {plan}");
        }
    }
}
