//! Checkout pricing (SPEC §4.3): which picked coupons apply to an order, their
//! discounts, and how each discount splits over the lines. Pure: no I/O, and the
//! business time is a parameter.
//!
//! - Stacking: at most one platform coupon, and one seller coupon per seller; the
//!   first picked wins, later ones get `StackingConflict`.
//! - Seller coupons apply first, each to its seller's eligible lines; then the
//!   platform coupon to the eligible lines of the whole order, after the seller
//!   discounts. A regular-price-only coupon ignores sale-priced lines.
//! - A discount never exceeds the amount it applies to. A percentage rounds down
//!   to the minor unit (the buyer never gets a fraction of a cent more than the
//!   percentage), then its maximum applies.
//! - Each discount is split over its lines in proportion to their amounts, in
//!   whole minor units that add up exactly (largest remainder; ties to the
//!   earlier line).
//! - Best choice ([`best`]): the combination of the member's coupons with the
//!   largest discount, searched within a time budget (see the `best` module).
//!
//! Only the best choice's search reads a clock: the monotonic one, for its deadline.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::ids::{AccountId, CategoryId, LineId, OrderId, ProductId, SellerId};
use crate::domain::money::Currency;
use crate::error::Error;

mod best;

pub use best::{BEST_CHOICE_BUDGET, MAX_SEARCH_NODES, best};

/// Who funds a coupon and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    Platform,
    Seller(SellerId),
}

/// A coupon's discount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// A fixed amount off, in minor units.
    AmountOff(i64),
    /// A percentage in basis points (1 to 10000), with an optional maximum.
    PercentOff {
        basis_points: u32,
        max_minor: Option<i64>,
    },
}

impl Discount {
    /// The discount on an eligible amount: never more than the amount.
    pub fn on(&self, eligible: i64) -> i64 {
        let raw = match *self {
            Discount::AmountOff(amount) => amount,
            Discount::PercentOff {
                basis_points,
                max_minor,
            } => {
                // i128: amount * 10000 cannot overflow.
                let percent = i128::from(eligible) * i128::from(basis_points) / 10_000;
                let percent = i64::try_from(percent).unwrap_or(i64::MAX);
                max_minor.map_or(percent, |max| percent.min(max))
            }
        };
        raw.clamp(0, eligible.max(0))
    }
}

/// The status of a coupon. Stored as text (`valid`, `inactive`, ...): this
/// derive is the one mapping between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Deserialize)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CouponStatus {
    Valid,
    Inactive,
    Used,
    Expired,
    Revoked,
}

/// Why a picked coupon does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotOwner,
    NotYetValid,
    Expired,
    AlreadyApplied,
    Used,
    Revoked,
    MinPurchaseNotMet,
    WrongSeller,
    NoEligibleLines,
    CurrencyMismatch,
    StackingConflict,
}

impl Refusal {
    /// The machine-readable name (as in the proto, without its prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotOwner => "NOT_OWNER",
            Refusal::NotYetValid => "NOT_YET_VALID",
            Refusal::Expired => "EXPIRED",
            Refusal::AlreadyApplied => "ALREADY_APPLIED",
            Refusal::Used => "USED",
            Refusal::Revoked => "REVOKED",
            Refusal::MinPurchaseNotMet => "MIN_PURCHASE_NOT_MET",
            Refusal::WrongSeller => "WRONG_SELLER",
            Refusal::NoEligibleLines => "NO_ELIGIBLE_LINES",
            Refusal::CurrencyMismatch => "CURRENCY_MISMATCH",
            Refusal::StackingConflict => "STACKING_CONFLICT",
        }
    }
}

/// A coupon as the checkout sees it: its terms and its state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponTerms {
    pub coupon_id: i64,
    pub account_id: AccountId,
    /// The stored status (an expired VALID coupon is caught by `expires_at`).
    pub status: CouponStatus,
    /// The order an INACTIVE coupon is reserved for.
    pub order_id: Option<OrderId>,
    pub issuer: Issuer,
    pub discount: Discount,
    pub currency: Currency,
    pub min_purchase: i64,
    pub regular_price_only: bool,
    pub valid_from: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A line of an order at checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutLine {
    pub line_id: LineId,
    pub seller_id: SellerId,
    pub product_id: ProductId,
    pub category_id: CategoryId,
    pub unit_price: i64,
    pub quantity: u32,
    pub sale_price: bool,
}

/// The most lines one order may have.
pub const MAX_LINES: usize = 500;
/// The largest quantity of one line.
pub const MAX_QUANTITY: u32 = 10_000;
/// The most coupons one checkout call may name.
pub const MAX_PICKED: usize = 20;

/// A validated order at checkout.
#[derive(Debug, Clone)]
pub struct CheckoutOrder {
    pub order_id: OrderId,
    pub account_id: AccountId,
    pub currency: Currency,
    lines: Vec<CheckoutLine>,
    /// Unit price times quantity, per line.
    amounts: Vec<i64>,
}

