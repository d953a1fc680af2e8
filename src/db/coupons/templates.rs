//! Templates, claim codes and batches of single-use codes.

use super::*;
use crate::db::audit;
use crate::domain::coupons::CodeKind;
use crate::domain::ids::BatchRequestId;

/// A `coupon_template` row, with its `template_stock` row's issued count.
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

/// A template's terms as the audit records them (`t`: the row as changed).
const TEMPLATE_DETAIL: &str = "to_jsonb(t) - 'created_at' - 'updated_at'";

/// The templates with their issued counts, for [`TEMPLATE_COLUMNS`].
const TEMPLATES: &str = "coupon_template join template_stock using (template_id)";

/// The audit of a template change, one per row of `t`, at `$at` by the call's
/// origin (`$request_id`, `$caller`).
fn template_audit(action: &str, detail: &str, at: &str, origin: (&str, &str)) -> String {
    audit::insert_admin_change_sql("t", action, "t.template_id", detail, at, origin)
}

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
    let origin = Origin::current();
    let audit = template_audit("'template.create'", TEMPLATE_DETAIL, "$20", ("$21", "$22"));
    let query = format!(
        "with t as ( \
             insert into coupon_template (template_id, name, description, issuer, seller_id, discount_kind, \
                 amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor, \
                 valid_from, valid_until, valid_days, total_stock, daily_stock, per_member_limit, \
                 allowed_levels, regular_price_only, created_at, updated_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                     $20, $20) \
             on conflict (template_id) do nothing returning * \
         ), stock as ( \
             insert into template_stock (template_id) select template_id from t returning * \
         ), audit as ({audit}) \
         select {TEMPLATE_COLUMNS} from t join stock using (template_id)"
    );
    let row: Option<TemplateRow> = bind_spec!(sqlx::query_as(&query), spec)
        .bind(now)
        .bind(&origin.request_id)
        .bind(&origin.caller)
        .fetch_optional(conn)
        .await?;
    row.map(Template::try_from).transpose()
}

/// Reads a template.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn get_template(
    conn: &mut PgConnection,
    template_id: &TemplateId,
) -> Result<Option<Template>, sqlx::Error> {
    let row: Option<TemplateRow> = sqlx::query_as(statement!(format!(
        "select {TEMPLATE_COLUMNS} from {TEMPLATES} where template_id = $1"
    )))
    .bind(template_id.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(Template::try_from).transpose()
}

/// Waits for the template's turn until the transaction ends: its
/// `template_stock` row, which issuance locks too (`loyalty_take_stock`).
/// Every change of a template takes it first, so that an issuance sees the
/// template wholly before or wholly after the change. `false` when there is
/// no such template.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn lock_template(conn: &mut PgConnection, template_id: &TemplateId) -> Result<bool, sqlx::Error> {
    let locked: Option<i32> =
        sqlx::query_scalar("select 1 from template_stock where template_id = $1 for update")
            .bind(template_id.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(locked.is_some())
}

/// Templates by id after `after`, at most `limit`.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_templates(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Template>, sqlx::Error> {
    let rows: Vec<TemplateRow> = sqlx::query_as(&format!(
        "select {TEMPLATE_COLUMNS} from {TEMPLATES} \
         where $1::text is null or template_id > $1 order by template_id limit $2"
    ))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Template::try_from).collect()
}

/// Replaces a template's terms (after [`lock_template`]).
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %spec.template_id))]
pub async fn update_template(
    conn: &mut PgConnection,
    spec: &TemplateSpec,
    now: DateTime<Utc>,
) -> Result<Option<Template>, sqlx::Error> {
    let origin = Origin::current();
    // Audited when the terms change (a retry with the same terms changes nothing).
    let audit = audit::insert_admin_change_sql(
        &format!("t, before where {TEMPLATE_DETAIL} is distinct from before.terms"),
        "'template.update'",
        "t.template_id",
        TEMPLATE_DETAIL,
        "$20",
        ("$21", "$22"),
    );
    let query = format!(
        "with before as ( \
             select {TEMPLATE_DETAIL} as terms from coupon_template t where template_id = $1 \
         ), t as ( \
             update coupon_template set name = $2, description = $3, issuer = $4, seller_id = $5, \
                 discount_kind = $6, amount_off_minor = $7, percent_basis_points = $8, \
                 max_discount_minor = $9, currency = $10, min_purchase_minor = $11, valid_from = $12, \
                 valid_until = $13, valid_days = $14, total_stock = $15, daily_stock = $16, \
                 per_member_limit = $17, allowed_levels = $18, regular_price_only = $19, updated_at = $20 \
             where template_id = $1 returning * \
         ), audit as ({audit}) \
         select {TEMPLATE_COLUMNS} from t join template_stock using (template_id)"
    );
    let row: Option<TemplateRow> = bind_spec!(sqlx::query_as(&query), spec)
        .bind(now)
        .bind(&origin.request_id)
        .bind(&origin.caller)
        .fetch_optional(conn)
        .await?;
    row.map(Template::try_from).transpose()
}

