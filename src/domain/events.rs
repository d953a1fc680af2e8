//! Events for other services (SPEC §6): what an event is, where a reader is in
//! the log (a [`Cursor`]), and who made a change ([`Origin`]).
//!
//! Each change writes its event in the statement that makes it (the db
//! function of the change, through [`crate::db::events::insert_event_sql`]), so
//! the event commits with its change or not at all. The log is read in slices
//! of commit order ([`crate::db::events`]); [`crate::events`] runs the tasks
//! that cut, prune and relay it.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::call;
use crate::domain::coupons::Action;
use crate::domain::ids::AccountId;
use crate::domain::pricing::CouponStatus;
use crate::error::Error;

/// What an event says happened (stored as text, `coupon_reserved`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum EventType {
    MemberRegistered,
    MemberFlagged,
    MemberUnflagged,
    PointsAwarded,
    PointsReversed,
    LevelChanged,
    RewardIssued,
    CouponIssued,
    CouponReserved,
    CouponReleased,
    CouponUsed,
    CouponRestored,
    CouponRevoked,
    CouponExpiringSoon,
    CouponExpired,
}

impl EventType {
    /// Every type, in the order of the API's enum.
    pub const ALL: [EventType; 15] = [
        EventType::MemberRegistered,
        EventType::MemberFlagged,
        EventType::MemberUnflagged,
        EventType::PointsAwarded,
        EventType::PointsReversed,
        EventType::LevelChanged,
        EventType::RewardIssued,
        EventType::CouponIssued,
        EventType::CouponReserved,
        EventType::CouponReleased,
        EventType::CouponUsed,
        EventType::CouponRestored,
        EventType::CouponRevoked,
        EventType::CouponExpiringSoon,
        EventType::CouponExpired,
    ];

    /// The stored name, also the type in NATS subjects and CloudEvents.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MemberRegistered => "member_registered",
            EventType::MemberFlagged => "member_flagged",
            EventType::MemberUnflagged => "member_unflagged",
            EventType::PointsAwarded => "points_awarded",
            EventType::PointsReversed => "points_reversed",
            EventType::LevelChanged => "level_changed",
            EventType::RewardIssued => "reward_issued",
            EventType::CouponIssued => "coupon_issued",
            EventType::CouponReserved => "coupon_reserved",
            EventType::CouponReleased => "coupon_released",
            EventType::CouponUsed => "coupon_used",
            EventType::CouponRestored => "coupon_restored",
            EventType::CouponRevoked => "coupon_revoked",
            EventType::CouponExpiringSoon => "coupon_expiring_soon",
            EventType::CouponExpired => "coupon_expired",
        }
    }

    /// The event a coupon transition is, if other services hear of it: a move
    /// between statuses. A refund that leaves a coupon USED (a seller coupon,
    /// a partial refund) is in the coupon's history but is no event; a coupon
    /// that a cancel or refund gives back to a flagged member is revoked.
    pub fn of_transition(action: Action, from: CouponStatus, to: CouponStatus) -> Option<Self> {
        if from == to {
            return None;
        }
        if to == CouponStatus::Revoked {
            return Some(EventType::CouponRevoked);
        }
        Some(match action {
            Action::Issue => EventType::CouponIssued,
            Action::Reserve => EventType::CouponReserved,
            Action::Release | Action::Lapse | Action::Cancel => EventType::CouponReleased,
            Action::Complete => EventType::CouponUsed,
            Action::RefundFull | Action::RefundPartial => EventType::CouponRestored,
            Action::Revoke => EventType::CouponRevoked,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a change: the call's request id and the calling service, both
/// empty outside a call (the scheduler).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub request_id: String,
    pub caller: String,
}

impl Origin {
    /// The origin of the call being served.
    pub fn current() -> Self {
        Self {
            request_id: call::request_id(),
            caller: call::caller(),
        }
    }
}

/// A position in the event log: every event of the slices before `slice`, and
/// those of `slice` up to `event` (an event id), have been read. The log's
/// slices follow commit order (see `migrations/*_events.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub slice: i64,
    pub event: i64,
}

impl Cursor {
    /// The start of `slice`: nothing of it read yet.
    pub fn start_of(slice: i64) -> Self {
        Self { slice, event: 0 }
    }

    /// Parses the text form `<slice>.<event>`; anything else is
    /// `INVALID_ARGUMENT` on `field`.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, Error> {
        let malformed = || Error::invalid(field, "must be a cursor from an event or a heartbeat of a watch");
        if text.len() > 41 {
            return Err(malformed());
        }
        let (slice, event) = text.split_once('.').ok_or_else(malformed)?;
        let number = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            part.parse::<i64>().map_err(|_| malformed())
        };
        Ok(Self {
            slice: number(slice)?,
            event: number(event)?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slice, self.event)
    }
}

/// Which events a reader wants: empty lists mean every type, every member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub types: Vec<EventType>,
    pub accounts: Vec<AccountId>,
}

/// The most account ids one filter may name.
pub const MAX_FILTER_ACCOUNTS: usize = 100;

/// An event as stored, with the slice it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub cursor: Cursor,
    pub event_id: i64,
    pub event_type: EventType,
    pub account_id: String,
    pub occurred_at: DateTime<Utc>,
    pub request_id: String,
    pub caller: String,
    /// The payload as stored: the fields of its `loyalty.v1` message.
    pub payload: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_what_they_print_and_refuse_anything_else() {
        let cursor = Cursor { slice: 42, event: 7 };
        assert_eq!(Cursor::parse("after", &cursor.to_string()).unwrap(), cursor);
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.-1",
            "1.2.3",
            "99999999999999999999.1",
            " 1.2",
        ] {
            assert!(Cursor::parse("after", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn transitions_that_move_a_coupon_are_events_and_those_that_leave_it_are_not() {
        use CouponStatus::*;
        assert_eq!(
            EventType::of_transition(Action::Cancel, Inactive, Valid),
            Some(EventType::CouponReleased)
        );
        assert_eq!(
            EventType::of_transition(Action::RefundFull, Used, Expired),
            Some(EventType::CouponRestored)
        );
        assert_eq!(EventType::of_transition(Action::RefundFull, Used, Used), None);
        assert_eq!(
            EventType::of_transition(Action::Cancel, Inactive, Revoked),
            Some(EventType::CouponRevoked)
        );
        assert_eq!(EventType::of_transition(Action::RefundPartial, Used, Used), None);
    }
}
