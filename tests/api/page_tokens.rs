//! Page tokens are bound to their query: a token continues only the listing of
//! the request that returned it (same account and filters; the page size may
//! change). Anything else is `INVALID_ARGUMENT` on `page_token`.

use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{TestApp, bad_fields, platform_template, spawn_app, ts};

/// Asserts that `result` is `INVALID_ARGUMENT` naming `page_token`, and returns
/// the description.
fn refused_token<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> String {
    let error = result.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert_eq!(bad_fields(&error), vec!["page_token".to_owned()]);
    error.message().to_owned()
}

async fn list_coupons(
    app: &TestApp,
    account: &str,
    statuses: &[pb::CouponStatus],
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListCouponsResponse, tonic::Status> {
    app.coupons
        .clone()
        .list_coupons(pb::ListCouponsRequest {
            account_id: account.into(),
            statuses: statuses.iter().map(|s| *s as i32).collect(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[sqlx::test]
async fn a_coupon_page_token_is_bound_to_the_account_and_the_statuses(pool: PgPool) {
    let app = spawn_app(pool).await;
    for account in ["alice", "bob"] {
        app.register(account).await;
    }
    let mut template = platform_template("t", 100);
    template.per_member_limit = 10;
    app.create_template(template).await;
    for i in 0..5 {
        for account in ["alice", "bob"] {
            app.issue_as(account, "t", &format!("{account}-{i}"))
                .await
                .unwrap();
        }
    }
    use pb::CouponStatus::{Used, Valid};
    let first = list_coupons(&app, "alice", &[Valid, Used], 2, "").await.unwrap();
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let same = list_coupons(&app, "alice", &[Used, Valid, Used], 3, &token)
        .await
        .unwrap();
    assert_eq!(
        same.coupons.len(),
        3,
        "same statuses in another order, another page size"
    );
    assert!(same.coupons.iter().all(|c| c.account_id == "alice"));

    let message = refused_token(list_coupons(&app, "bob", &[Valid, Used], 2, &token).await);
    assert!(message.contains("account_id or statuses"), "{message}");
    refused_token(list_coupons(&app, "alice", &[Valid], 2, &token).await);
    refused_token(list_coupons(&app, "alice", &[], 2, &token).await);
    refused_token(list_coupons(&app, "alice", &[Valid, Used], 2, "garbage").await);
}

#[sqlx::test]
async fn a_template_page_token_is_bound_to_the_template_listing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    for i in 0..3 {
        app.create_template(platform_template(&format!("t{i}"), 100))
            .await;
        app.issue("alice", &format!("t{i}")).await.unwrap();
    }
    let mut coupons = app.coupons.clone();
    let templates = |page_size: i32, page_token: String| pb::ListCouponTemplatesRequest {
        page_size,
        page_token,
    };
    let first = coupons
        .list_coupon_templates(templates(1, String::new()))
        .await
        .unwrap()
        .into_inner();
    let next = coupons
        .list_coupon_templates(templates(5, first.next_page_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.templates.len(), 2, "its own token, another page size");

    let coupon_token = list_coupons(&app, "alice", &[], 1, "")
        .await
        .unwrap()
        .next_page_token;
    let message = refused_token(coupons.list_coupon_templates(templates(1, coupon_token)).await);
    assert!(message.contains("another listing"), "{message}");
    refused_token(list_coupons(&app, "alice", &[], 1, &first.next_page_token).await);
    refused_token(coupons.list_coupon_templates(templates(1, "dDA".into())).await);
}

#[sqlx::test]
async fn a_point_entry_page_token_is_bound_to_the_account_sources_and_time_range(pool: PgPool) {
    let app = spawn_app(pool).await;
    for account in ["alice", "bob"] {
        app.register(account).await;
        for i in 0..4 {
            app.bonus(account, &format!("c{i}"), 1, "2026-06-01T00:00:00Z")
                .await;
        }
    }
    let request = |account: &str, page_token: &str| pb::ListPointEntriesRequest {
        account_id: account.into(),
        page_size: 2,
        page_token: page_token.into(),
        sources: vec![pb::PointsSource::Bonus.into()],
        start_time: Some(ts("2026-05-01T00:00:00Z")),
        end_time: Some(ts("2026-07-01T00:00:00Z")),
    };
    let mut points = app.points.clone();
    let token = points
        .list_point_entries(request("alice", ""))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    let next = points
        .list_point_entries(pb::ListPointEntriesRequest {
            page_size: 10,
            ..request("alice", &token)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.entries.len(), 2, "the rest of alice's entries");

    let others = [
        request("bob", &token),
        pb::ListPointEntriesRequest {
            sources: vec![],
            ..request("alice", &token)
        },
        pb::ListPointEntriesRequest {
            sources: vec![pb::PointsSource::Bonus.into(), pb::PointsSource::Order.into()],
            ..request("alice", &token)
        },
        pb::ListPointEntriesRequest {
            start_time: None,
            ..request("alice", &token)
        },
        pb::ListPointEntriesRequest {
            end_time: Some(ts("2026-06-30T00:00:00Z")),
            ..request("alice", &token)
        },
    ];
    for other in others {
        let message = refused_token(points.list_point_entries(other).await);
        assert!(
            message.contains("account_id or sources or start_time or end_time"),
            "{message}"
        );
    }
}

#[sqlx::test]
async fn a_level_history_page_token_is_bound_to_the_account(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    for account in ["alice", "bob"] {
        app.register(account).await;
        sqlx::query(
            "insert into member_level (account_id, effective_from, effective_to, level, window_points) \
             values ($1, '2026-01-08T00:00:00Z', '2026-02-08T00:00:00Z', 'gold', 150), \
                    ($1, '2026-02-08T00:00:00Z', null, 'silver', 20)",
        )
        .bind(account)
        .execute(&pool)
        .await
        .unwrap();
    }
    let history = |account: &str, page_token: &str| pb::ListLevelHistoryRequest {
        account_id: account.into(),
        page_size: 1,
        page_token: page_token.into(),
    };
    let mut members = app.members.clone();
    let first = members
        .list_level_history(history("alice", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.periods.len(), 1);
    assert_eq!(first.periods[0].level(), pb::Level::Silver);
    let token = first.next_page_token;
    let second = members
        .list_level_history(history("alice", &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.periods.len(), 1);
    assert_eq!(second.periods[0].level(), pb::Level::Gold);
    assert!(second.next_page_token.is_empty(), "the last page has no next");

    let message = refused_token(members.list_level_history(history("bob", &token)).await);
    assert!(message.contains("another account_id"), "{message}");
    refused_token(members.list_level_history(history("alice", "bm9wZQ")).await);
}