/// Pauses or resumes a template (after [`lock_template`]).
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn set_paused(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Option<Template>, sqlx::Error> {
    let origin = Origin::current();
    // A pause of a paused template (or a resume of a running one) changes
    // nothing and is not audited. The caller holds the template's turn
    // (`lock_template`), so the pause read first is final. Not `for update`:
    // an issuance holds `for key share` on this row (its foreign keys) while
    // it waits for the turn, and the two would wait for each other.
    let audit = template_audit(
        "case when t.paused then 'template.pause' else 'template.resume' end",
        "'{}'::jsonb",
        "$3",
        ("$4", "$5"),
    );
    let row: Option<TemplateRow> = sqlx::query_as(&format!(
        "with before as ( \
             select template_id, paused as was_paused from coupon_template where template_id = $1 \
         ), changed as ( \
             update coupon_template c set paused = $2, updated_at = $3 \
             from before where c.template_id = before.template_id \
             returning c.*, before.was_paused \
         ), t as ( \
             select * from changed where paused <> was_paused \
         ), audit as ({audit}) \
         select {TEMPLATE_COLUMNS} from changed join template_stock using (template_id)"
    ))
    .bind(template_id.as_str())
    .bind(paused)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    row.map(Template::try_from).transpose()
}

/// A claim code.
#[derive(Debug, sqlx::FromRow)]
pub struct CodeRow {
    pub template_id: String,
    pub kind: CodeKind,
    pub consumed_by: Option<String>,
}

/// Inserts a public code; `false` when the code exists.
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id))]
pub async fn insert_public_code(
    conn: &mut PgConnection,
    code_hash: &[u8],
    template_id: &TemplateId,
    code: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let origin = Origin::current();
    let audit = template_audit(
        "'template.public_code'",
        "jsonb_build_object('code', t.public_code)",
        "$5",
        ("$6", "$7"),
    );
    let inserted: Option<i32> = sqlx::query_scalar(&format!(
        "with t as ( \
             insert into claim_code (code_hash, template_id, kind, public_code) values ($1, $2, $3, $4) \
             on conflict (code_hash) do nothing returning * \
         ), audit as ({audit}) \
         select 1 from t"
    ))
    .bind(code_hash)
    .bind(template_id.as_str())
    .bind(CodeKind::Public)
    .bind(code)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    Ok(inserted.is_some())
}

/// A `code_batch` row: a batch of single-use codes.
#[derive(Debug, sqlx::FromRow)]
pub struct CodeBatchRow {
    pub code_batch_id: i64,
    pub template_id: String,
    pub code_count: i32,
    pub created_at: DateTime<Utc>,
}

const CODE_BATCH_COLUMNS: &str = "code_batch_id, template_id, code_count, created_at";

/// Inserts the batch of `request_id`; `None` when the request id already has
/// one. A twin insert waits on the unique key until the first one's
/// transaction ends, then finds the key taken (or inserts, after a rollback).
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id, count))]
pub async fn insert_code_batch(
    conn: &mut PgConnection,
    request_id: &BatchRequestId,
    template_id: &TemplateId,
    count: u32,
    now: DateTime<Utc>,
) -> Result<Option<CodeBatchRow>, sqlx::Error> {
    let origin = Origin::current();
    let audit = template_audit(
        "'template.single_use_codes'",
        "jsonb_build_object('code_batch_id', t.code_batch_id, 'batch_request_id', t.request_id, \
             'code_count', t.code_count)",
        "$4",
        ("$5", "$6"),
    );
    sqlx::query_as(&format!(
        "with t as ( \
             insert into code_batch (request_id, template_id, code_count, created_at) values ($1, $2, $3, $4) \
             on conflict (request_id) do nothing returning * \
         ), audit as ({audit}) \
         select {CODE_BATCH_COLUMNS} from t"
    ))
    .bind(request_id.as_str())
    .bind(template_id.as_str())
    .bind(i32::try_from(count).unwrap_or(i32::MAX))
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await
}

/// The batch of `request_id`, if any.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn get_code_batch(
    conn: &mut PgConnection,
    request_id: &BatchRequestId,
) -> Result<Option<CodeBatchRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {CODE_BATCH_COLUMNS} from code_batch where request_id = $1"
    ))
    .bind(request_id.as_str())
    .fetch_optional(conn)
    .await
}

/// Inserts the single-use codes of a batch by their hashes; returns how many
/// were inserted, counted from the rows the insert returns (Citus reports the
/// selected rows as inserted for `on conflict do nothing`).
#[tracing::instrument(level = "debug", skip_all, fields(template_id = %template_id, codes = hashes.len()))]
pub async fn insert_single_use_codes(
    conn: &mut PgConnection,
    template_id: &TemplateId,
    code_batch_id: i64,
    hashes: &[Vec<u8>],
) -> Result<u64, sqlx::Error> {
    let inserted: i64 = sqlx::query_scalar(
        "with inserted as ( \
             insert into claim_code (code_hash, template_id, kind, code_batch_id) \
             select h, $1, $2, $3 from unnest($4::bytea[]) as t (h) \
             on conflict (code_hash) do nothing \
             returning 1 \
         ) \
         select count(*) from inserted",
    )
    .bind(template_id.as_str())
    .bind(CodeKind::SingleUse)
    .bind(code_batch_id)
    .bind(hashes)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(inserted).unwrap_or(0))
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
         where code_hash = $1 and kind = $4 and consumed_by is null",
    )
    .bind(code_hash)
    .bind(account_id)
    .bind(now)
    .bind(CodeKind::SingleUse)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}
