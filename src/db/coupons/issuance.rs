//! Issuance: the member's level, the per-member and per-day counters, and the
//! one statement that takes stock and issues a coupon.

use super::*;

/// The member's level at `at` (Silver until a first evaluation takes effect).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn level_at(
    conn: &mut PgConnection,
    account_id: &AccountId,
    at: DateTime<Utc>,
) -> Result<Level, sqlx::Error> {
    let level: Option<String> = sqlx::query_scalar(
        "select level from member_level \
         where account_id = $1 and effective_from <= $2 and (effective_to is null or effective_to > $2)",
    )
    .bind(account_id)
    .bind(at)
    .fetch_optional(conn)
    .await?;
    level.map_or(Ok(Level::Silver), |l| {
        Level::from_db(&l).ok_or_else(|| decode("level", l))
    })
}

/// Counts one more coupon of the template for the member, within `limit`;
/// `false` when the member already has `limit`.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn bump_member_template(
    conn: &mut PgConnection,
    account_id: &AccountId,
    template_id: &TemplateId,
    limit: u32,
) -> Result<bool, sqlx::Error> {
    let bumped: Option<i32> = sqlx::query_scalar(
        "insert into member_template as m (account_id, template_id, issued_count) values ($1, $2, 1) \
         on conflict (account_id, template_id) do update set issued_count = m.issued_count + 1 \
         where m.issued_count < $3 \
         returning issued_count",
    )
    .bind(account_id)
    .bind(template_id.as_str())
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_optional(conn)
    .await?;
    Ok(bumped.is_some())
}

/// Counts one more coupon of the template on `local_date`, within `daily_stock`;
/// `false` when the day's stock is gone.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn bump_template_day(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    local_date: NaiveDate,
    daily_stock: i64,
) -> Result<bool, sqlx::Error> {
    // No stock, no row. A `values` list, not `select ... where`: Citus sends
    // the statement to a worker as text, and a parameter in a select list
    // loses its type there ("could not determine data type of parameter $1").
    if daily_stock <= 0 {
        return Ok(false);
    }
    let bumped: Option<i64> = sqlx::query_scalar(
        "insert into coupon_template_day as d (template_id, local_date, issued_count) \
         values ($1, $2, 1) \
         on conflict (template_id, local_date) do update set issued_count = d.issued_count + 1 \
         where d.issued_count < $3 \
         returning issued_count",
    )
    .bind(template_id.as_str())
    .bind(local_date)
    .bind(daily_stock)
    .fetch_optional(conn)
    .await?;
    Ok(bumped.is_some())
}

/// How a coupon is being issued.
#[derive(Debug)]
pub struct NewCoupon<'a> {
    pub account_id: &'a AccountId,
    pub template_id: &'a TemplateId,
    pub source: CouponSource,
    pub claim_code_hash: Option<&'a [u8]>,
    pub issuance_id: Option<&'a IssuanceId>,
}

/// Takes one unit of the template's stock and issues the coupon, copying the
/// template's current terms, in one statement. The template row is the hot lock
/// of a popular template, so this runs last before the commit. `None` when the
/// template is paused, out of stock or past its window.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %new.account_id, template_id = %new.template_id))]
pub async fn issue_coupon(
    conn: &mut PgConnection,
    new: &NewCoupon<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Coupon>, sqlx::Error> {
    let origin = Origin::current();
    let event = events::insert_event_sql(
        "c",
        "account_id",
        "'coupon_issued'",
        "$6",
        "jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, 'source', source, \
             'valid_from', valid_from, 'expires_at', expires_at)",
        ("$7", "$8"),
    );
    let row: Option<CouponRow> = sqlx::query_as(&format!(
        "with t as ( \
             update coupon_template set issued_count = issued_count + 1 \
             where template_id = $2 and not paused \
               and (total_stock is null or issued_count < total_stock) \
               and (valid_until is null or valid_until > $6) \
             returning * \
         ), c as ( \
             insert into coupon (account_id, template_id, status, name, issuer, seller_id, discount_kind, \
                 amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor, \
                 regular_price_only, valid_from, expires_at, source, claim_code_hash, issuance_id, \
                 issued_at, updated_at) \
             select $1, t.template_id, 'valid', t.name, t.issuer, t.seller_id, t.discount_kind, \
                 t.amount_off_minor, t.percent_basis_points, t.max_discount_minor, t.currency, \
                 t.min_purchase_minor, t.regular_price_only, \
                 coalesce(t.valid_from, $6), \
                 coalesce(t.valid_until, $6 + t.valid_days * interval '24 hours'), \
                 $3, $4, $5, $6, $6 \
             from t \
             returning * \
         ), transition as ( \
             insert into coupon_transition (account_id, coupon_id, action, to_status, occurred_at, \
                                            request_id, caller) \
             select account_id, coupon_id, 'issue', 'valid', $6, $7, $8 from c \
         ), event as ({event}) \
         select {} from c",
        coupon_columns("", "$6")
    ))
    .bind(new.account_id)
    .bind(new.template_id.as_str())
    .bind(new.source)
    .bind(new.claim_code_hash)
    .bind(new.issuance_id.map(IssuanceId::as_str))
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    row.map(Coupon::try_from).transpose()
}

/// The coupon a member got from a claim code or an issuance id, if any.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn find_issued(
    conn: &mut PgConnection,
    account_id: &AccountId,
    claim_code_hash: Option<&[u8]>,
    issuance_id: Option<&IssuanceId>,
    now: DateTime<Utc>,
) -> Result<Option<Coupon>, sqlx::Error> {
    let row: Option<CouponRow> = sqlx::query_as(&format!(
        "select {} from coupon where account_id = $1 \
           and (claim_code_hash = $2 or issuance_id = $3)",
        coupon_columns("", "$4")
    ))
    .bind(account_id)
    .bind(claim_code_hash)
    .bind(issuance_id.map(IssuanceId::as_str))
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(Coupon::try_from).transpose()
}
