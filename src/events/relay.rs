//! The NATS JetStream relay (`--nats-url`): publishes the event log, in log
//! order, to the subjects `<prefix>.<type>` of one stream.
//!
//! - **One relay at a time.** Each batch runs in a transaction that holds the
//!   relay's cursor row (`event_relay`, `for update skip locked`): every
//!   replica runs a relay, one publishes, the others stand by and take over
//!   the moment its transaction ends (a crash included). Publishing in log
//!   order from one place keeps each account's events in commit order in the
//!   stream too.
//! - **At least once, each id once in the stream.** The cursor moves in the
//!   same transaction, after JetStream acknowledged every event of the batch.
//!   A crash between the acknowledgements and the commit publishes the batch
//!   again: each message carries its event id as `Nats-Msg-Id`, and JetStream
//!   drops a duplicate within the stream's duplicate window.
//! - **In order in the stream.** Each message of a batch after the first
//!   carries `Nats-Expected-Last-Msg-Id` (the event before it): if JetStream
//!   refuses one message, it refuses the rest of the batch rather than store
//!   them ahead of it, and the batch goes again, in order.
//! - **CloudEvents** attributes as headers (binary mode): `ce-specversion`,
//!   `ce-id` (the event id), `ce-type` (`loyalty.v1.<type>`), `ce-source`,
//!   `ce-time`, `ce-subject` (the account); the body is the protobuf
//!   `loyalty.v1.Event` (`content-type: application/protobuf`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use chrono::SecondsFormat;
use prost::Message;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::SecretUrl;
use crate::db;
use crate::domain::events::{Filter, StoredEvent};
use crate::events::{EventLog, Read, oldest_cursor, read_on};
use crate::grpc::events::event_pb;
use crate::metrics::Metrics;

/// The relay's name in `event_relay`.
pub const RELAY: &str = "nats";

/// The most events one batch publishes (one transaction).
const BATCH: i64 = 500;

/// How long JetStream may take to acknowledge one message.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long publishing a batch may take, acknowledgements included: well
/// within the database's `idle_in_transaction_session_timeout` (10 s by
/// default), since the batch's transaction waits meanwhile.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

/// How long a stream created by the relay drops duplicate ids (the time a
/// crashed relay has to come back without publishing an event twice).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Where and how the relay publishes (from [`crate::config::EventsConfig`]).
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Logged only redacted: it may carry credentials.
    pub url: SecretUrl,
    pub stream: String,
    pub subject_prefix: String,
}

