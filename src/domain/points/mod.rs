//! Points (SPEC §2): earning events, caps, reversal, idempotency, balance, history.
//!
//! Every earning call runs as one transaction in the same shape:
//! 1. [`Points::begin_event`] inserts the event under its natural key (an order
//!    inserts it with its rows, [`db::points::insert_order_event`]). If the key
//!    is taken, the call is a retry: the original entries are returned (or
//!    `ALREADY_EXISTS` when the content differs) and nothing else happens.
//! 2. The source's rule decides the points; caps go through guarded counters in
//!    the database ([`db::points::bump_counter`]; for an order, in the event's
//!    own statement), which serialize concurrent events of one member and period.
//! 3. The entries are appended to the ledger and the transaction commits.

pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use crate::clock::Clock;
use crate::db;
use crate::db::points::{Counter, Inserted, NewEvent, NewOrderRows};
use crate::domain::calendar::{self, Calendar};
use crate::domain::ids::{AccountId, CampaignId, CategoryId, OrderId, PostId, ProductId, ReviewId};
use crate::domain::members::member_not_found;
use crate::domain::money::Money;
use crate::error::Error;
use rules::{EarningRules, capped_award};

/// What earned the points of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointsSource {
    Order,
    CategoryVariety,
    Review,
    Visit,
    Post,
    Bonus,
}

impl PointsSource {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PointsSource::Order => "order",
            PointsSource::CategoryVariety => "category_variety",
            PointsSource::Review => "review",
            PointsSource::Visit => "visit",
            PointsSource::Post => "post",
            PointsSource::Bonus => "bonus",
        }
    }

    /// Parses a stored name.
    pub fn from_db(name: &str) -> Option<Self> {
        [
            PointsSource::Order,
            PointsSource::CategoryVariety,
            PointsSource::Review,
            PointsSource::Visit,
            PointsSource::Post,
            PointsSource::Bonus,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// Why an entry earned fewer points than its rule gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReason {
    DailyCap,
    MonthlyCap,
    BelowMinimum,
    CurrencyNotEligible,
    MemberFlagged,
}

impl CapReason {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CapReason::DailyCap => "daily_cap",
            CapReason::MonthlyCap => "monthly_cap",
            CapReason::BelowMinimum => "below_minimum",
            CapReason::CurrencyNotEligible => "currency_not_eligible",
            CapReason::MemberFlagged => "member_flagged",
        }
    }

    /// Parses a stored name.
    pub fn from_db(name: &str) -> Option<Self> {
        [
            CapReason::DailyCap,
            CapReason::MonthlyCap,
            CapReason::BelowMinimum,
            CapReason::CurrencyNotEligible,
            CapReason::MemberFlagged,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

/// Why a confirmed order is reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalReason {
    Returned,
    Fraud,
}

/// Where a visit happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisitChannel {
    Web,
    App,
}

/// One entry of the points ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointEntry {
    pub entry_id: i64,
    pub account_id: AccountId,
    pub source: PointsSource,
    pub reference: String,
    pub points: i32,
    pub cap_reason: Option<CapReason>,
    pub occurred_at: DateTime<Utc>,
    /// The program-time-zone date the points count for.
    pub local_date: NaiveDate,
    pub recorded_at: DateTime<Utc>,
    pub reverses_entry_id: Option<i64>,
}

/// An entry about to be appended.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub source: PointsSource,
    pub reference: String,
    pub points: i32,
    pub cap_reason: Option<CapReason>,
    pub occurred_at: DateTime<Utc>,
    pub local_date: NaiveDate,
}

/// The result of an earning (or reversing) call.
#[derive(Debug, Clone)]
pub struct Award {
    /// The entries the event created, in ledger order.
    pub entries: Vec<PointEntry>,
    /// True when the call was a retry of an event already recorded.
    pub replayed: bool,
}

impl Award {
    /// The sum of the entries' points.
    pub fn points(&self) -> i32 {
        self.entries.iter().map(|e| e.points).sum()
    }
}

/// An order whose buyer confirmed receipt.
#[derive(Debug, Clone)]
pub struct ConfirmedOrder {
    pub account_id: AccountId,
    pub order_id: OrderId,
    pub amount: Money,
    pub confirmed_at: DateTime<Utc>,
    /// Distinct products, sorted by product id, each with its category.
    products: Vec<(ProductId, CategoryId)>,
}

