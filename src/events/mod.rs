//! The event log's background work, run by every replica (SPEC §6):
//!
//! - the **slicer** cuts the events committed since the last slice into a new
//!   slice ([`db::events::cut_slice`]), soon after a call commits (the call
//!   layer [`pokes`](Commits::poke) it) and at least every second (for the
//!   commits of other replicas and of the scheduler), one replica at a time,
//!   then settles it ([`db::events::settle`]): readers see it from then on;
//! - the **listener** hears `NOTIFY loyalty_events` from whichever replica cut
//!   a slice and wakes the watches and the relay of this one, so none of them
//!   polls ([`EventLog::subscribe`]);
//! - the **pruner** drops, in bounded batches, the events older than the
//!   retention that every relay has published;
//! - the [`relay`] (with `--nats-url`) publishes the log to NATS JetStream.

pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgPool};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::db;
use crate::domain::events::{Cursor, Filter, StoredEvent};
use crate::error::Error;
use crate::metrics::Metrics;

/// The channel the slicer notifies on.
pub const CHANNEL: &str = "loyalty_events";

/// The shortest time between two slices of one replica: commits in between go
/// in one slice (fewer slices to store and to read).
const MIN_SLICE_INTERVAL: Duration = Duration::from_millis(20);

/// How often the slicer looks for commits nobody told it about.
const SLICE_TICK: Duration = Duration::from_secs(1);

/// The most events one slice takes: a larger backlog (the slicer stopped
/// while calls went on) is cut in several slices, one right after another.
const CUT_BATCH: i64 = 10_000;

/// The most events one pruning statement deletes.
const PRUNE_BATCH: i64 = 5_000;

/// The most slices one read of the log spans.
const READ_SLICES: i64 = 256;

/// The most slices one pruning run drops (a run a minute keeps up with 50
/// slices a second of each of three replicas).
const PRUNE_SLICES: i64 = 10_000;

/// That a call committed: the call layer pokes it, the slicer waits on it.
/// A poke is one atomic swap when a cut is already due.
#[derive(Debug, Default)]
pub struct Commits {
    due: AtomicBool,
    notify: Notify,
}

impl Commits {
    /// Asks for a slice soon.
    pub fn poke(&self) {
        if !self.due.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// The event log's settings (from [`crate::config::EventsConfig`]).
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// How long events are kept after their slice is cut (once relayed).
    pub retention: Duration,
    /// How often the pruner runs.
    pub prune_interval: Duration,
}

/// The event log of one replica: its tasks and the wake-ups they share.
#[derive(Clone)]
pub struct EventLog {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    commits: Arc<Commits>,
    /// The newest slice known to be cut, by any replica.
    latest: Arc<watch::Sender<i64>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("latest", &*self.latest.borrow())
            .finish()
    }
}

