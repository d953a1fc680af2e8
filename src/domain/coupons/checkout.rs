//! Checkout: validation (a dry run), the best choice, and the reservation of
//! the picked coupons for an order (VALID -> INACTIVE, all or nothing).

use std::cmp::Ordering;

use super::orders::order_view;
use super::*;
use crate::db::coupons::Change;

impl Coupons {
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

    /// Holds the picked coupons (INACTIVE) for the order until the hold ends,
    /// all or nothing, and stores the order's pricing. A newer cart revision
    /// replaces the order's hold: coupons it drops go back, new ones are held,
    /// and kept ones are held anew.
    #[tracing::instrument(skip_all, fields(account_id = %request.order.account_id, order_id = %request.order.order_id))]
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<Reservation, Error> {
        let now = self.clock.now();
        let order = &request.order;
        let (account_id, order_id) = (&order.account_id, &order.order_id);
        let digest = reserve_digest(request);
        let mut tx = db::begin(&self.pool).await?;
        // The order's operations take turns; then one statement locks the picked
        // coupons and those the order holds, in id order; then every read.
        db::coupons::lock_order(&mut tx, account_id, order_id).await?;
        // The member's row is share-locked: a concurrent fraud flag waits.
        let (flagged, stored) = db::coupons::member_and_order(&mut tx, account_id, order_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        if flagged {
            return Err(refused(
                "MEMBER_FLAGGED",
                format!("member {account_id} is flagged as fraudulent"),
            ));
        }
        if let Some(stored) = &stored {
            match request.cart_revision.cmp(&stored.cart_revision) {
                // An order reserved before revisions existed has no digest: the
                // same coupons again adopt this request as its revision 0 while
                // it is open (its cart is stored now), and replay once closed.
                Ordering::Equal
                    if stored.content_digest.is_none()
                        && stored.coupon_ids == request.coupon_ids
                        && stored.state == OrderState::Open => {}
                Ordering::Equal
                    if stored.content_digest.as_deref() == Some(&digest[..])
                        || (stored.content_digest.is_none() && stored.coupon_ids == request.coupon_ids) =>
                {
                    let order = self
                        .read_order(&mut tx, account_id, order_id, stored, now)
                        .await?;
                    db::commit(tx).await?;
                    return Ok(Reservation {
                        order,
                        replayed: true,
                    });
                }
                Ordering::Equal => {
                    return Err(Error::AlreadyExists {
                        reason: "IDEMPOTENCY_KEY_REUSED",
                        message: format!(
                            "order {order_id} was reserved at cart revision {} with other content; \
                             send a higher cart_revision to change the cart",
                            stored.cart_revision
                        ),
                    });
                }
                Ordering::Less => {
                    return Err(refused(
                        "STALE_CART_REVISION",
                        format!(
                            "order {order_id} is at cart revision {}; revision {} is older",
                            stored.cart_revision, request.cart_revision
                        ),
                    ));
                }
                Ordering::Greater if stored.state != OrderState::Open => {
                    return Err(refused(
                        "ORDER_CLOSED",
                        format!("order {order_id} was already completed or cancelled"),
                    ));
                }
                Ordering::Greater => {}
            }
        }
        let locked =
            db::coupons::lock_coupons(&mut tx, account_id, &request.coupon_ids, Some(order_id), now).await?;
        // A coupon this order holds past its expiry stays held until the order
        // closes, but a new revision cannot hold it again: that would extend
        // its validity.
        let priced: Vec<Coupon> = locked
            .iter()
            .cloned()
            .map(|mut c| {
                if c.status == CouponStatus::Inactive
                    && c.order_id.as_ref() == Some(order_id)
                    && now >= c.expires_at
                {
                    c.status = CouponStatus::Expired;
                }
                c
            })
            .collect();
        let pricing = price_picked(order, &request.coupon_ids, &priced, now);
        let refusals = pricing.refusals();
        if !refusals.is_empty() {
            return Err(Error::CouponsNotApplicable(
                refusals
                    .into_iter()
                    .map(|(id, refusal)| (id, refusal.as_str()))
                    .collect(),
            ));
        }

        let hold_until = now + request.hold.unwrap_or(self.default_hold);
        let (lapses, holds) = hold_changes(order_id, &request.coupon_ids, &locked, hold_until, now);
        // Holds that lapsed on another order are closed first, then every hold
        // of this revision is taken.
        apply(&mut tx, account_id, &lapses, now).await?;
        let held = apply(&mut tx, account_id, &holds, now).await?;
        let record = OrderRecord {
            state: OrderState::Open,
            cart_revision: request.cart_revision,
            content_digest: Some(digest.to_vec()),
            currency: order.currency,
            coupon_ids: request.coupon_ids.clone(),
            hold_until,
            created_at: stored.as_ref().map_or(now, |s| s.created_at),
            updated_at: now,
        };
        if stored.is_some() {
            db::coupons::delete_cart(&mut tx, account_id, order_id).await?;
        }
        let allocations: Vec<Allocation> = pricing
            .coupons
            .iter()
            .filter_map(|c| c.result.as_ref().ok().map(|applied| (c.coupon_id, applied)))
            .flat_map(|(coupon_id, applied)| {
                applied
                    .allocations
                    .iter()
                    .map(move |&(line, discount)| Allocation {
                        coupon_id,
                        line,
                        discount,
                    })
            })
            .collect();
        db::coupons::put_order(
            &mut tx,
            account_id,
            order_id,
            &record,
            order.lines(),
            &allocations,
        )
        .await?;
        db::commit(tx).await?;
        // The view from what was just written: every picked coupon was held by
        // one of the changes, and an open order has no refund.
        let coupons = held
            .into_iter()
            .filter(|c| request.coupon_ids.contains(&c.coupon_id))
            .collect();
        let order = order_view(
            order_id,
            account_id,
            &record,
            order.lines().to_vec(),
            &allocations,
            coupons,
            Vec::new(),
        );
        Ok(Reservation {
            order,
            replayed: false,
        })
    }
}

/// The changes a reservation makes to the coupons it locked: `(lapses, holds)`.
/// Lapses close another order's lapsed hold on a picked coupon; holds take
/// every picked coupon for `order_id` until `hold_until` (renewing the order's
/// own), and give back the coupons the order held and no longer picks.
fn hold_changes(
    order_id: &OrderId,
    picked: &[i64],
    locked: &[Coupon],
    hold_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<Change>, Vec<Change>) {
    let this = Some(order_id.clone());
    let mut lapses = Vec::new();
    let mut holds = Vec::new();
    for coupon in locked {
        let held_here = coupon.order_id == this || coupon.lapsed_order == this;
        let wanted = picked.contains(&coupon.coupon_id);
        let hold = |from, action, note: &str| Change {
            coupon_id: coupon.coupon_id,
            from,
            to: (CouponStatus::Inactive, this.clone()),
            hold_until: Some(hold_until),
            action,
            note: note.to_owned(),
        };
        match (held_here, wanted) {
            // Held anew for the new revision: the hold's end moves, nothing else.
            (true, true) => holds.push(hold((CouponStatus::Inactive, this.clone()), None, "")),
            (true, false) => holds.push(Change {
                coupon_id: coupon.coupon_id,
                from: (CouponStatus::Inactive, this.clone()),
                to: (returned_status(coupon, false, now), None),
                hold_until: None,
                action: Some(Action::Release),
                note: "a newer cart revision dropped it".to_owned(),
            }),
            (false, true) => {
                if let Some(lapsed) = &coupon.lapsed_order {
                    lapses.push(Change {
                        coupon_id: coupon.coupon_id,
                        from: (CouponStatus::Inactive, Some(lapsed.clone())),
                        to: (returned_status(coupon, false, now), None),
                        hold_until: None,
                        action: Some(Action::Lapse),
                        note: format!("the hold ended; order {order_id} takes the coupon"),
                    });
                }
                holds.push(hold((CouponStatus::Valid, None), Some(Action::Reserve), ""));
            }
            (false, false) => {}
        }
    }
    (lapses, holds)
}

/// Applies guarded changes to coupons the call has locked: every one must
/// take. Returns the changed coupons as they now read, in id order.
pub(super) async fn apply(
    conn: &mut PgConnection,
    account_id: &AccountId,
    changes: &[Change],
    now: DateTime<Utc>,
) -> Result<Vec<Coupon>, Error> {
    let changed = db::coupons::change(conn, account_id, changes, now).await?;
    if changed.len() != changes.len() {
        return Err(anyhow::anyhow!(
            "{} of {} changes of locked coupons took",
            changed.len(),
            changes.len()
        )
        .into());
    }
    Ok(changed)
}

/// The digest of what a reservation carries: its cart, coupons and the hold it
/// asks for. The same revision must carry the same.
fn reserve_digest(request: &ReserveRequest) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(request.order.currency.as_str().as_bytes());
    for line in request.order.lines() {
        field(line.line_id.as_str().as_bytes());
        field(line.seller_id.as_str().as_bytes());
        field(line.product_id.as_str().as_bytes());
        field(line.category_id.as_str().as_bytes());
        field(&line.unit_price.to_be_bytes());
        field(&line.quantity.to_be_bytes());
        field(&[u8::from(line.sale_price)]);
    }
    field(b"coupons");
    for id in &request.coupon_ids {
        field(&id.to_be_bytes());
    }
    field(&request.hold.map_or(0, |h| h.as_millis()).to_be_bytes());
    hash.finalize().into()
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