impl CheckoutOrder {
    /// Validates the lines: 1 to 500, unique ids, non-negative prices, quantities
    /// 1 to 10000, and amounts that fit (no overflow anywhere in the order).
    pub fn new(
        order_id: OrderId,
        account_id: AccountId,
        currency: Currency,
        lines: Vec<CheckoutLine>,
    ) -> Result<Self, Error> {
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(Error::invalid(
                "order.lines",
                format!("an order has 1 to {MAX_LINES} lines"),
            ));
        }
        let mut seen = HashMap::new();
        let mut amounts = Vec::with_capacity(lines.len());
        let mut subtotal: i64 = 0;
        for (i, line) in lines.iter().enumerate() {
            if let Some(first) = seen.insert(&line.line_id, i) {
                return Err(Error::invalid(
                    format!("order.lines[{i}].line_id"),
                    format!("repeats the id of line {first}"),
                ));
            }
            if line.unit_price < 0 {
                return Err(Error::invalid(
                    format!("order.lines[{i}].unit_price.amount_minor"),
                    "must not be negative",
                ));
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(Error::invalid(
                    format!("order.lines[{i}].quantity"),
                    format!("must be 1 to {MAX_QUANTITY}"),
                ));
            }
            let amount = line
                .unit_price
                .checked_mul(i64::from(line.quantity))
                .and_then(|amount| subtotal.checked_add(amount).map(|total| (amount, total)));
            let Some((amount, total)) = amount else {
                return Err(Error::invalid(
                    format!("order.lines[{i}]"),
                    "the order's amount is too large",
                ));
            };
            subtotal = total;
            amounts.push(amount);
        }
        Ok(Self {
            order_id,
            account_id,
            currency,
            lines,
            amounts,
        })
    }

    /// The lines, in order.
    pub fn lines(&self) -> &[CheckoutLine] {
        &self.lines
    }

    /// Sum of the line amounts.
    pub fn subtotal(&self) -> i64 {
        self.amounts.iter().sum()
    }
}

/// The outcome of one picked coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponOutcome {
    pub coupon_id: i64,
    /// The discount and its split over lines `(line index, minor units)`, or why not.
    pub result: Result<Applied, Refusal>,
}

/// An applied coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub discount: i64,
    pub allocations: Vec<(usize, i64)>,
}

/// A priced order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    /// One per picked coupon, in the order picked.
    pub coupons: Vec<CouponOutcome>,
    /// Per line: (amount, discount).
    pub lines: Vec<(i64, i64)>,
    pub subtotal: i64,
    pub discount: i64,
}

impl Pricing {
    /// The order total after discounts.
    pub fn total(&self) -> i64 {
        self.subtotal - self.discount
    }

    /// Whether every picked coupon applies.
    pub fn all_applicable(&self) -> bool {
        self.coupons.iter().all(|c| c.result.is_ok())
    }

    /// The refused coupons with their reasons.
    pub fn refusals(&self) -> Vec<(i64, Refusal)> {
        self.coupons
            .iter()
            .filter_map(|c| c.result.as_ref().err().map(|r| (c.coupon_id, *r)))
            .collect()
    }
}

/// Splits `total` over `weights` in proportion, in whole units adding up to
/// `total` exactly: each gets the floor of its share, and the units left go to
/// the largest remainders (ties to the earlier index). With `total <= sum`,
/// no part exceeds its weight.
pub fn allocate(total: i64, weights: &[i64]) -> Vec<i64> {
    let sum: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    if sum <= 0 || total <= 0 {
        return vec![0; weights.len()];
    }
    let total = i128::from(total);
    let mut parts: Vec<i128> = weights.iter().map(|w| total * i128::from(*w) / sum).collect();
    let remainders: Vec<i128> = weights.iter().map(|w| total * i128::from(*w) % sum).collect();
    let left = total - parts.iter().sum::<i128>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| remainders[b].cmp(&remainders[a]).then(a.cmp(&b)));
    for &i in order.iter().take(usize::try_from(left).unwrap_or(0)) {
        parts[i] += 1;
    }
    parts.into_iter().map(|p| i64::try_from(p).unwrap_or(0)).collect()
}

/// Whether a coupon can be used on `order` at `now`, before looking at amounts.
fn usable(order: &CheckoutOrder, coupon: &CouponTerms, now: DateTime<Utc>) -> Result<(), Refusal> {
    if coupon.account_id != order.account_id {
        return Err(Refusal::NotOwner);
    }
    match coupon.status {
        CouponStatus::Revoked => return Err(Refusal::Revoked),
        CouponStatus::Used => return Err(Refusal::Used),
        CouponStatus::Expired => return Err(Refusal::Expired),
        // Reserved by this very order: a retried reservation (it stays usable
        // for its order even if it expired meanwhile).
        CouponStatus::Inactive if coupon.order_id.as_ref() == Some(&order.order_id) => {}
        CouponStatus::Inactive => return Err(Refusal::AlreadyApplied),
        CouponStatus::Valid if now >= coupon.expires_at => return Err(Refusal::Expired),
        CouponStatus::Valid if now < coupon.valid_from => return Err(Refusal::NotYetValid),
        CouponStatus::Valid => {}
    }
    if coupon.currency != order.currency {
        return Err(Refusal::CurrencyMismatch);
    }
    Ok(())
}

