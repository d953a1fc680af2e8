//! Coupons (SPEC §4): templates, claim codes, issuance with stock and limits,
//! checkout (validate, best choice, reserve) and the order transitions.
//!
//! Concurrency: every limit is a guarded counter in the issuing transaction
//! (per member, per template and day, per template), taken in that order so the
//! hot template row is locked last and briefly; every status change is one
//! guarded `update … where status = …`. A reservation locks its coupons in id
//! order, so two reservations of the same coupons never deadlock.
//!
//! One file per sub-area: [`templates`] (templates and claim codes),
//! [`issuance`] (claims and direct issuance), [`checkout`] (validate, best
//! choice, reserve) and [`orders`] (complete, cancel, refund). This file holds
//! the types they share and the member's reads ("My coupons").

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::call::budget::Budget;
use crate::clock::Clock;
use crate::db;
use crate::db::coupons::NewCoupon;
use crate::domain::calendar::Calendar;
use crate::domain::ids::{AccountId, IssuanceId, OrderId, TemplateId};
use crate::domain::levels::Level;
use crate::domain::members::member_not_found;
use crate::domain::money::Currency;
use crate::domain::pricing::{self, CheckoutOrder, CouponStatus, CouponTerms, Discount, Issuer, Pricing};
use crate::domain::text;
use crate::error::{Error, FieldContext};

mod checkout;
mod issuance;
mod orders;
mod templates;

pub use templates::{ClaimCode, MAX_CODES_PER_BATCH};

/// When coupons of a template can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Every coupon is valid in this window; none is issued after `until`.
    Window {
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    /// Valid for this many days (of 24 hours) from issuance.
    Days(u32),
}

/// The terms of a template, as an admin sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub template_id: TemplateId,
    pub name: String,
    pub description: String,
    pub issuer: Issuer,
    pub discount: Discount,
    pub currency: Currency,
    pub min_purchase: i64,
    pub validity: Validity,
    pub total_stock: Option<i64>,
    pub daily_stock: Option<i64>,
    pub per_member_limit: u32,
    /// Empty for every level.
    pub allowed_levels: Vec<Level>,
    pub regular_price_only: bool,
}

impl TemplateSpec {
    /// Checks the terms; errors name the request field (`template.*`).
    pub fn check(&self) -> Result<(), Error> {
        let bad = |field: &str, why: &str| Err(Error::invalid(format!("template.{field}"), why));
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty");
        }
        text::check(&self.name, 200).field("template.name")?;
        text::check(&self.description, 2000).field("template.description")?;
        match self.discount {
            Discount::AmountOff(amount) if amount <= 0 => {
                return bad("discount.amount_off.amount_minor", "must be positive");
            }
            Discount::PercentOff { basis_points, .. } if !(1..=10_000).contains(&basis_points) => {
                return bad("discount.percent_off.basis_points", "must be 1 to 10000");
            }
            Discount::PercentOff {
                max_minor: Some(max), ..
            } if max <= 0 => {
                return bad(
                    "discount.percent_off.max_discount.amount_minor",
                    "must be positive",
                );
            }
            _ => {}
        }
        if self.min_purchase < 0 {
            return bad("min_purchase.amount_minor", "must not be negative");
        }
        match self.validity {
            Validity::Window { from, until } if until <= from => {
                return bad("validity.window.valid_until", "must be after valid_from");
            }
            Validity::Days(days) if !(1..=3650).contains(&days) => {
                return bad("validity.days_from_issuance", "must be 1 to 3650");
            }
            _ => {}
        }
        if self.total_stock.is_some_and(|s| s < 0) {
            return bad("total_stock", "must not be negative");
        }
        if self.daily_stock.is_some_and(|s| s < 1) {
            return bad("daily_stock", "must be positive");
        }
        if self.per_member_limit < 1 {
            return bad("per_member_limit", "must be positive");
        }
        let distinct: BTreeSet<Level> = self.allowed_levels.iter().copied().collect();
        if distinct.len() != self.allowed_levels.len() {
            return bad("allowed_levels", "must not repeat a level");
        }
        Ok(())
    }
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub spec: TemplateSpec,
    pub paused: bool,
    pub issued_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How a member got a coupon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CouponSource {
    PublicCode,
    SingleUseCode,
    Issuance,
}

