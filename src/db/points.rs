//! Queries on the points ledger: earning events, cap counters, entries, sums.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::types::Json;
use sqlx::{Arguments, PgConnection};

use crate::domain::events::Origin;
use crate::domain::ids::{AccountId, CategoryId, OrderId, ProductId};
use crate::domain::points::{CapReason, EntryQuery, EventKind, NewEntry, PointEntry, PointsSource};

/// An earning event to insert under its natural key.
#[derive(Debug)]
pub struct NewEvent<'a> {
    pub account_id: &'a AccountId,
    pub kind: EventKind,
    pub natural_key: &'a str,
    pub content: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

/// An earning event already recorded.
#[derive(Debug, sqlx::FromRow)]
pub struct StoredEvent {
    pub earning_event_id: i64,
    #[sqlx(json)]
    pub content: serde_json::Value,
}

/// A guarded cap counter of a member and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Order points asked for on a local day.
    OrderPoints,
    /// Distinct categories bought on a local day.
    Categories,
    /// Visit points asked for in a local month.
    VisitPoints,
    /// Post points asked for in a local month.
    PostPoints,
}

impl Counter {
    fn as_str(self) -> &'static str {
        match self {
            Counter::OrderPoints => "order_points",
            Counter::Categories => "categories",
            Counter::VisitPoints => "visit_points",
            Counter::PostPoints => "post_points",
        }
    }
}

/// What inserting an event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The account is not a member.
    NoMember,
    /// The natural key is taken: the call is a retry (or a conflict).
    Taken,
    /// A new event, and whether the member is flagged as fraudulent.
    New { event_id: i64, flagged: bool },
}

/// The arguments `$1`..`$8` of `loyalty_record_event` (and the first ones of
/// `loyalty_record_order`): the event, the call's clock and its origin.
fn event_arguments(event: &NewEvent<'_>, now: DateTime<Utc>) -> Result<PgArguments, sqlx::Error> {
    let origin = Origin::current();
    let mut arguments = PgArguments::default();
    let add = |result: Result<(), BoxDynError>| result.map_err(sqlx::Error::Encode);
    add(arguments.add(event.account_id))?;
    add(arguments.add(event.kind.as_str()))?;
    add(arguments.add(event.natural_key))?;
    add(arguments.add(Json(&event.content)))?;
    add(arguments.add(event.occurred_at))?;
    add(arguments.add(now))?;
    add(arguments.add(&origin.request_id))?;
    add(arguments.add(&origin.caller))?;
    Ok(arguments)
}

/// Reads the member's fraud flag and inserts the event under its natural key, in
/// one round trip (the function `loyalty_record_event`,
/// `migrations/20261205000004_award_functions.sql`), with the call's origin
/// (the audit of its entries). A concurrent insert of the same key waits here
/// until the first commits (or rolls back).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %event.account_id, kind = %event.kind))]
pub async fn insert_event(
    conn: &mut PgConnection,
    event: &NewEvent<'_>,
    now: DateTime<Utc>,
) -> Result<Inserted, sqlx::Error> {
    let row: Option<(bool, Option<i64>)> = sqlx::query_as_with(
        "select flagged, earning_event_id from loyalty_record_event($1, $2, $3, $4, $5, $6, $7, $8)",
        event_arguments(event, now)?,
    )
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        None => Inserted::NoMember,
        Some((_, None)) => Inserted::Taken,
        Some((flagged, Some(event_id))) => Inserted::New { event_id, flagged },
    })
}

/// Finds an event by its natural key.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, kind = %kind))]
pub async fn find_event(
    conn: &mut PgConnection,
    account_id: &AccountId,
    kind: EventKind,
    natural_key: &str,
) -> Result<Option<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "select earning_event_id, content from earning_event \
         where account_id = $1 and kind = $2 and natural_key = $3",
    )
    .bind(account_id)
    .bind(kind.as_str())
    .bind(natural_key)
    .fetch_optional(conn)
    .await
}

