//! Refunds of a completed order, whole or line by line, idempotent by refund
//! id. Each refund claws back, per line and coupon, a share of the allocation
//! stored at reservation; refunds that together return every unit count as the
//! full refund, which restores the platform coupon once (SPEC §4.2).

use std::collections::HashMap;

use super::checkout::apply;
use super::orders::lock_order;
use super::*;
use crate::db::coupons::Change;

/// The most refunds one order takes before the one that returns the rest of
/// it: an order's answer lists its refunds, so their number stays bounded.
pub const MAX_REFUNDS_PER_ORDER: usize = 100;

impl Coupons {
    /// Refunds `extent` of a completed order as refund `refund_id`.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id, refund_id = %refund_id))]
    pub async fn refund(
        &self,
        account_id: &AccountId,
        order_id: &OrderId,
        refund_id: &RefundId,
        extent: &RefundExtent,
    ) -> Result<Refunded, Error> {
        let now = self.clock.now();
        let digest = refund_digest(extent);
        let mut tx = db::begin(&self.pool).await?;
        let record = lock_order(&mut tx, account_id, order_id).await?;
        match record.state {
            OrderState::Open => {
                return Err(refused(
                    "ORDER_NOT_COMPLETED",
                    format!("order {order_id} is not completed yet"),
                ));
            }
            OrderState::Cancelled => {
                return Err(refused(
                    "ORDER_CANCELLED",
                    format!("order {order_id} was cancelled"),
                ));
            }
            OrderState::Completed => {}
        }
        let (lines, allocations) = db::coupons::cart(&mut tx, account_id, order_id).await?;
        let earlier = db::coupons::refunds(&mut tx, account_id, order_id).await?;
        if let Some(previous) = earlier.iter().find(|r| &r.refund_id == refund_id) {
            if previous.content_digest != digest {
                return Err(Error::AlreadyExists {
                    reason: "IDEMPOTENCY_KEY_REUSED",
                    message: format!("refund {refund_id} of order {order_id} was made with another extent"),
                });
            }
            let refund = previous.clone();
            let order = self
                .read_order(&mut tx, account_id, order_id, &record, now)
                .await?;
            db::commit(tx).await?;
            return Ok(Refunded {
                order,
                refund,
                replayed: true,
            });
        }
        if earlier.iter().any(|r| r.completes_order) {
            return Err(refused(
                "ORDER_FULLY_REFUNDED",
                format!("every unit of order {order_id} was refunded already"),
            ));
        }
        if lines.is_empty() && *extent != RefundExtent::WholeOrder {
            return Err(refused(
                "ORDER_HAS_NO_LINES",
                format!("order {order_id} was reserved before carts were stored: refund it whole"),
            ));
        }
        let refunded = refunded_units(&lines, &earlier);
        let units = units_to_refund(&lines, &refunded, extent)?;
        let after: Vec<u32> = refunded
            .iter()
            .zip(&units)
            .map(|(before, now)| before + now)
            .collect();
        let completes_order = lines
            .iter()
            .zip(&after)
            .all(|(line, after)| *after == line.quantity);
        if earlier.len() >= MAX_REFUNDS_PER_ORDER && !completes_order {
            return Err(refused(
                "TOO_MANY_REFUNDS",
                format!(
                    "order {order_id} has {MAX_REFUNDS_PER_ORDER} refunds; refund the rest of it whole \
                     (whole_order)"
                ),
            ));
        }
        let refund = Refund {
            refund_id: refund_id.clone(),
            content_digest: digest,
            whole_order: *extent == RefundExtent::WholeOrder,
            completes_order: lines
                .iter()
                .zip(&after)
                .all(|(line, after)| *after == line.quantity),
            lines: lines
                .iter()
                .zip(&units)
                .filter(|(_, units)| **units > 0)
                .map(|(line, units)| StoredRefundLine {
                    line_id: line.line_id.clone(),
                    quantity: *units,
                })
                .collect(),
            clawbacks: clawbacks(&lines, &allocations, &refunded, &after),
            created_at: now,
        };
        db::coupons::insert_refund(&mut tx, account_id, order_id, &refund).await?;

        let flagged = db::members::is_flagged(&mut tx, account_id)
            .await?
            .unwrap_or(false);
        let coupons = db::coupons::lock_coupons(&mut tx, account_id, &record.coupon_ids, None, now).await?;
        let this = Some(order_id.clone());
        let changes: Vec<Change> = coupons
            .iter()
            .filter(|c| c.status == CouponStatus::Used && c.order_id == this)
            .map(|c| refund_change(c, &refund, flagged, now))
            .collect();
        apply(&mut tx, account_id, &changes, now).await?;
        let order = self
            .read_order(&mut tx, account_id, order_id, &record, now)
            .await?;
        db::commit(tx).await?;
        Ok(Refunded {
            order,
            refund,
            replayed: false,
        })
    }
}

