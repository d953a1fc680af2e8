//! Reviews, visits, posts and campaign bonuses.

use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{bad_fields, reason, spawn_app, ts};

fn review(account: &str, review_id: &str, order: &str, product: &str) -> pb::RecordReviewRequest {
    pb::RecordReviewRequest {
        account_id: account.into(),
        review_id: review_id.into(),
        order_id: order.into(),
        product_id: product.into(),
        published_at: Some(ts("2026-06-15T08:00:00Z")),
    }
}

#[sqlx::test]
async fn a_review_of_a_confirmed_orders_product_earns_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.confirm_order(
        "alice",
        "o-1",
        500,
        "2026-06-14T10:00:00Z",
        &[("p1", "c1"), ("p2", "c1")],
    )
    .await
    .unwrap();
    let mut points = app.points.clone();

    let first = points
        .record_review(review("alice", "r-1", "o-1", "p1"))
        .await
        .unwrap()
        .into_inner();
    let retry = points
        .record_review(review("alice", "r-1", "o-1", "p1"))
        .await
        .unwrap()
        .into_inner();
    let other_product = points
        .record_review(review("alice", "r-2", "o-1", "p2"))
        .await
        .unwrap()
        .into_inner();

    let entry = first.entry.unwrap();
    assert_eq!(
        (entry.source(), entry.points, entry.reference.as_str()),
        (pb::PointsSource::Review, 1, "o-1/p1")
    );
    assert!(retry.replayed);
    assert_eq!(retry.entry.unwrap().entry_id, entry.entry_id);
    assert_eq!(other_product.entry.unwrap().points, 1);
    // Another review id for an (order, product) already reviewed is a conflict.
    let error = points
        .record_review(review("alice", "r-3", "o-1", "p1"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(reason(&error), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.balance("alice").await.lifetime_points, 5 + 2);
}

#[sqlx::test]
async fn a_review_of_a_product_the_member_did_not_confirm_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    app.confirm_order("alice", "o-1", 500, "2026-06-14T10:00:00Z", &[("p1", "c1")])
        .await
        .unwrap();
    let mut points = app.points.clone();

    for request in [
        review("alice", "r-1", "o-1", "p-not-in-order"),
        review("alice", "r-1", "o-unknown", "p1"),
        review("bob", "r-1", "o-1", "p1"),
    ] {
        let error = points.record_review(request).await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition);
        assert_eq!(reason(&error), "ORDER_PRODUCT_NOT_CONFIRMED");
    }
    assert_eq!(app.balance("bob").await.lifetime_points, 0);
    // The refusal consumed no key: the right product still earns.
    assert_eq!(
        points
            .record_review(review("alice", "r-1", "o-1", "p1"))
            .await
            .unwrap()
            .into_inner()
            .entry
            .unwrap()
            .points,
        1
    );
}

#[sqlx::test]
async fn the_first_visit_of_a_day_earns_and_later_ones_replay_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    let morning = app.visit("alice", "2026-06-14T07:00:00Z").await.unwrap();
    let evening = app.visit("alice", "2026-06-14T21:00:00Z").await.unwrap();

    assert!(!morning.replayed);
    assert!(evening.replayed);
    let entry = morning.entry.unwrap();
    assert_eq!((entry.points, entry.reference.as_str()), (1, "2026-06-14"));
    assert_eq!(evening.entry.unwrap().entry_id, entry.entry_id);
}

#[sqlx::test]
async fn visits_are_capped_at_ten_points_per_local_month(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    let mut awarded = Vec::new();
    for day in 1..=11 {
        let response = app
            .visit("alice", &format!("2026-05-{day:02}T10:00:00Z"))
            .await
            .unwrap();
        awarded.push(response.entry.unwrap());
    }
    let june = app
        .visit("alice", "2026-06-01T10:00:00Z")
        .await
        .unwrap()
        .entry
        .unwrap();

    assert_eq!(awarded.iter().map(|e| e.points).sum::<i32>(), 10);
    assert_eq!(awarded[10].points, 0);
    assert_eq!(awarded[10].cap_reason(), pb::CapReason::MonthlyCap);
    assert_eq!(june.points, 1, "a new month has a new cap");
}

#[sqlx::test]
async fn posts_earn_two_points_up_to_ten_per_local_month(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    let mut entries = Vec::new();
    for i in 0..6 {
        entries.push(
            app.post("alice", &format!("post-{i}"), "2026-06-03T10:00:00Z")
                .await
                .unwrap()
                .entry
                .unwrap(),
        );
    }
    let retry = app.post("alice", "post-0", "2026-06-03T10:00:00Z").await.unwrap();
    let conflict = app
        .post("alice", "post-0", "2026-06-04T10:00:00Z")
        .await
        .unwrap_err();

    assert_eq!(
        entries.iter().map(|e| e.points).collect::<Vec<_>>(),
        vec![2, 2, 2, 2, 2, 0]
    );
    assert_eq!(entries[5].cap_reason(), pb::CapReason::MonthlyCap);
    assert!(retry.replayed);
    assert_eq!(conflict.code(), Code::AlreadyExists);
    assert_eq!(app.balance("alice").await.current_month_points, 10);
}

#[sqlx::test]
async fn a_campaign_bonus_is_granted_once_per_member(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut points = app.points.clone();
    let grant = |points: i32| pb::GrantBonusRequest {
        account_id: "alice".into(),
        campaign_id: "11.11-2026".into(),
        points,
        description: "Singles' Day".into(),
        granted_at: None,
    };

    let first = points.grant_bonus(grant(50)).await.unwrap().into_inner();
    let retry = points.grant_bonus(grant(50)).await.unwrap().into_inner();
    let conflict = points.grant_bonus(grant(60)).await.unwrap_err();

    let entry = first.entry.unwrap();
    assert_eq!(
        (entry.source(), entry.points, entry.reference.as_str()),
        (pb::PointsSource::Bonus, 50, "11.11-2026")
    );
    // Without granted_at the bonus counts at the time of the call.
    assert_eq!(entry.occurred_at, Some(ts("2026-06-15T12:00:00Z")));
    assert!(retry.replayed);
    assert_eq!(conflict.code(), Code::AlreadyExists);
    assert_eq!(app.balance("alice").await.lifetime_points, 50);
}

#[sqlx::test]
async fn a_bonus_outside_one_to_the_maximum_is_invalid(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    for points in [0, -5, 100_001] {
        let error = app
            .points
            .clone()
            .grant_bonus(pb::GrantBonusRequest {
                account_id: "alice".into(),
                campaign_id: format!("c{points}"),
                points,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{points}");
        assert_eq!(bad_fields(&error), vec!["points".to_owned()]);
    }
    assert!(app.all_entries("alice").await.is_empty());
}

#[sqlx::test]
async fn an_unknown_or_missing_enum_value_is_invalid(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    for channel in [0, 99] {
        let error = app
            .points
            .clone()
            .record_visit(pb::RecordVisitRequest {
                account_id: "alice".into(),
                channel,
                visited_at: Some(ts("2026-06-15T10:00:00Z")),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&error), vec!["channel".to_owned()]);
    }
    assert!(app.all_entries("alice").await.is_empty());
}
