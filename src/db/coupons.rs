//! Queries on templates, claim codes, coupons and their transitions.
//!
//! Every status change is one guarded `update … where status = …` that also
//! writes its transition rows (a data-modifying CTE), and its row count is what
//! the domain reads.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;

use crate::domain::coupons::{Coupon, CouponSource, Template, TemplateSpec, Transition, Validity};
use crate::domain::ids::{AccountId, IssuanceId, OrderId, SellerId, TemplateId};
use crate::domain::levels::Level;
use crate::domain::money::Currency;
use crate::domain::pricing::{CouponStatus, Discount, Issuer};

fn decode(what: &str, value: impl std::fmt::Debug) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {what} {value:?}").into())
}

fn issuer_from(issuer: &str, seller_id: Option<String>) -> Result<Issuer, sqlx::Error> {
    match (issuer, seller_id) {
        ("platform", _) => Ok(Issuer::Platform),
        ("seller", Some(seller)) => Ok(Issuer::Seller(
            SellerId::parse(&seller).map_err(|e| decode("seller_id", e))?,
        )),
        (other, _) => Err(decode("issuer", other)),
    }
}

fn issuer_columns(issuer: &Issuer) -> (&'static str, Option<&str>) {
    match issuer {
        Issuer::Platform => ("platform", None),
        Issuer::Seller(seller) => ("seller", Some(seller.as_str())),
    }
}

fn discount_from(
    kind: &str,
    amount: Option<i64>,
    basis_points: Option<i32>,
    max: Option<i64>,
) -> Result<Discount, sqlx::Error> {
    match (kind, amount, basis_points) {
        ("amount", Some(amount), _) => Ok(Discount::AmountOff(amount)),
        ("percent", _, Some(bp)) => Ok(Discount::PercentOff {
            basis_points: u32::try_from(bp).map_err(|_| decode("percent_basis_points", bp))?,
            max_minor: max,
        }),
        _ => Err(decode("discount_kind", kind)),
    }
}

/// (kind, amount_off, basis_points, max_discount)
fn discount_columns(discount: &Discount) -> (&'static str, Option<i64>, Option<i32>, Option<i64>) {
    match *discount {
        Discount::AmountOff(amount) => ("amount", Some(amount), None, None),
        Discount::PercentOff {
            basis_points,
            max_minor,
        } => ("percent", None, i32::try_from(basis_points).ok(), max_minor),
    }
}

fn currency_from(code: &str) -> Result<Currency, sqlx::Error> {
    Currency::parse(code).map_err(|e| decode("currency", e))
}

