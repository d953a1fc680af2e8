use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{bad_fields, order_request, points_of, reason, spawn_app, ts};

const DAY: &str = "2026-06-14T10:00:00Z";

#[sqlx::test]
async fn an_order_of_at_least_the_minimum_earns_order_points(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;

    let at_minimum = app
        .confirm_order("alice", "o-1", 200, DAY, &[("p1", "c1")])
        .await
        .unwrap();
    let below = app
        .confirm_order("bob", "o-2", 199, DAY, &[("p1", "c1")])
        .await
        .unwrap();

    assert_eq!(at_minimum.points_awarded, 5);
    assert_eq!(at_minimum.entries.len(), 1);
    let entry = &at_minimum.entries[0];
    assert_eq!(entry.source(), pb::PointsSource::Order);
    assert_eq!(entry.reference, "o-1");
    assert_eq!(entry.cap_reason(), pb::CapReason::Unspecified);
    assert_eq!(
        entry.local_date,
        Some(pb::Date {
            year: 2026,
            month: 6,
            day: 14
        })
    );
    assert_eq!(below.points_awarded, 0);
    assert_eq!(below.entries[0].cap_reason(), pb::CapReason::BelowMinimum);
}

#[sqlx::test]
async fn an_order_in_another_currency_earns_no_order_points(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut request = order_request("alice", "o-1", 10_000, DAY, &[("p1", "c1")]);
    request.amount.as_mut().unwrap().currency_code = "EUR".into();

    let response = app
        .points
        .clone()
        .record_confirmed_order(request)
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.points_awarded, 0);
    assert_eq!(
        response.entries[0].cap_reason(),
        pb::CapReason::CurrencyNotEligible
    );
}

#[sqlx::test]
async fn order_points_are_capped_per_local_day(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    let first = app
        .confirm_order("alice", "o-1", 500, "2026-06-13T08:00:00Z", &[("p", "c")])
        .await
        .unwrap();
    let second = app
        .confirm_order("alice", "o-2", 500, "2026-06-13T20:00:00Z", &[("p", "c")])
        .await
        .unwrap();
    let next_day = app
        .confirm_order("alice", "o-3", 500, "2026-06-14T00:00:00Z", &[("p", "c")])
        .await
        .unwrap();

    assert_eq!(first.points_awarded, 5);
    assert_eq!(second.points_awarded, 0);
    assert_eq!(second.entries[0].cap_reason(), pb::CapReason::DailyCap);
    assert_eq!(next_day.points_awarded, 5);
    assert_eq!(app.balance("alice").await.lifetime_points, 10);
}

#[sqlx::test]
async fn each_category_new_that_day_beyond_the_first_earns_within_the_daily_cap(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    // First order of the day: one category, the first, earns no variety point.
    let one = app
        .confirm_order("alice", "o-1", 100, DAY, &[("p1", "books")])
        .await
        .unwrap();
    assert_eq!(one.entries.len(), 1, "no variety entry: {:?}", one.entries);

    // Two new categories (and one already bought today): 2 variety points.
    let two = app
        .confirm_order(
            "alice",
            "o-2",
            100,
            DAY,
            &[("p2", "toys"), ("p3", "books"), ("p4", "garden")],
        )
        .await
        .unwrap();
    let variety: Vec<_> = two
        .entries
        .iter()
        .filter(|e| e.source() == pb::PointsSource::CategoryVariety)
        .collect();
    assert_eq!(variety.len(), 1);
    assert_eq!(variety[0].points, 2);

    // Five more: 5 demanded, 3 left under the daily cap of 5.
    let five = app
        .confirm_order(
            "alice",
            "o-3",
            100,
            DAY,
            &[
                ("p5", "food"),
                ("p6", "tools"),
                ("p7", "music"),
                ("p8", "games"),
                ("p9", "shoes"),
            ],
        )
        .await
        .unwrap();
    let variety = five
        .entries
        .iter()
        .find(|e| e.source() == pb::PointsSource::CategoryVariety)
        .unwrap();
    assert_eq!(variety.points, 3);
    assert_eq!(variety.cap_reason(), pb::CapReason::DailyCap);

    // Nothing new: no variety entry at all.
    let repeat = app
        .confirm_order("alice", "o-4", 100, DAY, &[("p10", "toys")])
        .await
        .unwrap();
    assert!(
        repeat
            .entries
            .iter()
            .all(|e| e.source() == pb::PointsSource::Order)
    );

    // A new day starts again: two categories in the day's first order earn 1.
    let tomorrow = app
        .confirm_order(
            "alice",
            "o-5",
            100,
            "2026-06-15T09:00:00Z",
            &[("p1", "books"), ("p2", "toys")],
        )
        .await
        .unwrap();
    assert_eq!(tomorrow.points_awarded, 1);
}

