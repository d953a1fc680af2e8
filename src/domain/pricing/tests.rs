//! Pricing tables with exact expected figures, and properties over random orders.

use std::time::Instant;

use chrono::TimeDelta;
use proptest::prelude::*;

use super::*;

fn now() -> DateTime<Utc> {
    "2026-06-15T12:00:00Z".parse().unwrap()
}

/// The budget a checkout call gives the best choice, from now.
fn deadline() -> Instant {
    Instant::now() + BEST_CHOICE_BUDGET
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn line(id: &str, seller: &str, unit_price: i64, quantity: u32, sale_price: bool) -> CheckoutLine {
    CheckoutLine {
        line_id: LineId::parse(id).unwrap(),
        seller_id: SellerId::parse(seller).unwrap(),
        product_id: ProductId::parse(&format!("p-{id}")).unwrap(),
        category_id: CategoryId::parse("cat").unwrap(),
        unit_price,
        quantity,
        sale_price,
    }
}

fn order(lines: Vec<CheckoutLine>) -> CheckoutOrder {
    CheckoutOrder::new(
        OrderId::parse("o-1").unwrap(),
        AccountId::parse("alice").unwrap(),
        usd(),
        lines,
    )
    .unwrap()
}

fn coupon(id: i64, issuer: Issuer, discount: Discount) -> CouponTerms {
    CouponTerms {
        coupon_id: id,
        account_id: AccountId::parse("alice").unwrap(),
        status: CouponStatus::Valid,
        order_id: None,
        issuer,
        discount,
        currency: usd(),
        min_purchase: 0,
        regular_price_only: true,
        valid_from: now() - TimeDelta::days(1),
        expires_at: now() + TimeDelta::days(30),
    }
}

fn seller(id: &str) -> Issuer {
    Issuer::Seller(SellerId::parse(id).unwrap())
}

fn run(order: &CheckoutOrder, coupons: &[&CouponTerms]) -> Pricing {
    let picked: Vec<(i64, Option<&CouponTerms>)> = coupons.iter().map(|c| (c.coupon_id, Some(*c))).collect();
    price(order, &picked, now())
}

fn applied(pricing: &Pricing, i: usize) -> &Applied {
    pricing.coupons[i]
        .result
        .as_ref()
        .unwrap_or_else(|r| panic!("coupon {i} refused: {r:?}"))
}

fn refusal(pricing: &Pricing, i: usize) -> Refusal {
    *pricing.coupons[i].result.as_ref().unwrap_err()
}

#[test]
fn one_dollar_off_three_lines_of_3_33_splits_34_33_33() {
    let order = order(vec![
        line("a", "s1", 333, 1, false),
        line("b", "s1", 333, 1, false),
        line("c", "s1", 333, 1, false),
    ]);
    let platform = coupon(1, Issuer::Platform, Discount::AmountOff(100));

    let pricing = run(&order, &[&platform]);

    assert_eq!(applied(&pricing, 0).allocations, vec![(0, 34), (1, 33), (2, 33)]);
    assert_eq!(
        (pricing.subtotal, pricing.discount, pricing.total()),
        (999, 100, 899)
    );
}

#[test]
fn seller_coupons_apply_first_and_the_platform_coupon_on_what_is_left() {
    // Seller A: a regular line of 10.00 and a sale line of 5.00; seller B: 15.00.
    let order = order(vec![
        line("a1", "A", 1000, 1, false),
        line("a2", "A", 500, 1, true),
        line("b1", "B", 500, 3, false),
    ]);
    let seller_a = coupon(
        1,
        seller("A"),
        Discount::PercentOff {
            basis_points: 1000,
            max_minor: None,
        },
    );
    let platform = CouponTerms {
        min_purchase: 2000,
        regular_price_only: false,
        ..coupon(2, Issuer::Platform, Discount::AmountOff(500))
    };

    // Picked platform first: the application order does not depend on it.
    let pricing = run(&order, &[&platform, &seller_a]);

    // 10% of A's regular line only (the sale line is excluded): 1.00.
    assert_eq!(applied(&pricing, 1).allocations, vec![(0, 100)]);
    // 5.00 over 9.00 / 5.00 / 15.00 (after the seller discount): 155.17, 86.2,
    // 258.6 -> 155, 86, 259 (the largest remainder gets the last cent).
    assert_eq!(
        applied(&pricing, 0).allocations,
        vec![(0, 155), (1, 86), (2, 259)]
    );
    assert_eq!(pricing.lines, vec![(1000, 255), (500, 86), (1500, 259)]);
    assert_eq!(
        (pricing.subtotal, pricing.discount, pricing.total()),
        (3000, 600, 2400)
    );
}

#[test]
fn percentages_round_down_and_respect_their_maximum() {
    let order = order(vec![line("a", "s1", 333, 3, false)]);
    let ten_percent = coupon(
        1,
        Issuer::Platform,
        Discount::PercentOff {
            basis_points: 1000,
            max_minor: None,
        },
    );
    assert_eq!(
        applied(&run(&order, &[&ten_percent]), 0).discount,
        99,
        "10% of 9.99 is 0.999"
    );

    let big = self::order(vec![line("a", "s1", 5000, 1, false)]);
    let capped = coupon(
        2,
        Issuer::Platform,
        Discount::PercentOff {
            basis_points: 1500,
            max_minor: Some(300),
        },
    );
    assert_eq!(
        applied(&run(&big, &[&capped]), 0).discount,
        300,
        "15% of 50.00 capped at 3.00"
    );
}

#[test]
fn a_discount_never_exceeds_the_amount_it_applies_to() {
    let order = order(vec![line("a", "A", 300, 1, false), line("b", "B", 200, 1, false)]);
    let seller_a = coupon(1, seller("A"), Discount::AmountOff(2000));
    let platform = coupon(2, Issuer::Platform, Discount::AmountOff(2000));

    let pricing = run(&order, &[&seller_a, &platform]);

    assert_eq!(
        applied(&pricing, 0).discount,
        300,
        "seller coupon capped at A's lines"
    );
    assert_eq!(
        applied(&pricing, 1).discount,
        200,
        "platform coupon capped at what is left"
    );
    assert_eq!(pricing.total(), 0);
    assert_eq!(pricing.lines, vec![(300, 300), (200, 200)]);
}

#[test]
fn scope_and_minimum_refusals() {
    let order = order(vec![line("a", "A", 1000, 1, false), line("s", "S", 800, 1, true)]);
    let other_seller = coupon(1, seller("Z"), Discount::AmountOff(100));
    let sale_only = coupon(2, seller("S"), Discount::AmountOff(100));
    let minimum = CouponTerms {
        min_purchase: 1001,
        ..coupon(3, seller("A"), Discount::AmountOff(100))
    };
    let euro = CouponTerms {
        currency: Currency::parse("EUR").unwrap(),
        ..coupon(4, Issuer::Platform, Discount::AmountOff(100))
    };

    let pricing = run(&order, &[&other_seller, &sale_only, &minimum, &euro]);

    assert_eq!(refusal(&pricing, 0), Refusal::WrongSeller);
    assert_eq!(refusal(&pricing, 1), Refusal::NoEligibleLines);
    assert_eq!(refusal(&pricing, 2), Refusal::MinPurchaseNotMet);
    assert_eq!(refusal(&pricing, 3), Refusal::CurrencyMismatch);
    assert_eq!(pricing.discount, 0);
}

#[test]
fn a_coupon_with_nothing_left_to_discount_is_not_spent() {
    let order = order(vec![
        line("a", "A", 500, 1, false),
        line("free", "B", 0, 1, false),
    ]);
    let seller_a = coupon(1, seller("A"), Discount::AmountOff(500));
    let seller_b = coupon(2, seller("B"), Discount::AmountOff(100));
    let platform = coupon(3, Issuer::Platform, Discount::AmountOff(100));

    let pricing = run(&order, &[&seller_a, &seller_b, &platform]);

    assert_eq!(applied(&pricing, 0).discount, 500);
    assert_eq!(refusal(&pricing, 1), Refusal::NoEligibleLines, "a free line");
    assert_eq!(
        refusal(&pricing, 2),
        Refusal::NoEligibleLines,
        "the seller coupon took it all"
    );
}

#[test]
fn the_platform_minimum_counts_after_seller_discounts() {
    let order = order(vec![line("a", "A", 2000, 1, false)]);
    let seller_a = coupon(1, seller("A"), Discount::AmountOff(500));
    let platform = CouponTerms {
        min_purchase: 1900,
        ..coupon(2, Issuer::Platform, Discount::AmountOff(1000))
    };

    let pricing = run(&order, &[&seller_a, &platform]);

    assert_eq!(applied(&pricing, 0).discount, 500);
    assert_eq!(refusal(&pricing, 1), Refusal::MinPurchaseNotMet);
}

#[test]
fn stacking_allows_one_platform_coupon_and_one_per_seller() {
    let order = order(vec![
        line("a", "A", 1000, 1, false),
        line("b", "B", 1000, 1, false),
    ]);
    let p1 = coupon(1, Issuer::Platform, Discount::AmountOff(100));
    let p2 = coupon(2, Issuer::Platform, Discount::AmountOff(900));
    let a1 = coupon(3, seller("A"), Discount::AmountOff(100));
    let a2 = coupon(4, seller("A"), Discount::AmountOff(200));
    let b1 = coupon(5, seller("B"), Discount::AmountOff(100));

    let pricing = run(&order, &[&p1, &a1, &p2, &a2, &b1]);

    assert!(pricing.coupons[0].result.is_ok());
    assert!(pricing.coupons[1].result.is_ok());
    assert_eq!(refusal(&pricing, 2), Refusal::StackingConflict);
    assert_eq!(refusal(&pricing, 3), Refusal::StackingConflict);
    assert!(pricing.coupons[4].result.is_ok());
    assert_eq!(pricing.discount, 300);
}

#[test]
fn status_and_ownership_refusals() {
    let order = order(vec![line("a", "A", 1000, 1, false)]);
    let base = || coupon(0, Issuer::Platform, Discount::AmountOff(100));
    let cases = [
        (
            CouponTerms {
                account_id: AccountId::parse("bob").unwrap(),
                ..base()
            },
            Refusal::NotOwner,
        ),
        (
            CouponTerms {
                status: CouponStatus::Used,
                ..base()
            },
            Refusal::Used,
        ),
        (
            CouponTerms {
                status: CouponStatus::Revoked,
                ..base()
            },
            Refusal::Revoked,
        ),
        (
            CouponTerms {
                status: CouponStatus::Expired,
                ..base()
            },
            Refusal::Expired,
        ),
        (
            CouponTerms {
                expires_at: now(),
                ..base()
            },
            Refusal::Expired,
        ),
        (
            CouponTerms {
                valid_from: now() + TimeDelta::seconds(1),
                ..base()
            },
            Refusal::NotYetValid,
        ),
        (
            CouponTerms {
                status: CouponStatus::Inactive,
                order_id: Some(OrderId::parse("other").unwrap()),
                ..base()
            },
            Refusal::AlreadyApplied,
        ),
    ];
    for (terms, expected) in cases {
        assert_eq!(refusal(&run(&order, &[&terms]), 0), expected, "{terms:?}");
    }
    let unknown = price(&order, &[(42, None)], now());
    assert_eq!(refusal(&unknown, 0), Refusal::NotOwner);
    // Reserved by this very order (a retried reservation) still applies, even expired.
    let mine = CouponTerms {
        status: CouponStatus::Inactive,
        order_id: Some(OrderId::parse("o-1").unwrap()),
        expires_at: now() - TimeDelta::hours(1),
        ..base()
    };
    assert_eq!(applied(&run(&order, &[&mine]), 0).discount, 100);
}

#[test]
fn best_choice_may_skip_the_largest_seller_coupon_to_keep_the_platform_one() {
    let order = order(vec![line("a", "A", 2000, 1, false)]);
    let big_seller = coupon(1, seller("A"), Discount::AmountOff(500));
    let small_seller = coupon(2, seller("A"), Discount::AmountOff(100));
    let platform = CouponTerms {
        min_purchase: 1900,
        ..coupon(3, Issuer::Platform, Discount::AmountOff(1000))
    };

    let (ids, pricing) = best(&order, &[big_seller, small_seller, platform], now(), deadline());

    assert_eq!(ids, vec![2, 3]);
    assert_eq!(pricing.discount, 1100);
}

#[test]
fn best_choice_ignores_unusable_coupons_and_prefers_fewer_then_sooner_expiring() {
    let order = order(vec![line("a", "A", 1000, 1, false)]);
    let used = CouponTerms {
        status: CouponStatus::Used,
        ..coupon(1, Issuer::Platform, Discount::AmountOff(900))
    };
    let late = coupon(2, Issuer::Platform, Discount::AmountOff(300));
    let soon = CouponTerms {
        expires_at: now() + TimeDelta::days(2),
        ..coupon(3, Issuer::Platform, Discount::AmountOff(300))
    };

    let (ids, pricing) = best(&order, &[used, late, soon], now(), deadline());

    assert_eq!(ids, vec![3]);
    assert_eq!(pricing.discount, 300);
    let (none, nothing) = best(&order, &[], now(), deadline());
    assert!(none.is_empty());
    assert_eq!(nothing.total(), 1000);
}

#[test]
fn an_order_is_refused_when_its_amounts_overflow_or_repeat_a_line() {
    let id = || OrderId::parse("o").unwrap();
    let who = || AccountId::parse("a").unwrap();
    let overflow = CheckoutOrder::new(id(), who(), usd(), vec![line("a", "A", i64::MAX / 2, 3, false)]);
    assert!(overflow.is_err());
    let sum_overflow = CheckoutOrder::new(
        id(),
        who(),
        usd(),
        vec![
            line("a", "A", i64::MAX / 2, 1, false),
            line("b", "A", i64::MAX / 2 + 2, 1, false),
        ],
    );
    assert!(sum_overflow.is_err());
    let repeated = CheckoutOrder::new(
        id(),
        who(),
        usd(),
        vec![line("a", "A", 1, 1, false), line("a", "B", 1, 1, false)],
    );
    assert!(repeated.is_err());
    assert!(CheckoutOrder::new(id(), who(), usd(), vec![line("a", "A", 1, 0, false)]).is_err());
}

proptest! {
    #[test]
    fn an_allocation_adds_up_and_never_exceeds_a_line(
        weights in prop::collection::vec(0i64..1_000_000, 1..30),
        fraction in 0.0f64..=1.0,
    ) {
        let sum: i64 = weights.iter().sum();
        let total = (sum as f64 * fraction) as i64;
        let parts = allocate(total, &weights);
        prop_assert_eq!(parts.iter().sum::<i64>(), if sum > 0 { total } else { 0 });
        for (part, weight) in parts.iter().zip(&weights) {
            prop_assert!(*part >= 0 && part <= weight, "{part} over {weight}");
        }
    }

    #[test]
    fn a_priced_order_is_consistent_to_the_minor_unit(
        lines in prop::collection::vec((0usize..3, 0i64..50_000, 1u32..5, any::<bool>()), 1..12),
        coupons in prop::collection::vec((0usize..4, 1i64..20_000, 1u32..10_000, 0i64..30_000, any::<bool>(), any::<bool>()), 0..6),
    ) {
        let sellers = ["A", "B", "C", "D"];
        let order = order(lines.iter().enumerate()
            .map(|(i, (s, price, qty, sale))| line(&format!("l{i}"), sellers[*s], *price, *qty, *sale))
            .collect());
        let terms: Vec<CouponTerms> = coupons.iter().enumerate().map(|(i, (s, amount, bp, min, percent, regular))| {
            let discount = if *percent {
                Discount::PercentOff { basis_points: *bp, max_minor: (*amount % 3 == 0).then_some(*amount) }
            } else {
                Discount::AmountOff(*amount)
            };
            let issuer = if *s == 3 { Issuer::Platform } else { seller(sellers[*s]) };
            CouponTerms { min_purchase: *min, regular_price_only: *regular, ..coupon(i as i64, issuer, discount) }
        }).collect();
        let picked: Vec<&CouponTerms> = terms.iter().collect();

        let pricing = run(&order, &picked);

        prop_assert!(pricing.discount <= pricing.subtotal);
        prop_assert_eq!(pricing.lines.iter().map(|(_, d)| d).sum::<i64>(), pricing.discount);
        for (amount, discount) in &pricing.lines {
            prop_assert!(*discount >= 0 && discount <= amount);
        }
        let mut applied_total = 0;
        for outcome in &pricing.coupons {
            if let Ok(applied) = &outcome.result {
                prop_assert_eq!(applied.allocations.iter().map(|(_, d)| d).sum::<i64>(), applied.discount);
                applied_total += applied.discount;
            }
        }
        prop_assert_eq!(applied_total, pricing.discount);
        // Best choice: no subset of the coupons that applies as a whole does better.
        let (_, best_pricing) = best(&order, &terms, now(), deadline());
        prop_assert!(best_pricing.all_applicable());
        let mut brute_force = 0;
        for mask in 0u32..(1 << terms.len()) {
            let subset: Vec<&CouponTerms> = terms.iter().enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| c).collect();
            let pricing = run(&order, &subset);
            if pricing.all_applicable() {
                brute_force = brute_force.max(pricing.discount);
            }
        }
        prop_assert_eq!(best_pricing.discount, brute_force);
    }
}