/// A `coupon_template` row.
#[derive(sqlx::FromRow)]
struct TemplateRow {
    template_id: String,
    name: String,
    description: String,
    issuer: String,
    seller_id: Option<String>,
    discount_kind: String,
    amount_off_minor: Option<i64>,
    percent_basis_points: Option<i32>,
    max_discount_minor: Option<i64>,
    currency: String,
    min_purchase_minor: i64,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    valid_days: Option<i32>,
    total_stock: Option<i64>,
    daily_stock: Option<i64>,
    per_member_limit: i32,
    allowed_levels: Vec<String>,
    regular_price_only: bool,
    paused: bool,
    issued_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TemplateRow> for Template {
    type Error = sqlx::Error;

    fn try_from(row: TemplateRow) -> Result<Self, Self::Error> {
        let validity = match (row.valid_from, row.valid_until, row.valid_days) {
            (Some(from), Some(until), None) => Validity::Window { from, until },
            (None, None, Some(days)) => {
                Validity::Days(u32::try_from(days).map_err(|_| decode("valid_days", days))?)
            }
            other => return Err(decode("validity", other)),
        };
        Ok(Template {
            spec: TemplateSpec {
                template_id: TemplateId::parse(&row.template_id).map_err(|e| decode("template_id", e))?,
                name: row.name,
                description: row.description,
                issuer: issuer_from(&row.issuer, row.seller_id)?,
                discount: discount_from(
                    &row.discount_kind,
                    row.amount_off_minor,
                    row.percent_basis_points,
                    row.max_discount_minor,
                )?,
                currency: currency_from(&row.currency)?,
                min_purchase: row.min_purchase_minor,
                validity,
                total_stock: row.total_stock,
                daily_stock: row.daily_stock,
                per_member_limit: u32::try_from(row.per_member_limit)
                    .map_err(|_| decode("per_member_limit", row.per_member_limit))?,
                allowed_levels: row
                    .allowed_levels
                    .iter()
                    .map(|l| Level::from_db(l).ok_or_else(|| decode("level", l)))
                    .collect::<Result<_, _>>()?,
                regular_price_only: row.regular_price_only,
            },
            paused: row.paused,
            issued_count: row.issued_count,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const TEMPLATE_COLUMNS: &str = "template_id, name, description, issuer, seller_id, discount_kind, \
     amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor, \
     valid_from, valid_until, valid_days, total_stock, daily_stock, per_member_limit, allowed_levels, \
     regular_price_only, paused, issued_count, created_at, updated_at";

/// Binds a template's terms as $1..$18 in [`TEMPLATE_COLUMNS`] order (up to
/// `regular_price_only`).
macro_rules! bind_spec {
    ($query:expr, $spec:expr) => {{
        let spec: &TemplateSpec = $spec;
        let (issuer, seller_id) = issuer_columns(&spec.issuer);
        let (kind, amount, basis_points, max) = discount_columns(&spec.discount);
        let (valid_from, valid_until, valid_days) = match spec.validity {
            Validity::Window { from, until } => (Some(from), Some(until), None),
            Validity::Days(days) => (None, None, i32::try_from(days).ok()),
        };
        let levels: Vec<&str> = spec.allowed_levels.iter().map(|l| l.as_str()).collect();
        $query
            .bind(spec.template_id.as_str())
            .bind(&spec.name)
            .bind(&spec.description)
            .bind(issuer)
            .bind(seller_id)
            .bind(kind)
            .bind(amount)
            .bind(basis_points)
            .bind(max)
            .bind(spec.currency.as_str())
            .bind(spec.min_purchase)
            .bind(valid_from)
            .bind(valid_until)
            .bind(valid_days)
            .bind(spec.total_stock)
            .bind(spec.daily_stock)
            .bind(i32::try_from(spec.per_member_limit).unwrap_or(i32::MAX))
            .bind(levels)
            .bind(spec.regular_price_only)
    }};
}

/// Inserts a template; `None` when the id is taken.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %spec.template_id))]
pub async fn insert_template(
    conn: &mut PgConnection,
    spec: &TemplateSpec,
    now: DateTime<Utc>,
) -> Result<Option<Template>, sqlx::Error> {
    let query = format!(
        "insert into coupon_template (template_id, name, description, issuer, seller_id, discount_kind, \
             amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor, \
             valid_from, valid_until, valid_days, total_stock, daily_stock, per_member_limit, \
             allowed_levels, regular_price_only, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20) \
         on conflict (template_id) do nothing returning {TEMPLATE_COLUMNS}"
    );
    let row: Option<TemplateRow> = bind_spec!(sqlx::query_as(&query), spec)
        .bind(now)
        .fetch_optional(conn)
        .await?;
    row.map(Template::try_from).transpose()
}

/// Reads a template, locking it when `for_update`.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn get_template(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    for_update: bool,
) -> Result<Option<Template>, sqlx::Error> {
    let lock = if for_update { "for update" } else { "" };
    let row: Option<TemplateRow> = sqlx::query_as(&format!(
        "select {TEMPLATE_COLUMNS} from coupon_template where template_id = $1 {lock}"
    ))
    .bind(template_id.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(Template::try_from).transpose()
}

/// Templates by id after `after`, at most `limit`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_templates(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Template>, sqlx::Error> {
    let rows: Vec<TemplateRow> = sqlx::query_as(&format!(
        "select {TEMPLATE_COLUMNS} from coupon_template \
         where $1::text is null or template_id > $1 order by template_id limit $2"
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Template::try_from).collect()
}

/// Replaces a template's terms.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %spec.template_id))]
pub async fn update_template(
    conn: &mut PgConnection,
    spec: &TemplateSpec,
    now: DateTime<Utc>,
) -> Result<Option<Template>, sqlx::Error> {
    let query = format!(
        "update coupon_template set name = $2, description = $3, issuer = $4, seller_id = $5, \
             discount_kind = $6, amount_off_minor = $7, percent_basis_points = $8, max_discount_minor = $9, \
             currency = $10, min_purchase_minor = $11, valid_from = $12, valid_until = $13, valid_days = $14, \
             total_stock = $15, daily_stock = $16, per_member_limit = $17, allowed_levels = $18, \
             regular_price_only = $19, updated_at = $20 \
         where template_id = $1 returning {TEMPLATE_COLUMNS}"
    );
    let row: Option<TemplateRow> = bind_spec!(sqlx::query_as(&query), spec)
        .bind(now)
        .fetch_optional(conn)
        .await?;
    row.map(Template::try_from).transpose()
}

/// Pauses or resumes a template.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn set_paused(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Option<Template>, sqlx::Error> {
    let row: Option<TemplateRow> = sqlx::query_as(&format!(
        "update coupon_template set paused = $2, updated_at = $3 where template_id = $1 returning {TEMPLATE_COLUMNS}"
    ))
    .bind(template_id.as_str())
    .bind(paused)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(Template::try_from).transpose()
}

/// A claim code.
#[derive(Debug, sqlx::FromRow)]
pub struct CodeRow {
    pub template_id: String,
    pub kind: String,
    pub consumed_by: Option<String>,
}

/// Inserts a public code; `false` when the code exists.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn insert_public_code(
    conn: &mut PgConnection,
    code_hash: &[u8],
    template_id: &TemplateId,
    code: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into claim_code (code_hash, template_id, kind, public_code) values ($1, $2, 'public', $3) \
         on conflict (code_hash) do nothing",
    )
    .bind(code_hash)
    .bind(template_id.as_str())
    .bind(code)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Inserts single-use codes by their hashes; returns how many were inserted.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id, codes = hashes.len()))]
