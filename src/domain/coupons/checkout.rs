//! Checkout: validation (a dry run), the best choice, and the reservation of
//! the picked coupons for an order (VALID -> INACTIVE, all or nothing).

use super::*;

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