impl EventLog {
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            clock,
            commits: Arc::new(Commits::default()),
            latest: Arc::new(watch::Sender::new(0)),
            metrics,
        }
    }

    /// What the call layer pokes after a call committed.
    pub fn commits(&self) -> Arc<Commits> {
        self.commits.clone()
    }

    /// Changes whenever a newer slice is cut.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    fn saw_slice(&self, slice: i64) {
        self.latest.send_if_modified(|latest| {
            let newer = slice > *latest;
            if newer {
                *latest = slice;
            }
            newer
        });
    }

    /// Runs the slicer, the listener and the pruner until `shutdown`.
    pub async fn run(self, settings: LogSettings, shutdown: CancellationToken) {
        tokio::join!(
            self.clone().slice(shutdown.clone()),
            self.clone().listen(shutdown.clone()),
            self.prune(settings, shutdown),
        );
    }

    async fn slice(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = self.commits.wait() => {}
                () = tokio::time::sleep(SLICE_TICK) => {}
                () = shutdown.cancelled() => {
                    // The commits of the last calls.
                    let _ = self.cut().await;
                    return;
                }
            }
            // Commits arriving meanwhile join this slice.
            tokio::time::sleep(MIN_SLICE_INTERVAL).await;
            self.commits.due.store(false, Ordering::Release);
            match self.cut().await {
                Ok(full) => {
                    failures = 0;
                    if full {
                        // More are waiting: the next turn comes at once.
                        self.commits.poke();
                    }
                }
                Err(error) => {
                    failures += 1;
                    // Retried at the next tick; logged once per outage.
                    if failures == 1 {
                        tracing::warn!(error = %error, "cutting an event slice failed");
                    }
                    // Commits are still due: the next turn tries again.
                    self.commits.due.store(true, Ordering::Release);
                }
            }
        }
    }

    /// Cuts a slice (when events are waiting) and settles what can be;
    /// returns whether the slice was full (more events are waiting).
    async fn cut(&self) -> Result<bool, Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let cut = db::events::cut_slice(&mut tx, self.clock.now(), CUT_BATCH).await?;
        tx.commit().await?;
        if let Some((_, events)) = cut {
            self.metrics.slice_cut(events);
        }
        // On the same connection, once the cut has committed; also the
        // slices a previous turn (of any replica) could not settle.
        if let Some(settled) = db::events::settle(&mut conn).await? {
            self.saw_slice(settled);
        }
        Ok(cut.is_some_and(|(_, events)| i64::from(events) >= CUT_BATCH))
    }

    async fn listen(self, shutdown: CancellationToken) {
        loop {
            let connected = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                listener.listen(CHANNEL).await?;
                // Slices cut while this replica was not listening.
                let (_, last) = db::events::bounds(&mut *self.pool.acquire().await?).await?;
                self.saw_slice(last);
                loop {
                    // `None`: the connection dropped and was opened again, so
                    // notifications may have been missed.
                    match listener.try_recv().await? {
                        Some(notification) => {
                            if let Ok(slice) = notification.payload().parse::<i64>() {
                                self.saw_slice(slice);
                            }
                        }
                        None => {
                            let (_, last) = db::events::bounds(&mut *self.pool.acquire().await?).await?;
                            self.saw_slice(last);
                        }
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                result = connected => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "the event listener lost its connection");
                    }
                }
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn prune(self, settings: LogSettings, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(settings.prune_interval) => {}
                () = shutdown.cancelled() => return,
            }
            match self.prune_once(settings.retention, &shutdown).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(events = pruned, "pruned the event log"),
                Err(error) => tracing::warn!(error = %error, "pruning the event log failed"),
            }
        }
    }

    /// Raises the floor past the slices older than `retention` that every relay
    /// published, then deletes their events in bounded batches.
    pub async fn prune_once(&self, retention: Duration, shutdown: &CancellationToken) -> Result<u64, Error> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = self
            .clock
            .now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut conn = self.pool.acquire().await?;
        db::events::raise_floor(&mut conn, cutoff, PRUNE_SLICES).await?;
        let floor = db::events::floor(&mut conn).await?;
        let mut pruned = 0;
        while !shutdown.is_cancelled() {
            let deleted = db::events::prune_events(&mut conn, floor, PRUNE_BATCH).await?;
            pruned += deleted;
            if deleted < PRUNE_BATCH as u64 {
                break;
            }
        }
        Ok(pruned)
    }
}

/// Where a reader of the log stands, once checked against the log's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this cursor.
    After(Cursor),
    /// At the first event still kept.
    Oldest,
    /// At the next slice to be cut.
    Latest,
}

/// The oldest cursor a reader may resume from, given the floor.
pub fn oldest_cursor(floor: i64) -> Cursor {
    Cursor::start_of(floor + 1)
}