impl CouponSource {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CouponSource::PublicCode => "public_code",
            CouponSource::SingleUseCode => "single_use_code",
            CouponSource::Issuance => "issuance",
        }
    }

    /// Parses a stored name.
    pub fn from_db(name: &str) -> Option<Self> {
        [
            CouponSource::PublicCode,
            CouponSource::SingleUseCode,
            CouponSource::Issuance,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A member's coupon with the terms it was issued with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub coupon_id: i64,
    pub account_id: AccountId,
    pub template_id: TemplateId,
    /// As of the read: a VALID coupon past its expiry reads EXPIRED.
    pub status: CouponStatus,
    pub order_id: Option<OrderId>,
    pub name: String,
    pub issuer: Issuer,
    pub discount: Discount,
    pub currency: Currency,
    pub min_purchase: i64,
    pub regular_price_only: bool,
    pub valid_from: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub source: CouponSource,
    pub issued_at: DateTime<Utc>,
}

impl Coupon {
    /// What the checkout needs of it.
    pub fn terms(&self) -> CouponTerms {
        CouponTerms {
            coupon_id: self.coupon_id,
            account_id: self.account_id.clone(),
            status: self.status,
            order_id: self.order_id.clone(),
            issuer: self.issuer.clone(),
            discount: self.discount,
            currency: self.currency,
            min_purchase: self.min_purchase,
            regular_price_only: self.regular_price_only,
            valid_from: self.valid_from,
            expires_at: self.expires_at,
        }
    }
}

/// One transition of a coupon's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub action: String,
    pub from_status: Option<CouponStatus>,
    pub to_status: CouponStatus,
    pub order_id: Option<String>,
    pub note: String,
    pub occurred_at: DateTime<Utc>,
}

/// A coupon handed to a member, or handed again on a retry.
#[derive(Debug, Clone)]
pub struct Issued {
    pub coupon: Coupon,
    pub replayed: bool,
}

/// A reservation's result.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub pricing: Pricing,
    pub coupons: Vec<Coupon>,
    pub replayed: bool,
}

/// How an issuance is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuePolicy {
    /// A caller's claim or issuance: the template's per-member limit applies, and
    /// its levels are checked against the member's level now.
    Caller,
    /// A membership reward, given once per day, year or evaluation by its
    /// issuance id: the template's per-member limit does not cap it, and its
    /// levels are checked against `level` (the level the reward is for) when set.
    Reward { level: Option<Level> },
}

/// A refund's extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundKind {
    Full,
    Partial,
}

fn refused(reason: &'static str, message: impl Into<String>) -> Error {
    Error::FailedPrecondition {
        reason,
        message: message.into(),
    }
}

fn template_not_found(template_id: &TemplateId) -> Error {
    Error::NotFound {
        reason: "TEMPLATE_NOT_FOUND",
        message: format!("no coupon template {template_id}"),
    }
}

/// Coupon operations.
#[derive(Clone)]
pub struct Coupons {
    pool: PgPool,
    calendar: Calendar,
    clock: Arc<dyn Clock>,
}

impl Coupons {
    /// Coupon operations over `pool`.
    pub fn new(pool: PgPool, calendar: Calendar, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            calendar,
            clock,
        }
    }

    /// A page of a member's coupons, newest first.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn list(
        &self,
        account_id: &AccountId,
        statuses: &[CouponStatus],
        before_coupon_id: Option<i64>,
        page_size: u32,
    ) -> Result<(Vec<Coupon>, Option<i64>), Error> {
        let now = self.clock.now();
        let mut conn = db::acquire(&self.pool).await?;
        let mut coupons = db::coupons::list_coupons(
            &mut conn,
            account_id,
            statuses,
            before_coupon_id,
            page_size + 1,
            now,
        )
        .await?;
        if coupons.is_empty() {
            ensure_member(&mut conn, account_id).await?;
        }
        let next = if coupons.len() > page_size as usize {
            coupons.truncate(page_size as usize);
            coupons.last().map(|c| c.coupon_id)
        } else {
            None
        };
        Ok((coupons, next))
    }

    /// One coupon and its transitions.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, coupon_id))]
    pub async fn get(
        &self,
        account_id: &AccountId,
        coupon_id: i64,
    ) -> Result<(Coupon, Vec<Transition>), Error> {
        let now = self.clock.now();
        let mut conn = db::acquire(&self.pool).await?;
        let coupon = db::coupons::coupons_by_ids(&mut conn, account_id, &[coupon_id], now)
            .await?
            .pop()
            .ok_or_else(|| Error::NotFound {
                reason: "COUPON_NOT_FOUND",
                message: format!("account {account_id} has no coupon {coupon_id}"),
            })?;
        let history = db::coupons::transitions(&mut conn, account_id, coupon_id).await?;
        Ok((coupon, history))
    }
}

async fn ensure_member(conn: &mut PgConnection, account_id: &AccountId) -> Result<(), Error> {
    db::members::is_flagged(conn, account_id)
        .await?
        .map(|_| ())
        .ok_or_else(|| member_not_found(account_id))
}