/// The relay of one replica; see the module documentation.
pub struct Relay {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    log: EventLog,
    metrics: Arc<Metrics>,
    settings: RelaySettings,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        clock: Arc<dyn Clock>,
        log: EventLog,
        metrics: Arc<Metrics>,
        settings: RelaySettings,
    ) -> Self {
        Self {
            pool,
            clock,
            log,
            metrics,
            settings,
        }
    }

    /// Relays until `shutdown`, connecting (again) whenever NATS is away.
    pub async fn run(self, shutdown: CancellationToken) {
        // The relay's cursor exists from its first start, even with NATS away,
        // so that the pruner keeps what it has not published.
        while let Err(error) = self.register().await {
            tracing::debug!(error = %error, "registering the relay failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let outcome = self.connected(&shutdown, &mut failures).await;
            if let Err(error) = outcome {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %error, url = %self.settings.url.redacted(), "relaying events to NATS failed; retrying");
                } else {
                    tracing::debug!(error = %error, "relaying events to NATS failed again");
                }
                // The lag grows while NATS is away: say so.
                self.record_lag().await;
            }
            let pause = Duration::from_millis(200 * u64::from(failures.min(10)));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Connects, makes sure the stream exists, and relays until an error or
    /// `shutdown`. A batch under way is never cancelled halfway (its transaction
    /// would go back to the pool open): shutdown is seen between batches.
    async fn connected(&self, shutdown: &CancellationToken, failures: &mut u32) -> anyhow::Result<()> {
        let connecting = async_nats::ConnectOptions::new()
            .name("loyalty-relay")
            .connection_timeout(Duration::from_secs(5))
            .connect(self.settings.url.expose());
        let client = tokio::select! {
            client = connecting => client?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let mut context = jetstream::new(client);
        context.set_timeout(ACK_TIMEOUT);
        context
            .get_or_create_stream(jetstream::stream::Config {
                name: self.settings.stream.clone(),
                subjects: vec![format!("{}.>", self.settings.subject_prefix)],
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await?;
        tracing::info!(stream = %self.settings.stream, "relaying events to NATS JetStream");
        // A later outage is news again.
        *failures = 0;
        let mut slices = self.log.subscribe();
        while !shutdown.is_cancelled() {
            slices.borrow_and_update();
            while !self.relay_batch(&context).await? && !shutdown.is_cancelled() {}
            self.record_lag().await;
            // The next slice, or a look now and then (another replica's relay
            // may have stopped, leaving this one to take over).
            tokio::select! {
                changed = slices.changed() => changed?,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    async fn register(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        db::events::register_relay(&mut conn, RELAY, self.clock.now()).await
    }

    /// Publishes the next batch, if this replica holds the relay; returns
    /// whether it has caught up (or another replica holds the relay).
    async fn relay_batch(&self, context: &jetstream::Context) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(mut cursor) = db::events::lock_relay(&mut tx, RELAY).await? else {
            return Ok(true);
        };
        let (floor, last) = db::events::bounds(&mut tx).await?;
        if cursor.slice <= floor {
            // Only a relay registered while the pruner raised the floor past
            // where it started: those events were already older than the
            // retention.
            tracing::warn!(%cursor, floor, "the relay's cursor was below the floor: moved up to it");
            cursor = oldest_cursor(floor);
        }
        let Read {
            events: batch,
            next,
            caught_up,
        } = read_on(&mut tx, cursor, last, &Filter::default(), BATCH).await?;
        if next == cursor {
            return Ok(true);
        }
        let count = batch.len();
        // Nothing of the database is in flight while this runs, so the
        // deadline may drop it; the transaction then rolls back.
        let published = tokio::time::timeout(PUBLISH_DEADLINE, async {
            let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(count);
            // Each message after the first names the one before it: should
            // JetStream refuse one, it refuses every later one of the batch
            // too (instead of storing them ahead of it), and the batch is
            // published again in order. The first follows the previous batch,
            // acknowledged whole.
            let mut previous: Option<String> = None;
            for event in batch {
                let id = event.event_id.to_string();
                let (subject, mut headers, body) = self.message(event);
                if let Some(previous) = previous.replace(id) {
                    headers.insert(async_nats::header::NATS_EXPECTED_LAST_MESSAGE_ID, previous);
                }
                acks.push(context.publish_with_headers(subject, headers, body).await?);
            }
            for ack in acks {
                ack.await?;
            }
            Ok::<(), anyhow::Error>(())
        })
        .await;
        match published {
            Ok(result) => result?,
            Err(_) => {
                anyhow::bail!("JetStream did not acknowledge a batch of {count} within {PUBLISH_DEADLINE:?}")
            }
        }
        db::events::advance_relay(&mut tx, RELAY, next, count as i64, self.clock.now()).await?;
        tx.commit().await?;
        self.metrics.events_relayed(count as u64);
        Ok(caught_up)
    }

    /// The subject, headers and body of an event.
    fn message(&self, event: StoredEvent) -> (String, HeaderMap, Bytes) {
        let id = event.event_id.to_string();
        let kind = event.event_type.as_str();
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", id.as_str());
        headers.insert("ce-type", format!("loyalty.v1.{kind}"));
        headers.insert("ce-source", "loyalty");
        headers.insert(
            "ce-time",
            event.occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        headers.insert("ce-subject", event.account_id.as_str());
        headers.insert("content-type", "application/protobuf");
        let subject = format!("{}.{kind}", self.settings.subject_prefix);
        let body = Bytes::from(event_pb(event).encode_to_vec());
        (subject, headers, body)
    }

    /// Publishes how far behind the relay is (0 when up to date).
    async fn record_lag(&self) {
        let behind = async {
            let mut conn = self.pool.acquire().await?;
            db::events::relay_behind_since(&mut conn, RELAY).await
        };
        if let Ok(since) = behind.await {
            let lag = since
                .map(|since| (self.clock.now() - since).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics.set_relay_lag(lag);
        }
    }
}