/// What a refund does to one USED coupon of its order: the full refund
/// restores a platform coupon; every other case keeps the coupon USED and
/// records the refund in its history.
fn refund_change(coupon: &Coupon, refund: &Refund, flagged: bool, now: DateTime<Utc>) -> Change {
    let order = coupon.order_id.clone();
    let (to, action, note) = match (&coupon.issuer, refund.completes_order) {
        (Issuer::Platform, true) => (
            (returned_status(coupon, flagged, now), None),
            Action::RefundFull,
            "the order was refunded in full: a platform coupon comes back".to_owned(),
        ),
        (Issuer::Seller(_), true) => (
            (CouponStatus::Used, order.clone()),
            Action::RefundFull,
            "the order was refunded in full: a seller coupon stays used".to_owned(),
        ),
        (_, false) => (
            (CouponStatus::Used, order.clone()),
            Action::RefundPartial,
            format!(
                "refund {} returned part of the order: the coupon stays used",
                refund.refund_id
            ),
        ),
    };
    Change {
        coupon_id: coupon.coupon_id,
        from: (CouponStatus::Used, order),
        to,
        hold_until: None,
        action: Some(action),
        note,
    }
}

/// Units of each line refunded by `refunds` (one pass over them: an order
/// takes up to 101 refunds of up to 500 lines each).
fn refunded_units(lines: &[CheckoutLine], refunds: &[Refund]) -> Vec<u32> {
    let index = line_index(lines);
    let mut units = vec![0u32; lines.len()];
    for line in refunds.iter().flat_map(|r| &r.lines) {
        if let Some(&l) = index.get(&line.line_id) {
            units[l] += line.quantity;
        }
    }
    units
}

/// Each line's position in the cart, by id.
fn line_index(lines: &[CheckoutLine]) -> HashMap<&LineId, usize> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| (&line.line_id, i))
        .collect()
}

/// The units of each line `extent` returns, given those `refunded` before.
fn units_to_refund(
    lines: &[CheckoutLine],
    refunded: &[u32],
    extent: &RefundExtent,
) -> Result<Vec<u32>, Error> {
    let mut units = vec![0u32; lines.len()];
    match extent {
        RefundExtent::WholeOrder => {
            for ((unit, line), before) in units.iter_mut().zip(lines).zip(refunded) {
                *unit = line.quantity - before;
            }
        }
        RefundExtent::Lines(asked) => {
            let index = line_index(lines);
            for (i, (line_id, quantity)) in asked.iter().enumerate() {
                let Some(&l) = index.get(line_id) else {
                    return Err(Error::invalid(
                        format!("lines.lines[{i}].line_id"),
                        format!("is not a line of the order ({line_id})"),
                    ));
                };
                if units[l] > 0 {
                    return Err(Error::invalid(
                        format!("lines.lines[{i}].line_id"),
                        format!("names line {line_id} twice"),
                    ));
                }
                let left = lines[l].quantity - refunded[l];
                if *quantity > left {
                    return Err(refused(
                        "OVER_REFUND",
                        format!(
                            "line {line_id} has {left} of {} units left to refund; {quantity} asked",
                            lines[l].quantity
                        ),
                    ));
                }
                units[l] = *quantity;
            }
        }
    }
    Ok(units)
}

/// What each coupon's allocation on each line loses when the refunded units
/// of the lines go from `before` to `after`: the allocation's share of the
/// units refunded so far, rounded down, minus the share already clawed back.
/// Refunding every unit, in any number of refunds, claws back exactly the
/// allocation. Zero claw-backs are left out.
fn clawbacks(
    lines: &[CheckoutLine],
    allocations: &[Allocation],
    before: &[u32],
    after: &[u32],
) -> Vec<Clawback> {
    let mut clawbacks: Vec<Clawback> = allocations
        .iter()
        .filter(|a| after[a.line] > before[a.line])
        .map(|a| Clawback {
            line_id: lines[a.line].line_id.clone(),
            coupon_id: a.coupon_id,
            discount: share(a.discount, lines[a.line].quantity, after[a.line])
                - share(a.discount, lines[a.line].quantity, before[a.line]),
        })
        .filter(|c| c.discount > 0)
        .collect();
    clawbacks.sort_by(|a, b| (&a.line_id, a.coupon_id).cmp(&(&b.line_id, b.coupon_id)));
    clawbacks
}