/// Adds `delta` to a counter (creating it at 0) and returns its value before and
/// after. The upsert locks the counter's row until the transaction ends, so
/// concurrent bumps of one counter are serialized and each sees the previous one.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, counter = ?counter))]
pub async fn bump_counter(
    conn: &mut PgConnection,
    account_id: &AccountId,
    counter: Counter,
    period_start: NaiveDate,
    delta: i64,
) -> Result<(i64, i64), sqlx::Error> {
    let after: i64 = sqlx::query_scalar(
        "insert into earning_counter as c (account_id, counter, period_start, demand) \
         values ($1, $2, $3, $4) \
         on conflict (account_id, counter, period_start) \
         do update set demand = c.demand + excluded.demand \
         returning demand",
    )
    .bind(account_id)
    .bind(counter.as_str())
    .bind(period_start)
    .bind(delta)
    .fetch_one(conn)
    .await?;
    Ok((after - delta, after))
}

/// Whether the member confirmed `order_id` with `product_id` in it.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn order_has_product(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    product_id: &ProductId,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from order_product \
                        where account_id = $1 and order_id = $2 and product_id = $3)",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(product_id)
    .fetch_one(conn)
    .await
}

/// A confirmed order's rows besides its event.
pub struct NewOrderRows<'a> {
    pub order_id: &'a OrderId,
    /// Its products (reviews need them).
    pub products: &'a [(ProductId, CategoryId)],
    /// The local day the order counts on.
    pub local_date: NaiveDate,
    /// Its categories, sorted and without repeats.
    pub categories: &'a [&'a CategoryId],
    /// Whether it earns order points (currency and minimum), unless the member is flagged.
    pub eligible: bool,
    /// The order points it asks for.
    pub order_points: i64,
}

/// What an order's rows changed: its day's counters before and after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderRows {
    /// The day's order-points counter, when the order was eligible.
    pub order_points: Option<(i64, i64)>,
    /// The day's category counter, when some of its categories were new that day.
    pub categories: Option<(i64, i64)>,
}

/// Inserts a confirmed order's event as [`insert_event`] does and, when the
/// event is new, the order's rows, in one round trip: its products, the
/// categories bought on the local day (not for a flagged member), its order
/// points on the day's order counter when it is eligible (and the member is
/// not flagged), and the new categories on the day's category counter.
///
/// The writes are the function `loyalty_record_order`
/// (`migrations/20261205000004_award_functions.sql`), which on Citus runs
/// whole on the member's worker. It takes the rows in one order for every
/// order (the event, the order counter, the categories sorted, the category
/// counter, the products), so concurrent orders of a member serialize on the
/// rows and cannot deadlock. The counts come from the rows returned, not from
/// the affected-row count.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %event.account_id, order_id = %order.order_id))]
pub async fn insert_order_event(
    conn: &mut PgConnection,
    event: &NewEvent<'_>,
    now: DateTime<Utc>,
    order: &NewOrderRows<'_>,
) -> Result<(Inserted, OrderRows), sqlx::Error> {
    let (product_ids, category_ids): (Vec<&str>, Vec<&str>) = order
        .products
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .unzip();
    let categories: Vec<&str> = order.categories.iter().map(|c| c.as_str()).collect();
    type Row = (bool, Option<i64>, Option<i64>, i64, Option<i64>);
    let row: Option<Row> = sqlx::query_as_with(
        "select flagged, earning_event_id, order_demand, new_categories, category_demand \
         from loyalty_record_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        event_arguments(event, now)?,
    )
    .bind(order.local_date)
    .bind(&categories)
    .bind(Counter::OrderPoints.as_str())
    .bind(order.order_points)
    .bind(order.eligible)
    .bind(Counter::Categories.as_str())
    .bind(order.order_id)
    .bind(&product_ids)
    .bind(&category_ids)
    .fetch_optional(conn)
    .await?;
    let Some((flagged, event_id, order_after, new_categories, categories_after)) = row else {
        return Ok((Inserted::NoMember, OrderRows::default()));
    };
    let before_after = |after: Option<i64>, delta: i64| after.map(|after| (after - delta, after));
    let rows = OrderRows {
        order_points: before_after(order_after, order.order_points),
        categories: before_after(categories_after, new_categories),
    };
    Ok(match event_id {
        None => (Inserted::Taken, rows),
        Some(event_id) => (Inserted::New { event_id, flagged }, rows),
    })
}

