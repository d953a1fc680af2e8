//! SPEC §2.1 concurrency rules, with real concurrent calls.

use futures::future::join_all;
use loyalty::pb;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{spawn_app, ts};

async fn pool(options: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    options.max_connections(16).connect_with(connect).await.unwrap()
}

#[sqlx::test]
async fn a_hundred_concurrent_visits_on_one_day_earn_exactly_one_point(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;

    let visits = (0..100).map(|i| {
        let at = format!("2026-06-14T{:02}:{:02}:00Z", i / 60 + 8, i % 60);
        let app = &app;
        async move { app.visit("alice", &at).await }
    });
    let responses: Vec<pb::RecordVisitResponse> = join_all(visits)
        .await
        .into_iter()
        .map(|r| r.expect("every visit succeeds"))
        .collect();

    assert_eq!(responses.iter().filter(|r| !r.replayed).count(), 1);
    let first_id = responses[0].entry.as_ref().unwrap().entry_id;
    assert!(
        responses
            .iter()
            .all(|r| r.entry.as_ref().unwrap().entry_id == first_id)
    );
    assert_eq!(app.balance("alice").await.lifetime_points, 1);
    assert_eq!(app.all_entries("alice").await.len(), 1);
}

#[sqlx::test]
async fn fifty_concurrent_posts_in_one_month_earn_exactly_ten(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;

    let posts = (0..50).map(|i| {
        let app = &app;
        async move {
            app.post("alice", &format!("post-{i}"), "2026-06-10T10:00:00Z")
                .await
        }
    });
    let responses: Vec<_> = join_all(posts)
        .await
        .into_iter()
        .map(|r| r.expect("every post succeeds"))
        .collect();

    let awarded: i32 = responses.iter().map(|r| r.entry.as_ref().unwrap().points).sum();
    assert_eq!(awarded, 10);
    assert_eq!(
        responses
            .iter()
            .filter(|r| r.entry.as_ref().unwrap().points == 2)
            .count(),
        5
    );
    assert!(
        responses
            .iter()
            .filter(|r| r.entry.as_ref().unwrap().points == 0)
            .all(|r| r.entry.as_ref().unwrap().cap_reason() == pb::CapReason::MonthlyCap)
    );
    assert_eq!(app.balance("alice").await.lifetime_points, 10);
    assert_eq!(
        app.all_entries("alice").await.len(),
        50,
        "a capped post still records its event"
    );
}

#[sqlx::test]
async fn the_same_order_confirmed_twenty_times_concurrently_is_awarded_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;

    let calls = (0..20).map(|_| {
        app.confirm_order(
            "alice",
            "o-1",
            500,
            "2026-06-14T10:00:00Z",
            &[("p1", "c1"), ("p2", "c2")],
        )
    });
    let responses: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("every call succeeds"))
        .collect();

    assert_eq!(responses.iter().filter(|r| !r.replayed).count(), 1);
    assert!(responses.iter().all(|r| r.entries == responses[0].entries));
    assert_eq!(app.balance("alice").await.lifetime_points, 6);
    assert_eq!(app.all_entries("alice").await.len(), 2);
}

#[sqlx::test]
async fn concurrent_orders_of_one_day_share_the_daily_caps_exactly(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;

    // Twelve orders, each with two categories overlapping its neighbours' (so their
    // category inserts collide), in both orders of listing.
    let calls = (0..12).map(|i| {
        let (a, b) = (format!("c{i}"), format!("c{}", (i + 1) % 12));
        let (first, second) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let app = &app;
        async move {
            app.confirm_order(
                "alice",
                &format!("o-{i}"),
                500,
                "2026-06-14T10:00:00Z",
                &[("p1", first.as_str()), ("p2", second.as_str())],
            )
            .await
        }
    });
    let responses: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("no deadlock reaches a caller"))
        .collect();

    let total_of = |source: pb::PointsSource| -> i32 {
        responses
            .iter()
            .flat_map(|r| &r.entries)
            .filter(|e| e.source() == source)
            .map(|e| e.points)
            .sum()
    };
    assert_eq!(
        total_of(pb::PointsSource::Order),
        5,
        "one order's worth under the daily cap"
    );
    assert_eq!(
        total_of(pb::PointsSource::CategoryVariety),
        5,
        "12 categories, capped at 5"
    );
    assert_eq!(app.balance("alice").await.lifetime_points, 10);
}

#[sqlx::test]
async fn concurrent_reversals_of_one_order_compensate_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let app = spawn_app(pool(options, connect).await).await;
    app.register("alice").await;
    app.warm_up("alice").await;
    app.confirm_order(
        "alice",
        "o-1",
        500,
        "2026-06-14T10:00:00Z",
        &[("p1", "c1"), ("p2", "c2")],
    )
    .await
    .unwrap();

    let calls = (0..10).map(|_| {
        let mut points = app.points.clone();
        async move {
            points
                .reverse_order(pb::ReverseOrderRequest {
                    account_id: "alice".into(),
                    order_id: "o-1".into(),
                    reason: pb::ReversalReason::Returned.into(),
                    reversed_at: Some(ts("2026-06-15T10:00:00Z")),
                })
                .await
        }
    });
    let responses: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().into_inner())
        .collect();

    assert_eq!(responses.iter().filter(|r| !r.replayed).count(), 1);
    assert_eq!(app.balance("alice").await.lifetime_points, 0);
}
