//! Coupons (SPEC §4): templates, claim codes, issuance with stock and limits,
//! checkout (validate, best choice, reserve) and the order transitions.
//!
//! Concurrency: every limit is a guarded counter in the issuing transaction
//! (per member, then the template's stock and its day's), taken in that order
//! so the hot stock row is locked last and briefly; every status change is one
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
use std::time::{Duration, Instant};

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
use crate::domain::ids::{AccountId, IssuanceId, LineId, OrderId, RefundId, TemplateId};
use crate::domain::levels::Level;
use crate::domain::members::member_not_found;
use crate::domain::money::Currency;
use crate::domain::pricing::{
    self, CheckoutLine, CheckoutOrder, CouponStatus, CouponTerms, Discount, Issuer, Pricing,
};
use crate::domain::text;
use crate::error::{Error, FieldContext};

mod checkout;
mod expiry;
mod issuance;
mod orders;
mod refunds;
mod templates;

pub use expiry::{ExpiryNotices, NoticesSent};

pub use templates::{ClaimCode, CodeBatch, MAX_CODES_PER_BATCH};

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

/// How a member got a coupon (stored as text, `public_code`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Deserialize)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CouponSource {
    PublicCode,
    SingleUseCode,
    Issuance,
}

/// The kind of a claim code (stored as text, `public` or `single_use`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum CodeKind {
    /// Shared by a promotion: every member may claim it once.
    Public,
    /// Generated in a batch: one member claims it, once.
    SingleUse,
}

/// What moved a coupon (stored as text in its history, `reserve`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Action {
    /// Issued to the member.
    Issue,
    /// Held for an order.
    Reserve,
    /// Dropped from the order by a newer cart revision.
    Release,
    /// Its hold for an order ended and another order took it.
    Lapse,
    /// The order closed.
    Complete,
    /// The order was cancelled.
    Cancel,
    /// The order was refunded in full (by one refund or several).
    RefundFull,
    /// Part of the order was refunded.
    RefundPartial,
    /// Reclaimed by fraud handling.
    Revoke,
}

impl Action {
    /// The name shown in a coupon's history (as stored).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue => "issue",
            Action::Reserve => "reserve",
            Action::Release => "release",
            Action::Lapse => "lapse",
            Action::Complete => "complete",
            Action::Cancel => "cancel",
            Action::RefundFull => "refund_full",
            Action::RefundPartial => "refund_partial",
            Action::Revoke => "revoke",
        }
    }
}

/// A member's coupon with the terms it was issued with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub coupon_id: i64,
    pub account_id: AccountId,
    pub template_id: TemplateId,
    /// As of the read: a VALID coupon past its expiry reads EXPIRED, and one
    /// whose hold lapsed reads VALID (or EXPIRED).
    pub status: CouponStatus,
    /// The order it is held for (INACTIVE) or was used on (USED).
    pub order_id: Option<OrderId>,
    /// When the hold of an INACTIVE coupon ends.
    pub hold_until: Option<DateTime<Utc>>,
    /// The order whose hold lapsed while still recorded on the coupon: the
    /// next change of the coupon closes that hold first.
    pub lapsed_order: Option<OrderId>,
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
    pub action: Action,
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

/// The shortest hold a reservation may ask for.
pub const MIN_HOLD: Duration = Duration::from_secs(60);
/// The longest hold a reservation may ask for.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks a hold's length (1 minute to 24 hours).
pub fn check_hold(hold: Duration) -> Result<Duration, String> {
    if (MIN_HOLD..=MAX_HOLD).contains(&hold) {
        Ok(hold)
    } else {
        Err(format!(
            "must be 1 minute to 24 hours (got {} s)",
            hold.as_secs_f64()
        ))
    }
}

/// A reservation asked of the checkout.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub order: CheckoutOrder,
    /// The coupons picked, in the order picked (0 to 20; none releases every hold).
    pub coupon_ids: Vec<i64>,
    /// The cart's revision (0 when the caller does not use revisions).
    pub cart_revision: u64,
    /// The hold asked for; `None` for the configured default.
    pub hold: Option<Duration>,
}

/// The stored state of a checkout order. A completed order whose every unit
/// was refunded reads as [`OrderStatus::Refunded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum OrderState {
    Open,
    Completed,
    Cancelled,
}

/// An order's status as the checkout sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Reserved: its coupons are held (until the hold ends).
    Open,
    Completed,
    Cancelled,
    /// Completed, then refunded unit by unit until nothing was left.
    Refunded,
}

