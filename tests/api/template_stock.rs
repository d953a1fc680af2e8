//! A template's stock (`template_stock`, `template_stock_day`,
//! `migrations/20261205000006_template_stock.sql`): the function that takes
//! it, the turn it shares with the template's changes, and the migration that
//! moved the counts out of `coupon_template`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use loyalty::pb;
use sqlx::PgPool;

use crate::helpers::{migrate_before, platform_template, reason, spawn_app};

/// A template's issued count and the sum of its daily counts.
async fn counts(pool: &PgPool, template_id: &str) -> (i64, i64) {
    sqlx::query_as(
        "select (select issued_count from template_stock where template_id = $1), \
                (select coalesce(sum(issued_count), 0)::bigint from template_stock_day where template_id = $1)",
    )
    .bind(template_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Takes stock as the service does (a typed date: on Citus 13.2, a text
/// parameter cast to `date` in a delegated call fails on the worker, "cannot
/// cast type cstring to date"): the outcome and the instant of the terms.
async fn take_with(
    conn: impl sqlx::PgExecutor<'_>,
    template_id: &str,
    day: &str,
) -> (String, Option<DateTime<Utc>>) {
    sqlx::query_as("select outcome, terms_at from loyalty_take_stock($1, $2, now())")
        .bind(template_id)
        .bind(day.parse::<chrono::NaiveDate>().unwrap())
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The outcome of taking stock outside a transaction.
async fn take(pool: &PgPool, template_id: &str, day: &str) -> String {
    take_with(pool, template_id, day).await.0
}

/// Every outcome of `loyalty_take_stock`, in the order it checks them (the
/// pause before the window, the window before the stock, the total before
/// the day), and nothing written for a refusal.
#[sqlx::test]
async fn taking_stock_checks_in_order_and_writes_nothing_when_it_refuses(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut template = platform_template("t", 100);
    template.total_stock = Some(2);
    template.daily_stock = Some(1);
    app.create_template(template).await;

    assert_eq!(take(&pool, "nope", "2026-06-15").await, "not_found");
    assert_eq!(take(&pool, "t", "2026-06-15").await, "taken");
    assert_eq!(counts(&pool, "t").await, (1, 1));
    assert_eq!(take(&pool, "t", "2026-06-15").await, "daily_stock_exhausted");
    assert_eq!(counts(&pool, "t").await, (1, 1));
    assert_eq!(take(&pool, "t", "2026-06-16").await, "taken");
    assert_eq!(counts(&pool, "t").await, (2, 2));
    // The total is checked before the day: a new day has stock, the
    // template has none.
    assert_eq!(take(&pool, "t", "2026-06-17").await, "out_of_stock");

    sqlx::query(
        "update coupon_template set valid_days = null, valid_from = now() - interval '2 days', \
             valid_until = now() - interval '1 day' where template_id = 't'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(take(&pool, "t", "2026-06-17").await, "ended");
    sqlx::query("update coupon_template set paused = true where template_id = 't'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(take(&pool, "t", "2026-06-17").await, "paused");
    assert_eq!(counts(&pool, "t").await, (2, 2), "no refusal wrote");
}

/// The coupon is issued with the terms the stock was taken against: other
/// terms (on Citus, a change not yet committed on the member's worker) fail
/// as a serialization failure, which the call retries.
#[sqlx::test]
async fn a_coupon_is_issued_only_with_the_terms_its_stock_was_taken_against(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_template(platform_template("t", 100)).await;
    app.register("alice").await;

    let mut tx = pool.begin().await.unwrap();
    let (outcome, terms_at) = take_with(&mut *tx, "t", "2026-06-15").await;
    assert_eq!(outcome, "taken");
    let terms_at = terms_at.unwrap();
    let stale = sqlx::query(
        "select coupon_id from loyalty_issue_coupon('alice', 't', $1, 'issuance', null, 'i1', now(), '', '')",
    )
    .bind(terms_at - chrono::TimeDelta::microseconds(1))
    .execute(&mut *tx)
    .await
    .unwrap_err();
    let code = stale
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("40001"), "{stale}");
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let terms_at = take_with(&mut *tx, "t", "2026-06-15").await.1.unwrap();
    let issued: i64 = sqlx::query_scalar(
        "select coupon_id from loyalty_issue_coupon('alice', 't', $1, 'issuance', null, 'i1', now(), '', '')",
    )
    .bind(terms_at)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(issued > 0);
    assert_eq!(counts(&pool, "t").await.0, 1);
}

/// A stock change takes the template's turn: while another transaction has
/// taken a coupon of stock and not committed, lowering the stock to what was
/// issued before it waits, then sees that coupon and is refused.
#[sqlx::test]
async fn a_stock_change_waits_for_an_issuance_holding_the_templates_turn(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut template = platform_template("t", 100);
    template.total_stock = Some(10);
    app.create_template(template.clone()).await;
    app.register("alice").await;
    app.issue("alice", "t").await.unwrap();

    let mut holder = pool.begin().await.unwrap();
    assert_eq!(take_with(&mut *holder, "t", "2026-06-15").await.0, "taken");
    let mut coupons = app.coupons.clone();
    let lowering = tokio::spawn(async move {
        coupons
            .update_coupon_template(pb::UpdateCouponTemplateRequest {
                template: Some(pb::CouponTemplate {
                    total_stock: Some(1),
                    ..template
                }),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !lowering.is_finished(),
        "the change waits for the template's turn"
    );
    holder.commit().await.unwrap();

    let refused = lowering.await.unwrap().unwrap_err();
    assert_eq!(reason(&refused), "STOCK_BELOW_ISSUED", "{refused:?}");
    assert_eq!(counts(&pool, "t").await.0, 2);
}

/// An issuance holds the template's row `for key share` (the foreign key of
/// its member counter) before it waits for the template's turn; a pause,
/// which holds the turn, must not wait for that row, or the two deadlock.
#[sqlx::test]
async fn pausing_while_an_issuance_waits_for_the_turn_does_not_deadlock(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.create_template(platform_template("t", 100)).await;
    app.register("alice").await;

    // An issuance's first writes: its member counter.
    let mut issuing = pool.begin().await.unwrap();
    sqlx::query(
        "insert into member_template (account_id, template_id, issued_count) values ('alice', 't', 1)",
    )
    .execute(&mut *issuing)
    .await
    .unwrap();
    let mut coupons = app.coupons.clone();
    let pausing = tokio::spawn(async move {
        coupons
            .set_coupon_template_paused(pb::SetCouponTemplatePausedRequest {
                template_id: "t".into(),
                paused: true,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Then its turn: the pause has taken it and committed, so this finds the
    // template paused.
    let (outcome, _) = take_with(&mut *issuing, "t", "2026-06-15").await;
    issuing.rollback().await.unwrap();

    assert_eq!(outcome, "paused");
    let paused = pausing.await.unwrap().unwrap().into_inner();
    assert!(paused.template.unwrap().paused);
}

/// The migration moves the issued counts, the daily counts and the claim
/// codes of a database of the previous release into the new tables.
#[sqlx::test(migrations = false)]
async fn the_stock_migration_carries_counts_and_codes_over(pool: PgPool) {
    // The previous release's schema: the migrations before this one.
    migrate_before(&pool, "20261205000006").await;
    sqlx::raw_sql(
        "insert into member (account_id, registered_at) values ('alice', '2026-01-01T00:00:00Z'); \
         insert into coupon_template (template_id, name, description, issuer, discount_kind, amount_off_minor, \
             currency, min_purchase_minor, valid_days, total_stock, daily_stock, per_member_limit, \
             allowed_levels, regular_price_only, issued_count) \
         values ('t', 't', '', 'platform', 'amount', 100, 'USD', 0, 30, 10, 5, 1, '{}', false, 3); \
         insert into coupon_template_day (template_id, local_date, issued_count) values ('t', '2026-06-15', 2); \
         insert into claim_code (code_hash, template_id, kind, public_code, consumed_by, consumed_at) \
         values ('\\x01', 't', 'public', 'PUBLIC', null, null), \
                ('\\x02', 't', 'single_use', null, 'alice', '2026-06-15T10:00:00Z')",
    )
    .execute(&pool)
    .await
    .unwrap();

    loyalty::db::migrate(&pool).await.unwrap();

    assert_eq!(counts(&pool, "t").await, (3, 2));
    let codes: Vec<(Vec<u8>, String, Option<String>)> =
        sqlx::query_as("select code_hash, kind, consumed_by from claim_code order by code_hash")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        codes,
        vec![
            (vec![1], "public".to_owned(), None),
            (vec![2], "single_use".to_owned(), Some("alice".to_owned())),
        ]
    );
    let old_column: bool = sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns \
         where table_name = 'coupon_template' and column_name = 'issued_count')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!old_column);

    // And the service reads and issues from them: 3 issued of 10.
    let app = spawn_app(pool.clone()).await;
    assert_eq!(app.template("t").await.issued_count, 3);
    app.register("bob").await;
    app.issue("bob", "t").await.unwrap();
    assert_eq!(counts(&pool, "t").await.0, 4);
}