/// A `point_entry` row.
#[derive(sqlx::FromRow)]
struct EntryRow {
    point_entry_id: i64,
    account_id: AccountId,
    source: String,
    reference: String,
    points: i32,
    cap_reason: Option<String>,
    occurred_at: DateTime<Utc>,
    local_date: NaiveDate,
    created_at: DateTime<Utc>,
    reverses_point_entry_id: Option<i64>,
}

const ENTRY_COLUMNS: &str = "point_entry_id, account_id, source, reference, points, cap_reason, \
     occurred_at, local_date, created_at, reverses_point_entry_id";

impl TryFrom<EntryRow> for PointEntry {
    type Error = sqlx::Error;

    fn try_from(row: EntryRow) -> Result<Self, Self::Error> {
        let decode = |what: &str, value: &str| {
            sqlx::Error::Decode(format!("unknown point_entry.{what} {value:?}").into())
        };
        Ok(PointEntry {
            entry_id: row.point_entry_id,
            account_id: row.account_id,
            source: PointsSource::from_db(&row.source).ok_or_else(|| decode("source", &row.source))?,
            reference: row.reference,
            points: row.points,
            cap_reason: row
                .cap_reason
                .map(|r| CapReason::from_db(&r).ok_or_else(|| decode("cap_reason", &r)))
                .transpose()?,
            occurred_at: row.occurred_at,
            local_date: row.local_date,
            recorded_at: row.created_at,
            reverses_entry_id: row.reverses_point_entry_id,
        })
    }
}