/// A checkout order's header, as stored.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub state: OrderState,
    pub cart_revision: u64,
    /// What the reserve of this revision carried; `None` for an order reserved
    /// before revisions existed.
    pub content_digest: Option<Vec<u8>>,
    pub currency: Currency,
    /// The coupons of the latest revision, in the order picked.
    pub coupon_ids: Vec<i64>,
    pub hold_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One coupon's discount on one line of an order, as priced at reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub coupon_id: i64,
    /// The line's index in the order's cart.
    pub line: usize,
    /// In minor units of the order's currency.
    pub discount: i64,
}

/// The units of one line a refund returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRefundLine {
    pub line_id: LineId,
    pub quantity: u32,
}

/// What a refund claws back of one coupon's discount on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clawback {
    pub line_id: LineId,
    pub coupon_id: i64,
    /// In minor units of the order's currency.
    pub discount: i64,
}

/// A refund of a completed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: RefundId,
    /// What the request carried (the same id with another extent is refused).
    pub content_digest: Vec<u8>,
    /// Asked as "the whole order" (what was left of it).
    pub whole_order: bool,
    /// It returned the order's last units: the full refund.
    pub completes_order: bool,
    pub lines: Vec<StoredRefundLine>,
    pub clawbacks: Vec<Clawback>,
    pub created_at: DateTime<Utc>,
}

/// What a refund returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundExtent {
    /// Every unit not refunded yet.
    WholeOrder,
    /// These units of these lines.
    Lines(Vec<(LineId, u32)>),
}

/// Everything the checkout knows of an order: its state, cart, stored pricing,
/// coupons as they are now, and refunds.
#[derive(Debug, Clone)]
pub struct OrderCheckout {
    pub order_id: OrderId,
    pub account_id: AccountId,
    pub status: OrderStatus,
    pub cart_revision: u64,
    pub currency: Currency,
    /// When the hold of an open order ends.
    pub hold_until: DateTime<Utc>,
    /// The cart of the latest revision (empty for an order reserved before
    /// carts were stored).
    pub lines: Vec<CheckoutLine>,
    /// The pricing stored at reservation: every coupon applies.
    pub pricing: Pricing,
    /// The order's coupons as they are now, in the order picked.
    pub coupons: Vec<Coupon>,
    /// Oldest first.
    pub refunds: Vec<Refund>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A reservation's result.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub order: OrderCheckout,
    /// The same revision with the same content was reserved before.
    pub replayed: bool,
}

/// A refund's result.
#[derive(Debug, Clone)]
pub struct Refunded {
    pub order: OrderCheckout,
    pub refund: Refund,
    /// This refund id was refunded before with the same extent.
    pub replayed: bool,
}

/// Where a coupon goes when it comes back from an order (a cancellation, a
/// newer cart revision, a full refund of a platform coupon): VALID, EXPIRED
/// when past its expiry, REVOKED when its member is flagged (flagging reclaims
/// every coupon the member could use). The one statement of that policy.
pub fn returned_status(coupon: &Coupon, member_flagged: bool, now: DateTime<Utc>) -> CouponStatus {
    if member_flagged {
        CouponStatus::Revoked
    } else if now >= coupon.expires_at {
        CouponStatus::Expired
    } else {
        CouponStatus::Valid
    }
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
    /// The hold of a reservation that asks for none.
    default_hold: Duration,
}

impl Coupons {
    /// Coupon operations over `pool`; a reservation asking for no hold length
    /// gets `default_hold`.
    pub fn new(pool: PgPool, calendar: Calendar, clock: Arc<dyn Clock>, default_hold: Duration) -> Self {
        Self {
            pool,
            calendar,
            clock,
            default_hold,
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

/// Fraud handling reclaims every coupon the member could use: each one reading
/// VALID (a lapsed hold included) becomes REVOKED. Call it in the flagging
/// transaction, after the member row is locked.
pub async fn revoke_usable(
    conn: &mut PgConnection,
    account_id: &AccountId,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    let coupons = db::coupons::lock_valid(conn, account_id, now).await?;
    let changes: Vec<db::coupons::Change> = coupons
        .iter()
        .map(|c| db::coupons::Change {
            coupon_id: c.coupon_id,
            from: match &c.lapsed_order {
                Some(order) => (CouponStatus::Inactive, Some(order.clone())),
                None => (CouponStatus::Valid, None),
            },
            to: (CouponStatus::Revoked, None),
            hold_until: None,
            action: Some(Action::Revoke),
            note: "member flagged as fraudulent".to_owned(),
        })
        .collect();
    checkout::apply(conn, account_id, &changes, now).await?;
    Ok(changes.len() as u64)
}

async fn ensure_member(conn: &mut PgConnection, account_id: &AccountId) -> Result<(), Error> {
    db::members::is_flagged(conn, account_id)
        .await?
        .map(|_| ())
        .ok_or_else(|| member_not_found(account_id))
}
