//! Issuance: the member's level, the per-member counter, the template's stock
//! and the coupon.

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

/// How a coupon is being issued.
#[derive(Debug)]
pub struct NewCoupon<'a> {
    pub account_id: &'a AccountId,
    pub template_id: &'a TemplateId,
    pub source: CouponSource,
    pub claim_code_hash: Option<&'a [u8]>,
    pub issuance_id: Option<&'a IssuanceId>,
}

/// Why a template's stock was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockRefusal {
    NotFound,
    Paused,
    Ended,
    OutOfStock,
    DailyStockExhausted,
}

/// Takes one coupon of the template's stock (the day's too, when the template
/// has a daily stock), as the template stands once its stock row is locked:
/// the function `loyalty_take_stock`
/// (`migrations/20261205000006_template_stock.sql`), which Citus runs whole on
/// the template's worker. The row stays locked until the transaction ends, so
/// this runs late, just before the coupon is written. Taken: the instant of
/// the terms it checked, which [`issue_coupon`] must find too. Nothing is
/// taken on a refusal.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn take_stock(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    local_date: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Result<DateTime<Utc>, StockRefusal>, sqlx::Error> {
    let (outcome, terms_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("select outcome, terms_at from loyalty_take_stock($1, $2, $3)")
            .bind(template_id.as_str())
            .bind(local_date)
            .bind(now)
            .fetch_one(conn)
            .await?;
    Ok(Err(match (outcome.as_str(), terms_at) {
        ("taken", Some(terms_at)) => return Ok(Ok(terms_at)),
        ("not_found", _) => StockRefusal::NotFound,
        ("paused", _) => StockRefusal::Paused,
        ("ended", _) => StockRefusal::Ended,
        ("out_of_stock", _) => StockRefusal::OutOfStock,
        ("daily_stock_exhausted", _) => StockRefusal::DailyStockExhausted,
        _ => return Err(decode("stock take", (outcome, terms_at))),
    }))
}

/// Issues the coupon, copying the template's terms, with its transition and
/// event: the function `loyalty_issue_coupon`, which Citus runs whole on the
/// member's worker. Stock must have been taken in the same transaction
/// ([`take_stock`], which gave `terms_at`); terms of another instant fail as a
/// serialization failure, which the call retries (on Citus, a template change
/// not yet committed on the member's worker). `None` when the template does
/// not exist.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %new.account_id, template_id = %new.template_id))]
pub async fn issue_coupon(
    conn: &mut PgConnection,
    new: &NewCoupon<'_>,
    terms_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<Coupon>, sqlx::Error> {
    let origin = Origin::current();
    let row: Option<CouponRow> = sqlx::query_as(statement!(format!(
        "select {} from loyalty_issue_coupon($1, $2, $3, $4, $5, $6, $7, $8, $9) m",
        coupon_columns("m.", "$7")
    )))
    .bind(new.account_id)
    .bind(new.template_id.as_str())
    .bind(terms_at)
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
