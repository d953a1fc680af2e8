//! A member's coupons: the reads of checkout and "My coupons", the order lock,
//! and the guarded transitions of reservations, completions, cancellations,
//! refunds and fraud reclaims.

use super::*;

/// Reads some of a member's coupons, in id order.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn coupons_by_ids(
    conn: &mut PgConnection,
    account_id: &AccountId,
    coupon_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(&format!(
        "select {} from coupon where account_id = $1 and coupon_id = any ($2) order by coupon_id",
        coupon_columns("", "$3")
    ))
    .bind(account_id)
    .bind(coupon_ids)
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// A member's coupons usable now (VALID, not expired), for the best choice.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn usable_coupons(
    conn: &mut PgConnection,
    account_id: &AccountId,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(&format!(
        "select {} from coupon \
         where account_id = $1 and status = 'valid' and expires_at > $2 and valid_from <= $2 and currency = $3 \
         order by coupon_id",
        coupon_columns("", "$2")
    ))
    .bind(account_id)
    .bind(now)
    .bind(currency.as_str())
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// Takes the lock of one (member, order) until the transaction ends: the
/// reservation, completion, cancellation and refunds of an order take turns.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn lock_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
        .bind(account_id)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks, in id order, the picked coupons and those the order holds INACTIVE,
/// and returns them; one statement, so two reservations never lock in opposite
/// orders.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn lock_for_reservation(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    coupon_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(&format!(
        "select {} from coupon where account_id = $1 \
           and (coupon_id = any ($2) or (order_id = $3 and status = 'inactive')) \
         order by coupon_id for update",
        coupon_columns("", "$4")
    ))
    .bind(account_id)
    .bind(coupon_ids)
    .bind(order_id)
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// Whether the order holds INACTIVE coupons (reserved, not completed). Call it
/// under the order's lock ([`lock_order`]).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn order_holds_coupons(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from coupon \
                        where account_id = $1 and order_id = $2 and status = 'inactive')",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_one(conn)
    .await
}

/// The order actions already recorded for an order.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn order_actions(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select distinct action from coupon_transition where account_id = $1 and order_id = $2",
    )
    .bind(account_id)
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// VALID -> INACTIVE for `order_id`, with transitions; returns the coupons that
/// moved, in id order.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn reserve(
    conn: &mut PgConnection,
    account_id: &AccountId,
    coupon_ids: &[i64],
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(&format!(
        "with moved as ( \
             update coupon set status = 'inactive', order_id = $3, updated_at = $4 \
             where account_id = $1 and coupon_id = any ($2) and status = 'valid' \
               and valid_from <= $4 and expires_at > $4 \
             returning * \
         ), transition as ( \
             insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, \
                                            order_id, occurred_at) \
             select $1, coupon_id, 'reserve', 'valid', 'inactive', $3, $4 from moved \
         ) \
         select {} from moved order by coupon_id",
        coupon_columns("", "$4")
    ))
    .bind(account_id)
    .bind(coupon_ids)
    .bind(order_id)
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// INACTIVE -> USED for the order's coupons, with transitions.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn complete(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with moved as ( \
             update coupon set status = 'used', updated_at = $3 \
             where account_id = $1 and order_id = $2 and status = 'inactive' \
             returning coupon_id \
         ) \
         insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, \
                                        order_id, occurred_at) \
         select $1, coupon_id, 'complete', 'inactive', 'used', $2, $3 from moved",
    )
    .bind(account_id)
    .bind(order_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A coupon coming back to a flagged member comes back REVOKED: flagging reclaims
/// every coupon the member could use.
const RESTORED_TO_REVOKED: &str =
    "exists (select 1 from member m where m.account_id = $1 and m.fraud_flagged_at is not null)";

/// INACTIVE -> VALID (EXPIRED when past expiry; REVOKED for a flagged member)
/// for the order's coupons.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn cancel(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "with moved as ( \
             update coupon \
             set status = case when {flagged} then 'revoked' \
                               when expires_at <= $3 then 'expired' else 'valid' end, \
                 order_id = null, updated_at = $3 \
             where account_id = $1 and order_id = $2 and status = 'inactive' \
             returning coupon_id, status \
         ) \
         insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, \
                                        order_id, occurred_at) \
         select $1, coupon_id, 'cancel', 'inactive', status, $2, $3 from moved",
        flagged = RESTORED_TO_REVOKED
    ))
    .bind(account_id)
    .bind(order_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund of a completed order: on a full refund, platform coupons go USED ->
/// VALID (EXPIRED when past expiry); every other coupon of the order stays USED
/// and the refund is recorded on it. Recorded once per coupon and kind.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn refund(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    full: bool,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "with restored as ( \
             update coupon \
             set status = case when {flagged} then 'revoked' \
                               when expires_at <= $4 then 'expired' else 'valid' end, \
                 order_id = null, updated_at = $4 \
             where account_id = $1 and order_id = $2 and status = 'used' and issuer = 'platform' and $3 \
             returning coupon_id, status \
         ), kept as ( \
             select coupon_id, status from coupon \
             where account_id = $1 and order_id = $2 and status = 'used' \
               and (issuer = 'seller' or not $3) \
         ) \
         insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, \
                                        order_id, note, occurred_at) \
         select $1, coupon_id, $5, 'used', status, $2, 'a full refund restores a platform coupon', $4 \
         from restored \
         union all \
         select $1, coupon_id, $5, 'used', status, $2, \
                case when $3 then 'a seller coupon stays used' \
                     else 'a partial refund keeps the coupon used' end, $4 \
         from kept \
         on conflict do nothing",
        flagged = RESTORED_TO_REVOKED
    ))
    .bind(account_id)
    .bind(order_id)
    .bind(full)
    .bind(now)
    .bind(if full { "refund_full" } else { "refund_partial" })
    .execute(conn)
    .await?;
    Ok(())
}

