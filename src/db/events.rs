//! Queries on the event log: the shape every change uses to write its event,
//! cutting slices, reading them after a cursor, pruning, and relay cursors.
//!
//! A slice holds the events whose transactions committed between two cuts: a
//! cut stamps the committed events that have no slice yet with the new
//! slice's number (`event.slice_id`; see `migrations/*_event_slice_stamps.sql`).
//! Reading slice by slice, in `event_id` order within a slice, follows commit
//! order, which sequence numbers alone do not. A slice is read once it is
//! *settled*: its stamps counted back, so visible on every node
//! ([`settle`]).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::events::{Cursor, EventType, Filter, StoredEvent};

/// The `insert` of events that a change's statement runs as one of its
/// `with` parts: one event per row of `rows` (a part of the same statement),
/// with the given SQL expressions for the account, the type, the instant and
/// the payload (a `jsonb_build_object(...)` of the message's fields). The
/// call's origin ([`Origin::current`]) is bound by the statement at `origin`
/// (two parameters: request id, then caller).
pub fn insert_event_sql(
    rows: &str,
    account: &str,
    event_type: &str,
    occurred_at: &str,
    payload: &str,
    origin: (&str, &str),
) -> String {
    let (request_id, caller) = origin;
    format!(
        "insert into event (account_id, event_type, occurred_at, request_id, caller, payload) \
         select {account}, {event_type}, {occurred_at}, {request_id}, {caller}, {payload} from {rows}"
    )
}

/// The oldest and newest slice a reader may read: the floor (whose events are
/// gone) and the last one settled.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn bounds(conn: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("select (select min(slice_id) from event_slice), settled_through from event_slicer")
        .fetch_one(conn)
        .await
}

/// The most slices one [`settle`] looks at.
pub const SETTLE_SLICES: i64 = 256;

/// Cuts a new slice of at most `limit` events committed since the last cut,
/// unless there are none: stamps them with the new slice's number, lowest ids
/// first (ordered by `slice_id` too, all null, so that the index
/// `(slice_id, event_id)` gives them in order without a sort of the whole
/// backlog). One writer at a time across replicas: the lock on `event_slicer` is
/// taken first, so that the next statement sees the slice the previous writer
/// cut. Readers see the slice once it is [settled](settle). Returns the new
/// slice and its number of events.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn cut_slice(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Option<(i64, i32)>, sqlx::Error> {
    sqlx::query("select 1 from event_slicer for update")
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(
        "with last as ( \
             select slice_id from event_slice order by slice_id desc limit 1 \
         ), stamped as ( \
             update event set slice_id = (select slice_id + 1 from last) \
             where (account_id, event_id) in ( \
                 select account_id, event_id from event where slice_id is null \
                 order by slice_id, event_id limit $2) \
             returning 1 \
         ), counted as ( \
             select count(*)::int as events from stamped \
         ) \
         insert into event_slice (slice_id, closed_at, events, stamped) \
         select last.slice_id + 1, $1, counted.events, counted.events \
         from last, counted \
         where counted.events > 0 \
         returning slice_id, events",
    )
    .bind(now)
    .bind(limit)
    .fetch_optional(conn)
    .await
}

/// Settles the slices cut since the last settled one whose stamps can all be
/// seen, in order, stopping at the first that cannot (on Citus, a worker that
/// has not yet committed its part of the cut: tried again at the next turn),
/// at most [`SETTLE_SLICES`] at a time. One statement. Wakes the listeners
/// (`NOTIFY loyalty_events`) when it moved. Returns the newest settled slice
/// when it moved.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn settle(conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    let moved: Option<(i64,)> = sqlx::query_as(
        "with pending as ( \
             select s.slice_id, s.stamped from event_slice s \
             where s.slice_id > (select settled_through from event_slicer) \
             order by s.slice_id limit $1 \
         ), seen as ( \
             select e.slice_id, count(*) as events from event e \
             where e.slice_id > (select settled_through from event_slicer) \
               and e.slice_id <= (select max(slice_id) from pending) \
             group by e.slice_id \
         ), checked as ( \
             select p.slice_id, p.stamped is null or p.stamped = coalesce(seen.events, 0) as whole \
             from pending p left join seen on seen.slice_id = p.slice_id \
         ), settled as ( \
             select max(slice_id) as slice_id from checked \
             where slice_id < coalesce((select min(slice_id) from checked where not whole), \
                                       9223372036854775807) \
         ), moved as ( \
             update event_slicer set settled_through = settled.slice_id from settled \
             where settled.slice_id is not null and event_slicer.settled_through < settled.slice_id \
             returning event_slicer.settled_through \
         ) \
         select settled_through from moved, pg_notify('loyalty_events', moved.settled_through::text)",
    )
    .bind(SETTLE_SLICES)
    .fetch_optional(conn)
    .await?;
    Ok(moved.map(|(slice,)| slice))
}

#[derive(sqlx::FromRow)]
struct EventRow {
    slice_id: i64,
    event_id: i64,
    event_type: EventType,
    account_id: String,
    occurred_at: DateTime<Utc>,
    request_id: String,
    caller: String,
    payload: sqlx::types::Json<serde_json::Value>,
}