/// `allocated * units / quantity`, rounded down (exact in i128).
fn share(allocated: i64, quantity: u32, units: u32) -> i64 {
    if quantity == 0 {
        return 0;
    }
    let part = i128::from(allocated) * i128::from(units) / i128::from(quantity);
    i64::try_from(part).unwrap_or(i64::MAX)
}

/// The digest of a refund's extent: the same refund id must ask the same.
fn refund_digest(extent: &RefundExtent) -> Vec<u8> {
    let mut hash = Sha256::new();
    match extent {
        RefundExtent::WholeOrder => hash.update(b"whole"),
        RefundExtent::Lines(lines) => {
            let mut lines: Vec<&(LineId, u32)> = lines.iter().collect();
            lines.sort();
            for (line_id, quantity) in lines {
                hash.update((line_id.as_str().len() as u64).to_be_bytes());
                hash.update(line_id.as_str().as_bytes());
                hash.update(quantity.to_be_bytes());
            }
        }
    }
    hash.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn line(i: usize, quantity: u32) -> CheckoutLine {
        CheckoutLine {
            line_id: LineId::parse(&format!("l{i}")).unwrap(),
            seller_id: crate::domain::ids::SellerId::parse("s").unwrap(),
            product_id: crate::domain::ids::ProductId::parse("p").unwrap(),
            category_id: crate::domain::ids::CategoryId::parse("c").unwrap(),
            unit_price: 1000,
            quantity,
            sale_price: false,
        }
    }

    #[test]
    fn three_refunds_of_three_units_claw_back_the_allocation_exactly() {
        let lines = vec![line(0, 3)];
        let allocations = vec![Allocation {
            coupon_id: 7,
            line: 0,
            discount: 100,
        }];
        let steps = [0, 1, 2, 3];
        let parts: Vec<i64> = steps
            .windows(2)
            .map(|w| clawbacks(&lines, &allocations, &[w[0]], &[w[1]])[0].discount)
            .collect();
        assert_eq!(parts, vec![33, 33, 34]);
    }

    proptest! {
        /// Random carts and allocations, random sequences of refunds until every
        /// unit is back: per (line, coupon) the claw-backs add up to the
        /// allocation exactly, none is negative, and none overshoots on the way.
        #[test]
        fn claw_backs_add_up_to_the_allocation_in_any_sequence(
            quantities in prop::collection::vec(1u32..=50, 1..6),
            coupons in prop::collection::vec(0i64..=100_000, 1..4),
            seed in prop::collection::vec(1u32..=50, 1..40),
        ) {
            let lines: Vec<CheckoutLine> =
                quantities.iter().enumerate().map(|(i, q)| line(i, *q)).collect();
            let allocations: Vec<Allocation> = coupons
                .iter()
                .enumerate()
                .flat_map(|(c, total)| {
                    (0..lines.len()).map(move |l| Allocation {
                        coupon_id: c as i64,
                        line: l,
                        discount: total / (l as i64 + 1),
                    })
                })
                .collect();
            let mut refunded = vec![0u32; lines.len()];
            let mut clawed = vec![0i64; allocations.len()];
            let mut step = seed.iter().cycle();
            while refunded.iter().zip(&quantities).any(|(r, q)| r < q) {
                let mut after = refunded.clone();
                for (l, q) in quantities.iter().enumerate() {
                    let pick = *step.next().unwrap();
                    after[l] = (after[l] + pick % 3).min(*q);
                }
                if after == refunded {
                    let l = refunded.iter().zip(&quantities).position(|(r, q)| r < q).unwrap();
                    after[l] += 1;
                }
                for claw in clawbacks(&lines, &allocations, &refunded, &after) {
                    prop_assert!(claw.discount > 0);
                    let a = allocations
                        .iter()
                        .position(|a| a.coupon_id == claw.coupon_id && lines[a.line].line_id == claw.line_id)
                        .unwrap();
                    clawed[a] += claw.discount;
                    prop_assert!(clawed[a] <= allocations[a].discount);
                }
                refunded = after;
            }
            for (a, allocation) in allocations.iter().enumerate() {
                prop_assert_eq!(clawed[a], allocation.discount);
            }
        }
    }
}
