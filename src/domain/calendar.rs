//! Calendar rules in the program time zone: which local day and month an instant
//! falls in, and month arithmetic for caps and the 12-month window.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;

/// How far in the future an event's instant may be (clock skew between services).
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The program's calendar: a time zone (IANA name, `UTC` by default).
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    time_zone: Tz,
}

impl Calendar {
    /// A calendar in `time_zone`.
    pub fn new(time_zone: Tz) -> Self {
        Self { time_zone }
    }

    /// The program time zone.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The local calendar date of an instant.
    pub fn local_date(&self, instant: DateTime<Utc>) -> NaiveDate {
        instant.with_timezone(&self.time_zone).date_naive()
    }
}

/// The first day of the month of `date`.
pub fn month_start(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap_or(date)
}

/// The first day of the month `months` before the month of `date`.
pub fn months_before(date: NaiveDate, months: u32) -> NaiveDate {
    month_start(date)
        .checked_sub_months(Months::new(months))
        .unwrap_or(NaiveDate::MIN)
}

/// The last day of the month of `date`.
pub fn month_end(date: NaiveDate) -> NaiveDate {
    month_start(date)
        .checked_add_months(Months::new(1))
        .and_then(|next| next.pred_opt())
        .unwrap_or(NaiveDate::MAX)
}

/// Refuses an event instant more than [`MAX_FUTURE_SKEW`] after `now`.
pub fn check_not_future(instant: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if instant > now + MAX_FUTURE_SKEW {
        return Err(format!(
            "must not be more than 5 minutes in the future (got {}, now is {})",
            instant.to_rfc3339(),
            now.to_rfc3339()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn the_local_date_follows_the_program_time_zone() {
        let calendar = Calendar::new(chrono_tz::America::New_York);
        // 03:30 UTC on 1 March is still 28 February in New York (UTC-5).
        let instant = "2026-03-01T03:30:00Z".parse().unwrap();
        assert_eq!(calendar.local_date(instant), date(2026, 2, 28));
    }

    #[test]
    fn month_arithmetic_crosses_years() {
        assert_eq!(months_before(date(2026, 2, 17), 11), date(2025, 3, 1));
        assert_eq!(months_before(date(2026, 2, 17), 12), date(2025, 2, 1));
        assert_eq!(month_end(date(2028, 2, 3)), date(2028, 2, 29));
        assert_eq!(month_end(date(2026, 12, 31)), date(2026, 12, 31));
    }

    #[test]
    fn an_instant_up_to_five_minutes_ahead_is_accepted() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        assert!(check_not_future(now + TimeDelta::minutes(5), now).is_ok());
        assert!(check_not_future(now + TimeDelta::minutes(5) + TimeDelta::seconds(1), now).is_err());
    }
}