/// Prices `order` with the picked coupons (`None`: no such coupon for this
/// account), in the order picked.
pub fn price(order: &CheckoutOrder, picked: &[(i64, Option<&CouponTerms>)], now: DateTime<Utc>) -> Pricing {
    let mut results: Vec<Option<Result<Applied, Refusal>>> = vec![None; picked.len()];
    // Stacking, first picked wins: index of the platform coupon and per seller.
    let mut platform: Option<usize> = None;
    let mut sellers: Vec<(usize, &SellerId)> = Vec::new();
    for (i, (_, coupon)) in picked.iter().enumerate() {
        let Some(coupon) = coupon else {
            results[i] = Some(Err(Refusal::NotOwner));
            continue;
        };
        if let Err(refusal) = usable(order, coupon, now) {
            results[i] = Some(Err(refusal));
            continue;
        }
        let taken = match &coupon.issuer {
            Issuer::Platform => platform.is_some(),
            Issuer::Seller(seller) => sellers.iter().any(|(_, s)| *s == seller),
        };
        match &coupon.issuer {
            _ if taken => results[i] = Some(Err(Refusal::StackingConflict)),
            Issuer::Platform => platform = Some(i),
            Issuer::Seller(seller) => sellers.push((i, seller)),
        }
    }

    let mut line_discounts = vec![0i64; order.lines.len()];
    let eligible =
        |coupon: &CouponTerms, line: &CheckoutLine| !(coupon.regular_price_only && line.sale_price);
    // Seller coupons, each on its seller's eligible lines.
    for &(i, seller) in &sellers {
        let coupon = picked[i]
            .1
            .unwrap_or_else(|| unreachable!("stacked coupons exist"));
        let of_seller: Vec<usize> = (0..order.lines.len())
            .filter(|&l| order.lines[l].seller_id == *seller)
            .collect();
        let lines: Vec<usize> = of_seller
            .iter()
            .copied()
            .filter(|&l| eligible(coupon, &order.lines[l]))
            .collect();
        results[i] = Some(apply(
            coupon,
            &lines,
            &order.amounts,
            &mut line_discounts,
            of_seller.is_empty(),
        ));
    }
    // Then the platform coupon, on what the seller discounts left.
    if let Some(i) = platform {
        let coupon = picked[i]
            .1
            .unwrap_or_else(|| unreachable!("stacked coupons exist"));
        let lines: Vec<usize> = (0..order.lines.len())
            .filter(|&l| eligible(coupon, &order.lines[l]))
            .collect();
        let after_sellers: Vec<i64> = order
            .amounts
            .iter()
            .zip(&line_discounts)
            .map(|(a, d)| a - d)
            .collect();
        results[i] = Some(apply(coupon, &lines, &after_sellers, &mut line_discounts, false));
    }

    let coupons: Vec<CouponOutcome> = picked
        .iter()
        .zip(results)
        .map(|((coupon_id, _), result)| CouponOutcome {
            coupon_id: *coupon_id,
            result: result.unwrap_or(Err(Refusal::StackingConflict)),
        })
        .collect();
    let discount = line_discounts.iter().sum();
    Pricing {
        coupons,
        lines: order.amounts.iter().copied().zip(line_discounts).collect(),
        subtotal: order.subtotal(),
        discount,
    }
}

/// Applies one coupon to `lines` (indexes) whose current amounts are `bases`,
/// adding its allocation to `line_discounts`.
fn apply(
    coupon: &CouponTerms,
    lines: &[usize],
    bases: &[i64],
    line_discounts: &mut [i64],
    wrong_seller: bool,
) -> Result<Applied, Refusal> {
    if wrong_seller {
        return Err(Refusal::WrongSeller);
    }
    if lines.is_empty() {
        return Err(Refusal::NoEligibleLines);
    }
    let weights: Vec<i64> = lines.iter().map(|&l| bases[l]).collect();
    let eligible: i64 = weights.iter().sum();
    // Nothing left to discount (free lines, or seller coupons took it all): the
    // coupon would be spent for nothing.
    if eligible == 0 {
        return Err(Refusal::NoEligibleLines);
    }
    if eligible < coupon.min_purchase {
        return Err(Refusal::MinPurchaseNotMet);
    }
    let discount = coupon.discount.on(eligible);
    let shares = allocate(discount, &weights);
    let mut allocations = Vec::with_capacity(lines.len());
    for (&line, share) in lines.iter().zip(shares) {
        line_discounts[line] += share;
        allocations.push((line, share));
    }
    Ok(Applied {
        discount,
        allocations,
    })
}

#[cfg(test)]
mod tests;
