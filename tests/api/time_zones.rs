//! Days and months are the program time zone's, from the event's own instant.

use chrono::{DateTime, Utc};
use loyalty::pb;
use sqlx::PgPool;

use crate::helpers::spawn_app_with;

const BERLIN: [&str; 2] = ["--time-zone", "Europe/Berlin"];

#[sqlx::test]
async fn orders_at_23_59_and_00_01_local_fall_on_different_days(pool: PgPool) {
    let app = spawn_app_with(pool, &BERLIN).await;
    app.register("alice").await;

    // Berlin is UTC+2 in June: 21:59Z is 23:59 on the 10th, 22:01Z 00:01 on the 11th
    // (both the 10th in UTC, where the second order would hit the daily cap).
    let late = app
        .confirm_order("alice", "o-1", 500, "2026-06-10T21:59:00Z", &[("p", "c")])
        .await
        .unwrap();
    let early = app
        .confirm_order("alice", "o-2", 500, "2026-06-10T22:01:00Z", &[("p", "c")])
        .await
        .unwrap();

    assert_eq!(late.points_awarded, 5);
    assert_eq!(early.points_awarded, 5);
    assert_eq!(
        late.entries[0].local_date,
        Some(pb::Date {
            year: 2026,
            month: 6,
            day: 10
        })
    );
    assert_eq!(
        early.entries[0].local_date,
        Some(pb::Date {
            year: 2026,
            month: 6,
            day: 11
        })
    );
}

#[sqlx::test]
async fn the_monthly_cap_follows_the_local_month(pool: PgPool) {
    let app = spawn_app_with(pool, &BERLIN).await;
    app.register("alice").await;
    for i in 0..5 {
        app.post("alice", &format!("may-{i}"), "2026-05-20T10:00:00Z")
            .await
            .unwrap();
    }

    // 22:30Z on 31 May is 00:30 on 1 June in Berlin: June's cap, not May's.
    let june = app
        .post("alice", "june-1", "2026-05-31T22:30:00Z")
        .await
        .unwrap()
        .entry
        .unwrap();
    let may = app
        .post("alice", "may-6", "2026-05-31T21:30:00Z")
        .await
        .unwrap()
        .entry
        .unwrap();

    assert_eq!(june.points, 2);
    assert_eq!(may.points, 0);
    assert_eq!(may.cap_reason(), pb::CapReason::MonthlyCap);
}

#[sqlx::test]
async fn a_day_shortened_by_daylight_saving_is_still_one_day(pool: PgPool) {
    let app = spawn_app_with(pool, &BERLIN).await;
    app.clock
        .set("2026-04-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
    app.register("alice").await;

    // 29 March 2026: Berlin moves from UTC+1 to UTC+2 at 02:00; the day runs from
    // 23:00Z on the 28th to 22:00Z on the 29th (23 hours).
    let start = app.visit("alice", "2026-03-28T23:30:00Z").await.unwrap();
    let end = app.visit("alice", "2026-03-29T21:30:00Z").await.unwrap();
    let next = app.visit("alice", "2026-03-29T22:30:00Z").await.unwrap();

    assert_eq!(start.entry.as_ref().unwrap().reference, "2026-03-29");
    assert!(end.replayed, "00:30 and 23:30 local are the same day");
    // A fixed UTC+1 offset would put 22:30Z at 23:30 on the 29th.
    assert!(!next.replayed);
    assert_eq!(next.entry.unwrap().reference, "2026-03-30");
}

#[sqlx::test]
async fn the_balance_months_are_local_months(pool: PgPool) {
    let app = spawn_app_with(pool, &BERLIN).await;
    // 1 July 00:30 in Berlin, still 30 June in UTC.
    app.clock
        .set("2026-06-30T22:30:00Z".parse::<DateTime<Utc>>().unwrap());
    app.register("alice").await;
    app.post("alice", "june", "2026-06-30T21:00:00Z").await.unwrap();
    app.post("alice", "july", "2026-06-30T22:10:00Z").await.unwrap();

    let balance = app.balance("alice").await;

    assert_eq!(balance.current_month_points, 2, "only the post of 1 July local");
    assert_eq!(
        balance.window_end,
        Some(pb::Date {
            year: 2026,
            month: 7,
            day: 31
        })
    );
    assert_eq!(balance.window_points, 4);
}
