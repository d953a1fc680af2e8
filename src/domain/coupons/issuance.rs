//! Handing coupons to members: claims with a code and direct issuance, within
//! the template's stock, daily stock and per-member limit (guarded counters).

use super::*;
use crate::db::coupons::StockRefusal;

impl Coupons {
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
        let template_id =
            TemplateId::parse(&found.template_id).map_err(|e| anyhow::anyhow!("stored code: {e}"))?;
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
        let source = if found.kind == CodeKind::SingleUse {
            if !db::coupons::consume_code(&mut tx, &hash, account_id, now).await? {
                return Err(
                    refused("CODE_ALREADY_USED", "this single-use code was already claimed")
                        .concerning("template_id", &template_id),
                );
            }
            CouponSource::SingleUseCode
        } else {
            CouponSource::PublicCode
        };
        let new = NewCoupon {
            account_id,
            template_id: &template_id,
            source,
            claim_code_hash: Some(&hash),
            issuance_id: None,
        };
        // The caller named a code, not a template: a refusal says which.
        self.issue_new(tx, &new, IssuePolicy::Caller, now)
            .await
            .map_err(|error| error.concerning("template_id", &template_id))
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
                }
                .concerning("coupon_id", coupon.coupon_id));
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
        let template = db::coupons::get_template(&mut tx, new.template_id)
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
        // The template's stock last, as its row stays locked until the
        // commit; it checks the template again as it stands then.
        let terms_at = db::coupons::take_stock(&mut tx, new.template_id, self.calendar.local_date(now), now)
            .await?
            .map_err(|refusal| stock_refused(refusal, new.template_id))?;
        match db::coupons::issue_coupon(&mut tx, new, terms_at, now).await {
            Ok(Some(coupon)) => {
                db::commit(tx).await?;
                Ok(Issued {
                    coupon,
                    replayed: false,
                })
            }
            Ok(None) => Err(template_not_found(new.template_id)),
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
}

/// Whether a template may issue now, as first read (before taking any stock;
/// taking it checks again).
fn check_issuable(template: &Template, now: DateTime<Utc>) -> Result<(), Error> {
    let ended = matches!(template.spec.validity, Validity::Window { until, .. } if until <= now);
    let sold_out = template
        .spec
        .total_stock
        .is_some_and(|stock| template.issued_count >= stock);
    let refusal = if template.paused {
        StockRefusal::Paused
    } else if ended {
        StockRefusal::Ended
    } else if sold_out {
        StockRefusal::OutOfStock
    } else {
        return Ok(());
    };
    Err(stock_refused(refusal, &template.spec.template_id))
}

/// The error of a template's stock that was not taken.
fn stock_refused(refusal: StockRefusal, id: &TemplateId) -> Error {
    match refusal {
        StockRefusal::NotFound => template_not_found(id),
        StockRefusal::Paused => refused("TEMPLATE_PAUSED", format!("template {id} is paused")),
        StockRefusal::Ended => refused("TEMPLATE_EXPIRED", format!("template {id} ended")),
        StockRefusal::OutOfStock => refused("OUT_OF_STOCK", format!("template {id} has no stock left")),
        StockRefusal::DailyStockExhausted => {
            refused("DAILY_STOCK_EXHAUSTED", "today's stock of this template is gone")
        }
    }
}
