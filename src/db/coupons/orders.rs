//! A member's coupons: the reads of checkout and "My coupons", the locks of
//! an order and of coupons, and the one guarded statement every status change
//! goes through ([`change`]); what each change does is the domain's decision.

use super::*;

/// Reads some of a member's coupons, in id order.
///
/// The ids' range is bound beside the ids themselves: PostgreSQL prices a
/// generic plan for `= any ($2)` as if the array had ten ids and a member's
/// whole index range were read, so without the range it planned this statement
/// anew on every call (about a third of `ValidateCoupons`' database time). With
/// it, the generic plan is a range scan of the member's ids and is kept.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn coupons_by_ids(
    conn: &mut PgConnection,
    account_id: &AccountId,
    coupon_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let (Some(&lowest), Some(&highest)) = (coupon_ids.iter().min(), coupon_ids.iter().max()) else {
        return Ok(Vec::new());
    };
    let rows: Vec<CouponRow> = sqlx::query_as(statement!(format!(
        "select {} from coupon \
         where account_id = $1 and coupon_id between $4 and $5 and coupon_id = any ($2) \
         order by coupon_id",
        coupon_columns("", "$3")
    )))
    .bind(account_id)
    .bind(coupon_ids)
    .bind(now)
    .bind(lowest)
    .bind(highest)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// A member's coupons usable now (reading VALID, not yet expired), for the
/// best choice.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn usable_coupons(
    conn: &mut PgConnection,
    account_id: &AccountId,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(statement!(format!(
        "select {} from coupon \
         where account_id = $1 and status in ('valid', 'inactive') and {} = 'valid' \
           and valid_from <= $2 and currency = $3 \
         order by coupon_id",
        coupon_columns("", "$2"),
        status_as_of("", "$2"),
    )))
    .bind(account_id)
    .bind(now)
    .bind(currency.as_str())
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// Locks, in id order, the member's coupons with these ids, and those still
/// recorded on `order_id` (held, even if the hold lapsed), and returns them as
/// of `now`. One statement, so two calls never lock in opposite orders.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn lock_coupons(
    conn: &mut PgConnection,
    account_id: &AccountId,
    coupon_ids: &[i64],
    order_id: Option<&OrderId>,
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(statement!(format!(
        "select {} from coupon where account_id = $1 \
           and (coupon_id = any ($2) or (order_id = $3 and status = 'inactive')) \
         order by coupon_id for update",
        coupon_columns("", "$4")
    )))
    .bind(account_id)
    .bind(coupon_ids)
    .bind(order_id)
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// Locks, in id order, the member's coupons reading VALID at `now` (not yet
/// expired; lapsed holds included) and returns them.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn lock_valid(
    conn: &mut PgConnection,
    account_id: &AccountId,
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(statement!(format!(
        "select {} from coupon \
         where account_id = $1 and status in ('valid', 'inactive') and {} = 'valid' \
         order by coupon_id for update",
        coupon_columns("", "$2"),
        status_as_of("", "$2"),
    )))
    .bind(account_id)
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// Takes the lock of one (member, order) until the transaction ends: the
/// reservation, completion, cancellation and refunds of an order take turns.
/// The lock is the order's `order_lock` row: inserted by the first call, and
/// only locked, not rewritten, by the later ones (`do update … where false`
/// locks the row it conflicts with). A call of a new order that races another
/// waits on the row the other inserted.
///
/// The advisory lock that earlier releases took instead is taken first, in the
/// same statement, so that during a rolling deploy the calls of an older
/// server and of this one still take turns. The next release drops it.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn lock_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with advisory as (select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))) \
         insert into order_lock (account_id, order_id) select $1, $2 from advisory \
         on conflict (account_id, order_id) do update set order_id = excluded.order_id where false",
    )
    .bind(account_id)
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// One guarded change of a coupon's stored state, decided by the domain.
#[derive(Debug, Clone)]
pub struct Change {
    pub coupon_id: i64,
    /// The stored status and order the change expects (its guard).
    pub from: (CouponStatus, Option<OrderId>),
    /// The stored status and order it sets.
    pub to: (CouponStatus, Option<OrderId>),
    /// The hold's end, for an INACTIVE coupon.
    pub hold_until: Option<DateTime<Utc>>,
    /// What the coupon's history records; `None` records nothing (a hold
    /// renewed by its own order).
    pub action: Option<Action>,
    pub note: String,
}

