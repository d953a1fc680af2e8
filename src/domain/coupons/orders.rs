//! The order after its reservation: reading it back, completion (USED) and
//! cancellation (back to VALID). Refunds are in [`super::refunds`].

use super::checkout::apply;
use super::*;
use crate::db::coupons::Change;

impl Coupons {
    /// The order as the checkout knows it.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id))]
    pub async fn order(&self, account_id: &AccountId, order_id: &OrderId) -> Result<OrderCheckout, Error> {
        let now = self.clock.now();
        // One snapshot for the header, the cart and the refunds: a revision
        // committed meanwhile is seen whole or not at all.
        let mut tx = db::begin(&self.pool).await?;
        db::read_only_snapshot(&mut tx).await?;
        let record = find_order(&mut tx, account_id, order_id).await?;
        let order = self
            .read_order(&mut tx, account_id, order_id, &record, now)
            .await?;
        db::commit(tx).await?;
        Ok(order)
    }

    /// The order closed: its coupons go INACTIVE -> USED. A coupon whose hold
    /// lapsed is still used when no other order took it; otherwise nothing is
    /// completed and the call fails with `HOLD_LOST`.
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id))]
    pub async fn complete(&self, account_id: &AccountId, order_id: &OrderId) -> Result<OrderCheckout, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let mut record = lock_order(&mut tx, account_id, order_id).await?;
        match record.state {
            OrderState::Cancelled => {
                return Err(refused(
                    "ORDER_CANCELLED",
                    format!("order {order_id} was cancelled"),
                ));
            }
            OrderState::Completed => {}
            OrderState::Open => {
                let coupons =
                    db::coupons::lock_coupons(&mut tx, account_id, &record.coupon_ids, Some(order_id), now)
                        .await?;
                let this = Some(order_id.clone());
                let lost: Vec<i64> = record
                    .coupon_ids
                    .iter()
                    .copied()
                    .filter(|id| {
                        !coupons
                            .iter()
                            .any(|c| c.coupon_id == *id && (c.order_id == this || c.lapsed_order == this))
                    })
                    .collect();
                if let Some(first) = lost.first() {
                    return Err(refused(
                        "HOLD_LOST",
                        format!(
                            "the hold of order {order_id} lapsed and coupon {first} was taken since \
                             (coupons lost: {lost:?}); nothing was completed"
                        ),
                    )
                    .concerning("coupon_id", first));
                }
                let changes: Vec<Change> = coupons
                    .iter()
                    .filter(|c| record.coupon_ids.contains(&c.coupon_id))
                    .map(|c| Change {
                        coupon_id: c.coupon_id,
                        from: (CouponStatus::Inactive, this.clone()),
                        to: (CouponStatus::Used, this.clone()),
                        hold_until: None,
                        action: Some(Action::Complete),
                        note: if c.lapsed_order.is_some() {
                            "completed after its hold lapsed; no other order had taken it".to_owned()
                        } else {
                            String::new()
                        },
                    })
                    .collect();
                let used = apply(&mut tx, account_id, &changes, now).await?;
                let (lines, allocations) =
                    db::coupons::complete_order(&mut tx, account_id, order_id, now).await?;
                record.state = OrderState::Completed;
                record.updated_at = now;
                // The view from the changes: every coupon of the order was used
                // by them, and an order just completed has no refund.
                db::commit(tx).await?;
                return Ok(order_view(
                    order_id,
                    account_id,
                    &record,
                    lines,
                    &allocations,
                    used,
                    Vec::new(),
                ));
            }
        }
        let order = self
            .read_order(&mut tx, account_id, order_id, &record, now)
            .await?;
        db::commit(tx).await?;
        Ok(order)
    }

    /// The order was cancelled: the coupons it still holds go back (VALID,
    /// EXPIRED when past expiry, REVOKED for a flagged member).
    #[tracing::instrument(skip_all, fields(account_id = %account_id, order_id = %order_id))]
    pub async fn cancel(&self, account_id: &AccountId, order_id: &OrderId) -> Result<OrderCheckout, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let mut record = lock_order(&mut tx, account_id, order_id).await?;
        match record.state {
            OrderState::Completed => {
                return Err(refused(
                    "ORDER_COMPLETED",
                    format!("order {order_id} was completed; refund it instead"),
                ));
            }
            OrderState::Cancelled => {}
            OrderState::Open => {
                let flagged = db::members::is_flagged(&mut tx, account_id)
                    .await?
                    .unwrap_or(false);
                let coupons =
                    db::coupons::lock_coupons(&mut tx, account_id, &[], Some(order_id), now).await?;
                let this = Some(order_id.clone());
                let changes: Vec<Change> = coupons
                    .iter()
                    .map(|c| Change {
                        coupon_id: c.coupon_id,
                        from: (CouponStatus::Inactive, this.clone()),
                        to: (returned_status(c, flagged, now), None),
                        hold_until: None,
                        action: Some(Action::Cancel),
                        note: String::new(),
                    })
                    .collect();
                apply(&mut tx, account_id, &changes, now).await?;
                db::coupons::set_order_state(&mut tx, account_id, order_id, OrderState::Cancelled, now)
                    .await?;
                record.state = OrderState::Cancelled;
                record.updated_at = now;
            }
        }
        let order = self
            .read_order(&mut tx, account_id, order_id, &record, now)
            .await?;
        db::commit(tx).await?;
        Ok(order)
    }

    /// Reads everything of an order whose header is `record`.
    pub(super) async fn read_order(
        &self,
        conn: &mut PgConnection,
        account_id: &AccountId,
        order_id: &OrderId,
        record: &OrderRecord,
        now: DateTime<Utc>,
    ) -> Result<OrderCheckout, Error> {
        let (lines, allocations) = db::coupons::cart(conn, account_id, order_id).await?;
        let coupons = db::coupons::coupons_by_ids(conn, account_id, &record.coupon_ids, now).await?;
        let refunds = db::coupons::refunds(conn, account_id, order_id).await?;
        Ok(order_view(
            order_id,
            account_id,
            record,
            lines,
            &allocations,
            coupons,
            refunds,
        ))
    }
}