#[sqlx::test]
async fn a_retried_order_returns_the_original_result_and_changes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let products = [("p1", "c1"), ("p2", "c2")];

    let first = app
        .confirm_order("alice", "o-1", 500, DAY, &products)
        .await
        .unwrap();
    // The same order with its products listed in another order is the same content.
    let retry = app
        .confirm_order("alice", "o-1", 500, DAY, &[("p2", "c2"), ("p1", "c1")])
        .await
        .unwrap();

    assert!(!first.replayed);
    assert!(retry.replayed);
    assert_eq!(first.entries, retry.entries);
    assert_eq!(app.balance("alice").await.lifetime_points, 6);
    assert_eq!(app.all_entries("alice").await.len(), 2);
}

#[sqlx::test]
async fn the_same_order_id_with_other_content_is_already_exists(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.confirm_order("alice", "o-1", 500, DAY, &[("p1", "c1")])
        .await
        .unwrap();

    for (amount, at, products) in [
        (600, DAY, vec![("p1", "c1")]),
        (500, "2026-06-14T10:00:01Z", vec![("p1", "c1")]),
        (500, DAY, vec![("p1", "c1"), ("p2", "c2")]),
    ] {
        let error = app
            .confirm_order("alice", "o-1", amount, at, &products)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::AlreadyExists);
        assert_eq!(reason(&error), "IDEMPOTENCY_KEY_REUSED");
    }
    assert_eq!(app.balance("alice").await.lifetime_points, 5);
}

