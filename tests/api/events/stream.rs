//! The stream's limits: events older than the retention are pruned and their
//! cursors expire; watches are counted, end before their deadline and at
//! shutdown; a watch needs its scope.

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use loyalty::pb;
use loyalty::pb::EventType::{MemberRegistered, PointsAwarded};
use sqlx::PgPool;
use tonic::Code;
use tonic_types::StatusExt;

use super::{after, has_request, summary};
use crate::helpers::{from_oldest, named, reason, spawn_app, spawn_app_with, tokens_file, ts};

/// Reads `stream` to its end: `Ok` when it ended cleanly.
async fn end_of(stream: &mut tonic::Streaming<pb::WatchResponse>) -> Result<(), tonic::Status> {
    while stream.message().await?.is_some() {}
    Ok(())
}

/// The pruner runs while no slice is older than the retention (a fresh
/// install's first week, or a test whose clock does not move): it drops
/// nothing, and the log goes on. It once dropped every slice then, the floor
/// included, after which nothing could be cut again.
#[sqlx::test]
async fn a_prune_with_no_slice_old_enough_drops_nothing(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--event-prune-interval-secs", "1"]).await;
    app.register_by("alice", "r-first").await;
    let first = app
        .watch_until(from_oldest(), Duration::from_secs(10), has_request("r-first"))
        .await;
    // Two prunes at least, with the first event's slice and the floor in place.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.register_by("bob", "r-second").await;

    let next = app
        .watch_until(
            after(&first.cursor),
            Duration::from_secs(10),
            has_request("r-second"),
        )
        .await;
    let everything = app
        .watch_until(from_oldest(), Duration::from_secs(10), has_request("r-second"))
        .await;

    assert_eq!(next.events.len(), 1, "the event after the prunes is delivered");
    assert_eq!(everything.events.len(), 2, "and none before it was pruned");
    let floor: Option<i64> = sqlx::query_scalar("select min(slice_id) from event_slice")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(floor, Some(0), "the floor did not move");
}

#[sqlx::test]
async fn events_older_than_the_retention_are_pruned_and_their_cursors_expire(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &["--event-prune-interval-secs", "1"]).await;
    app.register_by("alice", "r-old-register").await;
    app.bonus_by("alice", "c1", 10, "r-old-bonus").await;
    // Read, so cut into slices at the current clock.
    let old = app
        .watch_until(from_oldest(), Duration::from_secs(10), has_request("r-old-bonus"))
        .await;
    assert_eq!(old.events.len(), 2);

    app.clock.advance(TimeDelta::days(8));
    // A cut that began before the jump dates its slice before it, whatever it
    // stamps; let it finish (it can take most of a second on Citus), so that
    // the new events go in a slice of the new time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.register_by("bob", "r-new-register").await;
    app.bonus_by("bob", "c1", 10, "r-new-bonus").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut old_left = i64::MAX;
    while old_left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        old_left = sqlx::query_scalar("select count(*) from event where account_id = 'alice'")
            .fetch_one(&pool)
            .await
            .unwrap();
    }
    let expired = app.watch(after(&old.cursor)).await.unwrap_err();
    let oldest = expired
        .get_details_error_info()
        .expect("ErrorInfo")
        .metadata
        .get("oldest_cursor")
        .cloned()
        .expect("the oldest cursor");
    let resumed = app
        .watch_until(
            after(&oldest),
            Duration::from_secs(10),
            has_request("r-new-bonus"),
        )
        .await;
    let mut from_oldest_now = app.watch(from_oldest()).await.unwrap();
    let start = from_oldest_now.message().await.unwrap().unwrap();

    assert_eq!(old_left, 0, "the events older than 7 days are pruned");
    let relays: i64 = sqlx::query_scalar("select count(*) from event_relay")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(relays, 0, "no relay configured, none holds the events back");
    let kept: i64 = sqlx::query_scalar("select count(*) from event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 2, "the new events stay");
    assert_eq!(
        (expired.code(), reason(&expired).as_str()),
        (Code::FailedPrecondition, "CURSOR_EXPIRED")
    );
    assert_eq!(
        summary(&resumed.events),
        [
            (MemberRegistered, "bob", "r-new-register"),
            (PointsAwarded, "bob", "r-new-bonus"),
        ]
    );
    assert_eq!(start.cursor, oldest, "a watch from the oldest starts there");
}

