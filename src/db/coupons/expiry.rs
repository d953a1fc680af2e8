//! Expiry notices: the coupons whose expiry is near or has passed, told once
//! each. The read model stays lazy (a coupon past its expiry reads EXPIRED
//! whatever ran); these statements only mark the notices sent and write their
//! events.

use super::*;
use crate::db::audit;

/// Which notice a statement sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The coupon reads VALID and expires within the notice period.
    ExpiringSoon,
    /// The coupon reads EXPIRED.
    Expired,
}

/// A place in the order a run goes through the due coupons: by expiry, then
/// by the hash of the member's account id (`hashtext`, Citus's hash of its
/// shard key). The hash splits the coupons of one expiry instant, such as
/// every coupon of a template with a fixed validity window: on Citus, a window
/// within one instant is a stretch of one or two shards' index, and the other
/// shards find none of it. Indexes `coupon_expiry_notice_by_hash` and
/// `coupon_expiring_notice_by_hash` hold the coupons in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NoticePlace {
    pub expiry: DateTime<Utc>,
    pub hash: i32,
}

impl NoticePlace {
    /// The first place of an expiry instant (before any hash).
    pub fn at(expiry: DateTime<Utc>) -> Self {
        Self {
            expiry,
            hash: i32::MIN,
        }
    }
}

/// What a batch of notices did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoticeBatch {
    /// The coupons that were due when the batch read them.
    pub picked: i64,
    /// The coupons it marked: those still due once their row was theirs.
    pub sent: i64,
    /// The last place among the coupons picked. Every coupon of the window
    /// due before it was picked (the batch takes them in that order).
    pub last: Option<NoticePlace>,
}

/// The condition of a coupon due for `notice` (alias `k`, `$1` the run's
/// instant, `$2` the end of the notice period), the column its notice marks,
/// and its event type. Each condition holds its index's predicate, so that
/// the read is a range of that index: `coupon_expiry_notice_by_hash` for
/// `coupon_expired`, `coupon_expiring_notice_by_hash` for `coupon_expiring_soon`
/// (which a coupon leaves once told, so that a run does not read the coupons
/// told in earlier runs again).
fn due(notice: Notice) -> (String, &'static str, &'static str) {
    let status = status_as_of("k.", "$1");
    match notice {
        Notice::ExpiringSoon => (
            format!(
                "k.expiring_notice_at is null and k.expired_notice_at is null \
                 and k.status in ('valid', 'inactive') and k.expires_at > $1 and k.expires_at <= $2 \
                 and {status} = 'valid'"
            ),
            "expiring_notice_at",
            "'coupon_expiring_soon'",
        ),
        Notice::Expired => (
            format!(
                "k.expired_notice_at is null and k.status in ('valid', 'inactive', 'expired') \
                 and k.expires_at <= $1 and {status} = 'expired'"
            ),
            "expired_notice_at",
            "'coupon_expired'",
        ),
    }
}

/// The earliest expiry of the coupons due for `notice` at `now` (for
/// `ExpiringSoon`, expiring before `horizon`), where a run's first window
/// starts. On Citus each shard answers with the first entry of its index range.
#[tracing::instrument(level = "debug", skip_all, fields(notice = ?notice))]
pub async fn first_due(
    conn: &mut PgConnection,
    notice: Notice,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (due, _, _) = due(notice);
    sqlx::query_scalar(&format!("select min(k.expires_at) from coupon k where {due}"))
        .bind(now)
        .bind(horizon)
        .fetch_one(conn)
        .await
}