/// The order as the checkout sees it, from its stored parts; `coupons` in any
/// order (they are put in the order picked).
pub(super) fn order_view(
    order_id: &OrderId,
    account_id: &AccountId,
    record: &OrderRecord,
    lines: Vec<CheckoutLine>,
    allocations: &[Allocation],
    mut coupons: Vec<Coupon>,
    refunds: Vec<Refund>,
) -> OrderCheckout {
    coupons.sort_by_key(|c| record.coupon_ids.iter().position(|id| *id == c.coupon_id));
    let status = match record.state {
        OrderState::Open => OrderStatus::Open,
        OrderState::Cancelled => OrderStatus::Cancelled,
        OrderState::Completed if refunds.iter().any(|r| r.completes_order) => OrderStatus::Refunded,
        OrderState::Completed => OrderStatus::Completed,
    };
    OrderCheckout {
        order_id: order_id.clone(),
        account_id: account_id.clone(),
        status,
        cart_revision: record.cart_revision,
        currency: record.currency,
        hold_until: record.hold_until,
        pricing: stored_pricing(&lines, &record.coupon_ids, allocations),
        lines,
        coupons,
        refunds,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// Takes the order's lock (its operations take turns), then reads its header;
/// `NOT_FOUND` when the checkout never reserved for it.
pub(super) async fn lock_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<OrderRecord, Error> {
    db::coupons::lock_order(conn, account_id, order_id).await?;
    find_order(conn, account_id, order_id).await
}

/// The order's header, or `NOT_FOUND` when the checkout never reserved for it.
pub(super) async fn find_order(
    conn: &mut PgConnection,
    account_id: &AccountId,
    order_id: &OrderId,
) -> Result<OrderRecord, Error> {
    match db::coupons::order(conn, account_id, order_id).await? {
        Some(record) => Ok(record),
        None => {
            ensure_member(conn, account_id).await?;
            Err(Error::NotFound {
                reason: "ORDER_NOT_FOUND",
                message: format!("account {account_id} has no checkout order {order_id}"),
            })
        }
    }
}

/// The pricing stored at reservation, rebuilt from its allocations.
fn stored_pricing(lines: &[CheckoutLine], coupon_ids: &[i64], allocations: &[Allocation]) -> Pricing {
    let amounts: Vec<i64> = lines
        .iter()
        .map(|l| l.unit_price.saturating_mul(i64::from(l.quantity)))
        .collect();
    let mut line_discounts = vec![0i64; lines.len()];
    let coupons = coupon_ids
        .iter()
        .map(|&coupon_id| {
            let mut split: Vec<(usize, i64)> = allocations
                .iter()
                .filter(|a| a.coupon_id == coupon_id)
                .map(|a| (a.line, a.discount))
                .collect();
            split.sort_unstable();
            for &(line, discount) in &split {
                line_discounts[line] += discount;
            }
            pricing::CouponOutcome {
                coupon_id,
                result: Ok(pricing::Applied {
                    discount: split.iter().map(|s| s.1).sum(),
                    allocations: split,
                }),
            }
        })
        .collect();
    Pricing {
        coupons,
        subtotal: amounts.iter().sum(),
        discount: line_discounts.iter().sum(),
        lines: amounts.into_iter().zip(line_discounts).collect(),
    }
}