/// The coupons an action was recorded on for an order, as they are now.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id, order_id = %order_id))]
pub async fn coupons_of_action(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
    actions: &[&str],
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, sqlx::Error> {
    let rows: Vec<CouponRow> = sqlx::query_as(&format!(
        "select {} from coupon c where c.account_id = $1 and exists ( \
             select 1 from coupon_transition t \
             where t.account_id = c.account_id and t.coupon_id = c.coupon_id \
               and t.order_id = $2 and t.action = any ($3)) \
         order by c.coupon_id",
        coupon_columns("c.", "$4")
    ))
    .bind(account_id)
    .bind(order_id)
    .bind(actions)
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// VALID (not yet expired) -> REVOKED for every coupon of a member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn revoke_valid(
    conn: &mut PgConnection,
    account_id: &AccountId,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let revoked: i64 = sqlx::query_scalar(
        "with moved as ( \
             update coupon set status = 'revoked', updated_at = $2 \
             where account_id = $1 and status = 'valid' and expires_at > $2 \
             returning coupon_id \
         ), transition as ( \
             insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, \
                                            note, occurred_at) \
             select $1, coupon_id, 'revoke', 'valid', 'revoked', 'member flagged as fraudulent', $2 \
             from moved \
         ) \
         select count(*) from moved",
    )
    .bind(account_id)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(revoked).unwrap_or(0))
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
    let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let rows: Vec<CouponRow> = sqlx::query_as(&format!(
        "select * from (select {} from coupon where account_id = $1 \
                          and ($2::bigint is null or coupon_id < $2)) c \
         where cardinality($3::text[]) = 0 or c.status = any ($3) \
         order by c.coupon_id desc limit $4",
        coupon_columns("", "$5")
    ))
    .bind(account_id)
    .bind(before_coupon_id)
    .bind(&statuses)
    .bind(i64::from(limit))
    .bind(now)
    .fetch_all(conn)
    .await?;
    into_coupons(rows)
}

/// A `coupon_transition` row.
#[derive(sqlx::FromRow)]
struct TransitionRow {
    action: String,
    from_status: Option<String>,
    to_status: String,
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
    rows.into_iter()
        .map(|row| {
            let status = |s: &str| CouponStatus::from_db(s).ok_or_else(|| decode("status", s));
            Ok(Transition {
                action: row.action,
                from_status: row.from_status.as_deref().map(status).transpose()?,
                to_status: status(&row.to_status)?,
                order_id: row.order_id,
                note: row.note,
                occurred_at: row.occurred_at,
            })
        })
        .collect()
}
