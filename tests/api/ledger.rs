//! Reading points: balance and history.

use std::collections::HashSet;

use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{bad_fields, spawn_app, ts};

fn list(account: &str, page_size: i32, page_token: &str) -> pb::ListPointEntriesRequest {
    pb::ListPointEntriesRequest {
        account_id: account.into(),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

#[sqlx::test]
async fn the_balance_splits_window_month_lifetime_and_leaving_points(pool: PgPool) {
    let app = spawn_app(pool).await; // now: 2026-06-15, UTC
    app.register("alice").await;
    app.bonus("alice", "ancient", 1000, "2024-01-01T00:00:00Z").await;
    app.bonus("alice", "leaving", 100, "2025-06-30T23:59:59Z").await;
    app.bonus("alice", "window-start", 10, "2025-07-01T00:00:00Z")
        .await;
    app.bonus("alice", "this-month", 7, "2026-06-01T00:00:00Z").await;

    let balance = app.balance("alice").await;

    assert_eq!(balance.window_points, 17);
    assert_eq!(
        balance.window_start,
        Some(pb::Date {
            year: 2025,
            month: 7,
            day: 1
        })
    );
    assert_eq!(
        balance.window_end,
        Some(pb::Date {
            year: 2026,
            month: 6,
            day: 30
        })
    );
    assert_eq!(balance.current_month_points, 7);
    assert_eq!(balance.lifetime_points, 1117);
    assert_eq!(balance.points_leaving_at_next_evaluation, 100);
    assert_eq!(
        balance.leaving_month,
        Some(pb::Date {
            year: 2025,
            month: 6,
            day: 1
        })
    );
}

#[sqlx::test]
async fn a_reversal_counts_in_the_month_of_the_points_it_reverses(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.confirm_order("alice", "o-1", 500, "2026-05-31T10:00:00Z", &[("p", "c")])
        .await
        .unwrap();
    app.points
        .clone()
        .reverse_order(pb::ReverseOrderRequest {
            account_id: "alice".into(),
            order_id: "o-1".into(),
            reason: pb::ReversalReason::Returned.into(),
            reversed_at: Some(ts("2026-06-02T10:00:00Z")),
        })
        .await
        .unwrap();

    let balance = app.balance("alice").await;

    assert_eq!(balance.current_month_points, 0, "June is untouched");
    assert_eq!(balance.window_points, 0);
}

#[sqlx::test]
async fn history_pages_have_no_gaps_or_duplicates_while_entries_arrive(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut expected = Vec::new();
    for i in 0..45 {
        expected.push(
            app.bonus("alice", &format!("c{i}"), 1, "2026-06-01T00:00:00Z")
                .await
                .entry_id,
        );
    }
    expected.reverse();
    let mut points = app.points.clone();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = points
            .list_point_entries(list("alice", 20, &token))
            .await
            .unwrap()
            .into_inner();
        pages.push(page.entries.len());
        seen.extend(page.entries.iter().map(|e| e.entry_id));
        // New entries arrive between pages.
        app.bonus(
            "alice",
            &format!("late-{}", pages.len()),
            1,
            "2026-06-02T00:00:00Z",
        )
        .await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    assert_eq!(pages, vec![20, 20, 5]);
    assert_eq!(seen, expected, "newest first, each once, none missing");
    let fresh = points
        .list_point_entries(list("alice", 3, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(
        fresh.entries.iter().all(|e| e.reference.starts_with("late-")),
        "new entries top a new listing"
    );
}

#[sqlx::test]
async fn history_filters_by_source_and_time_range(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.visit("alice", "2026-06-01T10:00:00Z").await.unwrap();
    app.visit("alice", "2026-06-02T10:00:00Z").await.unwrap();
    app.post("alice", "post-1", "2026-06-02T11:00:00Z").await.unwrap();
    app.visit("alice", "2026-06-03T10:00:00Z").await.unwrap();
    let mut points = app.points.clone();

    let visits = points
        .list_point_entries(pb::ListPointEntriesRequest {
            sources: vec![pb::PointsSource::Visit.into()],
            ..list("alice", 0, "")
        })
        .await
        .unwrap()
        .into_inner();
    let second_day = points
        .list_point_entries(pb::ListPointEntriesRequest {
            start_time: Some(ts("2026-06-02T00:00:00Z")),
            end_time: Some(ts("2026-06-03T00:00:00Z")),
            ..list("alice", 0, "")
        })
        .await
        .unwrap()
        .into_inner();

    let references = |page: &pb::ListPointEntriesResponse| -> Vec<String> {
        page.entries.iter().map(|e| e.reference.clone()).collect()
    };
    assert_eq!(
        references(&visits),
        vec!["2026-06-03", "2026-06-02", "2026-06-01"]
    );
    assert_eq!(references(&second_day), vec!["post-1", "2026-06-02"]);
}

#[sqlx::test]
async fn page_size_defaults_to_20_and_is_coerced_to_100(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    for i in 0..105 {
        app.bonus("alice", &format!("c{i}"), 1, "2026-06-01T00:00:00Z")
            .await;
    }
    let mut points = app.points.clone();

    let default = points
        .list_point_entries(list("alice", 0, ""))
        .await
        .unwrap()
        .into_inner();
    let large = points
        .list_point_entries(list("alice", 1000, ""))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(default.entries.len(), 20);
    assert_eq!(large.entries.len(), 100);
    let ids: HashSet<i64> = large.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(ids.len(), 100);
}

#[sqlx::test]
async fn a_bad_page_request_is_invalid(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut points = app.points.clone();
    let cases = [
        (list("alice", -1, ""), "page_size"),
        (list("alice", 10, "not-a-token"), "page_token"),
        (
            pb::ListPointEntriesRequest {
                sources: vec![42],
                ..list("alice", 10, "")
            },
            "sources[0]",
        ),
        (
            pb::ListPointEntriesRequest {
                start_time: Some(ts("2026-06-02T00:00:00Z")),
                end_time: Some(ts("2026-06-01T00:00:00Z")),
                ..list("alice", 10, "")
            },
            "end_time",
        ),
    ];
    for (request, field) in cases {
        let error = points.list_point_entries(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert_eq!(bad_fields(&error), vec![field.to_owned()]);
    }
}
