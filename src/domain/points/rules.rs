//! The earning rules (SPEC §2.1): amounts, caps, and the cap arithmetic.

use crate::domain::money::Money;

/// The configurable amounts and caps of every earning source.
#[derive(Debug, Clone)]
pub struct EarningRules {
    /// Points of an order whose amount reaches `order_minimum`.
    pub order_points: i32,
    /// The least amount that earns order points, in the program currency. Orders
    /// in another currency earn no order points.
    pub order_minimum: Money,
    /// Order points a member can earn per local day.
    pub order_daily_cap: i32,
    /// Points per distinct category bought on a local day beyond the first.
    pub variety_points: i32,
    /// Category-variety points a member can earn per local day.
    pub variety_daily_cap: i32,
    /// Points of a review of a confirmed order's product.
    pub review_points: i32,
    /// Points of the first visit of a local day.
    pub visit_points: i32,
    /// Visit points a member can earn per local month.
    pub visit_monthly_cap: i32,
    /// Points of a community post.
    pub post_points: i32,
    /// Post points a member can earn per local month.
    pub post_monthly_cap: i32,
    /// The largest bonus one campaign may grant one member (a guard against typos).
    pub bonus_max: i32,
}

/// The points a capped source awards when its period's demand goes from `before`
/// to `after`: what of the increase still fits under `cap`.
///
/// Counters record demand rather than awards, so this is exact whatever order
/// concurrent events are serialized in, and never negative.
pub fn capped_award(before: i64, after: i64, cap: i32) -> i32 {
    let cap = i64::from(cap.max(0));
    let awarded = after.min(cap) - before.min(cap);
    // 0 <= awarded <= cap, which fits an i32.
    i32::try_from(awarded.max(0)).unwrap_or(0)
}

impl EarningRules {
    /// The category-variety points a day earns with `categories` distinct
    /// categories, before the cap: every category beyond the first earns.
    pub fn variety_demand(&self, categories: i64) -> i64 {
        (categories - 1).max(0) * i64::from(self.variety_points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_award_is_what_fits_under_the_cap() {
        assert_eq!(capped_award(0, 5, 5), 5);
        assert_eq!(capped_award(5, 10, 5), 0);
        assert_eq!(capped_award(8, 10, 10), 2);
        assert_eq!(capped_award(3, 9, 5), 2);
    }

    #[test]
    fn a_lowered_cap_never_gives_a_negative_award() {
        assert_eq!(capped_award(20, 22, 10), 0);
        assert_eq!(capped_award(0, 3, -1), 0);
    }

    #[test]
    fn the_first_category_of_a_day_earns_nothing() {
        let usd = crate::domain::money::Currency::parse("USD").unwrap();
        let rules = EarningRules {
            order_points: 5,
            order_minimum: Money::new(200, usd).unwrap(),
            order_daily_cap: 5,
            variety_points: 1,
            variety_daily_cap: 5,
            review_points: 1,
            visit_points: 1,
            visit_monthly_cap: 10,
            post_points: 2,
            post_monthly_cap: 10,
            bonus_max: 100_000,
        };
        assert_eq!(rules.variety_demand(0), 0);
        assert_eq!(rules.variety_demand(1), 0);
        assert_eq!(rules.variety_demand(4), 3);
    }
}
