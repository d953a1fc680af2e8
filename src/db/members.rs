//! Queries on `member`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::db::{audit, events};
use crate::domain::events::Origin;
use crate::domain::ids::AccountId;
use crate::domain::members::{Birthday, FraudFlag, FraudReason, Member};

/// A `member` row.
#[derive(sqlx::FromRow)]
struct MemberRow {
    account_id: AccountId,
    registered_at: DateTime<Utc>,
    birthday_year: Option<i16>,
    birthday_month: Option<i16>,
    birthday_day: Option<i16>,
    birthday_updated_at: Option<DateTime<Utc>>,
    fraud_flagged_at: Option<DateTime<Utc>>,
    fraud_reason: Option<String>,
}

impl TryFrom<MemberRow> for Member {
    type Error = sqlx::Error;

    fn try_from(row: MemberRow) -> Result<Self, Self::Error> {
        let birthday = match (row.birthday_month, row.birthday_day) {
            (Some(month), Some(day)) => Some(
                Birthday::new(
                    row.birthday_year.map(i32::from),
                    u32::try_from(month).unwrap_or(0),
                    u32::try_from(day).unwrap_or(0),
                )
                .map_err(|e| sqlx::Error::Decode(format!("member.birthday: {e}").into()))?,
            ),
            _ => None,
        };
        Ok(Member {
            account_id: row.account_id,
            registered_at: row.registered_at,
            birthday,
            birthday_updated_at: row.birthday_updated_at,
            fraud: row.fraud_flagged_at.map(|flagged_at| FraudFlag {
                flagged_at,
                reason: row.fraud_reason.unwrap_or_default(),
            }),
        })
    }
}

const MEMBER_COLUMNS: &str = "account_id, registered_at, birthday_year, birthday_month, \
     birthday_day, birthday_updated_at, fraud_flagged_at, fraud_reason";

fn birthday_columns(birthday: Option<Birthday>) -> (Option<i16>, Option<i16>, Option<i16>) {
    // Birthday validated year 1..=9999, month 1..=12, day 1..=31: all fit an i16.
    let small = |v: i64| i16::try_from(v).ok();
    match birthday {
        Some(b) => (
            b.year().and_then(|y| small(y.into())),
            small(b.month().into()),
            small(b.day().into()),
        ),
        None => (None, None, None),
    }
}

/// Inserts a member and its `member_registered` event; `None` when the
/// account is already registered.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn insert(
    conn: &mut PgConnection,
    account_id: &AccountId,
    registered_at: DateTime<Utc>,
    birthday: Option<Birthday>,
    now: DateTime<Utc>,
) -> Result<Option<Member>, sqlx::Error> {
    let (year, month, day) = birthday_columns(birthday);
    let origin = Origin::current();
    let event = events::insert_event_sql(
        "registered",
        "account_id",
        "'member_registered'",
        "$6",
        "jsonb_build_object('registered_at', registered_at, 'has_birthday', birthday_month is not null)",
        ("$7", "$8"),
    );
    let audit = audit::insert_member_change_sql(
        "registered",
        "account_id",
        "'register'",
        "jsonb_build_object('registered_at', registered_at, 'has_birthday', birthday_month is not null)",
        "$6",
        ("$7", "$8"),
    );
    // A birthday given at registration counts as set when the account registered
    // (a backfilled member keeps its birthday rewards).
    let row: Option<MemberRow> = sqlx::query_as(&format!(
        "with registered as ( \
             insert into member (account_id, registered_at, birthday_year, birthday_month, \
                                 birthday_day, birthday_updated_at) \
             values ($1, $2, $3, $4, $5, case when $4::smallint is null then null else $2 end) \
             on conflict (account_id) do nothing \
             returning * \
         ), event as ({event}), audit as ({audit}) \
         select {MEMBER_COLUMNS} from registered"
    ))
    .bind(account_id)
    .bind(registered_at)
    .bind(year)
    .bind(month)
    .bind(day)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    row.map(Member::try_from).transpose()
}

/// Reads a member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn get(conn: &mut PgConnection, account_id: &AccountId) -> Result<Option<Member>, sqlx::Error> {
    let row: Option<MemberRow> = sqlx::query_as(&format!(
        "select {MEMBER_COLUMNS} from member where account_id = $1"
    ))
    .bind(account_id)
    .fetch_optional(conn)
    .await?;
    row.map(Member::try_from).transpose()
}

/// Whether the member is flagged; `None` when there is no such member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn is_flagged(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("select fraud_flagged_at is not null from member where account_id = $1")
        .bind(account_id)
        .fetch_optional(conn)
        .await
}

