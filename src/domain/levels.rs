//! Membership levels (SPEC §3): thresholds, benefits, and the calendar of the
//! monthly evaluation.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::calendar::{Calendar, month_start};

/// A membership level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Silver,
    Gold,
    Platinum,
    Diamond,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Level::Silver, Level::Gold, Level::Platinum, Level::Diamond];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Silver => "silver",
            Level::Gold => "gold",
            Level::Platinum => "platinum",
            Level::Diamond => "diamond",
        }
    }

    /// Parses a stored name.
    pub fn from_db(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// The level above, if any.
    pub fn next(self) -> Option<Level> {
        match self {
            Level::Silver => Some(Level::Gold),
            Level::Gold => Some(Level::Platinum),
            Level::Platinum => Some(Level::Diamond),
            Level::Diamond => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The least 12-month points of each level above Silver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub gold: i64,
    pub platinum: i64,
    pub diamond: i64,
}

impl Default for Thresholds {
    /// SPEC §3: Gold 101-500, Platinum 501-1500, Diamond more than 1500.
    fn default() -> Self {
        Self {
            gold: 101,
            platinum: 501,
            diamond: 1501,
        }
    }
}

impl Thresholds {
    /// Checks the thresholds increase.
    pub fn check(&self) -> Result<(), String> {
        if 0 < self.gold && self.gold < self.platinum && self.platinum < self.diamond {
            Ok(())
        } else {
            Err(format!(
                "level thresholds must increase: gold {}, platinum {}, diamond {}",
                self.gold, self.platinum, self.diamond
            ))
        }
    }

    /// The level `points` earn.
    pub fn level_for(&self, points: i64) -> Level {
        if points >= self.diamond {
            Level::Diamond
        } else if points >= self.platinum {
            Level::Platinum
        } else if points >= self.gold {
            Level::Gold
        } else {
            Level::Silver
        }
    }

    /// The least points of `level`.
    pub fn minimum(&self, level: Level) -> i64 {
        match level {
            Level::Silver => 0,
            Level::Gold => self.gold,
            Level::Platinum => self.platinum,
            Level::Diamond => self.diamond,
        }
    }
}

/// What a level gives (SPEC §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Benefits {
    pub birthday_reward: bool,
    pub anniversary_reward: bool,
    pub level_up_reward: bool,
    pub top_weekly_brands: bool,
    /// Member discount on selected products, in basis points (500 = 5%).
    pub member_discount_basis_points: u32,
    pub exclusive_member_prices: bool,
    pub exclusive_event_benefits: bool,
    /// Fast refund up to this amount (minor units of the program currency).
    pub fast_refund_limit_minor: Option<i64>,
    pub limited_daily_coupons: bool,
}

/// The benefits of every level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenefitsTable {
    pub silver: Benefits,
    pub gold: Benefits,
    pub platinum: Benefits,
    pub diamond: Benefits,
}

impl BenefitsTable {
    /// The benefits of `level`.
    pub fn of(&self, level: Level) -> &Benefits {
        match level {
            Level::Silver => &self.silver,
            Level::Gold => &self.gold,
            Level::Platinum => &self.platinum,
            Level::Diamond => &self.diamond,
        }
    }
}

impl Default for BenefitsTable {
    /// SPEC §3.1.
    fn default() -> Self {
        let base = Benefits {
            birthday_reward: true,
            anniversary_reward: true,
            level_up_reward: true,
            top_weekly_brands: true,
            member_discount_basis_points: 500,
            exclusive_member_prices: false,
            exclusive_event_benefits: false,
            fast_refund_limit_minor: None,
            limited_daily_coupons: false,
        };
        Self {
            silver: base.clone(),
            gold: Benefits {
                member_discount_basis_points: 800,
                exclusive_member_prices: true,
                ..base.clone()
            },
            platinum: Benefits {
                member_discount_basis_points: 1000,
                exclusive_member_prices: true,
                exclusive_event_benefits: true,
                fast_refund_limit_minor: Some(2400),
                ..base.clone()
            },
            diamond: Benefits {
                member_discount_basis_points: 1500,
                exclusive_member_prices: true,
                exclusive_event_benefits: true,
                fast_refund_limit_minor: Some(10_000),
                limited_daily_coupons: true,
                ..base
            },
        }
    }
}

