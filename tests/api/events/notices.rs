//! Expiry notices (`RunExpiryNotices`): `coupon_expiring_soon` for a usable
//! coupon within the notice period and `coupon_expired` once its expiry has
//! passed, each once per coupon however often the job runs.

use std::collections::{BTreeMap, BTreeSet};

use loyalty::pb;
use loyalty::pb::EventType::{CouponExpired, CouponExpiringSoon};
use loyalty::pb::event::Payload;
use sqlx::PgPool;

use super::{at, coupon_of, order_of};
use crate::helpers::{lock_waiter, platform_template, spawn_app, spawn_app_with, ts};

/// A platform template of 1.00 off whose coupons are valid `days` from issuance.
fn valid_for_days(template_id: &str, days: i32) -> pb::CouponTemplate {
    pb::CouponTemplate {
        validity: Some(pb::Validity {
            kind: Some(pb::validity::Kind::DaysFromIssuance(days)),
        }),
        ..platform_template(template_id, 100)
    }
}

/// The expiry notices among `events`.
fn expiry_notices(events: Vec<pb::Event>) -> Vec<pb::Event> {
    events
        .into_iter()
        .filter(|e| matches!(e.r#type(), CouponExpiringSoon | CouponExpired))
        .collect()
}

/// Coupon ids of each notice event, by the run (request id) that sent it.
fn notices_by_run(events: &[pb::Event]) -> BTreeMap<&str, BTreeSet<(pb::EventType, i64)>> {
    let mut runs: BTreeMap<&str, BTreeSet<(pb::EventType, i64)>> = BTreeMap::new();
    for event in events {
        runs.entry(event.request_id.as_str())
            .or_default()
            .insert((event.r#type(), coupon_of(event)));
    }
    runs
}

#[sqlx::test]
async fn expiry_notices_go_once_per_coupon_however_often_the_job_runs(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    for (template, days) in [
        ("two-days", 2),
        ("two-days-held", 2),
        ("two-days-used", 2),
        ("four-days", 4),
        ("ten-days", 10),
        ("one-day", 1),
        ("one-day-late", 1),
    ] {
        app.create_template(valid_for_days(template, days)).await;
    }
    // Issued at 2026-06-15T12:00Z.
    let two_days = app.issue("alice", "two-days").await.unwrap().coupon_id;
    let held = app.issue("alice", "two-days-held").await.unwrap().coupon_id;
    let used = app.issue("alice", "two-days-used").await.unwrap().coupon_id;
    let four_days = app.issue("alice", "four-days").await.unwrap();
    let ten_days = app.issue("alice", "ten-days").await.unwrap().coupon_id;
    let one_day = app.issue("alice", "one-day").await.unwrap().coupon_id;
    app.reserve(order_of("alice", "o-held"), vec![held])
        .await
        .unwrap();
    app.reserve(order_of("alice", "o-used"), vec![used])
        .await
        .unwrap();
    app.complete("alice", "o-used").await.unwrap();

    // Within 3 days: two-days and one-day; the held one is not usable.
    let first = app.run_notices("r-run-1").await;
    let second = app.run_notices("r-run-2").await;
    // Released, the held coupon is usable and expiring soon.
    app.cancel("alice", "o-held").await.unwrap();
    let third = app.run_notices("r-run-3").await;
    // A day later: one-day expired, four-days within 3 days.
    app.clock.set(at("2026-06-16T13:00:00Z"));
    let fourth = app.run_notices("r-run-4").await;
    // Issued after that run, it expires before the next: only "expired".
    let late = app.issue("alice", "one-day-late").await.unwrap().coupon_id;
    app.clock.set(at("2026-06-18T00:00:00Z"));
    let fifth = app.run_notices("r-run-5").await;
    let sixth = app.run_notices("r-run-6").await;

    assert_eq!(
        [first, second, third, fourth, fifth, sixth],
        [(2, 0), (0, 0), (1, 0), (1, 1), (0, 3), (0, 0)],
        "(expiring soon, expired) of each run"
    );
    let notices = expiry_notices(app.logged_events(&pool).await);
    assert_eq!(
        notices_by_run(&notices),
        BTreeMap::from([
            (
                "r-run-1",
                BTreeSet::from([(CouponExpiringSoon, two_days), (CouponExpiringSoon, one_day)])
            ),
            ("r-run-3", BTreeSet::from([(CouponExpiringSoon, held)])),
            (
                "r-run-4",
                BTreeSet::from([
                    (CouponExpired, one_day),
                    (CouponExpiringSoon, four_days.coupon_id)
                ])
            ),
            (
                "r-run-5",
                BTreeSet::from([
                    (CouponExpired, two_days),
                    (CouponExpired, held),
                    (CouponExpired, late)
                ])
            ),
        ]),
        "never the ten-day coupon nor the used one ({ten_days}, {used})"
    );
    let notice = notices
        .iter()
        .find(|e| e.r#type() == CouponExpiringSoon && coupon_of(e) == four_days.coupon_id)
        .unwrap();
    assert_eq!(
        notice.payload,
        Some(Payload::CouponExpiringSoon(pb::CouponExpiry {
            coupon_id: four_days.coupon_id,
            template_id: "four-days".into(),
            expires_at: four_days.expires_at,
        }))
    );
    assert_eq!(four_days.expires_at, Some(ts("2026-06-19T12:00:00Z")));
    assert_eq!(notice.occurred_at, Some(ts("2026-06-16T13:00:00Z")));
}

/// Runs that overlap (each replica runs the job) send each coupon's notice
/// once, from the run that marked it first.
#[sqlx::test]
async fn concurrent_runs_send_each_notice_once(pool: PgPool) {
    const COUPONS: i64 = 300;
    let app = spawn_app(pool.clone()).await;
    app.create_template(valid_for_days("two-days", 2)).await;
    for member in 0..10 {
        app.register(&format!("m{member}")).await;
    }
    // Due for "expiring soon": valid, expiring within the 3-day notice period.
    bulk_coupons(&pool, &["2026-06-17T00:00:00Z"; COUPONS as usize], false).await;

    let runs = futures::future::join_all((0..6).map(|n| {
        let app = &app;
        async move { app.run_notices(&format!("r-run-{n}")).await }
    }))
    .await;

    assert_eq!(
        runs.iter().map(|(soon, _)| soon).sum::<i64>(),
        COUPONS,
        "{runs:?}"
    );
    let notices = expiry_notices(app.logged_events(&pool).await);
    assert_eq!(notices.len(), COUPONS as usize);
    let coupons: BTreeSet<i64> = notices.iter().map(coupon_of).collect();
    assert_eq!(coupons.len(), COUPONS as usize, "one notice per coupon");
}

/// Inserts coupons of `two-days` for members m0 to m9 expiring at each of
/// `expiries` (valid since 2015); with `told`, already told they expire soon.
async fn bulk_coupons(pool: &PgPool, expiries: &[&str], told: bool) {
    bulk_coupons_among(pool, expiries, told, 10).await;
}

/// [`bulk_coupons`] among members `m0` to `m{members - 1}`.
async fn bulk_coupons_among(pool: &PgPool, expiries: &[&str], told: bool, members: i32) {
    sqlx::query(
        "insert into coupon (account_id, template_id, status, name, issuer, discount_kind, \
             amount_off_minor, currency, min_purchase_minor, regular_price_only, valid_from, \
             expires_at, source, issuance_id, issued_at, updated_at, expiring_notice_at) \
         select 'm' || (n % $3), 'two-days', 'valid', 'two days', 'platform', 'amount', 100, 'USD', \
             0, false, '2015-01-01T00:00:00Z', e::timestamptz, 'issuance', 'bulk-' || gen_random_uuid(), \
             '2015-01-01T00:00:00Z', '2015-01-01T00:00:00Z', \
             case when $2 then timestamptz '2015-01-01T00:00:00Z' end \
         from unnest($1::text[]) with ordinality as x (e, n)",
    )
    .bind(expiries)
    .bind(told)
    .bind(members)
    .execute(pool)
    .await
    .unwrap();
}

/// A run goes through the due coupons one window of (expiry, member hash) per
/// batch: after a window that fills a batch the next starts at its last place,
/// sparse windows grow, the coupons of one instant are split by their
/// members' hashes, and every due coupon is told once: those expiring at the
/// ends of the notice period (now, and its last instant) included, and a
/// member's coupons of one instant, more than two batches, which share a
/// place.
#[sqlx::test]
async fn a_run_tells_every_due_coupon_once_in_batches_of_at_most_its_size(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--notice-batch", "4"]).await;
    app.create_template(valid_for_days("two-days", 2)).await;
    for member in 0..10 {
        app.register(&format!("m{member}")).await;
    }
    // Now is 2026-06-15T12:00Z: the notice period ends on 2026-06-18T12:00Z.
    let same_instant = ["2026-06-17T00:00:00Z"; 10];
    let mut spread: Vec<String> = (1..=6).map(|h| format!("2026-06-16T{h:02}:00:00Z")).collect();
    let mut past: Vec<String> = (0..8).map(|k| format!("{}-03-01T00:00:00Z", 2016 + k)).collect();
    past.push("2026-06-15T12:00:00Z".into()); // expires now: expired
    spread.push("2026-06-18T12:00:00Z".into()); // the period's last instant
    bulk_coupons(&pool, &same_instant, false).await;
    bulk_coupons_among(&pool, &["2026-06-17T06:00:00Z"; 10], false, 1).await;
    bulk_coupons(
        &pool,
        &spread.iter().map(String::as_str).collect::<Vec<_>>(),
        false,
    )
    .await;
    bulk_coupons(&pool, &past.iter().map(String::as_str).collect::<Vec<_>>(), false).await;
    // Told before, or due after the period: not told by this run.
    bulk_coupons(&pool, &["2026-06-16T12:00:00Z"; 3], true).await;
    bulk_coupons(&pool, &["2026-06-18T12:00:01Z", "2026-07-01T00:00:00Z"], false).await;

    let first = app.run_notices("r-run-1").await;
    let second = app.run_notices("r-run-2").await;

    assert_eq!(
        (first, second),
        ((27, 9), (0, 0)),
        "(expiring soon, expired) of each run"
    );
    let notices = expiry_notices(app.logged_events(&pool).await);
    let coupons: BTreeSet<i64> = notices.iter().map(coupon_of).collect();
    assert_eq!((notices.len(), coupons.len()), (36, 36), "one notice per coupon");
    let batches: Vec<i64> = sqlx::query_scalar(
        "select (detail->>'coupons')::bigint from admin_change where action = 'job.expiry_notices' \
         order by admin_change_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(batches.iter().all(|&told| (1..=4).contains(&told)), "{batches:?}");
    assert_eq!(batches.iter().sum::<i64>(), 36, "{batches:?}");
}

/// A run reads the due coupons without locking them, then marks them: a
/// coupon that another transaction changes meanwhile is checked again once
/// that transaction ends, and is not told if it is no longer due.
#[sqlx::test]
async fn a_run_does_not_tell_a_coupon_changed_while_it_waited(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.create_template(valid_for_days("two-days", 2)).await;
    app.create_template(valid_for_days("two-days-too", 2)).await;
    let revoked = app.issue("alice", "two-days").await.unwrap().coupon_id;
    let told = app.issue("alice", "two-days-too").await.unwrap().coupon_id;
    // A transaction in flight that makes the coupon unusable.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("update coupon set status = 'revoked' where account_id = 'alice' and coupon_id = $1")
        .bind(revoked)
        .execute(&mut *blocker)
        .await
        .unwrap();

    let (sent, ()) = tokio::join!(app.run_notices("r-run"), async {
        // The run's update, waiting for the coupon.
        lock_waiter(&pool, "expiring_notice_at").await;
        blocker.commit().await.unwrap();
    });

    assert_eq!(sent, (1, 0), "only the coupon still usable is expiring soon");
    let marked: Vec<(i64, bool)> = sqlx::query_as(
        "select coupon_id, expiring_notice_at is not null from coupon where account_id = 'alice' \
         order by coupon_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(marked, [(revoked, false), (told, true)]);
}

#[sqlx::test]
async fn the_expiring_soon_notice_period_is_configurable(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--coupon-expiring-days", "5"]).await;
    app.register("alice").await;
    app.create_template(valid_for_days("four-days", 4)).await;
    app.create_template(valid_for_days("six-days", 6)).await;
    let four_days = app.issue("alice", "four-days").await.unwrap().coupon_id;
    app.issue("alice", "six-days").await.unwrap();

    let sent = app.run_notices("r-run").await;
    let notices = expiry_notices(app.logged_events(&pool).await);

    assert_eq!(sent, (1, 0));
    assert_eq!(
        notices_by_run(&notices),
        BTreeMap::from([("r-run", BTreeSet::from([(CouponExpiringSoon, four_days)]))])
    );
}