/// Whether the member is flagged, locking its row until the transaction ends:
/// the member's issuances take turns (so a twin retry finds the first one's
/// coupon) and a concurrent flag waits. `no key update` leaves the foreign-key
/// checks of other writers (points, coupons) unblocked. `None` when there is no
/// such member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn lock_for_issuance(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "select fraud_flagged_at is not null from member where account_id = $1 for no key update",
    )
    .bind(account_id)
    .fetch_optional(conn)
    .await
}

/// Sets or clears the birthday; `None` when there is no such member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn set_birthday(
    conn: &mut PgConnection,
    account_id: &AccountId,
    birthday: Option<Birthday>,
    now: DateTime<Utc>,
) -> Result<Option<Member>, sqlx::Error> {
    let (year, month, day) = birthday_columns(birthday);
    let origin = Origin::current();
    let audit = audit::insert_member_change_sql(
        "changed where differs",
        "account_id",
        "'birthday'",
        "jsonb_build_object('year', birthday_year, 'month', birthday_month, 'day', birthday_day)",
        "$5",
        ("$6", "$7"),
    );
    // Only a birthday that changes is audited (a repeat of the same one is not
    // a change).
    let row: Option<MemberRow> = sqlx::query_as(&format!(
        "with before as ( \
             select account_id, (birthday_year, birthday_month, birthday_day) \
                    is distinct from ($2, $3, $4) as differs \
             from member where account_id = $1 for update \
         ), changed as ( \
             update member m set birthday_year = $2, birthday_month = $3, birthday_day = $4, \
                    birthday_updated_at = case when before.differs then $5 else m.birthday_updated_at end \
             from before where m.account_id = before.account_id \
             returning m.*, before.differs \
         ), audit as ({audit}) \
         select {MEMBER_COLUMNS} from changed"
    ))
    .bind(account_id)
    .bind(year)
    .bind(month)
    .bind(day)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    row.map(Member::try_from).transpose()
}

/// Flags a member, keeping an existing flag, with a `member_flagged` event
/// when it was not flagged; `None` when there is no such member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn flag(
    conn: &mut PgConnection,
    account_id: &AccountId,
    reason: &FraudReason,
    now: DateTime<Utc>,
) -> Result<Option<Member>, sqlx::Error> {
    let origin = Origin::current();
    let event = events::insert_event_sql(
        "flagged",
        "account_id",
        "'member_flagged'",
        "$2",
        "jsonb_build_object('reason', fraud_reason)",
        ("$4", "$5"),
    );
    let audit = audit::insert_member_change_sql(
        "flagged",
        "account_id",
        "'flag'",
        "jsonb_build_object('reason', fraud_reason)",
        "$2",
        ("$4", "$5"),
    );
    let row: Option<MemberRow> = sqlx::query_as(&format!(
        "with before as ( \
             select account_id, fraud_flagged_at is not null as was_flagged from member \
             where account_id = $1 for update \
         ), changed as ( \
             update member m set fraud_flagged_at = coalesce(m.fraud_flagged_at, $2), \
                    fraud_reason = coalesce(m.fraud_reason, $3) \
             from before where m.account_id = before.account_id \
             returning m.*, before.was_flagged \
         ), flagged as ( \
             select * from changed where not was_flagged \
         ), event as ({event}), audit as ({audit}) \
         select {MEMBER_COLUMNS} from changed"
    ))
    .bind(account_id)
    .bind(now)
    .bind(reason.as_str())
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    row.map(Member::try_from).transpose()
}

/// Clears the fraud flag, with a `member_unflagged` event when it was set;
/// `None` when there is no such member.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn unflag(
    conn: &mut PgConnection,
    account_id: &AccountId,
    now: DateTime<Utc>,
) -> Result<Option<Member>, sqlx::Error> {
    let origin = Origin::current();
    let event = events::insert_event_sql(
        "unflagged",
        "account_id",
        "'member_unflagged'",
        "$2",
        "'{}'::jsonb",
        ("$3", "$4"),
    );
    let audit = audit::insert_member_change_sql(
        "unflagged",
        "account_id",
        "'unflag'",
        "'{}'::jsonb",
        "$2",
        ("$3", "$4"),
    );
    let row: Option<MemberRow> = sqlx::query_as(&format!(
        "with before as ( \
             select account_id, fraud_flagged_at is not null as was_flagged from member \
             where account_id = $1 for update \
         ), changed as ( \
             update member m set fraud_flagged_at = null, fraud_reason = null \
             from before where m.account_id = before.account_id \
             returning m.*, before.was_flagged \
         ), unflagged as ( \
             select * from changed where was_flagged \
         ), event as ({event}), audit as ({audit}) \
         select {MEMBER_COLUMNS} from changed"
    ))
    .bind(account_id)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_optional(conn)
    .await?;
    row.map(Member::try_from).transpose()
}