/// The calendar of one month's evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvaluationMonth {
    /// The first day of the evaluated month M.
    pub month: NaiveDate,
    /// The first day of M-11: the window is M-11 ..= M.
    pub window_start: NaiveDate,
    /// The first day of M+1 (exclusive end of the window, and the first day the
    /// evaluation can run).
    pub window_end: NaiveDate,
    /// The 8th of M+1, 00:00 program time.
    pub effective_from: DateTime<Utc>,
}

impl EvaluationMonth {
    /// The evaluation of the month containing `day`.
    pub fn of(day: NaiveDate, calendar: &Calendar) -> Self {
        let month = month_start(day);
        let window_end = crate::domain::calendar::months_before(month, 0)
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(NaiveDate::MAX);
        let eighth = window_end.with_day(8).unwrap_or(window_end);
        Self {
            month,
            window_start: crate::domain::calendar::months_before(month, 11),
            window_end,
            effective_from: local_midnight(calendar, eighth),
        }
    }
}

/// 00:00 of `day` in the program time zone, as an instant. On a day starting
/// in a DST gap, the first instant of the day.
pub fn local_midnight(calendar: &Calendar, day: NaiveDate) -> DateTime<Utc> {
    let tz = calendar.time_zone();
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // Midnight skipped by a DST change: the day starts an hour later.
            let later = midnight + chrono::TimeDelta::hours(1);
            tz.from_local_datetime(&later)
                .earliest()
                .map_or_else(|| Utc.from_utc_datetime(&midnight), |t| t.with_timezone(&Utc))
        }
    }
}

/// The day a yearly date (birthday, anniversary) falls on in `year`: 29
/// February falls on 28 February in other years.
pub fn yearly_date(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, day).or_else(|| {
        (month == 2 && day == 29)
            .then(|| NaiveDate::from_ymd_opt(year, 2, 28))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_change_exactly_at_the_thresholds() {
        let t = Thresholds::default();
        let cases = [
            (0, Level::Silver),
            (100, Level::Silver),
            (101, Level::Gold),
            (500, Level::Gold),
            (501, Level::Platinum),
            (1500, Level::Platinum),
            (1501, Level::Diamond),
            (-5, Level::Silver),
        ];
        for (points, level) in cases {
            assert_eq!(t.level_for(points), level, "{points}");
        }
    }

    #[test]
    fn an_evaluation_takes_effect_on_the_8th_of_the_next_month_local() {
        let calendar = Calendar::new(chrono_tz::Europe::Berlin);
        let e = EvaluationMonth::of(NaiveDate::from_ymd_opt(2026, 12, 15).unwrap(), &calendar);
        assert_eq!(e.month, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        assert_eq!(e.window_start, NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(e.window_end, NaiveDate::from_ymd_opt(2027, 1, 1).unwrap());
        // 00:00 on 8 January in Berlin (UTC+1) is 23:00 UTC on the 7th.
        assert_eq!(
            e.effective_from,
            "2027-01-07T23:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn a_leap_day_falls_on_28_february_in_other_years() {
        assert_eq!(yearly_date(2027, 2, 29), NaiveDate::from_ymd_opt(2027, 2, 28));
        assert_eq!(yearly_date(2028, 2, 29), NaiveDate::from_ymd_opt(2028, 2, 29));
        assert_eq!(yearly_date(2027, 4, 31), None);
    }

    #[test]
    fn the_default_benefits_are_the_spec_table() {
        let table = BenefitsTable::default();
        assert_eq!(table.of(Level::Gold).member_discount_basis_points, 800);
        assert_eq!(table.of(Level::Platinum).fast_refund_limit_minor, Some(2400));
        assert_eq!(table.of(Level::Diamond).fast_refund_limit_minor, Some(10_000));
        assert!(table.of(Level::Diamond).limited_daily_coupons);
        assert!(!table.of(Level::Platinum).limited_daily_coupons);
        assert!(!table.of(Level::Silver).exclusive_member_prices);
    }
}