#[sqlx::test]
async fn watches_beyond_max_watchers_are_refused_until_one_ends(pool: PgPool) {
    let app = spawn_app_with(pool, &["--max-watchers", "1"]).await;
    let mut first = app.watch(from_oldest()).await.unwrap();
    first.message().await.unwrap().expect("the starting cursor");

    let refused = app.watch(from_oldest()).await.unwrap_err();
    app.register("alice").await; // calls are not watchers
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    let reopened = loop {
        match app.watch(from_oldest()).await {
            Ok(stream) => break Ok(stream),
            Err(status) if Instant::now() > deadline => break Err(status),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };

    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::ResourceExhausted, "TOO_MANY_WATCHERS")
    );
    assert!(reopened.is_ok(), "the place came free: {reopened:?}");
}

#[sqlx::test]
async fn a_watch_ends_cleanly_before_its_deadline(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut request = tonic::Request::new(from_oldest());
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();

    let mut stream = app.watch(request).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), end_of(&mut stream))
        .await
        .expect("the watch ends by itself");

    assert!(ended.is_ok(), "it ends with OK, not DEADLINE_EXCEEDED: {ended:?}");
    let lasted = started.elapsed();
    assert!(
        lasted > Duration::from_millis(500) && lasted < Duration::from_millis(1500),
        "about its deadline ({lasted:?})"
    );
}

#[sqlx::test]
async fn a_watch_without_a_deadline_ends_at_the_servers_cap(pool: PgPool) {
    let app = spawn_app_with(pool, &["--watch-max-secs", "1"]).await;
    let started = Instant::now();

    let mut stream = app.watch(from_oldest()).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), end_of(&mut stream))
        .await
        .expect("the watch ends by itself");

    assert!(ended.is_ok(), "it ends with OK: {ended:?}");
    let lasted = started.elapsed();
    assert!(
        lasted > Duration::from_millis(500) && lasted < Duration::from_millis(1500),
        "about the cap ({lasted:?})"
    );
}

#[sqlx::test]
async fn an_open_watch_ends_with_unavailable_when_the_server_stops(pool: PgPool) {
    let mut app = spawn_app(pool).await;
    let mut stream = app.watch(from_oldest()).await.unwrap();
    stream.message().await.unwrap().expect("the starting cursor");
    let started = Instant::now();

    app.signal_stop();
    let ended = tokio::time::timeout(Duration::from_secs(3), end_of(&mut stream))
        .await
        .expect("the watch ends at shutdown");

    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(2), "promptly");
}

/// `message` sent with a bearer token and a request id.
fn as_caller<T>(message: T, token: &str, request_id: &str) -> tonic::Request<T> {
    let mut request = named(message, request_id);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[sqlx::test]
async fn a_watch_needs_its_scope_and_events_name_the_calling_service(pool: PgPool) {
    let file = tokens_file(
        "event-tokens",
        &[
            ("crm", "t-crm", "events:watch"),
            ("orders", "t-orders", "members:write,points:earn"),
            ("checkout", "t-checkout", "points:read"),
        ],
    );
    let app = spawn_app_with(pool, &["--auth-tokens-file", file.to_str().unwrap()]).await;

    app.members
        .clone()
        .register_member(as_caller(
            pb::RegisterMemberRequest {
                account_id: "alice".into(),
                registered_at: Some(ts("2026-01-01T00:00:00Z")),
                birthday: None,
            },
            "t-orders",
            "r-register",
        ))
        .await
        .unwrap();
    let denied = app
        .watch(as_caller(from_oldest(), "t-checkout", "r-watch-denied"))
        .await
        .unwrap_err();
    let anonymous = app.watch(from_oldest()).await.unwrap_err();
    let watched = app
        .watch_until(
            as_caller(from_oldest(), "t-crm", "r-watch"),
            Duration::from_secs(10),
            has_request("r-register"),
        )
        .await;

    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "MISSING_SCOPE")
    );
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(watched.events.len(), 1);
    assert_eq!(
        (
            watched.events[0].r#type(),
            watched.events[0].request_id.as_str(),
            watched.events[0].caller.as_str()
        ),
        (MemberRegistered, "r-register", "orders")
    );
    std::fs::remove_file(file).ok();
}
