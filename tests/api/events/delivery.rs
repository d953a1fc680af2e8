//! Delivery: a watch resumed from its cursors misses nothing while writers
//! run, each member's events come in commit order (also when a change commits
//! after a newer one), and filters deliver only what they name.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use loyalty::pb;
use loyalty::pb::EventType::{
    CouponExpired, CouponReleased, CouponRevoked, MemberFlagged, MemberRegistered, MemberUnflagged,
    PointsAwarded,
};
use loyalty::pb::event::Payload;
use loyalty::pb::events_client::EventsClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tonic::Code;
use tonic::transport::Channel;

use super::{after, by_account, coupon_of, has_request, order_of, summary};
use crate::helpers::{
    bad_fields, from_oldest, migrate_before, named, on_citus, order_request, platform_template, spawn_app, ts,
};

/// Watches from the oldest event, leaving after a random number of events (as
/// a client that crashes would) and resuming after the last cursor it got,
/// until `stop`. Returns how many watches it opened and its last cursor.
async fn watch_resuming(
    mut client: EventsClient<Channel>,
    received: Arc<Mutex<Vec<pb::Event>>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (usize, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cursor = String::new();
    let mut watches = 0;
    while !stop.load(Ordering::SeqCst) {
        let request = if cursor.is_empty() {
            from_oldest()
        } else {
            after(&cursor)
        };
        let mut stream = client.watch(request).await.expect("the watch opens").into_inner();
        watches += 1;
        let leave_after = rng.gen_range(1..=20);
        let mut taken = 0;
        while taken < leave_after && !stop.load(Ordering::SeqCst) {
            match tokio::time::timeout(Duration::from_millis(100), stream.message()).await {
                Ok(Ok(Some(message))) => {
                    cursor = message.cursor;
                    if let Some(event) = message.event {
                        received.lock().unwrap().push(event);
                        taken += 1;
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(status)) => panic!("the watch failed: {status:?}"),
                Err(_) => {} // nothing yet
            }
        }
        // Dropping the stream cancels it on the server.
    }
    (watches, cursor)
}

#[sqlx::test]
async fn a_watch_resumed_from_its_cursors_misses_nothing_under_concurrent_writers_and_keeps_each_members_order(
    pool: PgPool,
) {
    const WRITERS: usize = 8;
    const ACCOUNTS: usize = 20;
    let app = spawn_app(pool.clone()).await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("m{i:02}")).collect();
    for account in &accounts {
        app.register(account).await;
    }
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_resuming(
        app.events.clone(),
        received.clone(),
        stop.clone(),
        7,
    ));

    // Each writer awards every member an order and a bonus, starting at a
    // different member. The orders of one member (one local day) take turns on
    // its daily counter, so they commit in the order of their entries.
    let writers = (0..WRITERS).map(|writer| {
        let points = app.points.clone();
        let accounts = accounts.clone();
        tokio::spawn(async move {
            for i in 0..ACCOUNTS {
                let account = &accounts[(i + writer * 3) % ACCOUNTS];
                let category = format!("c{writer}");
                points
                    .clone()
                    .record_confirmed_order(order_request(
                        account,
                        &format!("order-{writer}"),
                        2_000,
                        "2026-06-14T10:00:00Z",
                        &[("p", category.as_str())],
                    ))
                    .await
                    .expect("order recorded");
                points
                    .clone()
                    .grant_bonus(pb::GrantBonusRequest {
                        account_id: account.clone(),
                        campaign_id: format!("bonus-{writer}"),
                        points: 1,
                        description: String::new(),
                        granted_at: Some(ts("2026-06-14T09:00:00Z")),
                    })
                    .await
                    .expect("bonus granted");
            }
        })
    });
    for writer in join_all(writers).await {
        writer.unwrap();
    }
    let stored: BTreeSet<String> = sqlx::query_scalar::<_, i64>("select event_id from event")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: HashSet<String> = received
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.event_id.clone())
            .collect();
        if stored.iter().all(|id| seen.contains(id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (watches, cursor) = watcher.await.unwrap();

    // Every stored event came, at least once, and nothing else.
    let mut deduplicated: Vec<pb::Event> = Vec::new();
    let mut seen = HashSet::new();
    for event in received.lock().unwrap().iter() {
        if seen.insert(event.event_id.clone()) {
            deduplicated.push(event.clone());
        }
    }
    let came: BTreeSet<String> = seen.into_iter().collect();
    assert_eq!(stored.len(), ACCOUNTS * (1 + 2 * WRITERS));
    assert_eq!(came, stored, "the events received are the events stored");
    assert!(watches > 10, "the watcher resumed often ({watches} watches)");
    // Each member's order awards in the order of its ledger: they took turns
    // on its daily counter. (Bonuses wait for nothing, so their order is free.)
    for account in &accounts {
        let mine: Vec<&pb::Event> = deduplicated.iter().filter(|e| &e.account_id == account).collect();
        assert_eq!(mine[0].r#type(), MemberRegistered, "{account}: registered first");
        let orders: Vec<i64> = mine
            .iter()
            .filter_map(|e| match &e.payload {
                Some(Payload::PointsAwarded(award))
                    if award.entries[0].source() == pb::PointsSource::Order =>
                {
                    Some(award.entries[0].entry_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(orders.len(), WRITERS, "{account}");
        assert!(
            orders.windows(2).all(|w| w[0] < w[1]),
            "{account}: order awards out of ledger order: {orders:?}"
        );
    }

    // A watch from the oldest now reads them all in full batches.
    let log = app.logged_events(&pool).await;
    assert_eq!(log.len(), stored.len());

    // Caught up, a watch from the last cursor streams what commits next.
    let mut tail = app.watch(after(&cursor)).await.unwrap();
    let start = tail.message().await.unwrap().unwrap();
    assert_eq!((start.event, start.cursor.as_str()), (None, cursor.as_str()));
    app.bonus_by("m00", "after-the-rush", 1, "r-tail").await;
    let next = tokio::time::timeout(Duration::from_secs(5), tail.message())
        .await
        .expect("the new event comes at once")
        .unwrap()
        .unwrap();
    let next = next.event.expect("an event, not a heartbeat");
    assert_eq!(
        (next.r#type(), next.account_id.as_str(), next.request_id.as_str()),
        (PointsAwarded, "m00", "r-tail")
    );
}

#[sqlx::test]
async fn a_change_committing_after_a_newer_one_comes_after_it_even_to_a_watch_resumed_past_it(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 100)).await;
    app.create_template(platform_template("t2", 100)).await;
    let valid = app.issue("alice", "t").await.unwrap().coupon_id;
    let held = app.issue("alice", "t2").await.unwrap().coupon_id;
    app.reserve(order_of("alice", "o-1"), vec![held]).await.unwrap();
    // Her valid coupon locked: flagging alice writes its event, then waits to
    // revoke the coupon.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from coupon where account_id = 'alice' and coupon_id = $1 for update")
        .bind(valid)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let flagging = {
        let mut members = app.members.clone();
        tokio::spawn(async move {
            members
                .flag_member(named(
                    pb::FlagMemberRequest {
                        account_id: "alice".into(),
                        reason: "fraud ring".into(),
                    },
                    "r-flag",
                ))
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile a newer change of hers commits, and a watch reads past it.
    app.cancel_by("o-1", "r-cancel").await.unwrap();
    let before = app
        .watch_until(from_oldest(), Duration::from_secs(10), has_request("r-cancel"))
        .await;

    blocker.rollback().await.unwrap();
    flagging.await.unwrap().expect("flagged once the coupon is free");
    // Once the flag's slice is cut (every stored event delivered), the whole
    // log is read in one go, and the watch resumes past the id of its event.
    app.logged_events(&pool).await;
    let log = app.logged_events(&pool).await;
    let resumed = app
        .watch_until(after(&before.cursor), Duration::from_secs(10), |events| {
            events.iter().any(|e| e.r#type() == CouponRevoked)
        })
        .await;

    let id_of = |events: &[pb::Event], kind| -> i64 {
        events
            .iter()
            .find(|e| e.r#type() == kind)
            .unwrap()
            .event_id
            .parse()
            .unwrap()
    };
    assert!(
        id_of(&log, MemberFlagged) < id_of(&log, CouponReleased),
        "the flag's event was written first"
    );
    assert!(
        before.events.iter().all(|e| e.request_id != "r-flag"),
        "nothing of the flag before it commits"
    );
    let in_commit_order: Vec<pb::EventType> = log.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        in_commit_order[in_commit_order.len() - 3..],
        [CouponReleased, MemberFlagged, CouponRevoked],
        "in commit order, not in the order of ids"
    );
    assert_eq!(
        summary(&resumed.events),
        [
            (MemberFlagged, "alice", "r-flag"),
            (CouponRevoked, "alice", "r-flag"),
        ]
    );
    assert_eq!(coupon_of(&resumed.events[1]), valid);
}

#[sqlx::test]
async fn a_filtered_watch_delivers_only_the_types_and_members_asked_for(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    for account in ["alice", "bob", "carol"] {
        app.register_by(account, &format!("r-register-{account}")).await;
    }
    app.bonus_by("alice", "c1", 10, "r-bonus-alice").await;
    app.flag_by("bob", "chargebacks", "r-flag-bob").await;
    app.bonus_by("bob", "c1", 10, "r-bonus-bob").await;
    app.bonus_by("carol", "c1", 10, "r-bonus-carol").await;
    app.unflag_by("bob", "r-unflag-bob").await;
    app.bonus_by("bob", "c2", 10, "r-last").await;
    let watch = |types: &[pb::EventType], accounts: &[&str]| pb::WatchRequest {
        start: pb::WatchStart::Oldest.into(),
        types: types.iter().map(|t| (*t).into()).collect(),
        account_ids: accounts.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    };
    let limit = Duration::from_secs(10);

    // Until all four: on Citus members on another node may come after r-last.
    let awards = app
        .watch_until(watch(&[PointsAwarded], &[]), limit, |events| events.len() >= 4)
        .await;
    let bobs = app
        .watch_until(watch(&[], &["bob"]), limit, has_request("r-last"))
        .await;
    let both = app
        .watch_until(
            watch(&[PointsAwarded, MemberUnflagged], &["bob", "carol"]),
            limit,
            |events| events.len() >= 4,
        )
        .await;

    assert_eq!(
        summary(&by_account(awards.events)),
        [
            (PointsAwarded, "alice", "r-bonus-alice"),
            (PointsAwarded, "bob", "r-bonus-bob"),
            (PointsAwarded, "bob", "r-last"),
            (PointsAwarded, "carol", "r-bonus-carol"),
        ]
    );
    assert_eq!(
        summary(&bobs.events),
        [
            (MemberRegistered, "bob", "r-register-bob"),
            (MemberFlagged, "bob", "r-flag-bob"),
            (PointsAwarded, "bob", "r-bonus-bob"),
            (MemberUnflagged, "bob", "r-unflag-bob"),
            (PointsAwarded, "bob", "r-last"),
        ]
    );
    assert_eq!(
        summary(&by_account(both.events)),
        [
            (PointsAwarded, "bob", "r-bonus-bob"),
            (MemberUnflagged, "bob", "r-unflag-bob"),
            (PointsAwarded, "bob", "r-last"),
            (PointsAwarded, "carol", "r-bonus-carol"),
        ]
    );
}

#[sqlx::test]
async fn a_filtered_watch_with_nothing_to_send_moves_its_cursor_past_what_it_skipped(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    let everything = app
        .watch_until(from_oldest(), Duration::from_secs(10), |events| {
            !events.is_empty()
        })
        .await;
    let slice: i64 = everything.cursor.split_once('.').unwrap().0.parse().unwrap();
    let request = pb::WatchRequest {
        types: vec![CouponExpired.into()],
        ..from_oldest()
    };

    let mut watch = app.watch(request).await.unwrap();
    let start = watch.message().await.unwrap().unwrap();
    let heartbeat = tokio::time::timeout(Duration::from_secs(7), watch.message())
        .await
        .expect("a heartbeat within a few seconds")
        .unwrap()
        .unwrap();

    assert_eq!((start.event, start.cursor), (None, "1.0".to_owned()));
    assert_eq!(heartbeat.event, None);
    assert_eq!(
        heartbeat.cursor,
        format!("{}.0", slice + 1),
        "past alice's registration"
    );
}

#[sqlx::test]
async fn a_watch_with_a_bad_filter_or_cursor_is_invalid(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.logged_events(&pool).await;
    // A watch from now learns the next slice's cursor: the newest a client may hold.
    let mut latest = app.watch(pb::WatchRequest::default()).await.unwrap();
    let next = latest.message().await.unwrap().unwrap().cursor;
    drop(latest);
    let next_slice: i64 = next.split_once('.').unwrap().0.parse().unwrap();
    let future = format!("{}.0", next_slice + 1);
    let cases = [
        (
            "unspecified type",
            pb::WatchRequest {
                types: vec![0],
                ..from_oldest()
            },
            "types[0]",
        ),
        (
            "unknown type",
            pb::WatchRequest {
                types: vec![99],
                ..from_oldest()
            },
            "types[0]",
        ),
        (
            "16 types",
            pb::WatchRequest {
                types: vec![PointsAwarded.into(); 16],
                ..from_oldest()
            },
            "types",
        ),
        (
            "a malformed account id",
            pb::WatchRequest {
                account_ids: vec!["alice".into(), "not an id!".into()],
                ..from_oldest()
            },
            "account_ids[1]",
        ),
        (
            "101 accounts",
            pb::WatchRequest {
                account_ids: (0..101).map(|i| format!("m{i}")).collect(),
                ..from_oldest()
            },
            "account_ids",
        ),
        (
            "unknown start",
            pb::WatchRequest {
                start: 7,
                ..Default::default()
            },
            "start",
        ),
        ("malformed cursor", after("x"), "after"),
        ("cursor without its event", after("1"), "after"),
        ("cursor from the future", after(&future), "after"),
    ];

    for (case, request, field) in cases {
        let status = app.watch(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(bad_fields(&status), [field], "{case}");
    }
    let hundred = pb::WatchRequest {
        account_ids: (0..100).map(|i| format!("m{i}")).collect(),
        ..from_oldest()
    };
    assert!(app.watch(hundred).await.is_ok(), "100 accounts are fine");
    assert!(
        app.watch(after(&next)).await.is_ok(),
        "the next slice's cursor is fine"
    );
}

#[sqlx::test]
async fn a_watch_from_now_gets_only_what_commits_after_it_starts(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register_by("alice", "r-register-alice").await;
    app.logged_events(&pool).await;
    let mut watch = app.watch(pb::WatchRequest::default()).await.unwrap();
    let start = watch.message().await.unwrap().unwrap();

    app.register_by("bob", "r-register-bob").await;
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the new event comes at once")
        .unwrap()
        .unwrap();

    assert_eq!(start.event, None, "first, where the watch starts");
    assert_eq!(
        summary(&[next.event.expect("an event")]),
        [(MemberRegistered, "bob", "r-register-bob")],
        "not alice's, committed before"
    );
}

#[sqlx::test]
async fn a_slice_is_read_only_once_every_stamp_of_its_cut_can_be_seen(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.logged_events(&pool).await;
    // A cut whose stamps commit in two parts, as on Citus when one worker
    // commits its part of the cut after another: of carol's three events
    // stamped with the slice, two are not committed yet when the slice is.
    let copy = "insert into event (account_id, event_type, occurred_at, request_id, payload, slice_id) \
                select 'carol', event_type, occurred_at, $2, payload, $1 from event where account_id = 'alice'";
    let mut cutter = pool.begin().await.unwrap();
    sqlx::query("select 1 from event_slicer for update")
        .execute(&mut *cutter)
        .await
        .unwrap();
    let slice: i64 = sqlx::query_scalar("select max(slice_id) + 1 from event_slice")
        .fetch_one(&mut *cutter)
        .await
        .unwrap();
    let mut late = pool.begin().await.unwrap();
    for request in ["r-late-1", "r-late-2"] {
        sqlx::query(copy)
            .bind(slice)
            .bind(request)
            .execute(&mut *late)
            .await
            .unwrap();
    }
    sqlx::query(copy)
        .bind(slice)
        .bind("r-seen")
        .execute(&mut *cutter)
        .await
        .unwrap();
    sqlx::query("insert into event_slice (slice_id, closed_at, events, stamped) values ($1, now(), 3, 3)")
        .bind(slice)
        .execute(&mut *cutter)
        .await
        .unwrap();
    cutter.commit().await.unwrap();
    // A later slice (dave's) waits for it too: slices are read in order.
    app.register("dave").await;
    let meanwhile = app
        .watch_until(from_oldest(), Duration::from_millis(1500), |_| false)
        .await;
    let accounts = |events: &[pb::Event]| -> Vec<String> {
        events
            .iter()
            .map(|e| match e.account_id.as_str() {
                "carol" => format!("carol {}", e.request_id),
                account => account.to_owned(),
            })
            .collect()
    };
    assert_eq!(
        accounts(&meanwhile.events),
        ["alice"],
        "nothing of the slice, nor after it, while part of it cannot be seen"
    );

    late.commit().await.unwrap();
    let log = app.logged_events(&pool).await;
    assert_eq!(
        accounts(&log),
        [
            "alice",
            "carol r-late-1",
            "carol r-late-2",
            "carol r-seen",
            "dave"
        ],
        "the whole slice once it can be seen, then the next"
    );
    let resumed = app
        .watch_until(after(&meanwhile.cursor), Duration::from_secs(10), |events| {
            events.len() >= 4
        })
        .await;
    assert_eq!(
        resumed.events.len(),
        4,
        "a watch resumed from before the slice gets all of it"
    );
}

/// The migration to stamped slices keeps the log of a database of the
/// previous release: events already in a slice stay in it (a cursor into it
/// resumes where it was), and events not yet in one go in the next cut.
#[sqlx::test(migrations = false)]
async fn the_stamping_migration_keeps_the_slices_and_cursors_of_the_previous_release(pool: PgPool) {
    migrate_before(&pool, "20261205000010").await;
    // As the previous release wrote and cut them: r-0 in slice 1, below the
    // floor (its slice dropped, the event not pruned yet); r-1 in slice 2, the
    // floor; r-2 and r-3 in slice 3 (one transaction); r-4 after the last cut.
    let flag = |account: &str, request: &str| {
        format!(
            "insert into event (account_id, event_type, occurred_at, request_id, payload) \
             values ('{account}', 'member_flagged', now(), '{request}', '{{\"reason\": \"x\"}}')"
        )
    };
    let cut = |slice: i64| {
        format!(
            "insert into event_slice (slice_id, snapshot, txids, closed_at, events) \
             select {slice}, pg_current_snapshot(), array_agg(distinct txid), now(), count(*) from event \
             where txid >= pg_snapshot_xmax((select snapshot from event_slice order by slice_id desc limit 1))"
        )
    };
    for statements in [
        vec![flag("alice", "r-0")],
        vec![cut(1)],
        vec![flag("alice", "r-1")],
        vec![cut(2)],
        vec![flag("alice", "r-2"), flag("bob", "r-3")],
        vec![cut(3)],
        vec!["delete from event_slice where slice_id < 2".to_owned()],
        vec![flag("alice", "r-4")],
    ] {
        sqlx::raw_sql(&statements.join("; "))
            .execute(&pool)
            .await
            .unwrap();
    }
    let ids: Vec<i64> = sqlx::query_scalar("select event_id from event order by event_id")
        .fetch_all(&pool)
        .await
        .unwrap();

    loyalty::db::migrate(&pool).await.unwrap();

    let stamps: Vec<Option<i64>> = sqlx::query_scalar("select slice_id from event order by event_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    if on_citus(&pool).await {
        // The previous release's log did not work on Citus (each node's
        // transaction ids): nothing is stamped, and the next cut takes all.
        assert_eq!(stamps, [None; 5]);
        let app = spawn_app(pool.clone()).await;
        let log = app.logged_events(&pool).await;
        assert_eq!(log.len(), 5);
        return;
    }
    assert_eq!(
        stamps,
        [Some(2), Some(2), Some(3), Some(3), None],
        "each in its slice, the one below the floor in the floor's"
    );
    let settled: i64 = sqlx::query_scalar("select settled_through from event_slicer")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(settled, 3);

    let app = spawn_app(pool.clone()).await;
    let requests =
        |events: &[pb::Event]| -> Vec<String> { events.iter().map(|e| e.request_id.clone()).collect() };
    // The floor's events and those below it are going; the rest come.
    let log = app
        .watch_until(from_oldest(), Duration::from_secs(10), |events| events.len() >= 3)
        .await
        .events;
    assert_eq!(requests(&log), ["r-2", "r-3", "r-4"]);
    assert_eq!(log[2].event_id, ids[4].to_string());
    // A cursor the previous release handed out, after r-2.
    let resumed = app
        .watch_until(
            after(&format!("3.{}", ids[2])),
            Duration::from_secs(10),
            |events| events.len() >= 2,
        )
        .await;
    assert_eq!(requests(&resumed.events), ["r-3", "r-4"]);
    let expired = app.watch(after(&format!("2.{}", ids[1]))).await.err();
    assert_eq!(
        expired.map(|status| status.code()),
        Some(Code::FailedPrecondition)
    );
}

/// A database whose pruner dropped every slice (the releases before the
/// repair did when no slice was old enough, the floor included, after which
/// nothing was cut again) gets the slices of its stamped events back, and the
/// log goes on: every event is delivered, those stamped later too.
#[sqlx::test(migrations = false)]
async fn the_repair_migration_gives_back_the_slices_a_prune_dropped(pool: PgPool) {
    migrate_before(&pool, "20261205000016").await;
    // As such a release left it: r-1 and r-2 in slice 1, r-3 in slice 2, both
    // settled; r-4 written after, never stamped; every slice dropped.
    sqlx::raw_sql(
        "insert into event (account_id, event_type, occurred_at, request_id, payload, slice_id) values \
             ('alice', 'member_flagged', now(), 'r-1', '{\"reason\": \"x\"}', 1), \
             ('bob', 'member_flagged', now(), 'r-2', '{\"reason\": \"x\"}', 1), \
             ('alice', 'member_flagged', now(), 'r-3', '{\"reason\": \"x\"}', 2), \
             ('carol', 'member_flagged', now(), 'r-4', '{\"reason\": \"x\"}', null); \
         update event_slicer set settled_through = 2; \
         delete from event_slice",
    )
    .execute(&pool)
    .await
    .unwrap();

    loyalty::db::migrate(&pool).await.unwrap();

    let slices: Vec<(i64, i32)> =
        sqlx::query_as("select slice_id, events from event_slice order by slice_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        slices,
        [(0, 0), (1, 2), (2, 1)],
        "the floor, then the slices back"
    );
    let app = spawn_app(pool.clone()).await;
    app.register("dave").await;
    let mut requests: Vec<String> = app
        .logged_events(&pool)
        .await
        .into_iter()
        .map(|e| e.request_id)
        .filter(|r| r.starts_with("r-"))
        .collect();
    requests.sort();
    assert_eq!(requests, ["r-1", "r-2", "r-3", "r-4"]);
}

#[sqlx::test]
async fn a_backlog_is_cut_in_slices_of_at_most_ten_thousand_in_each_members_order(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    // 10,050 events committed at once, as after the slicers were stopped.
    sqlx::query(
        "insert into event (account_id, event_type, occurred_at, request_id, payload) \
         select 'm' || (g % 7), 'member_flagged', now(), 'r-' || g, '{\"reason\": \"x\"}' \
         from generate_series(1, 10050) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let log = app.logged_events(&pool).await;

    let slices: Vec<i32> =
        sqlx::query_scalar("select events from event_slice where slice_id > 0 order by slice_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(slices, [10_000, 50], "a full slice, then the rest at once");
    assert_eq!(log.len(), 10_050);
    // Each member's events in the order they were written.
    for member in 0..7 {
        let account = format!("m{member}");
        let requests: Vec<i64> = log
            .iter()
            .filter(|e| e.account_id == account)
            .map(|e| e.request_id[2..].parse().unwrap())
            .collect();
        assert!(
            requests.windows(2).all(|w| w[0] < w[1]),
            "{account}'s events in write order"
        );
    }
}