pub async fn insert_single_use_codes(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    hashes: &[Vec<u8>],
) -> Result<u64, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into claim_code (code_hash, template_id, kind) \
         select h, $1, 'single_use' from unnest($2::bytea[]) as t (h) \
         on conflict (code_hash) do nothing",
    )
    .bind(template_id.as_str())
    .bind(hashes)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected())
}

/// Finds a claim code by its hash.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_code(conn: &mut PgConnection, code_hash: &[u8]) -> Result<Option<CodeRow>, sqlx::Error> {
    sqlx::query_as("select template_id, kind, consumed_by from claim_code where code_hash = $1")
        .bind(code_hash)
        .fetch_optional(conn)
        .await
}

/// Consumes a single-use code for `account_id`; `false` when already consumed.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn consume_code(
    conn: &mut PgConnection,
    code_hash: &[u8],
    account_id: &AccountId,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update claim_code set consumed_by = $2, consumed_at = $3 \
         where code_hash = $1 and kind = 'single_use' and consumed_by is null",
    )
    .bind(code_hash)
    .bind(account_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

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
    let bumped: Option<i64> = sqlx::query_scalar(
        "insert into coupon_template_day as d (template_id, local_date, issued_count) \
         select $1, $2, 1 where $3 > 0 \
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

/// A `coupon` row, with its status as of the query's `now`.
#[derive(sqlx::FromRow)]
struct CouponRow {
    coupon_id: i64,
    account_id: AccountId,
    template_id: String,
    status: String,
    order_id: Option<String>,
    name: String,
    issuer: String,
    seller_id: Option<String>,
    discount_kind: String,
    amount_off_minor: Option<i64>,
    percent_basis_points: Option<i32>,
    max_discount_minor: Option<i64>,
    currency: String,
    min_purchase_minor: i64,
    regular_price_only: bool,
    valid_from: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    source: String,
    issued_at: DateTime<Utc>,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = sqlx::Error;

    fn try_from(row: CouponRow) -> Result<Self, Self::Error> {
        Ok(Coupon {
            coupon_id: row.coupon_id,
            account_id: row.account_id,
            template_id: TemplateId::parse(&row.template_id).map_err(|e| decode("template_id", e))?,
            status: CouponStatus::from_db(&row.status).ok_or_else(|| decode("status", &row.status))?,
            order_id: row
                .order_id
                .map(|o| OrderId::parse(&o).map_err(|e| decode("order_id", e)))
                .transpose()?,
            name: row.name,
            issuer: issuer_from(&row.issuer, row.seller_id)?,
            discount: discount_from(
                &row.discount_kind,
                row.amount_off_minor,
                row.percent_basis_points,
                row.max_discount_minor,
            )?,
            currency: currency_from(&row.currency)?,
            min_purchase: row.min_purchase_minor,
            regular_price_only: row.regular_price_only,
            valid_from: row.valid_from,
            expires_at: row.expires_at,
            source: CouponSource::from_db(&row.source).ok_or_else(|| decode("source", &row.source))?,
            issued_at: row.issued_at,
        })
    }
}

/// The coupon columns, with the status as of `$now_param`: a VALID coupon past
/// its expiry reads as EXPIRED.
fn coupon_columns(alias: &str, now_param: &str) -> String {
    format!(
        "{alias}coupon_id, {alias}account_id, {alias}template_id, \
         case when {alias}status = 'valid' and {alias}expires_at <= {now_param} then 'expired' \
              else {alias}status end as status, \
         {alias}order_id, {alias}name, {alias}issuer, {alias}seller_id, {alias}discount_kind, \
         {alias}amount_off_minor, {alias}percent_basis_points, {alias}max_discount_minor, {alias}currency, \
         {alias}min_purchase_minor, {alias}regular_price_only, {alias}valid_from, {alias}expires_at, \
         {alias}source, {alias}issued_at"
    )
}

fn into_coupons(rows: Vec<CouponRow>) -> Result<Vec<Coupon>, sqlx::Error> {
    rows.into_iter().map(Coupon::try_from).collect()
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
             insert into coupon_transition (account_id, coupon_id, action, to_status, occurred_at) \
             select account_id, coupon_id, 'issue', 'valid', $6 from c \
         ) \
         select {} from c",
        coupon_columns("", "$6")
    ))
    .bind(new.account_id)
    .bind(new.template_id.as_str())
    .bind(new.source.as_str())
    .bind(new.claim_code_hash)
    .bind(new.issuance_id.map(IssuanceId::as_str))
    .bind(now)
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
