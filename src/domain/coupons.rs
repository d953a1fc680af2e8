//! Coupons (SPEC §4): templates, claim codes, issuance with stock and limits,
//! checkout (validate, best choice, reserve) and the order transitions.
//!
//! Concurrency: every limit is a guarded counter in the issuing transaction
//! (per member, per template and day, per template), taken in that order so the
//! hot template row is locked last and briefly; every status change is one
//! guarded `update … where status = …`. A reservation locks its coupons in id
//! order, so two reservations of the same coupons never deadlock.

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
                return bad("discount.amount_off_minor", "must be positive");
            }
            Discount::PercentOff { basis_points, .. } if !(1..=10_000).contains(&basis_points) => {
                return bad("discount.percent_off.basis_points", "must be 1 to 10000");
            }
            Discount::PercentOff {
                max_minor: Some(max), ..
            } if max <= 0 => return bad("discount.percent_off.max_discount_minor", "must not be negative"),
            _ => {}
        }
        if self.min_purchase < 0 {
            return bad("min_purchase_minor", "must not be negative");
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

/// A claim code as typed: case and dashes do not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCode(String);

impl ClaimCode {
    /// Validates a code: 4 to 32 characters of `[A-Za-z0-9-]`.
    pub fn parse(code: &str) -> Result<Self, String> {
        let code = code.trim();
        if !(4..=32).contains(&code.len()) || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("must be 4 to 32 characters of letters, digits and '-'".to_owned());
        }
        Ok(Self(code.to_ascii_uppercase()))
    }

    /// The code in upper case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What is stored: sha256 of the upper-cased code without dashes.
    pub fn hash(&self) -> Vec<u8> {
        let normalized: String = self.0.chars().filter(|c| *c != '-').collect();
        Sha256::digest(normalized.as_bytes()).to_vec()
    }

    /// A random single-use code, `XXXX-XXXX-XXXX-XXXX` in Crockford's base 32
    /// (no I, L, O, U): 80 bits from the operating system's generator.
    pub fn generate() -> Self {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut rng = OsRng;
        let mut code = String::with_capacity(19);
        for i in 0..16 {
            if i > 0 && i % 4 == 0 {
                code.push('-');
            }
            code.push(char::from(ALPHABET[rng.gen_range(0..32)]));
        }
        Self(code)
    }
}

