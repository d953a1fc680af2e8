//! The NATS JetStream relay (`--nats-url`) against a real NATS server
//! (`LOYALTY_TEST_NATS_URL`, default `nats://127.0.0.1:4222`): every event
//! reaches the stream once, with its CloudEvents headers and in order per
//! account, with two replicas relaying, after a crash, through a NATS outage,
//! and while the pruner runs. Each test publishes to a stream and a subject
//! prefix of its own, deleted when the test ends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use chrono::TimeDelta;
use futures::StreamExt;
use futures::future::join_all;
use loyalty::pb;
use prost::Message;
use rand::Rng;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{
    DatabaseProxy, TestApp, checkout, checkout_line, platform_template, spawn_app, spawn_app_with,
};
use crate::server::scrape;

/// The NATS server the relay publishes to.
fn nats_url() -> String {
    std::env::var("LOYALTY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// How long a test waits for the relay before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// The stream and subject prefix of one test; the stream is deleted when the
/// test ends (passed or not).
struct TestStream {
    name: String,
    prefix: String,
    jetstream: jetstream::Context,
}

/// One message read back from the stream.
struct Relayed {
    sequence: u64,
    subject: String,
    headers: async_nats::HeaderMap,
    event: pb::Event,
}

impl Relayed {
    /// A header's value; empty when absent.
    fn header(&self, name: impl async_nats::header::IntoHeaderName) -> &str {
        self.headers.get(name).map_or("", |value| value.as_str())
    }

    /// The `Nats-Msg-Id` header.
    fn message_id(&self) -> &str {
        self.header(async_nats::header::NATS_MESSAGE_ID)
    }
}

impl TestStream {
    async fn new() -> Self {
        let suffix: u64 = rand::thread_rng().r#gen();
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS answers at LOYALTY_TEST_NATS_URL (scripts/nats.sh starts one)");
        Self {
            name: format!("LOYALTY_TEST_{suffix:016x}"),
            prefix: format!("loyalty.test{suffix:016x}"),
            jetstream: jetstream::new(client),
        }
    }

    /// The `loyalty serve` flags that relay to this stream at `url`.
    fn flags(&self, url: &str) -> Vec<String> {
        vec![
            "--nats-url".to_owned(),
            url.to_owned(),
            "--nats-stream".to_owned(),
            self.name.clone(),
            "--nats-subject-prefix".to_owned(),
            self.prefix.clone(),
        ]
    }

    /// The stream's state; none until the relay created the stream.
    async fn state(&self) -> Option<jetstream::stream::State> {
        let mut stream = self.jetstream.get_stream(&self.name).await.ok()?;
        Some(stream.info().await.ok()?.state.clone())
    }

    /// How many messages the stream holds.
    async fn messages(&self) -> u64 {
        self.state().await.map_or(0, |state| state.messages)
    }

    /// Waits (bounded) until the stream holds `count` messages.
    async fn wait_for(&self, count: u64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let held = self.messages().await;
            if held >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream holds {held} messages after {PATIENCE:?}, not {count}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every message of the stream, in stream order, as a consumer reads them.
    async fn read_all(&self) -> Vec<Relayed> {
        let count = self.messages().await;
        let stream = self
            .jetstream
            .get_stream(&self.name)
            .await
            .expect("the stream exists");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("an ordered consumer");
        let mut messages = consumer.messages().await.expect("the consumer's messages");
        let mut relayed = Vec::new();
        while (relayed.len() as u64) < count {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("the consumer delivers within 10 s")
                .expect("the consumer goes on")
                .expect("a message");
            let sequence = message.info().expect("a JetStream message").stream_sequence;
            let event = pb::Event::decode(message.payload.clone()).expect("the body is a loyalty.v1.Event");
            relayed.push(Relayed {
                sequence,
                subject: message.subject.to_string(),
                headers: message.headers.clone().unwrap_or_default(),
                event,
            });
        }
        relayed
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (nats_url(), self.name.clone());
        // Drop cannot await on the test's runtime: a runtime of its own, on a
        // thread of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = async_nats::connect(url).await?;
                jetstream::new(client).delete_stream(&name).await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("the test stream {} was not deleted", self.name);
        }
    }
}

/// Spawns the app with `flags` plus the relay's flags.
async fn spawn_relaying(pool: PgPool, stream: &TestStream, url: &str, flags: &[&str]) -> TestApp {
    let mut all = stream.flags(url);
    all.extend(flags.iter().map(|flag| (*flag).to_owned()));
    spawn_app_with(pool, &all.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// Every event id in the database, in order.
async fn event_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("select event_id from event order by event_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// How many events the relay has counted as published (the sum over its batches).
async fn published_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select published_events from event_relay where relay = 'nats'")
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Waits (bounded) until the relay counted `count` events as published.
async fn wait_published(pool: &PgPool, count: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let published = published_events(pool).await;
        if published >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay published {published} events after {PATIENCE:?}, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until every event is in a slice: their slices then carry
/// the time on the test's clock before the test moves it.
async fn wait_sliced(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (sliced, written): (i64, i64) = sqlx::query_as(
            "select (select coalesce(sum(events), 0) from event_slice)::bigint, \
                    (select count(*) from event)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if sliced == written {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sliced} of {written} events sliced after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The event ids of the messages, checking that none is there twice.
fn ids_once(relayed: &[Relayed]) -> Vec<i64> {
    let mut ids: Vec<i64> = relayed
        .iter()
        .map(|message| message.message_id().parse().expect("a numeric Nats-Msg-Id"))
        .collect();
    ids.sort_unstable();
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "an event id is in the stream twice");
    ids
}

/// A sample of a Prometheus metric without labels.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// Registers `count` members `<prefix>-<n>`, 16 at a time.
async fn register_many(app: &TestApp, prefix: &str, count: usize) {
    futures::stream::iter(1..=count)
        .for_each_concurrent(
            16,
            |n| async move { app.register(&format!("{prefix}-{n}")).await },
        )
        .await;
}

/// A platform template of which a member may hold ten coupons.
async fn create_template(app: &TestApp) {
    app.create_template(pb::CouponTemplate {
        per_member_limit: 10,
        ..platform_template("t-5", 500)
    })
    .await;
}

/// One member's changes, each call after the previous one answered:
/// registration, two orders and a bonus, a coupon used by a checkout and
/// restored by its full refund, a second coupon given back by a cancel, and a
/// fraud flag that revokes the coupons.
async fn member_story(app: &TestApp, account: &str) {
    let line = || vec![checkout_line("l1", "s1", 2000, 1, false)];
    app.register(account).await;
    for order in ["o-1", "o-2"] {
        app.confirm_order(account, order, 2590, "2026-06-10T10:00:00Z", &[("sku-1", "c1")])
            .await
            .unwrap();
    }
    app.bonus(account, "welcome", 50, "2026-06-11T10:00:00Z").await;
    let used = app
        .issue_as(account, "t-5", &format!("{account}-1"))
        .await
        .unwrap();
    app.reserve(checkout(account, "co-1", line()), vec![used.coupon_id])
        .await
        .unwrap();
    app.complete(account, "co-1").await.unwrap();
    app.refund(account, "co-1", "r-1", &[]).await.unwrap();
    let released = app
        .issue_as(account, "t-5", &format!("{account}-2"))
        .await
        .unwrap();
    app.reserve(checkout(account, "co-2", line()), vec![released.coupon_id])
        .await
        .unwrap();
    app.cancel(account, "co-2").await.unwrap();
    app.members
        .clone()
        .flag_member(pb::FlagMemberRequest {
            account_id: account.to_owned(),
            reason: "chargebacks".to_owned(),
        })
        .await
        .unwrap();
}

#[sqlx::test]
async fn every_event_reaches_jetstream_once_with_its_cloudevents_headers(pool: PgPool) {
    let stream = TestStream::new().await;
    let app = spawn_relaying(pool.clone(), &stream, &nats_url(), &[]).await;
    create_template(&app).await;
    let accounts = ["alice", "bob", "carol", "dave"];

    // The members' stories run side by side; each member's calls one by one.
    join_all(accounts.iter().map(|account| member_story(&app, account))).await;
    let stored: Vec<(i64, String, String)> =
        sqlx::query_as("select event_id, event_type, account_id from event order by event_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    stream.wait_for(stored.len() as u64).await;
    let relayed = stream.read_all().await;

    assert_eq!(relayed.len(), stored.len(), "one message per event");
    assert_eq!(
        ids_once(&relayed),
        stored.iter().map(|(id, _, _)| *id).collect::<Vec<_>>()
    );
    let by_id: BTreeMap<String, &(i64, String, String)> =
        stored.iter().map(|row| (row.0.to_string(), row)).collect();
    for message in &relayed {
        let id = message.message_id();
        let (_, event_type, account) = by_id[id];
        assert_eq!(message.subject, format!("{}.{event_type}", stream.prefix));
        assert_eq!(message.header("ce-id"), id);
        assert_eq!(message.header("ce-type"), format!("loyalty.v1.{event_type}"));
        assert_eq!(message.header("ce-subject"), account);
        assert_eq!(message.header("ce-specversion"), "1.0");
        assert_eq!(message.header("ce-source"), "loyalty");
        assert_eq!(message.header("content-type"), "application/protobuf");
        let time = chrono::DateTime::parse_from_rfc3339(message.header("ce-time"))
            .unwrap_or_else(|_| panic!("ce-time {:?} is RFC 3339", message.header("ce-time")));
        let event = &message.event;
        assert_eq!(event.event_id, id);
        assert_eq!(
            format!("EVENT_TYPE_{}", event_type.to_uppercase()),
            event.r#type().as_str_name()
        );
        assert_eq!(event.account_id, *account);
        let occurred_at = event.occurred_at.expect("occurred_at");
        assert_eq!(
            (time.timestamp(), time.timestamp_subsec_micros()),
            (occurred_at.seconds, occurred_at.nanos as u32 / 1000)
        );
        assert!(event.payload.is_some(), "event {id} carries its payload");
    }
    // Per account, the stream has the events in the order the calls made them.
    for account in accounts {
        let in_stream: Vec<(u64, String)> = relayed
            .iter()
            .filter(|message| message.event.account_id == account)
            .map(|message| (message.sequence, message.event.event_id.clone()))
            .collect();
        let in_database: Vec<String> = stored
            .iter()
            .filter(|(_, _, owner)| owner == account)
            .map(|(id, _, _)| id.to_string())
            .collect();
        assert!(in_stream.is_sorted(), "read in stream order");
        assert_eq!(
            in_stream.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
            in_database,
            "{account}'s events in the order of their ids"
        );
        let types: Vec<&str> = relayed
            .iter()
            .filter(|message| message.event.account_id == account)
            .map(|message| message.subject.rsplit('.').next().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "member_registered",
                "points_awarded",
                "points_awarded",
                "points_awarded",
                "coupon_issued",
                "coupon_reserved",
                "coupon_used",
                "coupon_restored",
                "coupon_issued",
                "coupon_reserved",
                "coupon_released",
                "member_flagged",
                "coupon_revoked",
                "coupon_revoked",
            ],
            "{account}'s story, in order"
        );
    }
    // The relay created the stream: every subject under the prefix, and a
    // duplicate window for a relay that publishes a batch again.
    let mut created = stream.jetstream.get_stream(&stream.name).await.unwrap();
    let config = created.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, [format!("{}.>", stream.prefix)]);
    assert_eq!(config.duplicate_window, Duration::from_secs(600));
    assert_eq!(published_events(&pool).await, stored.len() as i64);
}

#[sqlx::test]
async fn two_replicas_relaying_one_database_publish_each_event_once(
    _options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let stream = TestStream::new().await;
    let pool = PgPoolOptions::new().connect_lazy_with(connect.clone());
    let other_pool = PgPoolOptions::new().connect_lazy_with(connect);
    let metrics = ["--metrics-addr", "127.0.0.1:0"];
    let first = spawn_relaying(pool.clone(), &stream, &nats_url(), &metrics).await;
    let second = spawn_relaying(other_pool, &stream, &nats_url(), &metrics).await;

    // 32 writers, half through each replica, 40 members, for many small slices.
    join_all((0..32).map(|writer| {
        let app = if writer % 2 == 0 { &first } else { &second };
        async move {
            for n in 0..10 {
                let account = format!("m{}", (writer * 10 + n) % 40);
                app.register(&account).await;
                app.bonus(&account, &format!("w{writer}-{n}"), 5, "2026-06-11T10:00:00Z")
                    .await;
            }
        }
    }))
    .await;
    let ids = event_ids(&pool).await;
    stream.wait_for(ids.len() as u64).await;
    wait_published(&pool, ids.len() as i64).await;

    let relayed = stream.read_all().await;
    assert_eq!(ids_once(&relayed), ids, "every event once, none missing");
    // JetStream drops a duplicate id silently: the relays' own counts say
    // that no event went out twice.
    assert_eq!(published_events(&pool).await, ids.len() as i64);
    let mut relayed_by_replica = Vec::new();
    for app in [&first, &second] {
        let metrics = scrape(app.metrics_port.unwrap()).await;
        relayed_by_replica.push(sample(&metrics, "loyalty_events_relayed_total"));
    }
    assert_eq!(
        relayed_by_replica.iter().sum::<f64>(),
        ids.len() as f64,
        "published by the two replicas: {relayed_by_replica:?}"
    );
}

#[sqlx::test]
async fn a_standby_replica_takes_over_the_relay_when_the_other_stops(
    _options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let stream = TestStream::new().await;
    // Each replica has a pool of its own (stopping one closes its pool).
    let pool = PgPoolOptions::new().connect_lazy_with(connect.clone());
    let first_pool = PgPoolOptions::new().connect_lazy_with(connect.clone());
    let standby_pool = PgPoolOptions::new().connect_lazy_with(connect);
    let metrics = ["--metrics-addr", "127.0.0.1:0"];
    let first = spawn_relaying(first_pool, &stream, &nats_url(), &metrics).await;
    let standby = spawn_relaying(standby_pool, &stream, &nats_url(), &metrics).await;
    register_many(&first, "before", 50).await;
    stream.wait_for(50).await;

    first.stop().await;
    register_many(&standby, "after", 50).await;
    stream.wait_for(100).await;

    let relayed = stream.read_all().await;
    assert_eq!(ids_once(&relayed), event_ids(&pool).await);
    let metrics = scrape(standby.metrics_port.unwrap()).await;
    assert!(
        sample(&metrics, "loyalty_events_relayed_total") >= 50.0,
        "the standby published what came after the stop"
    );
    assert_eq!(published_events(&pool).await, 100);
}

#[sqlx::test]
async fn a_relay_that_crashes_mid_batch_loses_nothing_and_publishes_each_event_once(
    _options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let stream = TestStream::new().await;
    let pool = PgPoolOptions::new().connect_lazy_with(connect.clone());
    let writer = spawn_app(pool.clone()).await;
    register_many(&writer, "m", 2000).await;
    let events = event_ids(&pool).await;
    // The doomed replica reaches PostgreSQL and NATS through proxies; the path
    // to NATS is slow, so that JetStream holds messages of a batch some time
    // before their acknowledgements come back and the batch commits.
    let database = DatabaseProxy::start(connect.get_port()).await;
    let nats = DatabaseProxy::start(nats_port()).await;
    nats.set_latency(Duration::from_millis(100));
    let doomed_pool = PgPoolOptions::new().connect_lazy_with(connect.port(database.port));
    let _doomed = spawn_relaying(
        doomed_pool,
        &stream,
        &format!("nats://127.0.0.1:{}", nats.port),
        &[],
    )
    .await;
    stream.wait_for(1).await;

    // As kill -9 would: every connection of the replica breaks at once.
    database.cut();
    nats.cut();
    let in_stream_at_crash = stream.messages().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed_at_crash = published_events(&pool).await;
    let _successor = spawn_relaying(pool.clone(), &stream, &nats_url(), &[]).await;
    stream.wait_for(events.len() as u64).await;
    wait_published(&pool, events.len() as i64).await;

    assert!(
        committed_at_crash < in_stream_at_crash as i64 && in_stream_at_crash < events.len() as u64,
        "the crash came mid-relay, between publishing and committing: \
         {committed_at_crash} committed, {in_stream_at_crash} in the stream, of {}",
        events.len()
    );
    let relayed = stream.read_all().await;
    assert_eq!(ids_once(&relayed), events, "every event once, none missing");
    // What was in the stream but not committed went out again: the successor
    // counted it, JetStream dropped it.
    assert_eq!(stream.messages().await, events.len() as u64);
    assert_eq!(published_events(&pool).await, events.len() as i64);
}

#[sqlx::test]
async fn a_batch_published_again_after_a_lost_commit_is_dropped_by_jetstream(pool: PgPool) {
    let stream = TestStream::new().await;
    let app = spawn_relaying(pool.clone(), &stream, &nats_url(), &[]).await;
    register_many(&app, "m", 300).await;
    wait_published(&pool, 300).await;
    // Stopping the app closes its pool.
    let pool_again = PgPoolOptions::new().connect_lazy_with(pool.connect_options().as_ref().clone());
    app.stop().await;

    // As if the relay died after JetStream acknowledged its batches and
    // before the cursor committed: the cursor where a new relay starts.
    sqlx::query("update event_relay set slice_id = 1, event_id = 0 where relay = 'nats'")
        .execute(&pool_again)
        .await
        .unwrap();
    let _app = spawn_relaying(pool_again.clone(), &stream, &nats_url(), &[]).await;
    wait_published(&pool_again, 600).await;

    assert_eq!(
        published_events(&pool_again).await,
        600,
        "the relay published them all again"
    );
    assert_eq!(stream.messages().await, 300, "JetStream kept each id once");
    let relayed = stream.read_all().await;
    assert_eq!(ids_once(&relayed), event_ids(&pool_again).await);
}

#[sqlx::test]
async fn events_written_while_nats_is_away_arrive_once_it_is_back(pool: PgPool) {
    let stream = TestStream::new().await;
    let nats = DatabaseProxy::start(nats_port()).await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let app = spawn_relaying(pool.clone(), &stream, &url, &["--metrics-addr", "127.0.0.1:0"]).await;
    register_many(&app, "before", 20).await;
    wait_published(&pool, 20).await;

    nats.cut();
    register_many(&app, "during", 20).await;
    wait_sliced(&pool).await;
    app.clock.advance(TimeDelta::seconds(90));
    // The relay notices the outage (an unacknowledged batch times out) and
    // says how far behind it is.
    let lag = wait_for_lag(&app, |lag| lag >= 90.0).await;
    let held_during = stream.messages().await;
    nats.restore();
    stream.wait_for(40).await;
    wait_for_lag(&app, |lag| lag == 0.0).await;

    assert_eq!(held_during, 20, "nothing went out while NATS was away");
    assert!(lag >= 90.0, "the lag showed the outage: {lag}");
    let relayed = stream.read_all().await;
    assert_eq!(ids_once(&relayed), event_ids(&pool).await);
}

/// The NATS port of `LOYALTY_TEST_NATS_URL`, for a proxy to it (the tests
/// that cut NATS off proxy a server on this machine).
fn nats_port() -> u16 {
    nats_url()
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or(4222)
}

/// Waits (bounded) until `loyalty_event_relay_lag_seconds` passes `wanted`; returns it.
async fn wait_for_lag(app: &TestApp, wanted: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lag = sample(
            &scrape(app.metrics_port.unwrap()).await,
            "loyalty_event_relay_lag_seconds",
        );
        if wanted(lag) {
            return lag;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay lag is {lag} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn the_pruner_keeps_the_events_the_relay_has_not_published(pool: PgPool) {
    let stream = TestStream::new().await;
    let nats = DatabaseProxy::start(nats_port()).await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let app = spawn_relaying(pool.clone(), &stream, &url, &["--event-prune-interval-secs", "1"]).await;
    register_many(&app, "published", 10).await;
    wait_published(&pool, 10).await;
    nats.cut();
    register_many(&app, "unpublished", 10).await;
    let unpublished: Vec<i64> = sqlx::query_scalar(
        "select event_id from event where account_id like 'unpublished-%' order by event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    wait_sliced(&pool).await;

    // Eight days on: past the retention of every event.
    app.clock.advance(TimeDelta::days(8));
    wait_for_events(&pool, |ids| ids.len() == 10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = event_ids(&pool).await;
    nats.restore();
    stream.wait_for(20).await;
    wait_for_events(&pool, |ids| ids.is_empty()).await;

    assert_eq!(
        kept, unpublished,
        "the published events went, the unpublished stayed"
    );
    let relayed = stream.read_all().await;
    assert_eq!(
        relayed.len(),
        20,
        "every event reached the stream before it was pruned"
    );
    // The last ten published: the unpublished ones (ids are per node on
    // Citus, so they are compared as a set).
    let mut last: Vec<i64> = relayed[10..]
        .iter()
        .map(|message| message.message_id().parse().unwrap())
        .collect();
    last.sort_unstable();
    assert_eq!(ids_once(&relayed).len(), 20);
    assert_eq!(last, unpublished);
}

/// Waits (bounded) until the event ids in the database pass `wanted`.
async fn wait_for_events(pool: &PgPool, wanted: impl Fn(&[i64]) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ids = event_ids(pool).await;
        if wanted(&ids) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event log holds {ids:?} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
