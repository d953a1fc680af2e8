//! Queries on templates, claim codes, coupons and their transitions.
//!
//! Every status change is one guarded `update … where status = …` that also
//! writes its transition rows (a data-modifying CTE), and its row count is what
//! the domain reads.
//!
//! One file per sub-area, as in the domain: [`templates`] (templates and claim
//! codes), [`issuance`] (counters and the issuing statement) and [`orders`] (a
//! member's coupons, reservations and the order transitions). This file holds
//! the row mapping they share.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgConnection;

use crate::domain::coupons::{Coupon, CouponSource, Template, TemplateSpec, Transition, Validity};
use crate::domain::ids::{AccountId, IssuanceId, OrderId, SellerId, TemplateId};
use crate::domain::levels::Level;
use crate::domain::money::Currency;
use crate::domain::pricing::{CouponStatus, Discount, Issuer};

mod issuance;
mod orders;
mod templates;

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
    Currency::parse(code).map_err(|e| decode("currency", e))
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
