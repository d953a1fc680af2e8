//! Queries on the event log: the shape every change uses to write its event,
//! cutting slices, reading them after a cursor, pruning, and relay cursors.
//!
//! A slice holds the events whose transactions became visible between two
//! snapshots (see `migrations/*_events.sql`): an event is in slice `k` when its
//! transaction is visible in slice `k`'s snapshot and not in slice `k - 1`'s.
//! Reading slice by slice, in `event_id` order within a slice, follows commit
//! order, which sequence numbers alone do not.

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

/// The oldest and newest slice: the floor (whose events are gone) and the
/// last one cut.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn bounds(conn: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("select min(slice_id), max(slice_id) from event_slice")
        .fetch_one(conn)
        .await
}

/// Cuts a new slice of the events that became visible since the last one,
/// unless there are none, and wakes the listeners (`NOTIFY loyalty_events`)
/// when it does. One writer at a time across replicas: the lock on
/// `event_slicer` is taken first, so that the snapshot (the next statement's)
/// sees the slice the previous writer cut. Returns the new slice and its
/// number of events.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn cut_slice(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Option<(i64, i32)>, sqlx::Error> {
    sqlx::query("select 1 from event_slicer for update")
        .execute(&mut *conn)
        .await?;
    // Not visible in the last snapshot but visible now: started at or after
    // its `xmax`, or running then (in its `xip`). Written so, each event is
    // looked at by one cut only, however long another transaction stays open
    // (a test on `xmin` would scan everything written since the oldest one).
    sqlx::query_as(
        "with last as ( \
             select slice_id, snapshot from event_slice order by slice_id desc limit 1 \
         ), cur as ( \
             select pg_current_snapshot() as snapshot \
         ), fresh as ( \
             select e.txid from event e, last, cur \
             where e.txid >= pg_snapshot_xmax(last.snapshot) and e.txid < pg_snapshot_xmax(cur.snapshot) \
               and pg_visible_in_snapshot(e.txid, cur.snapshot) \
             union all \
             select e.txid from event e, last, cur \
             where e.txid = any (array( \
                 select x from pg_snapshot_xip(last.snapshot) x \
                 where pg_visible_in_snapshot(x, cur.snapshot))) \
         ), counted as ( \
             select count(*)::int as events, array_agg(distinct txid) as txids from fresh \
         ), cut as ( \
             insert into event_slice (slice_id, snapshot, txids, closed_at, events) \
             select last.slice_id + 1, cur.snapshot, counted.txids, $1, counted.events \
             from last, cur, counted \
             where counted.events > 0 \
             returning slice_id, events \
         ) \
         select slice_id, events from cut, pg_notify('loyalty_events', cut.slice_id::text)",
    )
    .bind(now)
    .fetch_optional(conn)
    .await
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
/// relies on (pruning deletes events of slices below the floor). A slice is
/// read through its writers (`txids`), each one's events in id order from the
/// cursor on, so a batch costs about its own events even in a slice of a
/// million (the monthly evaluation writes every `level_changed` in one).
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
        "select s.slice_id, e.event_id, e.event_type, e.account_id, e.occurred_at, e.request_id, \
                e.caller, e.payload \
         from event_slice s \
         cross join lateral ( \
             select e.* from unnest(s.txids) t (txid) \
             cross join lateral ( \
                 select * from event e \
                 where e.txid = t.txid \
                   and e.event_id > case when s.slice_id > $1 then 0 else $2 end \
                   and (cardinality($4::text[]) = 0 or e.event_type = any($4)) \
                   and (cardinality($5::text[]) = 0 or e.account_id = any($5)) \
                 order by e.event_id \
                 limit $6 \
             ) e \
             order by e.event_id \
             limit $6 \
         ) e \
         where s.slice_id >= $1 and s.slice_id <= $3 \
         order by s.slice_id, e.event_id \
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

/// Raises the floor to the newest slice cut before `cutoff` that every relay
/// has passed (at most `max_step` slices up, so that one statement stays
/// short after a long relay outage), dropping the slices below it; returns the new floor's slice and
/// snapshot (as text) when it moved. Its events go next ([`prune_events`]):
/// the floor moves first, so that a reader that finds its events gone also
/// finds its cursor below the floor.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn raise_floor(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    max_step: i64,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as(
        "with target as ( \
             select least(max(slice_id), (select min(slice_id) from event_slice) + $2) as slice_id \
             from event_slice \
             where closed_at < $1 \
               and slice_id < coalesce((select min(slice_id) from event_relay), 9223372036854775807) \
         ), dropped as ( \
             delete from event_slice where slice_id < (select slice_id from target) returning slice_id \
         ) \
         select s.slice_id, s.snapshot::text from event_slice s, target \
         where s.slice_id = target.slice_id and exists (select 1 from dropped)",
    )
    .bind(cutoff)
    .bind(max_step)
    .fetch_optional(conn)
    .await
}

/// The floor: its slice and snapshot (as text).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn floor(conn: &mut PgConnection) -> Result<(i64, String), sqlx::Error> {
    sqlx::query_as("select slice_id, snapshot::text from event_slice order by slice_id limit 1")
        .fetch_one(conn)
        .await
}

/// Deletes at most `limit` events of the slices up to the floor (visible in
/// its `snapshot`); returns how many went.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune_events(conn: &mut PgConnection, snapshot: &str, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "delete from event where ctid = any (array( \
             select ctid from event \
             where txid < pg_snapshot_xmax($1::pg_snapshot) and pg_visible_in_snapshot(txid, $1::pg_snapshot) \
             limit $2))",
    )
    .bind(snapshot)
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
