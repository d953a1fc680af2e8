//! The audit trail (see `migrations/*_audit.sql`): the shapes the changing
//! statements use to record who made them, and the listing of a template's, a
//! member's or an order's audit.
//!
//! Like an event, an audit row is written by the statement that makes the
//! change, as one of its `with` parts, so a statement that changes nothing
//! (a replay, a refused guard) records nothing. The call's origin
//! ([`crate::domain::events::Origin::current`]) is bound by the statement.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::domain::audit::{AuditCursor, AuditEntry, AuditSubject};

/// The `insert` of a `member_change` per row of `rows` (a part of the same
/// statement), with SQL expressions for the account, the action, the detail
/// (a `jsonb`), the instant and the origin (request id, then caller).
pub fn insert_member_change_sql(
    rows: &str,
    account: &str,
    action: &str,
    detail: &str,
    occurred_at: &str,
    origin: (&str, &str),
) -> String {
    let (request_id, caller) = origin;
    format!(
        "insert into member_change (account_id, action, detail, occurred_at, request_id, caller) \
         select {account}, {action}, {detail}, {occurred_at}, {request_id}, {caller} from {rows}"
    )
}

/// The `insert` of an `order_change` per row of `rows` (which has the
/// columns `account_id` and `order_id`), as [`insert_member_change_sql`].
pub fn insert_order_change_sql(
    rows: &str,
    action: &str,
    detail: &str,
    occurred_at: &str,
    origin: (&str, &str),
) -> String {
    let (request_id, caller) = origin;
    format!(
        "insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller) \
         select account_id, order_id, {action}, {detail}, {occurred_at}, {request_id}, {caller} from {rows}"
    )
}

/// The `insert` of an `admin_change` per row of `rows`, as
/// [`insert_member_change_sql`], with the template concerned (SQL `null` for
/// none) instead of the account.
pub fn insert_admin_change_sql(
    rows: &str,
    action: &str,
    template: &str,
    detail: &str,
    occurred_at: &str,
    origin: (&str, &str),
) -> String {
    let (request_id, caller) = origin;
    format!(
        "insert into admin_change (action, template_id, detail, occurred_at, request_id, caller) \
         select {action}, {template}, {detail}, {occurred_at}, {request_id}, {caller} from {rows}"
    )
}

/// One row of the listing: an audit entry and its place in the order.
#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    occurred_at: DateTime<Utc>,
    /// Which table, for the order among equal instants: 1 admin, 2 member,
    /// 3 ledger, 4 coupon, 5 checkout order.
    source: i16,
    id: i64,
    action: String,
    caller: Option<String>,
    request_id: Option<String>,
    account_id: Option<String>,
    template_id: Option<String>,
    order_id: Option<String>,
    coupon_id: Option<i64>,
    detail: Json<Value>,
}

/// Keeps a source's rows after the cursor (`$3`, `$4`, `$5`: instant,
/// source, id; `$3` null for the first page) and at most a page of them
/// (`$6`), newest first: each source is cut to a page before the sources are
/// merged, so a page never sorts more than a page per source past the
/// subject's own rows.
fn page_of(source: i16, select: &str, instant: &str, id: &str) -> String {
    format!(
        "({select} and ($3::timestamptz is null or ({instant}, {source}::int2, {id}) < ($3, $4, $5)) \
          order by {instant} desc, {id} desc limit $6)"
    )
}