/// The cursor `start` stands for; a cursor below the floor is
/// `FAILED_PRECONDITION` (`CURSOR_EXPIRED`), one past the newest slice is
/// `INVALID_ARGUMENT` (it is from another log).
pub async fn resolve(pool: &PgPool, start: Start) -> Result<Cursor, Error> {
    let mut conn = db::acquire(pool).await?;
    let (floor, last) = db::events::bounds(&mut conn).await?;
    match start {
        Start::Oldest => Ok(oldest_cursor(floor)),
        Start::Latest => Ok(Cursor::start_of(last + 1)),
        Start::After(cursor) => check(cursor, floor, last),
    }
}

fn check(cursor: Cursor, floor: i64, last: i64) -> Result<Cursor, Error> {
    if cursor.slice <= floor {
        let oldest = oldest_cursor(floor);
        return Err(Error::FailedPrecondition {
            reason: "CURSOR_EXPIRED",
            message: format!("cursor {cursor} is older than the events kept; the oldest cursor is {oldest}"),
        }
        .concerning("oldest_cursor", oldest));
    }
    if cursor.slice > last + 1 {
        return Err(Error::invalid("after", "is not a cursor of this event log"));
    }
    Ok(cursor)
}

/// What a read of the log found.
#[derive(Debug)]
pub struct Read {
    /// The events, in log order.
    pub events: Vec<StoredEvent>,
    /// The cursor after them: past the last event read, or, when the read
    /// reached the end of what it looked at, the start of the next slice.
    pub next: Cursor,
    /// Whether the read reached the newest slice: nothing more to read until
    /// another slice is cut.
    pub caught_up: bool,
}

/// The events after `after` that pass `filter` (at most `limit`, from at most
/// a few hundred slices). Pruning cannot take events from under it unnoticed:
/// the floor moves before the events go, and it is read again once the events
/// are read. (One snapshot would do on PostgreSQL; on Citus each node's part
/// of a read has its own.)
pub async fn read(pool: &PgPool, after: Cursor, filter: &Filter, limit: i64) -> Result<Read, Error> {
    let mut tx = pool.begin().await?;
    db::read_only_snapshot(&mut tx).await?;
    let (floor, last) = db::events::bounds(&mut tx).await?;
    let after = check(after, floor, last)?;
    let read = read_on(&mut tx, after, last, filter, limit).await?;
    tx.commit().await?;
    let floor = db::events::floor(&mut *db::acquire(pool).await?).await?;
    check(after, floor, last)?;
    Ok(read)
}

/// The events after `after` (a cursor at or above the floor) that pass
/// `filter`, at most `limit` from at most [`READ_SLICES`] slices, on `conn`;
/// `last` is the newest slice. The one reading of the log, for the watches
/// and the relay.
pub async fn read_on(
    conn: &mut sqlx::PgConnection,
    after: Cursor,
    last: i64,
    filter: &Filter,
    limit: i64,
) -> Result<Read, sqlx::Error> {
    let until = last.min(after.slice.saturating_add(READ_SLICES - 1));
    let events = db::events::read(conn, after, until, filter, limit).await?;
    Ok(page(events, after, until, last, limit))
}

/// The [`Read`] of `events`, read after `after` from the slices up to `until`
/// (`last` being the newest).
fn page(events: Vec<StoredEvent>, after: Cursor, until: i64, last: i64, limit: i64) -> Read {
    let full = events.len() as i64 >= limit;
    let next = match events.last() {
        Some(event) if full => event.cursor,
        _ => Cursor::start_of(until + 1).max(after),
    };
    Read {
        events,
        next,
        caught_up: !full && until >= last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_below_the_floor_has_expired_and_names_the_oldest() {
        let error = check(Cursor { slice: 5, event: 9 }, 5, 10).unwrap_err();
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("6.0"), "{}", status.message());
        assert_eq!(check(Cursor::start_of(6), 5, 10).unwrap(), Cursor::start_of(6));
        assert_eq!(check(Cursor::start_of(11), 5, 10).unwrap(), Cursor::start_of(11));
        assert!(check(Cursor::start_of(12), 5, 10).is_err());
    }
}