/// The best discount over every subset of `coupons` that applies as a whole.
fn brute_force(order: &CheckoutOrder, coupons: &[CouponTerms]) -> i64 {
    (0u32..(1 << coupons.len()))
        .map(|mask| {
            let subset: Vec<&CouponTerms> = coupons
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, c)| c)
                .collect();
            run(order, &subset)
        })
        .filter(Pricing::all_applicable)
        .map(|pricing| pricing.discount)
        .max()
        .unwrap_or(0)
}

/// The baseline the best choice must match at least: the best coupon of each
/// seller alone, with or without one platform coupon, or a platform coupon alone.
fn baseline(order: &CheckoutOrder, coupons: &[CouponTerms]) -> i64 {
    let alone = |c: &CouponTerms| applied_alone(order, c);
    let mut per_seller: HashMap<&SellerId, (i64, &CouponTerms)> = HashMap::new();
    for c in coupons {
        if let (Issuer::Seller(s), Some(d)) = (&c.issuer, alone(c))
            && per_seller.get(s).is_none_or(|(best, _)| d > *best)
        {
            per_seller.insert(s, (d, c));
        }
    }
    let sellers: Vec<&CouponTerms> = per_seller.values().map(|(_, c)| *c).collect();
    let mut best = run(order, &sellers).discount;
    for platform in coupons.iter().filter(|c| c.issuer == Issuer::Platform) {
        let mut with = sellers.clone();
        with.push(platform);
        let pricing = run(order, &with);
        if pricing.all_applicable() {
            best = best.max(pricing.discount);
        }
        best = best.max(alone(platform).unwrap_or(0));
    }
    best
}

