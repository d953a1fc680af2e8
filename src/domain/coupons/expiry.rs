//! The expiry notice job (SPEC §6): `coupon_expiring_soon` a notice period
//! before a usable coupon expires, and `coupon_expired` once its expiry has
//! passed, each once per coupon. The read model does not depend on it (a
//! coupon past its expiry reads EXPIRED whether or not the job ran); the job
//! only tells other services. Set-based, in bounded batches of their own
//! transactions: a crash keeps the batches done, and a rerun sends the rest.
//! Runs take turns batch by batch on the `expiry_notices` row of `job_lock`.

use std::time::Duration;

use super::*;
use crate::db::coupons::Notice;

/// The most coupons one batch (one statement, one transaction) tells.
const NOTICE_BATCH: i64 = 1_000;

/// What an expiry notice run sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticesSent {
    pub expiring_soon: i64,
    pub expired: i64,
}

impl Coupons {
    /// Sends the expiry notices due now; `notice_period` is how long before
    /// its expiry a coupon is expiring soon.
    #[tracing::instrument(skip_all)]
    pub async fn send_expiry_notices(&self, notice_period: Duration) -> Result<NoticesSent, Error> {
        let now = self.clock.now();
        let period =
            chrono::Duration::from_std(notice_period).map_err(|e| anyhow::anyhow!("notice period: {e}"))?;
        let horizon = now.checked_add_signed(period).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut sent = NoticesSent::default();
        for notice in [Notice::Expired, Notice::ExpiringSoon] {
            loop {
                let mut tx = db::begin(&self.pool).await?;
                db::levels::lock_job(&mut tx, "expiry_notices").await?;
                let batch =
                    db::coupons::send_expiry_notices(&mut tx, notice, now, horizon, NOTICE_BATCH).await?;
                db::commit(tx).await?;
                match notice {
                    Notice::Expired => sent.expired += batch.sent,
                    Notice::ExpiringSoon => sent.expiring_soon += batch.sent,
                }
                // A coupon picked but not sent (redeemed meanwhile) is no
                // longer due, so a full pick means there may be more.
                if batch.picked < NOTICE_BATCH {
                    break;
                }
            }
        }
        tracing::info!(
            expiring_soon = sent.expiring_soon,
            expired = sent.expired,
            "expiry notices sent"
        );
        Ok(sent)
    }
}
