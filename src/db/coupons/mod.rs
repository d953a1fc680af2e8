//! Queries on templates, claim codes, coupons and their transitions.
//!
//! Every status change is one guarded `update … where status = …` that also
//! writes its transition rows (a data-modifying CTE), and its row count is what
//! the domain reads.
//!
//! One file per sub-area, as in the domain: [`templates`] (templates and claim
//! codes), [`issuance`] (counters and the issuing statement), [`orders`] (a
//! member's coupons, their locks and the one guarded status change),
//! [`checkout`] (the checkout order: cart, stored allocations, refunds) and
//! [`expiry`] (the expiry notices). Every statement that changes a coupon
//! writes its event too ([`crate::db::events::insert_event_sql`]). This
//! file holds the row mapping they share.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;

use crate::db::events;
use crate::domain::coupons::{Action, Coupon, CouponSource, Template, TemplateSpec, Transition, Validity};
use crate::domain::events::{EventType, Origin};
use crate::domain::ids::{AccountId, IssuanceId, OrderId, SellerId, TemplateId};
use crate::domain::levels::Level;
use crate::domain::money::Currency;
use crate::domain::pricing::{CouponStatus, Discount, Issuer};

mod checkout;
mod expiry;
mod issuance;
mod orders;
mod templates;

pub use checkout::*;
pub use expiry::*;
pub use issuance::*;
pub use orders::*;
pub use templates::*;

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
    Currency::stored(code).map_err(|e| decode("currency", e))
}

/// A `coupon` row, with its status as of the query's `now`.
#[derive(sqlx::FromRow)]
struct CouponRow {
    coupon_id: i64,
    account_id: AccountId,
    template_id: String,
    status: CouponStatus,
    order_id: Option<String>,
    hold_until: Option<DateTime<Utc>>,
    lapsed_order: Option<String>,
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
    source: CouponSource,
    issued_at: DateTime<Utc>,
}

impl TryFrom<CouponRow> for Coupon {
    type Error = sqlx::Error;

    fn try_from(row: CouponRow) -> Result<Self, Self::Error> {
        Ok(Coupon {
            coupon_id: row.coupon_id,
            account_id: row.account_id,
            template_id: TemplateId::parse(&row.template_id).map_err(|e| decode("template_id", e))?,
            status: row.status,
            order_id: order_from(row.order_id)?,
            hold_until: row.hold_until,
            lapsed_order: order_from(row.lapsed_order)?,
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
            source: row.source,
            issued_at: row.issued_at,
        })
    }
}

fn order_from(order_id: Option<String>) -> Result<Option<OrderId>, sqlx::Error> {
    order_id
        .map(|o| OrderId::parse(&o).map_err(|e| decode("order_id", e)))
        .transpose()
}

/// Whether a stored `inactive` coupon's hold has ended as of `$now_param`.
fn lapsed(alias: &str, now_param: &str) -> String {
    format!("({alias}status = 'inactive' and {alias}hold_until <= {now_param})")
}

/// The status a coupon reads as at `$now_param`, whatever job has run: a VALID
/// coupon past its expiry reads EXPIRED; an INACTIVE one whose hold lapsed
/// reads VALID (EXPIRED when past its expiry). This is the one place the
/// reading is stated; listings filter on it.
pub(crate) fn status_as_of(alias: &str, now_param: &str) -> String {
    format!(
        "case when ({alias}status = 'valid' or {lapsed}) \
                   and {alias}expires_at <= {now_param} then 'expired' \
              when {lapsed} then 'valid' \
              else {alias}status end",
        lapsed = lapsed(alias, now_param)
    )
}

/// The coupon columns, as of `$now_param` ([`status_as_of`]; a lapsed hold
/// shows no order and no hold end, but names its order in `lapsed_order`).
fn coupon_columns(alias: &str, now_param: &str) -> String {
    let lapsed = lapsed(alias, now_param);
    format!(
        "{alias}coupon_id, {alias}account_id, {alias}template_id, \
         {status} as status, \
         case when {lapsed} then null else {alias}order_id end as order_id, \
         case when {lapsed} then null else {alias}hold_until end as hold_until, \
         case when {lapsed} then {alias}order_id end as lapsed_order, \
         {alias}name, {alias}issuer, {alias}seller_id, {alias}discount_kind, \
         {alias}amount_off_minor, {alias}percent_basis_points, {alias}max_discount_minor, {alias}currency, \
         {alias}min_purchase_minor, {alias}regular_price_only, {alias}valid_from, {alias}expires_at, \
         {alias}source, {alias}issued_at",
        status = status_as_of(alias, now_param),
    )
}

fn into_coupons(rows: Vec<CouponRow>) -> Result<Vec<Coupon>, sqlx::Error> {
    rows.into_iter().map(Coupon::try_from).collect()
}
