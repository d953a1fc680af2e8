//! Members (SPEC §1): registration, birthday, fraud flag.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use crate::clock::Clock;
use crate::db;
use crate::domain::ids::AccountId;
use crate::error::Error;

/// A birthday: a calendar date whose year may be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Birthday {
    year: Option<i32>,
    month: u32,
    day: u32,
}

impl Birthday {
    /// Validates a birthday. Without a year, 29 February is allowed.
    pub fn new(year: Option<i32>, month: u32, day: u32) -> Result<Self, String> {
        if let Some(year) = year
            && !(1..=9999).contains(&year)
        {
            return Err(format!("year must be 1 to 9999, or 0 when unknown (got {year})"));
        }
        // 2000 is a leap year, so a yearless 29 February passes.
        if NaiveDate::from_ymd_opt(year.unwrap_or(2000), month, day).is_none() {
            return Err(format!(
                "{}-{month:02}-{day:02} is not a calendar date",
                year.map_or("????".to_owned(), |y| format!("{y:04}"))
            ));
        }
        Ok(Self { year, month, day })
    }

    /// The year, when known.
    pub fn year(&self) -> Option<i32> {
        self.year
    }

    /// The month, 1 to 12.
    pub fn month(&self) -> u32 {
        self.month
    }

    /// The day of the month.
    pub fn day(&self) -> u32 {
        self.day
    }
}

/// Why a member is flagged as fraudulent: 1 to 500 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudReason(String);

impl FraudReason {
    /// Validates a reason.
    pub fn parse(reason: &str) -> Result<Self, String> {
        let trimmed = reason.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        super::text::check(trimmed, 500)?;
        Ok(Self(trimmed.to_owned()))
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fraud flag of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudFlag {
    /// When the member was flagged.
    pub flagged_at: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// A member of the loyalty program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub account_id: AccountId,
    pub registered_at: DateTime<Utc>,
    pub birthday: Option<Birthday>,
    pub birthday_updated_at: Option<DateTime<Utc>>,
    pub fraud: Option<FraudFlag>,
}

/// The result of a registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The member as stored.
    pub member: Member,
    /// True when the account was already registered with the same instant.
    pub replayed: bool,
}

/// The error of a call naming an account that is not registered.
pub fn member_not_found(account_id: &AccountId) -> Error {
    Error::NotFound {
        reason: "MEMBER_NOT_FOUND",
        message: format!("no member with account id {account_id}"),
    }
}

/// Member operations.
#[derive(Clone)]
pub struct Members {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

impl Members {
    /// Member operations over `pool`.
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        Self { pool, clock }
    }

    /// Registers a member; idempotent on the account and its registration instant.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn register(
        &self,
        account_id: AccountId,
        registered_at: DateTime<Utc>,
        birthday: Option<Birthday>,
    ) -> Result<Registration, Error> {
        // A transaction, so that the deadline bounds the insert in PostgreSQL.
        let mut tx = db::begin(&self.pool).await?;
        if let Some(member) =
            db::members::insert(&mut tx, &account_id, registered_at, birthday, self.clock.now()).await?
        {
            db::commit(tx).await?;
            return Ok(Registration {
                member,
                replayed: false,
            });
        }
        let existing = db::members::get(&mut tx, &account_id)
            .await?
            .ok_or_else(|| member_not_found(&account_id))?;
        if existing.registered_at != registered_at {
            return Err(Error::AlreadyExists {
                reason: "MEMBER_ALREADY_REGISTERED",
                message: format!(
                    "account {account_id} is already registered at {}",
                    existing.registered_at.to_rfc3339()
                ),
            });
        }
        Ok(Registration {
            member: existing,
            replayed: true,
        })
    }

    /// Reads a member.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn get(&self, account_id: &AccountId) -> Result<Member, Error> {
        let mut conn = db::acquire(&self.pool).await?;
        db::members::get(&mut conn, account_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))
    }

    /// Sets, changes or clears the birthday, recording when it changed (setting
    /// the same birthday again keeps the time of the last real change).
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn update_birthday(
        &self,
        account_id: &AccountId,
        birthday: Option<Birthday>,
    ) -> Result<Member, Error> {
        let mut tx = db::begin(&self.pool).await?;
        let member = db::members::set_birthday(&mut tx, account_id, birthday, self.clock.now()).await?;
        db::commit(tx).await?;
        member.ok_or_else(|| member_not_found(account_id))
    }

    /// Flags a member as fraudulent (a flagged member keeps its first flag) and
    /// reclaims its VALID coupons (REVOKED), in one transaction. The member row's
    /// lock makes a concurrent claim or issuance wait, so none slips past it.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn flag(&self, account_id: &AccountId, reason: &FraudReason) -> Result<Member, Error> {
        let now = self.clock.now();
        let mut tx = db::begin(&self.pool).await?;
        let member = db::members::flag(&mut tx, account_id, reason, now)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        let revoked = crate::domain::coupons::revoke_usable(&mut tx, account_id, now).await?;
        db::commit(tx).await?;
        tracing::info!(account_id = %account_id, revoked_coupons = revoked, "member flagged as fraudulent");
        Ok(member)
    }

    /// Clears the fraud flag (future activity only).
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn unflag(&self, account_id: &AccountId) -> Result<Member, Error> {
        let mut tx = db::begin(&self.pool).await?;
        let member = db::members::unflag(&mut tx, account_id, self.clock.now()).await?;
        db::commit(tx).await?;
        member.ok_or_else(|| member_not_found(account_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yearless_birthday_may_be_29_february() {
        assert!(Birthday::new(None, 2, 29).is_ok());
        assert!(Birthday::new(Some(2024), 2, 29).is_ok());
        assert!(Birthday::new(Some(2023), 2, 29).is_err());
    }

    #[test]
    fn a_birthday_must_be_a_calendar_date() {
        assert!(Birthday::new(None, 13, 1).is_err());
        assert!(Birthday::new(None, 4, 31).is_err());
        assert!(Birthday::new(None, 0, 1).is_err());
        assert!(Birthday::new(Some(10_000), 1, 1).is_err());
    }

    #[test]
    fn a_fraud_reason_is_trimmed_and_bounded() {
        assert_eq!(
            FraudReason::parse("  chargebacks ").unwrap().as_str(),
            "chargebacks"
        );
        assert!(FraudReason::parse("   ").is_err());
        assert!(FraudReason::parse(&"x".repeat(501)).is_err());
    }
}
