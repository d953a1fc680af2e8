//! Membership levels: evaluation, view, benefits and rewards.

use chrono::{DateTime, Utc};
use futures::future::join_all;
use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{TestApp, lock_waiter, platform_template, reason, spawn_app, spawn_app_with, ts};

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

async fn evaluate(app: &TestApp, year: i32, month: i32) -> Result<pb::EvaluateLevelsResponse, tonic::Status> {
    app.members
        .clone()
        .evaluate_levels(pb::EvaluateLevelsRequest {
            month: Some(pb::Date { year, month, day: 1 }),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn level_at(app: &TestApp, account: &str, instant: &str) -> pb::Level {
    app.members
        .clone()
        .get_level_at(pb::GetLevelAtRequest {
            account_id: account.into(),
            at: Some(ts(instant)),
        })
        .await
        .unwrap()
        .into_inner()
        .period
        .unwrap()
        .level()
}

async fn set_rewards(app: &TestApp, reward: pb::RewardKind, level: pb::Level, templates: &[&str]) {
    app.members
        .clone()
        .set_reward_templates(pb::SetRewardTemplatesRequest {
            rewards: Some(pb::RewardTemplates {
                reward: reward.into(),
                level: level.into(),
                template_ids: templates.iter().map(|t| (*t).to_owned()).collect(),
            }),
        })
        .await
        .unwrap();
}

async fn coupons_of(app: &TestApp, account: &str) -> Vec<pb::Coupon> {
    app.coupons
        .clone()
        .list_coupons(pb::ListCouponsRequest {
            account_id: account.into(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .coupons
}

#[sqlx::test]
async fn levels_change_exactly_at_the_thresholds(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-10T00:00:00Z"));
    let cases = [
        ("p100", 100, pb::Level::Silver),
        ("p101", 101, pb::Level::Gold),
        ("p500", 500, pb::Level::Gold),
        ("p501", 501, pb::Level::Platinum),
        ("p1500", 1500, pb::Level::Platinum),
        ("p1501", 1501, pb::Level::Diamond),
    ];
    for (account, points, _) in cases {
        app.register(account).await;
        app.bonus(account, "c", points, "2026-10-15T00:00:00Z").await;
    }

    let run = evaluate(&app, 2026, 10).await.unwrap();

    assert_eq!(
        (run.members_evaluated, run.level_changes, run.level_ups),
        (6, 5, 5)
    );
    assert_eq!(run.effective_from, Some(ts("2026-11-08T00:00:00Z")));
    for (account, _, expected) in cases {
        assert_eq!(
            level_at(&app, account, "2026-11-08T00:00:00Z").await,
            expected,
            "{account}"
        );
        assert_eq!(
            level_at(&app, account, "2026-11-07T23:59:59Z").await,
            pb::Level::Silver,
            "{account} before"
        );
    }
}

#[sqlx::test]
async fn a_level_takes_effect_on_the_8th_at_local_midnight(pool: PgPool) {
    let app = spawn_app_with(pool, &["--time-zone", "Europe/Berlin"]).await;
    app.clock.set(at("2026-11-02T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "c", 150, "2026-10-20T00:00:00Z").await;

    evaluate(&app, 2026, 10).await.unwrap();

    // 8 November 00:00 in Berlin (UTC+1) is 23:00 UTC on the 7th.
    assert_eq!(
        level_at(&app, "alice", "2026-11-07T22:59:59Z").await,
        pb::Level::Silver
    );
    assert_eq!(
        level_at(&app, "alice", "2026-11-07T23:00:00Z").await,
        pb::Level::Gold
    );
    let view = |app: &TestApp| {
        let mut members = app.members.clone();
        async move {
            members
                .get_membership(pb::GetMembershipRequest {
                    account_id: "alice".into(),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    app.clock.set(at("2026-11-07T12:00:00Z"));
    assert_eq!(
        view(&app).await.level(),
        pb::Level::Silver,
        "the 7th still shows the old level"
    );
    app.clock.set(at("2026-11-08T12:00:00Z"));
    let on_the_8th = view(&app).await;
    assert_eq!(on_the_8th.level(), pb::Level::Gold);
    assert_eq!(on_the_8th.level_since, Some(ts("2026-11-07T23:00:00Z")));
}

#[sqlx::test]
async fn the_rolling_window_drops_points_older_than_twelve_months(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "old", 200, "2025-10-31T12:00:00Z").await;

    evaluate(&app, 2026, 9).await.unwrap(); // window Oct 2025 - Sep 2026
    evaluate(&app, 2026, 10).await.unwrap(); // window Nov 2025 - Oct 2026

    assert_eq!(
        level_at(&app, "alice", "2026-10-08T00:00:00Z").await,
        pb::Level::Gold
    );
    assert_eq!(
        level_at(&app, "alice", "2026-11-08T00:00:00Z").await,
        pb::Level::Silver
    );
    let history = app
        .members
        .clone()
        .list_level_history(pb::ListLevelHistoryRequest {
            account_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .periods;
    let levels: Vec<(
        pb::Level,
        Option<prost_types::Timestamp>,
        Option<prost_types::Timestamp>,
        i64,
    )> = history
        .iter()
        .map(|p| (p.level(), p.effective_from, p.effective_to, p.window_points))
        .collect();
    assert_eq!(
        levels,
        vec![
            (pb::Level::Silver, Some(ts("2026-11-08T00:00:00Z")), None, 0),
            (
                pb::Level::Gold,
                Some(ts("2026-10-08T00:00:00Z")),
                Some(ts("2026-11-08T00:00:00Z")),
                200
            ),
        ]
    );
}

#[sqlx::test]
async fn an_evaluation_runs_once_per_month_in_order_and_only_after_the_month(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "c", 300, "2026-10-01T00:00:00Z").await;

    let first = evaluate(&app, 2026, 10).await.unwrap();
    let again = evaluate(&app, 2026, 10).await.unwrap();
    let earlier = evaluate(&app, 2026, 9).await.unwrap_err();
    let current = evaluate(&app, 2026, 11).await.unwrap_err();

    assert!(!first.replayed && again.replayed);
    assert_eq!((first.level_changes, again.level_changes), (1, 1));
    assert_eq!(reason(&earlier), "EVALUATION_OUT_OF_ORDER");
    assert_eq!(reason(&current), "MONTH_NOT_OVER");
    let history = app
        .members
        .clone()
        .list_level_history(pb::ListLevelHistoryRequest {
            account_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.periods.len(), 1);
}

#[sqlx::test]
async fn two_concurrent_evaluations_do_the_work_once_and_reward_once(pool: PgPool) {
    // In batches of 3: the two calls take turns batch by batch.
    let app = spawn_app_with(pool, &["--evaluation-batch", "3"]).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    app.create_template(platform_template("gold-welcome", 500)).await;
    set_rewards(&app, pb::RewardKind::LevelUp, pb::Level::Gold, &["gold-welcome"]).await;
    for i in 0..20 {
        let account = format!("m{i}");
        app.register(&account).await;
        app.bonus(&account, "c", 120, "2026-10-05T00:00:00Z").await;
    }

    let (a, b) = tokio::join!(evaluate(&app, 2026, 10), evaluate(&app, 2026, 10));
    let (a, b) = (a.unwrap(), b.unwrap());

    assert_eq!([a.replayed, b.replayed].iter().filter(|r| **r).count(), 1);
    assert_eq!((a.level_ups, b.level_ups), (20, 20));
    assert_eq!((a.members_evaluated, b.members_evaluated), (20, 20));
    for i in 0..20 {
        let coupons = coupons_of(&app, &format!("m{i}")).await;
        assert_eq!(coupons.len(), 1, "m{i} rewarded exactly once");
        assert_eq!(coupons[0].template_id, "gold-welcome");
    }
    // A rerun issues nothing more.
    evaluate(&app, 2026, 10).await.unwrap();
    assert_eq!(coupons_of(&app, "m0").await.len(), 1);
}

/// Rewards are issued a few at once; a reward template's stock still holds:
/// of 40 level-ups with a stock of 15, exactly 15 are issued and the rest are
/// settled as skipped, each naming the stock.
#[sqlx::test]
async fn level_up_rewards_beyond_the_templates_stock_are_skipped_not_issued(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    let mut template = platform_template("gold-welcome", 500);
    template.total_stock = Some(15);
    app.create_template(template).await;
    set_rewards(&app, pb::RewardKind::LevelUp, pb::Level::Gold, &["gold-welcome"]).await;
    for i in 0..40 {
        let account = format!("m{i}");
        app.register(&account).await;
        app.bonus(&account, "c", 120, "2026-10-05T00:00:00Z").await;
    }

    let run = evaluate(&app, 2026, 10).await.unwrap();

    assert_eq!((run.level_ups, run.rewards_settled), (40, 40));
    let (issued, skipped, pending): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'issued'), \
                count(*) filter (where status = 'skipped' and note like 'OUT_OF_STOCK%'), \
                count(*) filter (where status = 'pending') \
         from member_reward",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((issued, skipped, pending), (15, 25, 0));
    // Each issued reward names its member's coupon, with no note, and has
    // its event.
    let (coupons, matched, events): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from coupon where template_id = 'gold-welcome'), \
                (select count(*) from member_reward r join coupon c \
                   on c.account_id = r.account_id and c.coupon_id = r.coupon_id \
                 where r.status = 'issued' and r.note = '' and c.template_id = 'gold-welcome'), \
                (select count(*) from event where event_type = 'reward_issued')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((coupons, matched, events), (15, 15, 15));
}

/// A settler refused a reward (say, out of stock), then another settler
/// issued it (the stock was raised) before the first recorded its refusal:
/// the late refusal leaves the reward pending, for the coupon to be
/// recorded, instead of hiding the coupon behind a `skipped`.
#[sqlx::test]
async fn a_late_refusal_does_not_hide_a_coupon_issued_for_the_reward(pool: PgPool) {
    use loyalty::db::levels::{PendingReward, RewardOutcome, settle_rewards};
    use loyalty::domain::ids::AccountId;

    let app = spawn_app(pool.clone()).await;
    app.create_template(platform_template("gold-welcome", 500)).await;
    app.register("alice").await;
    app.register("bob").await;
    sqlx::query(
        "insert into member_reward (account_id, reward_key, template_id, level) \
         values ('alice', 'level-up:2026-10', 'gold-welcome', 'gold'), \
                ('bob', 'level-up:2026-10', 'gold-welcome', 'gold')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Alice's coupon was issued under the reward's issuance id; Bob's was not.
    app.issue_as("alice", "gold-welcome", "level-up:2026-10:x")
        .await
        .unwrap();
    let refused = |account: &str| RewardOutcome {
        reward: PendingReward {
            account_id: AccountId::parse(account).unwrap(),
            reward_key: "level-up:2026-10".into(),
            template_id: "gold-welcome".into(),
            level: Some("gold".into()),
        },
        issuance_id: "level-up:2026-10:x".into(),
        coupon_id: None,
        note: "OUT_OF_STOCK: no stock left".into(),
    };

    let mut conn = pool.acquire().await.unwrap();
    let recorded = settle_rewards(
        &mut conn,
        &mut [refused("alice"), refused("bob")],
        at("2026-11-15T00:00:00Z"),
    )
    .await
    .unwrap();

    assert_eq!(recorded, 1);
    let statuses: Vec<(String, String)> =
        sqlx::query_as("select account_id, status from member_reward order by account_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![
            ("alice".to_owned(), "pending".to_owned()),
            ("bob".to_owned(), "skipped".to_owned()),
        ]
    );
}

/// Pending rewards are settled one members' hash range at a time (one
/// shard each on Citus). A reward whose issuance keeps failing (here a
/// stored level no release knows) fails the run, but holds back no reward of
/// another range. On PostgreSQL there is one range, and the test shows only
/// that the outcomes in hand are recorded; on Citus the other member is in a
/// later shard, and the test fails when the run stops at the first error
/// (checked).
#[sqlx::test]
async fn a_reward_that_keeps_failing_holds_back_no_other(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    app.create_template(platform_template("gold-welcome", 500)).await;
    // The failing reward's member first in hash order; on Citus the other
    // member in a later shard.
    let ranges: Vec<(i32, i32)> = sqlx::query_as("select lo, hi from loyalty_member_ranges()")
        .fetch_all(&pool)
        .await
        .unwrap();
    let range_of = |hash: i32| ranges.iter().position(|(lo, hi)| (*lo..=*hi).contains(&hash));
    let mut names: Vec<(i32, String)> = sqlx::query_as(
        "select hashtext(name), name from (select 'member-' || g as name from generate_series(1, 200) g) n \
         order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let (first_hash, failing) = names.remove(0);
    let (_, rewarded) = names
        .into_iter()
        .rev()
        .find(|(hash, _)| ranges.len() == 1 || range_of(*hash) > range_of(first_hash))
        .unwrap();
    for (account, level) in [(&failing, "bogus"), (&rewarded, "gold")] {
        app.register(account).await;
        sqlx::query(
            "insert into member_reward (account_id, reward_key, template_id, level) \
             values ($1, 'level-up:2026-10', 'gold-welcome', $2)",
        )
        .bind(account)
        .bind(level)
        .execute(&pool)
        .await
        .unwrap();
    }

    let run = app
        .members
        .clone()
        .run_daily_rewards(pb::RunDailyRewardsRequest {
            date: Some(pb::Date {
                year: 2026,
                month: 11,
                day: 15,
            }),
        })
        .await;

    assert_eq!(
        run.unwrap_err().code(),
        Code::Internal,
        "the failing reward fails the run"
    );
    let statuses: Vec<(String, String)> =
        sqlx::query_as("select account_id, status from member_reward order by hashtext(account_id)")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [
            (failing.clone(), "pending".to_owned()),
            (rewarded.clone(), "issued".to_owned())
        ]
    );
    assert_eq!(coupons_of(&app, &rewarded).await.len(), 1);
}

/// The evaluation runs in batches (3 members here), one transaction each: a
/// crash keeps the batches done and loses the one in flight whole; the next
/// call goes on from there and evaluates every member once.
#[sqlx::test]
async fn an_evaluation_killed_halfway_keeps_its_batches_and_a_rerun_goes_on(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--evaluation-batch", "3"]).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    for i in 0..10 {
        let account = format!("m{i}");
        app.register(&account).await;
        app.bonus(&account, "c", 600, "2026-10-05T00:00:00Z").await;
    }
    // Members go in account id order; the fifth has an open Gold period,
    // which its batch closes. Holding that row catches the run in the middle.
    let order: Vec<String> = sqlx::query_scalar("select account_id from member order by account_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let held = &order[4];
    sqlx::query(
        "insert into member_level (account_id, effective_from, level, window_points) \
         values ($1, '2026-06-08T00:00:00Z', 'gold', 200)",
    )
    .bind(held)
    .execute(&pool)
    .await
    .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from member_level where account_id = $1 for update")
        .bind(held)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let members = app.members.clone();
    let running = tokio::spawn(async move {
        let mut members = members;
        members
            .evaluate_levels(pb::EvaluateLevelsRequest {
                month: Some(pb::Date {
                    year: 2026,
                    month: 10,
                    day: 1,
                }),
            })
            .await
    });
    // The evaluation, blocked mid-way.
    let victim = lock_waiter(&pool, "member_level").await;

    // A literal: an int on PostgreSQL, a bigint (global) on Citus.
    sqlx::query(&format!("select pg_terminate_backend({victim})"))
        .execute(&pool)
        .await
        .unwrap();
    let crashed = running.await.unwrap();
    blocker.rollback().await.unwrap();

    assert!(crashed.is_err(), "the killed evaluation fails");
    let recorded: i64 = sqlx::query_scalar("select count(*) from level_evaluation")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0, "not recorded before its last batch");
    let (done, changes): (i64, i64) =
        sqlx::query_as("select members_evaluated, level_changes from level_evaluation_run")
            .fetch_one(&pool)
            .await
            .unwrap();
    let opened: i64 =
        sqlx::query_scalar("select count(*) from member_level where evaluation_month is not null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        (1..=4).contains(&done),
        "the batches before the held member are kept: {done}"
    );
    assert_eq!(
        (changes, opened),
        (done, done),
        "the batch in flight left nothing"
    );

    let rerun = evaluate(&app, 2026, 10).await.unwrap();
    assert!(!rerun.replayed);
    assert_eq!((rerun.members_evaluated, rerun.level_changes), (10, 10));
    let periods: Vec<(String, String, i64)> = sqlx::query_as(
        "select account_id, level, count(*) over (partition by account_id) from member_level \
         where effective_to is null order by account_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(periods.len(), 10);
    assert!(
        periods
            .iter()
            .all(|(_, level, open)| level == "platinum" && *open == 1),
        "{periods:?}"
    );
    let changed: i64 = sqlx::query_scalar("select count(*) from event where event_type = 'level_changed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(changed, 10, "one level_changed event per member");
    let leftover: i64 = sqlx::query_scalar("select count(*) from level_evaluation_run")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leftover, 0, "the run ends when it is recorded");
}

/// With batches of 1,024, a batch's range ends at the 4th sampled member (1
/// in 256, by hash) after its start: about 1,024 members, some batches fewer
/// without being the last, a dense one cut by the limit. Every member is
/// evaluated once, up to the last.
#[sqlx::test]
async fn an_evaluation_in_batches_the_sample_ends_evaluates_every_member_once(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--evaluation-batch", "1024"]).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    bulk_members(&pool, 6000).await;
    // Gold members spread over the range, the first and the last included.
    let mut golds: Vec<String> = (0..11).map(|i| format!("m{:05}", 1 + i * 599)).collect();
    golds.push("m06000".into());
    for account in &golds {
        app.bonus(account, "c", 120, "2026-10-05T00:00:00Z").await;
    }
    let sampled: i64 =
        sqlx::query_scalar("select count(*) from member where hashtext(account_id) < -2130706432")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(sampled >= 8, "the sample ends batches: {sampled} sampled members");

    let run = evaluate(&app, 2026, 10).await.unwrap();

    assert_eq!((run.members_evaluated, run.level_ups), (6000, 12));
    let changed: Vec<String> = sqlx::query_scalar(
        "select account_id from event where event_type = 'level_changed' order by account_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(changed, golds, "one level_changed event per Gold member");
}

/// Members `m00001` to `m{count}`, registered on 1 January 2026.
async fn bulk_members(pool: &PgPool, count: i32) {
    sqlx::query(
        "insert into member (account_id, registered_at) \
         select 'm' || lpad(g::text, 5, '0'), '2026-01-01T00:00:00Z' from generate_series(1, $1) g",
    )
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
}

/// A batch's range ends at the sampled member (1 in 256 by hash) that
/// `--evaluation-batch` ÷ 256 sampled members after its start: the first
/// batch of 1,024 ends at the 4th, and holds the members up to it, not the
/// first 1,024. The next batch is caught on a row it must change.
#[sqlx::test]
async fn an_evaluation_batch_ends_at_a_sampled_member(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--evaluation-batch", "1024"]).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    bulk_members(&pool, 6000).await;
    // Two statements: Citus refuses the count as a subquery of the first.
    let edge: String = sqlx::query_scalar(
        "select account_id from member where hashtext(account_id) < -2130706432 \
         order by account_id limit 1 offset 3",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let up_to_edge: i64 = sqlx::query_scalar("select count(*) from member where account_id <= $1")
        .bind(&edge)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        up_to_edge < 1024,
        "the sample ends the batch before the limit: {up_to_edge}"
    );
    // The first member after the edge has an open Platinum period and no
    // points: its batch closes that period, and waits for the row.
    let next: String = sqlx::query_scalar("select min(account_id) from member where account_id > $1")
        .bind(&edge)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into member_level (account_id, effective_from, level, window_points) \
         values ($1, '2026-06-08T00:00:00Z', 'platinum', 2000)",
    )
    .bind(&next)
    .execute(&pool)
    .await
    .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from member_level where account_id = $1 for update")
        .bind(&next)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let running = tokio::spawn({
        let app_members = app.members.clone();
        async move {
            let mut members = app_members;
            members
                .evaluate_levels(pb::EvaluateLevelsRequest {
                    month: Some(pb::Date {
                        year: 2026,
                        month: 10,
                        day: 1,
                    }),
                })
                .await
        }
    });
    lock_waiter(&pool, "member_level").await;

    // The first batch's progress, committed (none if the first batch is the
    // one waiting).
    let first: Option<(Option<String>, i64)> =
        sqlx::query_as("select last_account, members_evaluated from level_evaluation_run")
            .fetch_optional(&pool)
            .await
            .unwrap();
    blocker.rollback().await.unwrap();
    let run = running.await.unwrap().unwrap().into_inner();

    assert_eq!(
        first,
        Some((Some(edge), up_to_edge)),
        "the first batch ended at the 4th sampled member"
    );
    assert_eq!((run.members_evaluated, run.level_changes), (6000, 1));
}

/// Leaves the evaluation of `month` in progress before its first batch, as
/// a crash leaves it.
async fn leave_in_progress(pool: &PgPool, month: &str, effective_from: &str) {
    sqlx::query(
        "insert into level_evaluation_run (month, effective_from, started_at) \
         values ($1::date, $2::timestamptz, now())",
    )
    .bind(month)
    .bind(effective_from)
    .execute(pool)
    .await
    .unwrap();
}

/// A month cannot start while another is in progress.
#[sqlx::test]
async fn another_month_waits_for_the_evaluation_in_progress(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.clock.set(at("2026-12-15T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "c", 300, "2026-10-05T00:00:00Z").await;
    leave_in_progress(&pool, "2026-10-01", "2026-11-08T00:00:00Z").await;

    let november = evaluate(&app, 2026, 11).await.unwrap_err();
    let october = evaluate(&app, 2026, 10).await.unwrap();
    let november_then = evaluate(&app, 2026, 11).await.unwrap();

    assert_eq!(november.code(), Code::FailedPrecondition);
    assert_eq!(reason(&november), "EVALUATION_IN_PROGRESS");
    assert!(november.message().contains("2026-10"), "{}", november.message());
    assert_eq!((october.members_evaluated, october.level_changes), (1, 1));
    assert!(!november_then.replayed);
}

#[sqlx::test]
async fn points_recorded_after_an_evaluation_count_in_the_next_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-12-02T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "a", 60, "2026-10-05T00:00:00Z").await;
    evaluate(&app, 2026, 10).await.unwrap();
    app.bonus("alice", "b", 60, "2026-11-05T00:00:00Z").await;

    evaluate(&app, 2026, 11).await.unwrap();

    assert_eq!(
        level_at(&app, "alice", "2026-11-08T00:00:00Z").await,
        pb::Level::Silver
    );
    assert_eq!(
        level_at(&app, "alice", "2026-12-08T00:00:00Z").await,
        pb::Level::Gold
    );
}

#[sqlx::test]
async fn the_membership_view_projects_the_next_level_and_lists_benefits(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-10T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "oct", 520, "2026-10-05T00:00:00Z").await;
    evaluate(&app, 2026, 10).await.unwrap();
    app.bonus("alice", "nov", 1000, "2026-11-09T00:00:00Z").await;

    let view = app
        .members
        .clone()
        .get_membership(pb::GetMembershipRequest {
            account_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(view.level(), pb::Level::Platinum);
    assert_eq!(view.window_points, 1520);
    assert_eq!(view.projected_level(), pb::Level::Diamond);
    assert_eq!(view.points_to_next_level, None, "nothing above Diamond");
    assert_eq!(
        view.next_evaluation_date,
        Some(pb::Date {
            year: 2026,
            month: 12,
            day: 1
        })
    );
    assert_eq!(view.next_effective_from, Some(ts("2026-12-08T00:00:00Z")));
    let benefits = view.benefits.unwrap();
    assert_eq!(benefits.member_discount_basis_points, 1000);
    assert_eq!(benefits.fast_refund_limit.unwrap().amount_minor, 2400);
    assert!(benefits.exclusive_event_benefits && !benefits.limited_daily_coupons);
}

#[sqlx::test]
async fn the_fast_refund_check_follows_the_level_limit(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-10T00:00:00Z"));
    app.register("plat").await;
    app.register("silver").await;
    app.bonus("plat", "c", 600, "2026-10-05T00:00:00Z").await;
    evaluate(&app, 2026, 10).await.unwrap();
    let check = |account: &str, minor: i64, currency: &str| {
        let mut members = app.members.clone();
        let request = pb::CheckFastRefundRequest {
            account_id: account.into(),
            amount: Some(pb::Money {
                amount_minor: minor,
                currency_code: currency.into(),
            }),
        };
        async move { members.check_fast_refund(request).await.unwrap().into_inner() }
    };

    let within = check("plat", 2400, "USD").await;
    let over = check("plat", 2401, "USD").await;
    let other_currency = check("plat", 100, "EUR").await;
    let silver = check("silver", 1, "USD").await;

    assert!(within.eligible && !over.eligible && !other_currency.eligible);
    assert_eq!(within.limit.unwrap().amount_minor, 2400);
    assert!(!silver.eligible);
    assert_eq!((silver.level(), silver.limit), (pb::Level::Silver, None));
}

async fn run_day(app: &TestApp, year: i32, month: i32, day: i32) -> pb::RunDailyRewardsResponse {
    app.members
        .clone()
        .run_daily_rewards(pb::RunDailyRewardsRequest {
            date: Some(pb::Date { year, month, day }),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn register_at(app: &TestApp, account: &str, registered_at: &str, birthday: Option<(i32, i32)>) {
    app.members
        .clone()
        .register_member(pb::RegisterMemberRequest {
            account_id: account.into(),
            registered_at: Some(ts(registered_at)),
            birthday: birthday.map(|(month, day)| pb::Date { year: 0, month, day }),
        })
        .await
        .unwrap();
}

#[sqlx::test]
async fn a_birthday_set_at_least_two_days_before_is_rewarded_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_template(platform_template("bday", 1000)).await;
    set_rewards(&app, pb::RewardKind::Birthday, pb::Level::Unspecified, &["bday"]).await;
    register_at(&app, "early", "2020-01-01T00:00:00Z", None).await;
    register_at(&app, "late", "2020-01-01T00:00:00Z", None).await;
    let set_birthday = |account: &str| {
        let mut members = app.members.clone();
        let request = pb::UpdateBirthdayRequest {
            account_id: account.into(),
            birthday: Some(pb::Date {
                year: 1990,
                month: 3,
                day: 10,
            }),
        };
        async move { members.update_birthday(request).await.unwrap() }
    };
    app.clock.set(at("2026-03-08T23:59:00Z"));
    set_birthday("early").await; // 8 March: 2 days before
    app.clock.set(at("2026-03-09T00:00:00Z"));
    set_birthday("late").await; // 9 March: 1 day before

    app.clock.set(at("2026-03-10T06:00:00Z"));
    let run = run_day(&app, 2026, 3, 10).await;
    let rerun = run_day(&app, 2026, 3, 10).await;

    assert_eq!((run.birthday_rewards, run.rewards_settled), (1, 1));
    assert!(rerun.replayed);
    assert_eq!(coupons_of(&app, "early").await.len(), 1);
    assert!(coupons_of(&app, "late").await.is_empty());
}

#[sqlx::test]
async fn a_29_february_birthday_falls_on_28_february_in_common_years(pool: PgPool) {
    let app = spawn_app(pool).await;
    // A yearly reward: the template must allow one coupon per member per year.
    let mut yearly = platform_template("bday", 1000);
    yearly.per_member_limit = 100;
    app.create_template(yearly).await;
    set_rewards(&app, pb::RewardKind::Birthday, pb::Level::Unspecified, &["bday"]).await;
    register_at(&app, "leap", "2020-01-01T00:00:00Z", Some((2, 29))).await;

    app.clock.set(at("2028-03-01T00:00:00Z"));
    let common_year = run_day(&app, 2027, 2, 28).await;
    let leap_year_28th = run_day(&app, 2028, 2, 28).await;
    let leap_year_29th = run_day(&app, 2028, 2, 29).await;

    assert_eq!(common_year.birthday_rewards, 1);
    assert_eq!(leap_year_28th.birthday_rewards, 0);
    assert_eq!(leap_year_29th.birthday_rewards, 1);
    assert_eq!(coupons_of(&app, "leap").await.len(), 2, "one per year");
}

#[sqlx::test]
async fn anniversaries_are_rewarded_but_not_the_registration_day(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_template(platform_template("anniv", 1000)).await;
    set_rewards(
        &app,
        pb::RewardKind::Anniversary,
        pb::Level::Unspecified,
        &["anniv"],
    )
    .await;
    register_at(&app, "veteran", "2024-02-29T10:00:00Z", None).await;
    // More than 16 hours after the end of 28 February (UTC).
    register_at(&app, "veteran-evening", "2024-02-29T20:00:00Z", None).await;
    app.clock.set(at("2026-03-01T00:00:00Z"));
    register_at(&app, "newcomer", "2026-02-28T10:00:00Z", None).await;

    let run = run_day(&app, 2026, 2, 28).await;

    assert_eq!(
        run.anniversary_rewards, 2,
        "29 February 2024 on 28 February 2026; not the day of registration"
    );
    assert_eq!(coupons_of(&app, "veteran").await.len(), 1);
    assert_eq!(coupons_of(&app, "veteran-evening").await.len(), 1);
    assert!(coupons_of(&app, "newcomer").await.is_empty());
}

/// Registers members at `instants` in `zone`, and returns which of them the
/// daily run of `day` rewards with an anniversary.
async fn anniversaries_in(
    pool: PgPool,
    zone: &str,
    instants: &[(&str, &str)],
    day: (i32, i32, i32),
) -> Vec<String> {
    let app = spawn_app_with(pool, &["--time-zone", zone]).await;
    let mut yearly = platform_template("anniv", 1000);
    yearly.per_member_limit = 100;
    app.create_template(yearly).await;
    set_rewards(
        &app,
        pb::RewardKind::Anniversary,
        pb::Level::Unspecified,
        &["anniv"],
    )
    .await;
    for (account, instant) in instants {
        register_at(&app, account, instant, None).await;
    }
    app.clock.set(at("2026-07-01T00:00:00Z"));
    run_day(&app, day.0, day.1, day.2).await;
    let mut rewarded = Vec::new();
    for (account, _) in instants {
        if !coupons_of(&app, account).await.is_empty() {
            rewarded.push(account.to_string());
        }
    }
    rewarded
}

#[sqlx::test]
async fn an_anniversary_is_the_local_date_of_registration_east_of_utc(pool: PgPool) {
    // Kiritimati is 14 hours ahead of UTC: its 15 June starts on 14 June at 10:00 UTC.
    let rewarded = anniversaries_in(
        pool,
        "Pacific/Kiritimati",
        &[
            ("last-second-of-14th", "2024-06-14T09:59:59Z"),
            ("first-second-of-15th", "2024-06-14T10:00:00Z"),
            ("last-second-of-15th", "2024-06-15T09:59:59Z"),
            ("first-second-of-16th", "2024-06-15T10:00:00Z"),
            // In 1990 Kiritimati was 10 hours behind UTC.
            ("years-before-behind-utc", "1990-06-15T12:00:00Z"),
            ("years-before-14th", "1990-06-14T12:00:00Z"),
        ],
        (2026, 6, 15),
    )
    .await;

    assert_eq!(
        rewarded,
        [
            "first-second-of-15th",
            "last-second-of-15th",
            "years-before-behind-utc"
        ]
    );
}

#[sqlx::test]
async fn an_anniversary_is_the_local_date_of_registration_west_of_utc(pool: PgPool) {
    // Pago Pago is 11 hours behind UTC: its 15 June runs from 15 June at 11:00 UTC
    // to 16 June at 10:59:59 UTC.
    let rewarded = anniversaries_in(
        pool,
        "Pacific/Pago_Pago",
        &[
            ("last-second-of-14th", "2024-06-15T10:59:59Z"),
            ("first-second-of-15th", "2024-06-15T11:00:00Z"),
            ("last-second-of-15th", "2024-06-16T10:59:59Z"),
            ("first-second-of-16th", "2024-06-16T11:00:00Z"),
        ],
        (2026, 6, 15),
    )
    .await;

    assert_eq!(rewarded, ["first-second-of-15th", "last-second-of-15th"]);
}

#[sqlx::test]
async fn the_first_registrations_of_1970_have_their_anniversary_in_1969_west_of_utc(pool: PgPool) {
    // 1970-01-01T00:00:00Z, the earliest registration, was 31 December 1969 in Pago Pago.
    let rewarded = anniversaries_in(
        pool,
        "Pacific/Pago_Pago",
        &[
            ("epoch", "1970-01-01T00:00:00Z"),
            ("new-year", "1970-01-01T11:00:00Z"),
        ],
        (2025, 12, 31),
    )
    .await;

    assert_eq!(rewarded, ["epoch"]);
}

#[sqlx::test]
async fn diamond_members_share_the_daily_coupon_stock_one_each_per_day(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-10T00:00:00Z"));
    let mut daily = platform_template("diamond-daily", 2000);
    daily.daily_stock = Some(3);
    daily.allowed_levels = vec![pb::Level::Diamond.into()];
    // The per-member limit stays 1: the daily issuance id caps it, not the limit.
    app.create_template(daily).await;
    set_rewards(
        &app,
        pb::RewardKind::DiamondDaily,
        pb::Level::Unspecified,
        &["diamond-daily"],
    )
    .await;
    for i in 0..5 {
        let account = format!("d{i}");
        app.register(&account).await;
        app.bonus(&account, "c", 2000, "2026-10-05T00:00:00Z").await;
    }
    app.register("silver").await;
    evaluate(&app, 2026, 10).await.unwrap();
    let claim = |account: String| {
        let mut members = app.members.clone();
        async move {
            members
                .claim_daily_coupon(pb::ClaimDailyCouponRequest { account_id: account })
                .await
        }
    };

    // Every Diamond member claims twice, all at once.
    let results = join_all((0..10).map(|i| claim(format!("d{}", i % 5)))).await;

    let fresh = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| !r.get_ref().replayed))
        .count();
    assert_eq!(fresh, 3, "the day's stock");
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(error), "DAILY_STOCK_EXHAUSTED");
    }
    let refused = claim("silver".into()).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "LEVEL_NOT_ALLOWED")
    );
    app.clock.set(at("2026-11-11T00:00:00Z"));
    let winner = results
        .iter()
        .find_map(|r| r.as_ref().ok())
        .unwrap()
        .get_ref()
        .coupon
        .clone()
        .unwrap();
    let tomorrow = claim(winner.account_id.clone())
        .await
        .expect("a new day, a new stock");
    assert_ne!(
        tomorrow.get_ref().coupon.as_ref().unwrap().coupon_id,
        winner.coupon_id
    );
}

#[sqlx::test]
async fn a_level_up_reward_limited_to_the_new_level_is_issued_before_it_takes_effect(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.clock.set(at("2026-11-02T00:00:00Z")); // before the 8th: still Silver
    let mut gold_only = platform_template("gold-only", 500);
    gold_only.allowed_levels = vec![pb::Level::Gold.into()];
    app.create_template(gold_only).await;
    set_rewards(&app, pb::RewardKind::LevelUp, pb::Level::Gold, &["gold-only"]).await;
    app.register("alice").await;
    app.bonus("alice", "c", 150, "2026-10-05T00:00:00Z").await;

    let run = evaluate(&app, 2026, 10).await.unwrap();

    assert_eq!(run.rewards_settled, 1);
    assert_eq!(coupons_of(&app, "alice").await.len(), 1);
}

#[sqlx::test]
async fn the_built_in_scheduler_evaluates_the_last_month_and_runs_the_day(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--scheduler", "--scheduler-interval-secs", "1"]).await;
    app.clock.set(at("2026-11-02T09:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "c", 600, "2026-10-05T00:00:00Z").await;

    let mut done = (false, false);
    for _ in 0..100 {
        let evaluated: bool =
            sqlx::query_scalar("select exists (select 1 from level_evaluation where month = '2026-10-01')")
                .fetch_one(&pool)
                .await
                .unwrap();
        let daily: bool = sqlx::query_scalar(
            "select exists (select 1 from daily_reward_run where local_date = '2026-11-02')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        done = (evaluated, daily);
        if evaluated && daily {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    assert_eq!(
        done,
        (true, true),
        "October evaluated and 2 November's rewards run"
    );
    assert_eq!(
        level_at(&app, "alice", "2026-11-08T00:00:00Z").await,
        pb::Level::Platinum
    );
}

/// An evaluation cut short (a crash, its deadline) is finished by the
/// scheduler before it starts the previous month.
#[sqlx::test]
async fn the_scheduler_finishes_an_evaluation_cut_short_first(pool: PgPool) {
    // September in progress before the scheduler starts, and alice's points
    // while September is not over: no turn of the scheduler can run a month
    // before the clock reaches November.
    leave_in_progress(&pool, "2026-09-01", "2026-10-08T00:00:00Z").await;
    let app = spawn_app_with(pool.clone(), &["--scheduler", "--scheduler-interval-secs", "1"]).await;
    app.clock.set(at("2026-09-20T00:00:00Z"));
    app.register("alice").await;
    app.bonus("alice", "c", 600, "2026-09-05T00:00:00Z").await;
    app.clock.set(at("2026-11-02T09:00:00Z"));

    let mut months: Vec<String> = Vec::new();
    for _ in 0..100 {
        months = sqlx::query_scalar("select month::text from level_evaluation order by month")
            .fetch_all(&pool)
            .await
            .unwrap();
        if months.last().is_some_and(|m| m == "2026-10-01") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    assert_eq!(months, ["2026-09-01", "2026-10-01"]);
    assert_eq!(
        level_at(&app, "alice", "2026-10-08T00:00:00Z").await,
        pb::Level::Platinum
    );
}

#[sqlx::test]
async fn a_benefits_file_decides_which_levels_get_birthday_rewards(pool: PgPool) {
    let mut table = loyalty::domain::levels::BenefitsTable::default();
    table.silver.birthday_reward = false;
    let file = std::env::temp_dir().join(format!("loyalty-benefits-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_string(&table).unwrap()).unwrap();
    let app = spawn_app_with(pool, &["--benefits-file", file.to_str().unwrap()]).await;
    app.clock.set(at("2026-11-15T00:00:00Z"));
    app.create_template(platform_template("bday", 1000)).await;
    set_rewards(&app, pb::RewardKind::Birthday, pb::Level::Unspecified, &["bday"]).await;
    register_at(&app, "silver", "2020-01-01T00:00:00Z", Some((11, 12))).await;
    register_at(&app, "gold", "2020-01-01T00:00:00Z", Some((11, 12))).await;
    app.bonus("gold", "c", 150, "2026-10-05T00:00:00Z").await;
    evaluate(&app, 2026, 10).await.unwrap(); // Gold from 8 November

    let run = run_day(&app, 2026, 11, 12).await;

    assert_eq!(run.birthday_rewards, 1);
    assert!(
        coupons_of(&app, "silver").await.is_empty(),
        "Silver has no birthday reward in this table"
    );
    assert_eq!(coupons_of(&app, "gold").await.len(), 1);
    std::fs::remove_file(file).ok();
}

/// Records `count` consecutive monthly level periods of `account`, alternating
/// Gold and Silver, the last one open: from January 2020 on.
async fn record_periods(pool: &PgPool, account: &str, count: i32) {
    sqlx::query(
        "insert into member_level (account_id, effective_from, effective_to, level, window_points) \
         select $1, timestamptz '2020-01-08 00:00:00+00' + make_interval(months => n), \
                case when n < $2 - 1 then timestamptz '2020-01-08 00:00:00+00' + make_interval(months => n + 1) end, \
                case when n % 2 = 0 then 'gold' else 'silver' end, n \
         from generate_series(0, $2 - 1) as n",
    )
    .bind(account)
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
}

async fn history_page(
    app: &TestApp,
    account: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListLevelHistoryResponse, tonic::Status> {
    app.members
        .clone()
        .list_level_history(pb::ListLevelHistoryRequest {
            account_id: account.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[sqlx::test]
async fn the_level_history_is_paged_newest_first_with_stable_pages(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    record_periods(&pool, "alice", 45).await;

    let all = history_page(&app, "alice", 100, "").await.unwrap();
    assert_eq!(all.periods.len(), 45);
    assert!(all.next_page_token.is_empty());
    let starts: Vec<i64> = all
        .periods
        .iter()
        .map(|p| p.effective_from.unwrap().seconds)
        .collect();
    assert!(starts.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(all.periods[0].effective_to, None, "the open period comes first");

    let first = history_page(&app, "alice", 0, "").await.unwrap();
    assert_eq!(first.periods.len(), 20, "0 means 20");
    // A period recorded after the first page does not shift the next ones.
    sqlx::query(
        "update member_level set effective_to = timestamptz '2030-01-01 00:00:00+00' \
         where account_id = 'alice' and effective_to is null",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into member_level (account_id, effective_from, level, window_points) \
         values ('alice', timestamptz '2030-01-01 00:00:00+00', 'diamond', 2000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut walked = first.periods;
    let mut token = first.next_page_token;
    let mut pages = 1;
    while !token.is_empty() {
        let page = history_page(&app, "alice", 20, &token).await.unwrap();
        walked.extend(page.periods);
        token = page.next_page_token;
        pages += 1;
    }
    assert_eq!(pages, 3, "20 + 20 + 5");
    let walked_starts: Vec<i64> = walked.iter().map(|p| p.effective_from.unwrap().seconds).collect();
    assert_eq!(walked_starts, starts, "every period once, in order");

    let fresh = history_page(&app, "alice", 1, "").await.unwrap();
    assert_eq!(
        fresh.periods[0].level(),
        pb::Level::Diamond,
        "a new listing shows it"
    );

    let oversized = history_page(&app, "alice", 1000, "").await.unwrap();
    assert_eq!(oversized.periods.len(), 46, "more than 100 means 100");
    for (page_size, page_token, field) in [(-1, "", "page_size"), (10, "not-a-token", "page_token")] {
        let error = history_page(&app, "alice", page_size, page_token)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(crate::helpers::bad_fields(&error), vec![field.to_owned()]);
    }
    let unknown = history_page(&app, "nobody", 10, "").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