/// Sends `notice` for at most `limit` coupons due for it at `now` (for
/// `ExpiringSoon`, expiring before `horizon`) whose expiry is in `window`
/// (from its start, up to but not including its end, in the order of
/// [`NoticePlace`]): marks each and writes its event, in one statement.
///
/// The window is what keeps a batch's read to its own coupons on Citus, where
/// every shard reads the window's range of its index: with a limit alone, each
/// shard would read up to `limit` coupons for the coordinator to keep
/// `limit` of them all. The limit bounds a window denser than the caller
/// expected; the run's next window then starts at the batch's last place.
///
/// The read takes no row lock (Citus refuses `for update` on rows of many
/// shards); the update checks the due condition again on each row, after
/// any transaction writing it has ended (PostgreSQL re-evaluates an
/// update's condition on the row's newest version). So a coupon redeemed
/// meanwhile, or marked by another run, is not told. Runs take turns on the
/// job's row ([`lock_job`](crate::db::levels::lock_job)), so that two
/// batches never wait on each other's rows. The update takes the coupons in
/// (account, coupon id) order, as a checkout locks a member's coupons
/// (`order by coupon_id for update`), so that the two do not deadlock: the
/// plan is a nested loop over the sorted batch (checked with `EXPLAIN`). A
/// plan that locked in another order could; PostgreSQL would then end one
/// of the two, the checkout being retried by its call and the batch sent by
/// the next run.
#[tracing::instrument(level = "debug", skip_all, fields(notice = ?notice))]
pub async fn send_expiry_notices(
    conn: &mut PgConnection,
    notice: Notice,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
    window: (NoticePlace, NoticePlace),
    limit: i64,
) -> Result<NoticeBatch, sqlx::Error> {
    let (due, mark, event_type) = due(notice);
    let origin = Origin::current();
    let event = events::insert_event_sql(
        "marked",
        "account_id",
        event_type,
        "$1",
        "jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, 'expires_at', expires_at)",
        ("$4", "$5"),
    );
    // One audit row per batch that marked coupons.
    let audit = audit::insert_admin_change_sql(
        "(select count(*) as coupons from marked) as batch where coupons > 0",
        "'job.expiry_notices'",
        "null",
        &format!("jsonb_build_object('notice', {event_type}, 'coupons', coupons)"),
        "$1",
        ("$4", "$5"),
    );
    // The window's ends are row comparisons, which bound the index range on
    // both columns. The update checks the due condition again but not the
    // window (an expiry does not move): with the window, a range of the index
    // could look cheaper than the nested loop over the sorted batch, and lock
    // in expiry order.
    let (picked, sent, last_expiry, last_hash): (i64, i64, Option<DateTime<Utc>>, Option<i32>) =
        sqlx::query_as(&format!(
            "with due as ( \
             select k.account_id, k.coupon_id, k.expires_at, hashtext(k.account_id) as hash \
             from coupon k \
             where {due} and (k.expires_at, hashtext(k.account_id)) >= ($6, $8) \
                 and (k.expires_at, hashtext(k.account_id)) < ($7, $9) \
             order by k.expires_at, hashtext(k.account_id) \
             limit $3 \
         ), last as (select expires_at, hash from due order by expires_at desc, hash desc limit 1), \
         marked as ( \
             update coupon k set {mark} = $1 \
             from (select account_id, coupon_id from due order by account_id, coupon_id) due \
             where k.account_id = due.account_id and k.coupon_id = due.coupon_id and {due} \
             returning k.account_id, k.coupon_id, k.template_id, k.expires_at \
         ), event as ({event}), audit as ({audit}) \
         select (select count(*) from due), (select count(*) from marked), \
                (select expires_at from last), (select hash from last)"
        ))
        .bind(now)
        .bind(horizon)
        .bind(limit)
        .bind(&origin.request_id)
        .bind(&origin.caller)
        .bind(window.0.expiry)
        .bind(window.1.expiry)
        .bind(window.0.hash)
        .bind(window.1.hash)
        .fetch_one(conn)
        .await?;
    Ok(NoticeBatch {
        picked,
        sent,
        last: last_expiry
            .zip(last_hash)
            .map(|(expiry, hash)| NoticePlace { expiry, hash }),
    })
}