impl fmt::Display for ClaimCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most single-use codes one call generates.
pub const MAX_CODES_PER_BATCH: u32 = 10_000;

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

    /// Creates a template; idempotent on its id and content.
    #[tracing::instrument(skip_all, fields(template_id = %spec.template_id))]
    pub async fn create_template(&self, spec: &TemplateSpec) -> Result<(Template, bool), Error> {
        spec.check()?;
        // A transaction, so that the deadline bounds the insert in PostgreSQL.
        let mut tx = db::begin(&self.pool).await?;
        if let Some(created) = db::coupons::insert_template(&mut tx, spec, self.clock.now()).await? {
            db::commit(tx).await?;
            return Ok((created, false));
        }
        let existing = db::coupons::get_template(&mut tx, &spec.template_id, false)
            .await?
            .ok_or_else(|| template_not_found(&spec.template_id))?;
        if existing.spec != *spec {
            return Err(Error::AlreadyExists {
                reason: "TEMPLATE_EXISTS",
                message: format!("template {} exists with other terms", spec.template_id),
            });
        }
        Ok((existing, true))
    }

    /// Reads a template.
    #[tracing::instrument(skip_all, fields(template_id = %template_id))]
    pub async fn template(&self, template_id: &TemplateId) -> Result<Template, Error> {
        let mut conn = db::acquire(&self.pool).await?;
        db::coupons::get_template(&mut conn, template_id, false)
            .await?
            .ok_or_else(|| template_not_found(template_id))
    }

    /// A page of templates by id, and the key of the next page.
    #[tracing::instrument(skip_all)]
    pub async fn templates(
        &self,
        after: Option<&str>,
        page_size: u32,
    ) -> Result<(Vec<Template>, Option<String>), Error> {
        let mut conn = db::acquire(&self.pool).await?;
        let mut templates = db::coupons::list_templates(&mut conn, after, page_size + 1).await?;
        let next = if templates.len() > page_size as usize {
            templates.truncate(page_size as usize);
            templates.last().map(|t| t.spec.template_id.to_string())
        } else {
            None
        };
        Ok((templates, next))
    }

    /// Replaces a template's terms for coupons issued from now on.
    #[tracing::instrument(skip_all, fields(template_id = %spec.template_id))]
    pub async fn update_template(&self, spec: &TemplateSpec) -> Result<Template, Error> {
        spec.check()?;
        let mut tx = db::begin(&self.pool).await?;
        let current = db::coupons::get_template(&mut tx, &spec.template_id, true)
            .await?
            .ok_or_else(|| template_not_found(&spec.template_id))?;
        if current.spec.issuer != spec.issuer {
            return Err(Error::invalid(
                "template.issuer",
                "the issuer of a template cannot change",
            ));
        }
        if current.spec.currency != spec.currency {
            return Err(Error::invalid(
                "template.currency_code",
                "the currency of a template cannot change",
            ));
        }
        if spec.total_stock.is_some_and(|stock| stock < current.issued_count) {
            return Err(refused(
                "STOCK_BELOW_ISSUED",
                format!("{} coupons were already issued", current.issued_count),
            ));
        }
        let updated = db::coupons::update_template(&mut tx, spec, self.clock.now())
            .await?
            .ok_or_else(|| template_not_found(&spec.template_id))?;
        db::commit(tx).await?;
        Ok(updated)
    }

    /// Pauses or resumes a template.
    #[tracing::instrument(skip_all, fields(template_id = %template_id))]
    pub async fn set_paused(&self, template_id: &TemplateId, paused: bool) -> Result<Template, Error> {
        let mut tx = db::begin(&self.pool).await?;
        let template = db::coupons::set_paused(&mut tx, template_id, paused, self.clock.now()).await?;
        db::commit(tx).await?;
        template.ok_or_else(|| template_not_found(template_id))
    }

    /// Creates a public code; idempotent when the code already claims this template.
    #[tracing::instrument(skip_all, fields(template_id = %template_id))]
    pub async fn create_public_code(
        &self,
        template_id: &TemplateId,
        code: &ClaimCode,
    ) -> Result<bool, Error> {
        let mut tx = db::begin(&self.pool).await?;
        db::coupons::get_template(&mut tx, template_id, false)
            .await?
            .ok_or_else(|| template_not_found(template_id))?;
        let hash = code.hash();
        if db::coupons::insert_public_code(&mut tx, &hash, template_id, code.as_str()).await? {
            db::commit(tx).await?;
            return Ok(false);
        }
        match db::coupons::find_code(&mut tx, &hash).await? {
            Some(existing) if existing.kind == "public" && existing.template_id == template_id.as_str() => {
                Ok(true)
            }
            _ => Err(Error::AlreadyExists {
                reason: "CODE_EXISTS",
                message: format!("the code {code} is already used"),
            }),
        }
    }

    /// Generates `count` single-use codes for a template, in one transaction.
    #[tracing::instrument(skip_all, fields(template_id = %template_id, count))]
    pub async fn generate_codes(
        &self,
        template_id: &TemplateId,
        count: u32,
    ) -> Result<Vec<ClaimCode>, Error> {
        if !(1..=MAX_CODES_PER_BATCH).contains(&count) {
            return Err(Error::invalid(
                "count",
                format!("must be 1 to {MAX_CODES_PER_BATCH}"),
            ));
        }
        let codes: Vec<ClaimCode> = (0..count).map(|_| ClaimCode::generate()).collect();
        let hashes: Vec<Vec<u8>> = codes.iter().map(ClaimCode::hash).collect();
        let mut tx = db::begin(&self.pool).await?;
        db::coupons::get_template(&mut tx, template_id, false)
            .await?
            .ok_or_else(|| template_not_found(template_id))?;
        let inserted = db::coupons::insert_single_use_codes(&mut tx, template_id, &hashes).await?;
        if inserted != u64::from(count) {
            // 80 random bits per code: a collision means a broken generator.
            return Err(anyhow::anyhow!(
                "{} of {count} generated codes collided",
                u64::from(count) - inserted
            )
            .into());
        }
        db::commit(tx).await?;
        Ok(codes)
    }

    /// A member claims a coupon with a code.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn claim(&self, account_id: &AccountId, code: &ClaimCode) -> Result<Issued, Error> {
        let hash = code.hash();
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let flagged = db::members::lock_for_issuance(&mut tx, account_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        let found = db::coupons::find_code(&mut tx, &hash)
            .await?
            .ok_or_else(|| Error::NotFound {
                reason: "CODE_NOT_FOUND",
                message: "no such claim code".to_owned(),
            })?;
        if let Some(coupon) = db::coupons::find_issued(&mut tx, account_id, Some(&hash), None, now).await? {
            return Ok(Issued {
                coupon,
                replayed: true,
            });
        }
        if flagged {
            return Err(refused(
                "MEMBER_FLAGGED",
                format!("member {account_id} is flagged as fraudulent"),
            ));
        }
        let source = if found.kind == "single_use" {
            if !db::coupons::consume_code(&mut tx, &hash, account_id, now).await? {
                return Err(refused(
                    "CODE_ALREADY_USED",
                    "this single-use code was already claimed",
                ));
            }
            CouponSource::SingleUseCode
        } else {
            CouponSource::PublicCode
        };
        let template_id =
            TemplateId::parse(&found.template_id).map_err(|e| anyhow::anyhow!("stored code: {e}"))?;
        let new = NewCoupon {
            account_id,
            template_id: &template_id,
            source,
            claim_code_hash: Some(&hash),
            issuance_id: None,
        };
        self.issue_new(tx, &new, IssuePolicy::Caller, now).await
    }

    /// Issues a coupon directly, idempotent by `issuance_id`.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, template_id = %template_id))]
    pub async fn issue(
        &self,
        account_id: &AccountId,
        template_id: &TemplateId,
        issuance_id: &IssuanceId,
        policy: IssuePolicy,
    ) -> Result<Issued, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let flagged = db::members::lock_for_issuance(&mut tx, account_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        if let Some(coupon) =
            db::coupons::find_issued(&mut tx, account_id, None, Some(issuance_id), now).await?
        {
            if coupon.template_id != *template_id {
                return Err(Error::AlreadyExists {
                    reason: "IDEMPOTENCY_KEY_REUSED",
                    message: format!(
                        "issuance {issuance_id} already issued template {}",
                        coupon.template_id
                    ),
                });
            }
            return Ok(Issued {
                coupon,
                replayed: true,
            });
        }
        if flagged {
            return Err(refused(
                "MEMBER_FLAGGED",
                format!("member {account_id} is flagged as fraudulent"),
            ));
        }
        let new = NewCoupon {
            account_id,
            template_id,
            source: CouponSource::Issuance,
            claim_code_hash: None,
            issuance_id: Some(issuance_id),
        };
        self.issue_new(tx, &new, policy, now).await
    }

    /// Checks the template's rules, takes the member's, the day's and the
    /// template's stock, and issues the coupon; commits. A concurrent twin of the
    /// same claim or issuance that won the race is returned as a replay.
    async fn issue_new(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        new: &NewCoupon<'_>,
        policy: IssuePolicy,
        now: DateTime<Utc>,
    ) -> Result<Issued, Error> {
        let template = db::coupons::get_template(&mut tx, new.template_id, false)
            .await?
            .ok_or_else(|| template_not_found(new.template_id))?;
        check_issuable(&template, now)?;
        if !template.spec.allowed_levels.is_empty() {
            let level = match policy {
                IssuePolicy::Reward { level: Some(level) } => level,
                _ => db::coupons::level_at(&mut tx, new.account_id, now).await?,
            };
            if !template.spec.allowed_levels.contains(&level) {
                return Err(refused(
                    "LEVEL_NOT_ALLOWED",
                    format!("template {} is not for {level} members", new.template_id),
                ));
            }
        }
        // A reward is capped by its own issuance id (once per day, year or
        // evaluation), not by the template's lifetime per-member limit; it is
        // still counted.
        let limit = match policy {
            IssuePolicy::Caller => template.spec.per_member_limit,
            IssuePolicy::Reward { .. } => u32::MAX,
        };
        if !db::coupons::bump_member_template(&mut tx, new.account_id, new.template_id, limit).await? {
            return Err(refused(
                "PER_MEMBER_LIMIT_REACHED",
                format!(
                    "the member already has {} coupon(s) of this template",
                    template.spec.per_member_limit
                ),
            ));
        }
        if let Some(daily) = template.spec.daily_stock {
            let today = self.calendar.local_date(now);
            if !db::coupons::bump_template_day(&mut tx, new.template_id, today, daily).await? {
                return Err(refused(
                    "DAILY_STOCK_EXHAUSTED",
                    "today's stock of this template is gone",
                ));
            }
        }
        match db::coupons::issue_coupon(&mut tx, new, now).await {
            Ok(Some(coupon)) => {
                db::commit(tx).await?;
                Ok(Issued {
                    coupon,
                    replayed: false,
                })
            }
            Ok(None) => {
                // Paused, out of stock or past its window since the first read.
                let template = db::coupons::get_template(&mut tx, new.template_id, false)
                    .await?
                    .ok_or_else(|| template_not_found(new.template_id))?;
                check_issuable(&template, now)?;
                Err(refused(
                    "OUT_OF_STOCK",
                    format!("template {} has no stock left", new.template_id),
                ))
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                tx.rollback().await?;
                let mut conn = db::acquire(&self.pool).await?;
                let coupon = db::coupons::find_issued(
                    &mut conn,
                    new.account_id,
                    new.claim_code_hash,
                    new.issuance_id,
                    now,
                )
                .await?
                .ok_or_else(|| anyhow::anyhow!("coupon vanished after a unique violation"))?;
                Ok(Issued {
                    coupon,
                    replayed: true,
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Prices an order with the picked coupons; changes nothing.
    #[tracing::instrument(skip_all, fields(account_id = %order.account_id, order_id = %order.order_id))]
    pub async fn validate(&self, order: &CheckoutOrder, coupon_ids: &[i64]) -> Result<Pricing, Error> {
        let now = self.clock.now();
        let mut conn = db::acquire(&self.pool).await?;
        let coupons = db::coupons::coupons_by_ids(&mut conn, &order.account_id, coupon_ids, now).await?;
        // A coupon found under the account proves the member exists; otherwise ask.
        if coupons.len() < coupon_ids.len() || coupon_ids.is_empty() {
            ensure_member(&mut conn, &order.account_id).await?;
        }
        Ok(price_picked(order, coupon_ids, &coupons, now))
    }

    /// The member's best combination of coupons for the order.
    #[tracing::instrument(skip_all, fields(account_id = %order.account_id, order_id = %order.order_id))]
    pub async fn best(&self, order: &CheckoutOrder) -> Result<(Vec<i64>, Pricing), Error> {
        let now = self.clock.now();
        let mut conn = db::acquire(&self.pool).await?;
        ensure_member(&mut conn, &order.account_id).await?;
        let coupons = db::coupons::usable_coupons(&mut conn, &order.account_id, order.currency, now).await?;
        let terms: Vec<CouponTerms> = coupons.iter().map(Coupon::terms).collect();
        // The connection goes back before the search, which needs none.
        drop(conn);
        // The search is CPU work bounded by its budget (and the call's deadline):
        // off the async workers, so other calls keep being served meanwhile.
        let order = order.clone();
        let mut deadline = Instant::now() + pricing::BEST_CHOICE_BUDGET;
        if let Some(call) = Budget::current() {
            deadline = deadline.min(call.deadline().into_std());
        }
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| pricing::best(&order, &terms, now, deadline)))
            .await
            .map_err(|error| {
                Error::Internal(anyhow::Error::new(error).context("the best choice search failed"))
            })
    }

    /// Moves every picked coupon to INACTIVE for the order, all or nothing.
    #[tracing::instrument(skip_all, fields(account_id = %order.account_id, order_id = %order.order_id))]
    pub async fn reserve(&self, order: &CheckoutOrder, coupon_ids: &[i64]) -> Result<Reservation, Error> {
        let now = self.clock.now();
        let account_id = &order.account_id;
        let mut tx = db::begin(&self.pool).await?;
        // The order's operations take turns; then one statement locks the picked
        // coupons and those the order holds, in id order; then every read.
        db::coupons::lock_order(&mut tx, account_id, &order.order_id).await?;
        if db::members::is_flagged(&mut tx, account_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))?
        {
            return Err(refused(
                "MEMBER_FLAGGED",
                format!("member {account_id} is flagged as fraudulent"),
            ));
        }
        let locked =
            db::coupons::lock_for_reservation(&mut tx, account_id, &order.order_id, coupon_ids, now).await?;
        let actions = db::coupons::order_actions(&mut tx, account_id, &order.order_id).await?;
        if actions.iter().any(|a| a != "reserve") {
            return Err(refused(
                "ORDER_CLOSED",
                format!("order {} was already completed or cancelled", order.order_id),
            ));
        }
        let picked: BTreeSet<i64> = coupon_ids.iter().copied().collect();
        let held: BTreeSet<i64> = locked
            .iter()
            .filter(|c| c.status == CouponStatus::Inactive && c.order_id.as_ref() == Some(&order.order_id))
            .map(|c| c.coupon_id)
            .collect();
        if !held.is_empty() && held != picked {
            return Err(refused(
                "ORDER_ALREADY_RESERVED",
                format!("order {} holds other coupons; cancel it first", order.order_id),
            ));
        }
        let pricing = price_picked(order, coupon_ids, &locked, now);
        let refusals = pricing.refusals();
        if !refusals.is_empty() {
            return Err(Error::CouponsNotApplicable(
                refusals
                    .into_iter()
                    .map(|(id, refusal)| (id, refusal.as_str()))
                    .collect(),
            ));
        }
        let replayed = held == picked;
        let coupons = if replayed {
            // The locked rows are the order's coupons as they stand.
            locked
                .into_iter()
                .filter(|c| picked.contains(&c.coupon_id))
                .collect()
        } else {
            let moved = db::coupons::reserve(&mut tx, account_id, coupon_ids, &order.order_id, now).await?;
            if moved.len() != coupon_ids.len() {
                return Err(anyhow::anyhow!(
                    "reserved {} of {} locked, applicable coupons",
                    moved.len(),
                    coupon_ids.len()
                )
                .into());
            }
            moved
        };
        db::commit(tx).await?;
        Ok(Reservation {
            pricing,
            coupons,
            replayed,
        })
    }

    /// The order closed: INACTIVE -> USED.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id))]
    pub async fn complete(&self, account_id: &AccountId, order_id: &OrderId) -> Result<Vec<Coupon>, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let actions = self.lock_order(&mut tx, account_id, order_id).await?;
        if actions.iter().any(|a| a == "cancel") {
            return Err(refused(
                "ORDER_CANCELLED",
                format!("order {order_id} was cancelled"),
            ));
        }
        db::coupons::complete(&mut tx, account_id, order_id, now).await?;
        let coupons =
            db::coupons::coupons_of_action(&mut tx, account_id, order_id, &["complete"], now).await?;
        db::commit(tx).await?;
        Ok(coupons)
    }

    /// The order was cancelled: INACTIVE -> VALID (EXPIRED when past expiry,
    /// REVOKED for a flagged member).
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id))]
    pub async fn cancel(&self, account_id: &AccountId, order_id: &OrderId) -> Result<Vec<Coupon>, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let actions = self.lock_order(&mut tx, account_id, order_id).await?;
        if actions.iter().any(|a| a == "complete") {
            return Err(refused(
                "ORDER_COMPLETED",
                format!("order {order_id} was completed; refund it instead"),
            ));
        }
        db::coupons::cancel(&mut tx, account_id, order_id, now).await?;
        let coupons = db::coupons::coupons_of_action(&mut tx, account_id, order_id, &["cancel"], now).await?;
        db::commit(tx).await?;
        Ok(coupons)
    }

    /// The order was refunded.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id))]
    pub async fn refund(
        &self,
        account_id: &AccountId,
        order_id: &OrderId,
        kind: RefundKind,
    ) -> Result<Vec<Coupon>, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let actions = self.lock_order(&mut tx, account_id, order_id).await?;
        if db::coupons::order_holds_coupons(&mut tx, account_id, order_id).await? {
            return Err(refused(
                "ORDER_NOT_COMPLETED",
                format!("order {order_id} is not completed yet"),
            ));
        }
        if actions.iter().any(|a| a == "cancel") {
            return Err(refused(
                "ORDER_CANCELLED",
                format!("order {order_id} was cancelled"),
            ));
        }
        db::coupons::refund(&mut tx, account_id, order_id, kind == RefundKind::Full, now).await?;
        let action = match kind {
            RefundKind::Full => "refund_full",
            RefundKind::Partial => "refund_partial",
        };
        let coupons = db::coupons::coupons_of_action(&mut tx, account_id, order_id, &[action], now).await?;
        db::commit(tx).await?;
        Ok(coupons)
    }

    /// Takes the order's lock (its operations take turns), then reads what was
    /// done to the order.
    async fn lock_order(
        &self,
        conn: &mut PgConnection,
        account_id: &AccountId,
        order_id: &OrderId,
    ) -> Result<Vec<String>, Error> {
        ensure_member(conn, account_id).await?;
        db::coupons::lock_order(conn, account_id, order_id).await?;
        Ok(db::coupons::order_actions(conn, account_id, order_id).await?)
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

/// Whether a template may issue now (before taking any stock).
fn check_issuable(template: &Template, now: DateTime<Utc>) -> Result<(), Error> {
    let id = &template.spec.template_id;
    if template.paused {
        return Err(refused("TEMPLATE_PAUSED", format!("template {id} is paused")));
    }
    if let Validity::Window { until, .. } = template.spec.validity
        && until <= now
    {
        return Err(refused("TEMPLATE_EXPIRED", format!("template {id} ended")));
    }
    if template
        .spec
        .total_stock
        .is_some_and(|stock| template.issued_count >= stock)
    {
        return Err(refused(
            "OUT_OF_STOCK",
            format!("template {id} has no stock left"),
        ));
    }
    Ok(())
}

async fn ensure_member(conn: &mut PgConnection, account_id: &AccountId) -> Result<(), Error> {
    db::members::is_flagged(conn, account_id)
        .await?
        .map(|_| ())
        .ok_or_else(|| member_not_found(account_id))
}

/// Prices the picked ids with the coupons found (missing ones are not the member's).
fn price_picked(
    order: &CheckoutOrder,
    coupon_ids: &[i64],
    coupons: &[Coupon],
    now: DateTime<Utc>,
) -> Pricing {
    let terms: Vec<CouponTerms> = coupons.iter().map(Coupon::terms).collect();
    let picked: Vec<(i64, Option<&CouponTerms>)> = coupon_ids
        .iter()
        .map(|id| (*id, terms.iter().find(|t| t.coupon_id == *id)))
        .collect();
    pricing::price(order, &picked, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_ignores_case_and_dashes() {
        let a = ClaimCode::parse("summer-25").unwrap();
        let b = ClaimCode::parse("SUMMER25").unwrap();
        assert_eq!(a.as_str(), "SUMMER-25");
        assert_eq!(a.hash(), b.hash());
        assert!(ClaimCode::parse("abc").is_err());
        assert!(ClaimCode::parse("has space").is_err());
    }

    #[test]
    fn generated_codes_are_distinct_and_parse_back() {
        let codes: BTreeSet<String> = (0..1000).map(|_| ClaimCode::generate().to_string()).collect();
        assert_eq!(codes.len(), 1000);
        for code in codes.iter().take(5) {
            assert_eq!(code.len(), 19);
            assert_eq!(ClaimCode::parse(code).unwrap().as_str(), code);
        }
    }
}
