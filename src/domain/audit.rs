//! The audit trail: who changed a template, a member or an order, and when.
//! Every write and admin call records its caller with the rows it changes
//! (see `db::audit`); this reads it back.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::db;
use crate::domain::ids::{AccountId, OrderId, TemplateId};
use crate::error::Error;

/// Whose audit to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSubject {
    /// A coupon template's changes, claim codes included.
    Template(TemplateId),
    /// Everything done to a member: its own row, its ledger, its coupons.
    Member(AccountId),
    /// What was done for one order of a member: points and coupons.
    Order(AccountId, OrderId),
    /// Every admin change that concerns no member: templates, reward
    /// templates, the jobs' runs.
    Admin,
}

/// One change, with the calling service that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub occurred_at: DateTime<Utc>,
    /// `template.update`, `member.flag`, `points.order`, `coupon.reserve`, ...
    pub action: String,
    /// Empty when authentication was off or for the scheduler's runs.
    pub caller: String,
    pub request_id: String,
    pub account_id: Option<String>,
    pub template_id: Option<String>,
    pub order_id: Option<String>,
    pub coupon_id: Option<i64>,
    /// What the change set (a template's terms, the points moved, a coupon's
    /// statuses, a job's counts).
    pub detail: Value,
}

/// A place in an audit listing (newest first): the last entry read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub occurred_at: DateTime<Utc>,
    pub source: i16,
    pub id: i64,
}

/// Reads the audit trail.
#[derive(Clone)]
pub struct Audit {
    pool: PgPool,
}

impl Audit {
    /// The audit stored in `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// A page of `subject`'s audit, newest first, after `after`; with the
    /// cursor of the next page when there is one.
    #[tracing::instrument(skip_all)]
    pub async fn list(
        &self,
        subject: &AuditSubject,
        after: Option<&AuditCursor>,
        page_size: u32,
    ) -> Result<(Vec<AuditEntry>, Option<AuditCursor>), Error> {
        let mut conn = db::acquire(&self.pool).await?;
        let mut rows = db::audit::list(&mut conn, subject, after, page_size + 1).await?;
        let next = if rows.len() > page_size as usize {
            rows.truncate(page_size as usize);
            rows.last().map(|(_, cursor)| *cursor)
        } else {
            None
        };
        Ok((rows.into_iter().map(|(entry, _)| entry).collect(), next))
    }
}
