//! The order's transitions after a reservation: completion (USED),
//! cancellation (back to VALID) and refunds (a full refund restores platform
//! coupons).

use super::*;

impl Coupons {
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
}