fn applied_alone(order: &CheckoutOrder, coupon: &CouponTerms) -> Option<i64> {
    run(order, &[coupon]).coupons[0]
        .result
        .as_ref()
        .ok()
        .map(|a| a.discount)
}

/// Lines `(seller, unit price, quantity, sale)` and coupons `(issuer: 0..sellers
/// or platform, amount, basis points, minimum, percent, regular only)`.
fn instance(
    sellers: &[&str],
    lines: &[(usize, i64, u32, bool)],
    coupons: &[(usize, i64, u32, i64, bool, bool)],
) -> (CheckoutOrder, Vec<CouponTerms>) {
    let order = order(
        lines
            .iter()
            .enumerate()
            .map(|(i, (s, price, qty, sale))| line(&format!("l{i}"), sellers[*s], *price, *qty, *sale))
            .collect(),
    );
    let terms = coupons
        .iter()
        .enumerate()
        .map(|(i, (s, amount, bp, min, percent, regular))| {
            let discount = if *percent {
                Discount::PercentOff {
                    basis_points: *bp,
                    max_minor: (*amount % 2 == 0).then_some(*amount),
                }
            } else {
                Discount::AmountOff(*amount)
            };
            let issuer = match sellers.get(*s) {
                Some(id) => seller(id),
                None => Issuer::Platform,
            };
            CouponTerms {
                min_purchase: *min,
                regular_price_only: *regular,
                expires_at: now() + TimeDelta::days(1 + (i as i64 % 5)),
                ..coupon(i as i64 + 1, issuer, discount)
            }
        })
        .collect();
    (order, terms)
}