fn into_entries(rows: Vec<EntryRow>) -> Result<Vec<PointEntry>, sqlx::Error> {
    let mut entries = rows
        .into_iter()
        .map(PointEntry::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    // `returning` gives no order guarantee; the ledger's order is the entry id.
    entries.sort_by_key(|e| e.entry_id);
    Ok(entries)
}

/// Appends entries of one event, with their `points_awarded` event, in one
/// round trip: the function `loyalty_award_entries`
/// (`migrations/20261205000004_award_functions.sql`), which on Citus runs whole
/// on the member's worker.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, entries = entries.len()))]
pub async fn insert_entries(
    conn: &mut PgConnection,
    account_id: &AccountId,
    event_id: i64,
    entries: &[NewEntry],
    now: DateTime<Utc>,
) -> Result<Vec<PointEntry>, sqlx::Error> {
    let sources: Vec<&str> = entries.iter().map(|e| e.source.as_str()).collect();
    let references: Vec<&str> = entries.iter().map(|e| e.reference.as_str()).collect();
    let points: Vec<i32> = entries.iter().map(|e| e.points).collect();
    let cap_reasons: Vec<Option<&str>> = entries
        .iter()
        .map(|e| e.cap_reason.map(CapReason::as_str))
        .collect();
    let occurred: Vec<DateTime<Utc>> = entries.iter().map(|e| e.occurred_at).collect();
    let dates: Vec<NaiveDate> = entries.iter().map(|e| e.local_date).collect();
    let origin = Origin::current();
    let rows: Vec<EntryRow> = sqlx::query_as(statement!(format!(
        "select {ENTRY_COLUMNS} \
         from loyalty_award_entries($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )))
    .bind(account_id)
    .bind(event_id)
    .bind(&sources)
    .bind(&references)
    .bind(&points)
    .bind(&cap_reasons)
    .bind(&occurred)
    .bind(&dates)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_all(conn)
    .await?;
    into_entries(rows)
}

/// Appends the compensating entries of every positive entry of `order_event_id`,
/// with their `points_reversed` event. Each keeps the local date of the entry
/// it reverses. One round trip: the function `loyalty_reverse_entries`
/// (`migrations/20261205000004_award_functions.sql`).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn insert_reversals(
    conn: &mut PgConnection,
    account_id: &AccountId,
    reversal_event_id: i64,
    order_event_id: i64,
    reversed_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<PointEntry>, sqlx::Error> {
    let origin = Origin::current();
    let rows: Vec<EntryRow> = sqlx::query_as(statement!(format!(
        "select {ENTRY_COLUMNS} from loyalty_reverse_entries($1, $2, $3, $4, $5, $6, $7)"
    )))
    .bind(account_id)
    .bind(reversal_event_id)
    .bind(order_event_id)
    .bind(reversed_at)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_all(conn)
    .await?;
    into_entries(rows)
}

/// The entries an event created, in ledger order.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn entries_of_event(
    conn: &mut PgConnection,
    account_id: &AccountId,
    event_id: i64,
) -> Result<Vec<PointEntry>, sqlx::Error> {
    let rows: Vec<EntryRow> = sqlx::query_as(statement!(format!(
        "select {ENTRY_COLUMNS} from point_entry \
         where account_id = $1 and earning_event_id = $2 order by point_entry_id"
    )))
    .bind(account_id)
    .bind(event_id)
    .fetch_all(conn)
    .await?;
    into_entries(rows)
}

/// A page of entries, newest first, at most `limit`.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %query.account_id))]
pub async fn list_entries(
    conn: &mut PgConnection,
    query: &EntryQuery,
    limit: u32,
) -> Result<Vec<PointEntry>, sqlx::Error> {
    let sources: Vec<&str> = query.sources.iter().map(|s| s.as_str()).collect();
    let rows: Vec<EntryRow> = sqlx::query_as(statement!(format!(
        "select {ENTRY_COLUMNS} from point_entry \
         where account_id = $1 \
           and ($2::bigint is null or point_entry_id < $2) \
           and (cardinality($3::text[]) = 0 or source = any ($3)) \
           and ($4::timestamptz is null or occurred_at >= $4) \
           and ($5::timestamptz is null or occurred_at < $5) \
         order by point_entry_id desc \
         limit $6"
    )))
    .bind(&query.account_id)
    .bind(query.before_entry_id)
    .bind(&sources)
    .bind(query.start_time)
    .bind(query.end_time)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(PointEntry::try_from).collect()
}

/// A member's point sums for a balance.
#[derive(Debug, sqlx::FromRow)]
pub struct BalanceSums {
    pub window_points: i64,
    pub month_points: i64,
    pub lifetime_points: i64,
    pub leaving_points: i64,
}

/// Sums a member's entries by local date; `None` when there is no such member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn balance_sums(
    conn: &mut PgConnection,
    account_id: &AccountId,
    window_start: NaiveDate,
    month_start: NaiveDate,
    leaving_month: NaiveDate,
) -> Result<Option<BalanceSums>, sqlx::Error> {
    sqlx::query_as(
        "select \
           coalesce(sum(e.points) filter (where e.local_date >= $2), 0)::bigint as window_points, \
           coalesce(sum(e.points) filter (where e.local_date >= $3), 0)::bigint as month_points, \
           coalesce(sum(e.points), 0)::bigint as lifetime_points, \
           coalesce(sum(e.points) filter (where e.local_date >= $4 and e.local_date < $2), 0)::bigint \
             as leaving_points \
         from member m left join point_entry e on e.account_id = m.account_id \
         where m.account_id = $1 \
         group by m.account_id",
    )
    .bind(account_id)
    .bind(window_start)
    .bind(month_start)
    .bind(leaving_month)
    .fetch_optional(conn)
    .await
}