#[sqlx::test]
async fn reversing_an_order_compensates_every_point_it_earned_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let earned = app
        .confirm_order("alice", "o-1", 500, DAY, &[("p1", "c1"), ("p2", "c2")])
        .await
        .unwrap();
    assert_eq!(points_of(&earned.entries), vec![5, 1]);
    let reverse = || pb::ReverseOrderRequest {
        account_id: "alice".into(),
        order_id: "o-1".into(),
        reason: pb::ReversalReason::Returned.into(),
        reversed_at: Some(ts("2026-06-15T09:00:00Z")),
    };

    let reversal = app
        .points
        .clone()
        .reverse_order(reverse())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .points
        .clone()
        .reverse_order(pb::ReverseOrderRequest {
            reason: pb::ReversalReason::Fraud.into(),
            ..reverse()
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(reversal.points_reversed, -6);
    assert_eq!(points_of(&reversal.entries), vec![-5, -1]);
    let reversed_ids: Vec<i64> = reversal.entries.iter().map(|e| e.reverses_entry_id).collect();
    let earned_ids: Vec<i64> = earned.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(reversed_ids, earned_ids);
    // A reversal counts on the day of what it reverses.
    assert!(
        reversal
            .entries
            .iter()
            .all(|e| e.local_date == earned.entries[0].local_date)
    );
    assert!(again.replayed, "reversing twice is a no-op");
    assert_eq!(again.entries, reversal.entries);
    assert_eq!(app.balance("alice").await.lifetime_points, 0);
    assert_eq!(app.all_entries("alice").await.len(), 4);
}

#[sqlx::test]
async fn cap_room_freed_by_a_reversal_is_not_re_awarded(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.confirm_order("alice", "o-1", 500, DAY, &[("p1", "c1")])
        .await
        .unwrap();
    app.points
        .clone()
        .reverse_order(pb::ReverseOrderRequest {
            account_id: "alice".into(),
            order_id: "o-1".into(),
            reason: pb::ReversalReason::Fraud.into(),
            reversed_at: Some(ts("2026-06-14T11:00:00Z")),
        })
        .await
        .unwrap();

    let later = app
        .confirm_order("alice", "o-2", 500, DAY, &[("p2", "c1")])
        .await
        .unwrap();

    assert_eq!(later.points_awarded, 0);
    assert_eq!(later.entries[0].cap_reason(), pb::CapReason::DailyCap);
}

#[sqlx::test]
async fn reversing_an_order_never_recorded_is_not_found(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let error = app
        .points
        .clone()
        .reverse_order(pb::ReverseOrderRequest {
            account_id: "alice".into(),
            order_id: "nope".into(),
            reason: pb::ReversalReason::Returned.into(),
            reversed_at: Some(ts(DAY)),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(reason(&error), "ORDER_NOT_FOUND");
    // The refused reversal left no trace: a later confirmation and reversal work.
    app.confirm_order("alice", "nope", 500, DAY, &[("p", "c")])
        .await
        .unwrap();
}

#[sqlx::test]
async fn a_malformed_order_names_the_bad_field_and_records_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let good = || order_request("alice", "o-1", 500, DAY, &[("p1", "c1")]);
    let with = |f: &dyn Fn(&mut pb::RecordConfirmedOrderRequest)| {
        let mut request = good();
        f(&mut request);
        request
    };
    let cases: Vec<(pb::RecordConfirmedOrderRequest, &str)> = vec![
        (with(&|r| r.order_id = String::new()), "order_id"),
        (with(&|r| r.order_id = "x".repeat(65)), "order_id"),
        (with(&|r| r.amount = None), "amount"),
        (
            with(&|r| r.amount.as_mut().unwrap().amount_minor = -1),
            "amount.amount_minor",
        ),
        (
            with(&|r| r.amount.as_mut().unwrap().currency_code = "usd".into()),
            "amount.currency_code",
        ),
        (
            with(&|r| r.amount.as_mut().unwrap().currency_code = "ABC".into()),
            "amount.currency_code",
        ),
        (
            with(&|r| r.amount.as_mut().unwrap().currency_code = "XAU".into()),
            "amount.currency_code",
        ),
        (with(&|r| r.confirmed_at = None), "confirmed_at"),
        (
            with(&|r| r.confirmed_at = Some(ts("2026-06-15T12:05:01Z"))),
            "confirmed_at",
        ),
        (
            with(&|r| {
                r.confirmed_at = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
            "confirmed_at",
        ),
        (with(&|r| r.products.clear()), "products"),
        (
            with(&|r| r.products[0].category_id = "bad/category".into()),
            "products[0].category_id",
        ),
        (
            with(&|r| {
                r.products.push(pb::OrderProduct {
                    product_id: "p1".into(),
                    category_id: "other".into(),
                })
            }),
            "products[1].category_id",
        ),
    ];
    for (request, field) in cases {
        let error = app
            .points
            .clone()
            .record_confirmed_order(request)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert_eq!(bad_fields(&error), vec![field.to_owned()], "{error:?}");
    }
    assert!(app.all_entries("alice").await.is_empty());
    // The order id was not consumed by the refused calls.
    assert_eq!(
        app.confirm_order("alice", "o-1", 500, DAY, &[("p1", "c1")])
            .await
            .unwrap()
            .points_awarded,
        5
    );
}

#[sqlx::test]
async fn an_instant_up_to_five_minutes_ahead_is_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    // The test clock is 12:00:00; 12:05:00 is within the allowed skew.
    let response = app
        .confirm_order("alice", "o-1", 500, "2026-06-15T12:05:00Z", &[("p", "c")])
        .await
        .unwrap();
    assert_eq!(response.points_awarded, 5);
}