/// Every picked coupon applies and gives something.
fn assert_sound(ids: &[i64], pricing: &Pricing) {
    assert!(pricing.all_applicable(), "{:?}", pricing.refusals());
    assert_eq!(ids.len(), pricing.coupons.len());
    for outcome in &pricing.coupons {
        let applied = outcome.result.as_ref().unwrap();
        assert!(applied.discount > 0, "coupon {} gives nothing", outcome.coupon_id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn best_choice_matches_a_brute_force_search(
        lines in prop::collection::vec((0usize..3, 0i64..5_000, 1u32..4, any::<bool>()), 1..9),
        coupons in prop::collection::vec((0usize..4, 1i64..6_000, 1u32..10_000, 0i64..25_000, any::<bool>(), any::<bool>()), 0..10),
    ) {
        let (order, terms) = instance(&["A", "B", "C"], &lines, &coupons);

        let (ids, pricing) = best(&order, &terms, now(), deadline());

        assert_sound(&ids, &pricing);
        prop_assert_eq!(pricing.discount, brute_force(&order, &terms));
    }

    #[test]
    fn best_choice_is_never_worse_than_the_baseline_even_out_of_time(
        lines in prop::collection::vec((0usize..12, 0i64..5_000, 1u32..4, any::<bool>()), 1..30),
        coupons in prop::collection::vec((0usize..14, 1i64..6_000, 1u32..10_000, 0i64..60_000, any::<bool>(), any::<bool>()), 0..40),
    ) {
        let sellers = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L"];
        let (order, terms) = instance(&sellers, &lines, &coupons);
        let floor = baseline(&order, &terms);

        let (ids, pricing) = best(&order, &terms, now(), Instant::now());
        assert_sound(&ids, &pricing);
        prop_assert!(pricing.discount >= floor, "{} below the baseline {floor}", pricing.discount);

        let (ids, searched) = best(&order, &terms, now(), deadline());
        assert_sound(&ids, &searched);
        prop_assert!(searched.discount >= pricing.discount);
    }
}

#[test]
fn best_choice_over_300_coupons_and_100_lines_is_exact_within_the_budget() {
    // 60 sellers, 100 regular lines; 5 amount-off coupons per seller (regular
    // price only); one platform coupon of 200.00 whose minimum leaves room for
    // 50.03 of seller discounts, and 99 small ones without minimum.
    let sellers: Vec<String> = (0..60).map(|s| format!("s{s}")).collect();
    let names: Vec<&str> = sellers.iter().map(String::as_str).collect();
    let lines: Vec<(usize, i64, u32, bool)> = (0..100)
        .map(|l| (l % 60, 2_000 + 37 * l as i64, 1, false))
        .collect();
    let seller_discount = |s: usize, k: usize| 50 + ((s * 7 + k * 13) % 300) as i64;
    let mut coupons = Vec::new();
    for s in 0..60 {
        for k in 0..5 {
            coupons.push((s, seller_discount(s, k), 0, 0, false, true));
        }
    }
    let subtotal: i64 = lines.iter().map(|(_, price, _, _)| price).sum();
    let room = 5_003;
    coupons.push((60, 20_000, 0, subtotal - room, false, false));
    coupons.extend((1..100).map(|a| (60, a, 0, 0, false, false)));
    let (order, terms) = instance(&names, &lines, &coupons);
    // Independently: at most one coupon per seller, total within the room, as
    // large as possible (a knapsack by dynamic programming), plus 200.00.
    let mut reachable = vec![false; room as usize + 1];
    reachable[0] = true;
    for s in 0..60 {
        let before = reachable.clone();
        for k in 0..5 {
            let d = seller_discount(s, k) as usize;
            for sum in d..=room as usize {
                reachable[sum] |= before[sum - d];
            }
        }
    }
    let filled = reachable.iter().rposition(|r| *r).unwrap() as i64;
    let all_best: i64 = (0..60)
        .map(|s| (0..5).map(|k| seller_discount(s, k)).max().unwrap())
        .sum();
    let expected = (filled + 20_000).max(all_best + 99);

    let started = Instant::now();
    let (ids, pricing) = best(&order, &terms, now(), started + BEST_CHOICE_BUDGET);
    let elapsed = started.elapsed();

    assert_sound(&ids, &pricing);
    assert_eq!(pricing.discount, expected);
    assert!(
        elapsed < std::time::Duration::from_millis(200),
        "took {elapsed:?}"
    );
}

#[test]
fn best_choice_with_one_coupon_from_each_of_30_sellers_is_fast() {
    // One 1.00 coupon per seller, one 10.00 line per seller, and a platform
    // coupon of 50.00 whose minimum leaves room for 29 of them: 2^30 subsets.
    let sellers: Vec<String> = (0..30).map(|s| format!("s{s}")).collect();
    let names: Vec<&str> = sellers.iter().map(String::as_str).collect();
    let lines: Vec<(usize, i64, u32, bool)> = (0..30).map(|s| (s, 1_000, 1, false)).collect();
    let mut coupons: Vec<(usize, i64, u32, i64, bool, bool)> =
        (0..30).map(|s| (s, 100, 0, 0, false, true)).collect();
    coupons.push((30, 5_000, 0, 30_000 - 2_950, false, false));
    coupons.push((30, 1_000, 0, 0, false, false));
    let (order, terms) = instance(&names, &lines, &coupons);

    let started = Instant::now();
    let (ids, pricing) = best(&order, &terms, now(), started + BEST_CHOICE_BUDGET);
    let elapsed = started.elapsed();

    assert_sound(&ids, &pricing);
    assert_eq!(pricing.discount, 29 * 100 + 5_000);
    assert_eq!(ids.len(), 30);
    assert!(ids.contains(&31), "the 50.00 platform coupon");
    assert!(
        elapsed < std::time::Duration::from_millis(200),
        "took {elapsed:?}"
    );
}