/// The most products one order may report.
pub const MAX_ORDER_PRODUCTS: usize = 1000;

impl ConfirmedOrder {
    /// Validates an order: 1 to 1000 products; a product listed twice must have
    /// the same category both times (the duplicate is then dropped).
    pub fn new(
        account_id: AccountId,
        order_id: OrderId,
        amount: Money,
        confirmed_at: DateTime<Utc>,
        products: Vec<(ProductId, CategoryId)>,
    ) -> Result<Self, Error> {
        if products.is_empty() || products.len() > MAX_ORDER_PRODUCTS {
            return Err(Error::invalid(
                "products",
                format!("an order must list 1 to {MAX_ORDER_PRODUCTS} products"),
            ));
        }
        let mut distinct: BTreeMap<ProductId, CategoryId> = BTreeMap::new();
        for (i, (product, category)) in products.into_iter().enumerate() {
            if let Some(known) = distinct.get(&product) {
                if *known != category {
                    return Err(Error::invalid(
                        format!("products[{i}].category_id"),
                        format!("product {product} is listed with two categories ({known} and {category})"),
                    ));
                }
                continue;
            }
            distinct.insert(product, category);
        }
        Ok(Self {
            account_id,
            order_id,
            amount,
            confirmed_at,
            products: distinct.into_iter().collect(),
        })
    }

    /// The distinct products with their categories, sorted by product id.
    pub fn products(&self) -> &[(ProductId, CategoryId)] {
        &self.products
    }

    /// The idempotency content: everything the order reported.
    fn content(&self) -> serde_json::Value {
        json!({
            "amount_minor": self.amount.minor(),
            "currency": self.amount.currency().as_str(),
            "confirmed_at": instant_text(self.confirmed_at),
            "products": self.products.iter()
                .map(|(p, c)| [p.as_str(), c.as_str()])
                .collect::<Vec<_>>(),
        })
    }
}

/// A returned or fraudulent order to reverse.
#[derive(Debug, Clone)]
pub struct OrderReversal {
    pub account_id: AccountId,
    pub order_id: OrderId,
    pub reason: ReversalReason,
    pub reversed_at: DateTime<Utc>,
}

/// A published review of a product of a confirmed order.
#[derive(Debug, Clone)]
pub struct Review {
    pub account_id: AccountId,
    pub review_id: ReviewId,
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub published_at: DateTime<Utc>,
}

/// A visit of the web site or app.
#[derive(Debug, Clone)]
pub struct Visit {
    pub account_id: AccountId,
    pub channel: VisitChannel,
    pub visited_at: DateTime<Utc>,
}

/// A published community post.
#[derive(Debug, Clone)]
pub struct Post {
    pub account_id: AccountId,
    pub post_id: PostId,
    pub published_at: DateTime<Utc>,
}

/// A campaign bonus.
#[derive(Debug, Clone)]
pub struct Bonus {
    pub account_id: AccountId,
    pub campaign_id: CampaignId,
    pub points: i32,
    pub description: String,
    pub granted_at: DateTime<Utc>,
}

/// A member's points at the time of the call (SPEC §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub account_id: AccountId,
    /// Points of the window the next evaluation uses: this month and the 11 before.
    pub window_points: i64,
    pub window_start: NaiveDate,
    pub window_end: NaiveDate,
    pub current_month_points: i64,
    pub lifetime_points: i64,
    /// Points of the month before the window: counted by the previous evaluation,
    /// not by the next.
    pub leaving_points: i64,
    pub leaving_month: NaiveDate,
}

/// A page request of a member's history.
#[derive(Debug, Clone)]
pub struct EntryQuery {
    pub account_id: AccountId,
    pub page_size: u32,
    /// Only entries older than this entry id (the cursor of the previous page).
    pub before_entry_id: Option<i64>,
    /// Only these sources; empty for all.
    pub sources: Vec<PointsSource>,
    /// Only entries that occurred at or after this instant.
    pub start_time: Option<DateTime<Utc>>,
    /// Only entries that occurred before this instant.
    pub end_time: Option<DateTime<Utc>>,
}