/// The sources of a member's audit, each filtered by `$1` (the account) and,
/// when `$2` is not null, by the order. Entries of the ledger name the points
/// the call moved (summed after the merge, for the page's entries only); those
/// of coupons the transition; those of checkout orders the reservation or the
/// refund.
fn member_sources() -> String {
    [
        page_of(
            2,
            "select c.occurred_at, 2::int2 as source, c.member_change_id as id, 'member.' || c.action as action, \
                    c.caller, c.request_id, c.account_id, null::text as template_id, null::text as order_id, \
                    null::int8 as coupon_id, c.detail \
             from member_change c where c.account_id = $1 and $2::text is null",
            "c.occurred_at",
            "c.member_change_id",
        ),
        page_of(
            3,
            "select e.created_at, 3::int2, e.earning_event_id, 'points.' || e.kind, e.caller, e.request_id, \
                    e.account_id, null, \
                    case when e.kind in ('order', 'order_reversal') then e.natural_key \
                         when e.kind = 'review' then split_part(e.natural_key, '/', 1) end, \
                    null, jsonb_build_object('key', e.natural_key) \
             from earning_event e where e.account_id = $1 \
               and ($2::text is null or (e.kind in ('order', 'order_reversal') and e.natural_key = $2) \
                    or (e.kind = 'review' and left(e.natural_key, length($2) + 1) = $2 || '/'))",
            "e.created_at",
            "e.earning_event_id",
        ),
        page_of(
            4,
            "select t.occurred_at, 4::int2, t.coupon_transition_id, 'coupon.' || t.action, t.caller, \
                    t.request_id, t.account_id, c.template_id, t.order_id, t.coupon_id, \
                    jsonb_strip_nulls(jsonb_build_object('from', t.from_status, 'to', t.to_status, \
                                                         'note', nullif(t.note, ''))) \
             from coupon_transition t join coupon c on c.account_id = t.account_id and c.coupon_id = t.coupon_id \
             where t.account_id = $1 and ($2::text is null or t.order_id = $2)",
            "t.occurred_at",
            "t.coupon_transition_id",
        ),
        page_of(
            5,
            "select o.occurred_at, 5::int2, o.order_change_id, 'order.' || o.action, o.caller, o.request_id, \
                    o.account_id, null, o.order_id, null, o.detail \
             from order_change o where o.account_id = $1 and ($2::text is null or o.order_id = $2)",
            "o.occurred_at",
            "o.order_change_id",
        ),
    ]
    .join(" union all ")
}

/// The admin changes, of the template `$1` unless it is null (`$2` is unused).
fn admin_sources() -> String {
    page_of(
        1,
        "select a.occurred_at, 1::int2 as source, a.admin_change_id as id, a.action, a.caller, a.request_id, \
                null::text as account_id, a.template_id, null::text as order_id, null::int8 as coupon_id, \
                a.detail \
         from admin_change a where ($1::text is null or a.template_id = $1) and $2::text is null",
        "a.occurred_at",
        "a.admin_change_id",
    )
}

/// The page of the merged sources, with the points of the ledger's entries
/// (summed for the page's entries only, and without a correlated subquery,
/// which Citus refuses beside a subquery in the same `from`).
fn listing(sources: &str) -> String {
    format!(
        "with page as ( \
             select * from ({sources}) a \
             order by a.occurred_at desc, a.source desc, a.id desc limit $6 \
         ), points as ( \
             select p.earning_event_id, sum(p.points) as points from point_entry p \
             where p.account_id = $1 and p.earning_event_id in (select id from page where source = 3) \
             group by p.earning_event_id \
         ) \
         select a.occurred_at, a.source, a.id, a.action, a.caller, a.request_id, a.account_id, a.template_id, \
                a.order_id, a.coupon_id, \
                case when a.source = 3 then a.detail || jsonb_build_object('points', coalesce(s.points, 0)) \
                     else a.detail end as detail \
         from page a left join points s on a.source = 3 and s.earning_event_id = a.id \
         order by a.occurred_at desc, a.source desc, a.id desc"
    )
}

/// The audit of `subject`, newest first, after `after` (the last entry of the
/// previous page), at most `limit` entries.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    conn: &mut PgConnection,
    subject: &AuditSubject,
    after: Option<&AuditCursor>,
    limit: u32,
) -> Result<Vec<(AuditEntry, AuditCursor)>, sqlx::Error> {
    let (sql, key, order): (&str, Option<&str>, Option<&str>) = match subject {
        AuditSubject::Template(template_id) => (
            statement!(listing(&admin_sources())),
            Some(template_id.as_str()),
            None,
        ),
        AuditSubject::Admin => (statement!(listing(&admin_sources())), None, None),
        AuditSubject::Member(account_id) => (
            statement!(listing(&member_sources())),
            Some(account_id.as_str()),
            None,
        ),
        AuditSubject::Order(account_id, order_id) => (
            statement!(listing(&member_sources())),
            Some(account_id.as_str()),
            Some(order_id.as_str()),
        ),
    };
    let rows: Vec<AuditRow> = sqlx::query_as(sql)
        .bind(key)
        .bind(order)
        .bind(after.map(|c| c.occurred_at))
        .bind(after.map_or(0, |c| c.source))
        .bind(after.map_or(0, |c| c.id))
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let cursor = AuditCursor {
                occurred_at: row.occurred_at,
                source: row.source,
                id: row.id,
            };
            let entry = AuditEntry {
                occurred_at: row.occurred_at,
                action: row.action,
                caller: row.caller.unwrap_or_default(),
                request_id: row.request_id.unwrap_or_default(),
                account_id: row.account_id,
                template_id: row.template_id,
                order_id: row.order_id,
                coupon_id: row.coupon_id,
                detail: row.detail.0,
            };
            (entry, cursor)
        })
        .collect())
}
