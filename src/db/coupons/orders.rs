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
/// same round trip, so that during a rolling deploy the calls of an older
/// server and of this one still take turns. The next release drops it. Both
/// are the function `loyalty_lock_order`
/// (`migrations/20261205000005_checkout_functions.sql`).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn lock_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query("select loyalty_lock_order($1, $2)")
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
/// it leaves) and events; returns the coupons that changed, as of `now`, in id
/// order. One round trip: the function `loyalty_change_coupons`
/// (`migrations/20261205000005_checkout_functions.sql`), which applies the
/// changes in the order given.
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
    let rows: Vec<CouponRow> = sqlx::query_as(statement!(format!(
        "select {} \
         from loyalty_change_coupons($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) m \
         order by m.coupon_id",
        coupon_columns("m.", "$10")
    )))
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