/// One page of a member's history, newest first.
#[derive(Debug, Clone)]
pub struct EntryPage {
    pub entries: Vec<PointEntry>,
    /// The cursor of the next page; `None` on the last page.
    pub next_before_entry_id: Option<i64>,
}

/// Kinds of earning events, each with its own natural-key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Order,
    OrderReversal,
    Review,
    Visit,
    Post,
    Bonus,
}

impl EventKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Order => "order",
            EventKind::OrderReversal => "order_reversal",
            EventKind::Review => "review",
            EventKind::Visit => "visit",
            EventKind::Post => "post",
            EventKind::Bonus => "bonus",
        }
    }

    /// Whether a retry with other content is refused. A visit's key is its local
    /// day: every later visit of the day is the day's visit again. A reversal of a
    /// reversed order is a no-op, whatever its reason.
    fn compares_content(self) -> bool {
        !matches!(self, EventKind::Visit | EventKind::OrderReversal)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn instant_text(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// How an earning transaction starts.
enum Begun {
    /// The event is new: decide its points.
    New { event_id: i64, flagged: bool },
    /// The event was recorded before: its original entries.
    Replay(Vec<PointEntry>),
}

/// Points operations.
#[derive(Clone)]
pub struct Points {
    pool: PgPool,
    rules: Arc<EarningRules>,
    calendar: Calendar,
    clock: Arc<dyn Clock>,
}

impl Points {
    /// Points operations over `pool`.
    pub fn new(pool: PgPool, rules: EarningRules, calendar: Calendar, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            rules: Arc::new(rules),
            calendar,
            clock,
        }
    }

    /// Records a confirmed order: order points and category-variety points.
    #[tracing::instrument(skip_all, fields(account_id = %order.account_id, order_id = %order.order_id))]
    pub async fn record_order(&self, order: &ConfirmedOrder) -> Result<Award, Error> {
        let rules = &self.rules;
        let account = &order.account_id;
        let local_date = self.calendar.local_date(order.confirmed_at);
        let mut tx = db::begin(&self.pool).await?;
        let event = NewEvent {
            account_id: account,
            kind: EventKind::Order,
            natural_key: order.order_id.as_str(),
            content: order.content(),
            occurred_at: order.confirmed_at,
        };
        // Sorted, so concurrent orders lock category keys in one order.
        let mut categories: Vec<&CategoryId> = order.products().iter().map(|(_, c)| c).collect();
        categories.sort();
        categories.dedup();
        // Why the order earns no order points, whoever the member is.
        let ineligible = if order.amount.currency() != rules.order_minimum.currency() {
            Some(CapReason::CurrencyNotEligible)
        } else if order.amount.minor() < rules.order_minimum.minor() {
            Some(CapReason::BelowMinimum)
        } else {
            None
        };
        let rows = NewOrderRows {
            order_id: &order.order_id,
            products: order.products(),
            local_date,
            categories: &categories,
            eligible: ineligible.is_none(),
            order_points: rules.order_points.into(),
        };
        // The event and, when it is new, the order's rows and counters: one
        // statement (a flagged member's categories are not counted).
        let (inserted, rows) =
            db::points::insert_order_event(&mut tx, &event, self.clock.now(), &rows).await?;
        let (event_id, flagged) = match self.begun(&mut tx, &event, inserted).await? {
            Begun::Replay(entries) => return Ok(replay(entries)),
            Begun::New { event_id, flagged } => (event_id, flagged),
        };
        // A flagged member earns nothing.
        let ineligible = if flagged {
            Some(CapReason::MemberFlagged)
        } else {
            ineligible
        };
        let (points, cap_reason) = if let Some(reason) = ineligible {
            (0, Some(reason))
        } else {
            let (before, after) = rows
                .order_points
                .ok_or_else(|| anyhow::anyhow!("the order counter of an eligible order was not bumped"))?;
            let awarded = capped_award(before, after, rules.order_daily_cap);
            (
                awarded,
                (awarded < rules.order_points).then_some(CapReason::DailyCap),
            )
        };
        let mut entries = vec![NewEntry {
            source: PointsSource::Order,
            reference: order.order_id.to_string(),
            points,
            cap_reason,
            occurred_at: order.confirmed_at,
            local_date,
        }];

        if let Some((before, after)) = rows.categories {
            let demand = rules.variety_demand(after) - rules.variety_demand(before);
            if demand > 0 {
                let awarded = capped_award(
                    rules.variety_demand(before),
                    rules.variety_demand(after),
                    rules.variety_daily_cap,
                );
                entries.push(NewEntry {
                    source: PointsSource::CategoryVariety,
                    reference: order.order_id.to_string(),
                    points: awarded,
                    cap_reason: (i64::from(awarded) < demand).then_some(CapReason::DailyCap),
                    occurred_at: order.confirmed_at,
                    local_date,
                });
            }
        }
        self.finish(tx, account, event_id, &entries).await
    }

    /// Reverses every point a confirmed order earned, once.
    #[tracing::instrument(skip_all, fields(account_id = %reversal.account_id, order_id = %reversal.order_id))]
    pub async fn reverse_order(&self, reversal: &OrderReversal) -> Result<Award, Error> {
        let account = &reversal.account_id;
        let mut tx = db::begin(&self.pool).await?;
        let event = NewEvent {
            account_id: account,
            kind: EventKind::OrderReversal,
            natural_key: reversal.order_id.as_str(),
            content: json!({
                "reason": match reversal.reason {
                    ReversalReason::Returned => "returned",
                    ReversalReason::Fraud => "fraud",
                },
                "reversed_at": instant_text(reversal.reversed_at),
            }),
            occurred_at: reversal.reversed_at,
        };
        let event_id = match self.begin_event(&mut tx, &event).await? {
            Begun::Replay(entries) => return Ok(replay(entries)),
            Begun::New { event_id, .. } => event_id,
        };
        let order_event_id =
            db::points::find_event(&mut tx, account, EventKind::Order, reversal.order_id.as_str())
                .await?
                .map(|found| found.earning_event_id)
                .ok_or_else(|| Error::NotFound {
                    reason: "ORDER_NOT_FOUND",
                    message: format!(
                        "order {} of account {account} was never recorded as confirmed",
                        reversal.order_id
                    ),
                })?;
        let entries = db::points::insert_reversals(
            &mut tx,
            account,
            event_id,
            order_event_id,
            reversal.reversed_at,
            self.clock.now(),
        )
        .await?;
        db::commit(tx).await?;
        Ok(Award {
            entries,
            replayed: false,
        })
    }

    /// Records a review of a product of an order the member confirmed.
    #[tracing::instrument(skip_all, fields(account_id = %review.account_id, order_id = %review.order_id))]
    pub async fn record_review(&self, review: &Review) -> Result<Award, Error> {
        let account = &review.account_id;
        let reference = format!("{}/{}", review.order_id, review.product_id);
        let mut tx = db::begin(&self.pool).await?;
        let event = NewEvent {
            account_id: account,
            kind: EventKind::Review,
            natural_key: &reference,
            content: json!({
                "review_id": review.review_id.as_str(),
                "published_at": instant_text(review.published_at),
            }),
            occurred_at: review.published_at,
        };
        let (event_id, flagged) = match self.begin_event(&mut tx, &event).await? {
            Begun::Replay(entries) => return Ok(replay(entries)),
            Begun::New { event_id, flagged } => (event_id, flagged),
        };
        if !db::points::order_has_product(&mut tx, account, &review.order_id, &review.product_id).await? {
            return Err(Error::FailedPrecondition {
                reason: "ORDER_PRODUCT_NOT_CONFIRMED",
                message: format!(
                    "account {account} has no confirmed order {} with product {}",
                    review.order_id, review.product_id
                ),
            });
        }
        let (points, cap_reason) = if flagged {
            (0, Some(CapReason::MemberFlagged))
        } else {
            (self.rules.review_points, None)
        };
        let entry = NewEntry {
            source: PointsSource::Review,
            reference,
            points,
            cap_reason,
            occurred_at: review.published_at,
            local_date: self.calendar.local_date(review.published_at),
        };
        self.finish(tx, account, event_id, &[entry]).await
    }

    /// Records a visit; the first of its local day earns, within the monthly cap.
    #[tracing::instrument(skip_all, fields(account_id = %visit.account_id))]
    pub async fn record_visit(&self, visit: &Visit) -> Result<Award, Error> {
        let account = &visit.account_id;
        let local_date = self.calendar.local_date(visit.visited_at);
        let day = local_date.to_string();
        let mut tx = db::begin(&self.pool).await?;
        let event = NewEvent {
            account_id: account,
            kind: EventKind::Visit,
            natural_key: &day,
            content: json!({
                "channel": match visit.channel {
                    VisitChannel::Web => "web",
                    VisitChannel::App => "app",
                },
                "visited_at": instant_text(visit.visited_at),
            }),
            occurred_at: visit.visited_at,
        };
        let (event_id, flagged) = match self.begin_event(&mut tx, &event).await? {
            Begun::Replay(entries) => return Ok(replay(entries)),
            Begun::New { event_id, flagged } => (event_id, flagged),
        };
        let (points, cap_reason) = self
            .monthly_capped(
                &mut tx,
                account,
                flagged,
                (
                    Counter::VisitPoints,
                    self.rules.visit_points,
                    self.rules.visit_monthly_cap,
                ),
                local_date,
            )
            .await?;
        let entry = NewEntry {
            source: PointsSource::Visit,
            reference: day,
            points,
            cap_reason,
            occurred_at: visit.visited_at,
            local_date,
        };
        self.finish(tx, account, event_id, &[entry]).await
    }

    /// Records a community post, within the monthly cap.
    #[tracing::instrument(skip_all, fields(account_id = %post.account_id, post_id = %post.post_id))]
    pub async fn record_post(&self, post: &Post) -> Result<Award, Error> {
        let account = &post.account_id;
        let local_date = self.calendar.local_date(post.published_at);
        let mut tx = db::begin(&self.pool).await?;
        let event = NewEvent {
            account_id: account,
            kind: EventKind::Post,
            natural_key: post.post_id.as_str(),
            content: json!({ "published_at": instant_text(post.published_at) }),
            occurred_at: post.published_at,
        };
        let (event_id, flagged) = match self.begin_event(&mut tx, &event).await? {
            Begun::Replay(entries) => return Ok(replay(entries)),
            Begun::New { event_id, flagged } => (event_id, flagged),
        };
        let (points, cap_reason) = self
            .monthly_capped(
                &mut tx,
                account,
                flagged,
                (
                    Counter::PostPoints,
                    self.rules.post_points,
                    self.rules.post_monthly_cap,
                ),
                local_date,
            )
            .await?;
        let entry = NewEntry {
            source: PointsSource::Post,
            reference: post.post_id.to_string(),
            points,
            cap_reason,
            occurred_at: post.published_at,
            local_date,
        };
        self.finish(tx, account, event_id, &[entry]).await
    }

    /// Grants a campaign bonus, once per (campaign, account).
    #[tracing::instrument(skip_all, fields(account_id = %bonus.account_id, campaign_id = %bonus.campaign_id))]
    pub async fn grant_bonus(&self, bonus: &Bonus) -> Result<Award, Error> {
        if !(1..=self.rules.bonus_max).contains(&bonus.points) {
            return Err(Error::invalid(
                "points",
                format!("must be 1 to {} (got {})", self.rules.bonus_max, bonus.points),
            ));
        }
        let account = &bonus.account_id;
        let mut tx = db::begin(&self.pool).await?;
        let event = NewEvent {
            account_id: account,
            kind: EventKind::Bonus,
            natural_key: bonus.campaign_id.as_str(),
            content: json!({ "points": bonus.points, "description": bonus.description }),
            occurred_at: bonus.granted_at,
        };
        let (event_id, flagged) = match self.begin_event(&mut tx, &event).await? {
            Begun::Replay(entries) => return Ok(replay(entries)),
            Begun::New { event_id, flagged } => (event_id, flagged),
        };
        let (points, cap_reason) = if flagged {
            (0, Some(CapReason::MemberFlagged))
        } else {
            (bonus.points, None)
        };
        let entry = NewEntry {
            source: PointsSource::Bonus,
            reference: bonus.campaign_id.to_string(),
            points,
            cap_reason,
            occurred_at: bonus.granted_at,
            local_date: self.calendar.local_date(bonus.granted_at),
        };
        self.finish(tx, account, event_id, &[entry]).await
    }

    /// The member's balance now.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn balance(&self, account_id: &AccountId) -> Result<Balance, Error> {
        let today = self.calendar.local_date(self.clock.now());
        let window_start = calendar::months_before(today, 11);
        let leaving_month = calendar::months_before(today, 12);
        let month_start = calendar::month_start(today);
        let mut conn = db::acquire(&self.pool).await?;
        let sums = db::points::balance_sums(&mut conn, account_id, window_start, month_start, leaving_month)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        Ok(Balance {
            account_id: account_id.clone(),
            window_points: sums.window_points,
            window_start,
            window_end: calendar::month_end(today),
            current_month_points: sums.month_points,
            lifetime_points: sums.lifetime_points,
            leaving_points: sums.leaving_points,
            leaving_month,
        })
    }

    /// One page of the member's history, newest first.
    #[tracing::instrument(skip_all, fields(account_id = %query.account_id))]
    pub async fn list_entries(&self, query: &EntryQuery) -> Result<EntryPage, Error> {
        if let (Some(start), Some(end)) = (query.start_time, query.end_time)
            && end <= start
        {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        let mut conn = db::acquire(&self.pool).await?;
        let mut entries = db::points::list_entries(&mut conn, query, query.page_size + 1).await?;
        if entries.is_empty()
            && db::members::is_flagged(&mut conn, &query.account_id)
                .await?
                .is_none()
        {
            return Err(member_not_found(&query.account_id));
        }
        let next_before_entry_id = if entries.len() > query.page_size as usize {
            entries.truncate(query.page_size as usize);
            entries.last().map(|e| e.entry_id)
        } else {
            None
        };
        Ok(EntryPage {
            entries,
            next_before_entry_id,
        })
    }

    /// Inserts the event under its natural key, or finds the original.
    async fn begin_event(&self, conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<Begun, Error> {
        let inserted = db::points::insert_event(conn, event, self.clock.now()).await?;
        self.begun(conn, event, inserted).await
    }

    /// What the insert of an event found: a new event, or the original's
    /// entries when the call is a retry.
    async fn begun(
        &self,
        conn: &mut PgConnection,
        event: &NewEvent<'_>,
        inserted: Inserted,
    ) -> Result<Begun, Error> {
        match inserted {
            Inserted::NoMember => return Err(member_not_found(event.account_id)),
            Inserted::New { event_id, flagged } => return Ok(Begun::New { event_id, flagged }),
            Inserted::Taken => {}
        }
        let existing = db::points::find_event(conn, event.account_id, event.kind, event.natural_key)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} event {} vanished after a conflict",
                    event.kind,
                    event.natural_key
                )
            })?;
        if event.kind.compares_content() && existing.content != event.content {
            return Err(Error::AlreadyExists {
                reason: "IDEMPOTENCY_KEY_REUSED",
                message: format!(
                    "{} {} was already recorded with other content",
                    event.kind, event.natural_key
                ),
            });
        }
        let entries = db::points::entries_of_event(conn, event.account_id, existing.earning_event_id).await?;
        Ok(Begun::Replay(entries))
    }

    /// The points of a monthly-capped source (visits, posts): `points` within
    /// `cap` per local month, counted on `counter`.
    async fn monthly_capped(
        &self,
        conn: &mut PgConnection,
        account_id: &AccountId,
        flagged: bool,
        (counter, points, cap): (Counter, i32, i32),
        local_date: NaiveDate,
    ) -> Result<(i32, Option<CapReason>), Error> {
        if flagged {
            return Ok((0, Some(CapReason::MemberFlagged)));
        }
        let (before, after) = db::points::bump_counter(
            conn,
            account_id,
            counter,
            calendar::month_start(local_date),
            points.into(),
        )
        .await?;
        let awarded = capped_award(before, after, cap);
        Ok((awarded, (awarded < points).then_some(CapReason::MonthlyCap)))
    }

    /// Appends the entries and commits.
    async fn finish(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        account_id: &AccountId,
        event_id: i64,
        entries: &[NewEntry],
    ) -> Result<Award, Error> {
        let entries =
            db::points::insert_entries(&mut tx, account_id, event_id, entries, self.clock.now()).await?;
        db::commit(tx).await?;
        Ok(Award {
            entries,
            replayed: false,
        })
    }
}

fn replay(entries: Vec<PointEntry>) -> Award {
    Award {
        entries,
        replayed: true,
    }
}