/// Applies the changes, each guarded by the stored state it expects, and
/// records their transitions (for the order the coupon goes to, else the one
/// it leaves); returns the coupons that changed, as of `now`, in id order. One
/// statement.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, changes = changes.len()))]
pub async fn change(
    conn: &mut PgConnection,
    account_id: &AccountId,
    changes: &[Change],
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = changes.iter().map(|c| c.coupon_id).collect();
    let from: Vec<CouponStatus> = changes.iter().map(|c| c.from.0).collect();
    let from_order: Vec<Option<&OrderId>> = changes.iter().map(|c| c.from.1.as_ref()).collect();
    let to: Vec<CouponStatus> = changes.iter().map(|c| c.to.0).collect();
    let to_order: Vec<Option<&OrderId>> = changes.iter().map(|c| c.to.1.as_ref()).collect();
    let hold: Vec<Option<DateTime<Utc>>> = changes.iter().map(|c| c.hold_until).collect();
    let action: Vec<Option<Action>> = changes.iter().map(|c| c.action).collect();
    let note: Vec<&str> = changes.iter().map(|c| c.note.as_str()).collect();
    let event: Vec<Option<EventType>> = changes
        .iter()
        .map(|c| {
            c.action
                .and_then(|action| EventType::of_transition(action, c.from.0, c.to.0))
        })
        .collect();
    let origin = Origin::current();
    let rows: Vec<CouponRow> = sqlx::query_as(statement!({
        let events = events::insert_event_sql(
        "moved where change_event is not null",
        "account_id",
        "change_event",
        "$10",
        "jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, \
             'from_status', change_from, 'to_status', status, 'order_id', change_order, \
             'hold_until', hold_until, 'action', change_action)",
        ("$12", "$13"),
    );
        format!(
        "with change as ( \
             select * from unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::timestamptz[], $8::text[], $9::text[], $11::text[]) \
                 as c (coupon_id, from_status, from_order, to_status, to_order, hold_until, action, note, \
                       event_type) \
         ), moved as ( \
             update coupon k \
             set status = c.to_status, order_id = c.to_order, hold_until = c.hold_until, updated_at = $10 \
             from change c \
             where k.account_id = $1 and k.coupon_id = c.coupon_id and k.status = c.from_status \
               and k.order_id is not distinct from c.from_order \
             returning k.*, c.from_status as change_from, coalesce(c.to_order, c.from_order) as change_order, \
                       c.action as change_action, c.note as change_note, c.event_type as change_event \
         ), recorded as ( \
             insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, \
                                            order_id, note, occurred_at, request_id, caller) \
             select $1, coupon_id, change_action, change_from, status, change_order, change_note, $10, \
                    $12, $13 \
             from moved where change_action is not null \
         ), events as ({events}) \
         select {} from moved m order by m.coupon_id",
        coupon_columns("m.", "$10")
    )
    }))
    .bind(account_id)
    .bind(&ids)
    .bind(&from)
    .bind(&from_order)
    .bind(&to)
    .bind(&to_order)
    .bind(&hold)
    .bind(&action)
    .bind(&note)
    .bind(now)
    .bind(&event)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// A page of a member's coupons, newest first, optionally by status as of `now`.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn list_coupons(
    conn: &mut PgConnection,
    account_id: &AccountId,
    statuses: &[CouponStatus],
    before_coupon_id: Option<i64>,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(statement!(format!(
        "select * from (select {} from coupon where account_id = $1 \
                          and ($2::bigint is null or coupon_id < $2)) c \
         where cardinality($3::text[]) = 0 or c.status = any ($3) \
         order by c.coupon_id desc limit $4",
        coupon_columns("", "$5")
    )))
    .bind(account_id)
    .bind(before_coupon_id)
    .bind(statuses)
    .bind(i64::from(limit))
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// A `coupon_transition` row.
#[derive(sqlx::FromRow)]
struct TransitionRow {
    action: Action,
    from_status: Option<CouponStatus>,
    to_status: CouponStatus,
    order_id: Option<String>,
    note: String,
    occurred_at: DateTime<Utc>,
}

/// A coupon's transitions, oldest first.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn transitions(
    conn: &mut PgConnection,
    account_id: &AccountId,
    coupon_id: i64,
) -> Result<Vec<Transition>, sqlx::Error> {
    let rows: Vec<TransitionRow> = sqlx::query_as(
        "select action, from_status, to_status, order_id, note, occurred_at from coupon_transition \
         where account_id = $1 and coupon_id = $2 order by coupon_transition_id",
    )
    .bind(account_id)
    .bind(coupon_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Transition {
            action: row.action,
            from_status: row.from_status,
            to_status: row.to_status,
            order_id: row.order_id,
            note: row.note,
            occurred_at: row.occurred_at,
        })
        .collect())
}