/// At most `limit` events after `after`, from slices up to `last_slice`, that
/// pass `filter`, in log order. Run it in one snapshot with the [`bounds`] it
/// relies on (pruning deletes events of slices below the floor). One range of
/// the index `(slice_id, event_id)` from the cursor on, so a batch costs
/// about its own events even in a large slice; on Citus each shard reads its
/// range and the coordinator merges them.
#[tracing::instrument(level = "debug", skip_all, fields(slice = after.slice))]
pub async fn read(
    conn: &mut PgConnection,
    after: Cursor,
    last_slice: i64,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let types: Vec<EventType> = filter.types.clone();
    let accounts: Vec<&str> = filter.accounts.iter().map(|a| a.as_str()).collect();
    let rows: Vec<EventRow> = sqlx::query_as(
        "select slice_id, event_id, event_type, account_id, occurred_at, request_id, caller, payload \
         from event \
         where (slice_id, event_id) > ($1, $2) and slice_id <= $3 \
           and (cardinality($4::text[]) = 0 or event_type = any($4)) \
           and (cardinality($5::text[]) = 0 or account_id = any($5)) \
         order by slice_id, event_id \
         limit $6",
    )
    .bind(after.slice)
    .bind(after.event)
    .bind(last_slice)
    .bind(&types)
    .bind(&accounts)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| StoredEvent {
            cursor: Cursor {
                slice: row.slice_id,
                event: row.event_id,
            },
            event_id: row.event_id,
            event_type: row.event_type,
            account_id: row.account_id,
            occurred_at: row.occurred_at,
            request_id: row.request_id,
            caller: row.caller,
            payload: row.payload.0,
        })
        .collect())
}

/// Raises the floor to the newest settled slice cut before `cutoff` that every
/// relay has passed (at most `max_step` slices up, so that one statement stays
/// short after a long relay outage), dropping the slices below it; returns the
/// new floor when it moved. Its events go next ([`prune_events`]): the floor
/// moves first, so that a reader that finds its events gone also finds its
/// cursor below the floor. With no slice old enough, nothing moves: `least`
/// ignores a null, so without the `having` the cap alone would be the target
/// and every slice below it would go (the floor included, and with it the
/// slicer's last slice: nothing could be cut again).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn raise_floor(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    max_step: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let raised: Option<(i64,)> = sqlx::query_as(
        "with target as ( \
             select least(max(slice_id), (select min(slice_id) from event_slice) + $2) as slice_id \
             from event_slice \
             where closed_at < $1 \
               and slice_id <= (select settled_through from event_slicer) \
               and slice_id < coalesce((select min(slice_id) from event_relay), 9223372036854775807) \
             having max(slice_id) is not null \
         ), dropped as ( \
             delete from event_slice where slice_id < (select slice_id from target) returning slice_id \
         ) \
         select target.slice_id from target where exists (select 1 from dropped)",
    )
    .bind(cutoff)
    .bind(max_step)
    .fetch_optional(conn)
    .await?;
    Ok(raised.map(|(slice,)| slice))
}

/// The floor: the oldest slice kept, whose events are gone or going.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn floor(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let (floor,): (i64,) = sqlx::query_as("select min(slice_id) from event_slice")
        .fetch_one(conn)
        .await?;
    Ok(floor)
}

/// Deletes at most `limit` events of the slices up to `floor`; returns how
/// many went.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune_events(conn: &mut PgConnection, floor: i64, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "delete from event where (account_id, event_id) in ( \
             select account_id, event_id from event where slice_id <= $1 limit $2)",
    )
    .bind(floor)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Creates the cursor of `relay` at the oldest kept event, unless it exists.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn register_relay(
    conn: &mut PgConnection,
    relay: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into event_relay (relay, slice_id, event_id, updated_at) \
         select $1, min(slice_id) + 1, 0, $2 from event_slice \
         on conflict (relay) do nothing",
    )
    .bind(relay)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the cursor of `relay` ([`register_relay`]) for this transaction;
/// `None` when another replica holds it (or it was deleted: a relay taken out
/// of service).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_relay(conn: &mut PgConnection, relay: &str) -> Result<Option<Cursor>, sqlx::Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("select slice_id, event_id from event_relay where relay = $1 for update skip locked")
            .bind(relay)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(slice, event)| Cursor { slice, event }))
}

/// Moves the cursor of `relay` (locked by [`lock_relay`]) past `published`
/// more events.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn advance_relay(
    conn: &mut PgConnection,
    relay: &str,
    cursor: Cursor,
    published: i64,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update event_relay set slice_id = $2, event_id = $3, \
                published_events = published_events + $4, updated_at = $5 \
         where relay = $1",
    )
    .bind(relay)
    .bind(cursor.slice)
    .bind(cursor.event)
    .bind(published)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// When the oldest slice a relay has not published was cut; `None` when it
/// is up to date (its lag is then zero).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn relay_behind_since(
    conn: &mut PgConnection,
    relay: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let row: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
        "select (select min(s.closed_at) from event_slice s where s.slice_id >= r.slice_id) \
         from event_relay r where r.relay = $1",
    )
    .bind(relay)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(at,)| at))
}
