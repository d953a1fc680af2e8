//! Best choice (SPEC §4.3): the member's combination of coupons giving the
//! largest total discount on an order, found within a budget.
//!
//! The search rests on two facts of [`price`](super::price):
//!
//! - A seller coupon applies to its seller's lines before anything else, so its
//!   discount `d` and its split over the lines do not depend on the other
//!   coupons. Priced alone once, it is a pair `(d, r)`: `r` is the part of `d` on
//!   the lines a platform coupon covers (all lines, or the regular-price ones).
//! - The platform coupon is the only coupling: on base `B` (its eligible lines)
//!   minus the chosen `Σ r`, it gives `g(B - Σ r)`, where `g` is non-decreasing
//!   and 1-Lipschitz, provided `B - Σ r` reaches its minimum purchase (and 1).
//!
//! Without a platform coupon, the best seller coupon of each seller is exact.
//! With one, each seller keeps only its Pareto front of `(d high, r low)`, and a
//! branch and bound per platform coupon maximises `Σ d + g(B - Σ r)`, with one
//! incumbent across all of them. The incumbent starts from the baseline (the
//! best coupon per seller, with or without each platform coupon, and each
//! platform coupon alone), so the answer is never worse than that; the search
//! stops at [`MAX_SEARCH_NODES`] or at the caller's deadline and keeps the best
//! found, exact when it ran to the end. The answer is priced again by
//! [`price`](super::price), the source of truth.
//!
//! A branch is cut when no completion can beat the incumbent, by the least of
//! three bounds: every seller at its largest `d` with `g` as now; `Σ (d - r)` at
//! its largest plus `y + g(left - y)` at the largest `y` the minimum allows
//! (non-decreasing as `g` is 1-Lipschitz); and, with `λ` the platform
//! coupon's rate, `Σ max(d - λr) + λ·left` (at most `λy` plus its maximum).
//! Each seller's choices are tried by `d - λr`, and sellers with the same front
//! are interchangeable, so only one order of their choices is searched.
//!
//! Before the search, each coupon is priced alone once: linear in coupons times
//! lines, outside the deadline but bounded by the order's size.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Applied, CheckoutOrder, CouponTerms, Discount, Issuer, Pricing, apply, price, usable};
use crate::domain::ids::SellerId;

/// How long the exact search of a best choice may run before it settles for
/// the best combination found. The baseline is computed whatever the budget,
/// so a short budget costs optimality, never correctness.
pub const BEST_CHOICE_BUDGET: Duration = Duration::from_millis(20);

/// The most nodes the branch and bound visits, over all platform coupons: a
/// bound on the work independent of the clock.
pub const MAX_SEARCH_NODES: u64 = 2_000_000;

/// The search reads the clock once per this many nodes.
const CLOCK_EVERY: u64 = 1024;

/// The combination of `coupons` giving the largest total discount on `order`
/// under the stacking rules, searched until `deadline` at most. Ties go to
/// fewer coupons, then to the coupons that expire first (use them before they
/// are lost). A coupon adding nothing is never chosen.
pub fn best(
    order: &CheckoutOrder,
    coupons: &[CouponTerms],
    now: DateTime<Utc>,
    deadline: Instant,
) -> (Vec<i64>, Pricing) {
    let usable: Vec<&CouponTerms> = coupons.iter().filter(|c| usable(order, c, now).is_ok()).collect();
    let sellers = seller_options(order, &usable);
    let platforms = platform_options(order, &usable);
    let variants = [Variant::new(&sellers, false), Variant::new(&sellers, true)];

    let mut search = Search {
        sellers: &sellers,
        platforms: &platforms,
        variants: &variants,
        incumbent: Candidate::baseline(&sellers),
        path: Vec::new(),
        positions: Vec::new(),
        ranked: Vec::new(),
        rest_rated: Vec::new(),
        nodes: 0,
        deadline,
        stopped: false,
    };
    search.seed();
    // Most promising platform coupons first: the others are then often cut at the root.
    let mut queue: Vec<(i128, usize)> = platforms
        .iter()
        .enumerate()
        .map(|(p, platform)| {
            (
                variants[usize::from(platform.regular_only)].root_bound(platform),
                p,
            )
        })
        .collect();
    queue.sort_by_key(|&(bound, p)| (Reverse(bound), p));
    for (bound, p) in queue {
        if search.stopped {
            break;
        }
        if bound > i128::from(search.incumbent.discount) {
            search.run(p);
        }
    }
    if search.stopped {
        tracing::debug!(nodes = search.nodes, "best choice search stopped at its budget");
    }

    let mut chosen = search.incumbent;
    chosen.drop_idle(&sellers, &platforms);
    let picked: Vec<(i64, Option<&CouponTerms>)> = chosen
        .coupons(&sellers, &platforms)
        .into_iter()
        .map(|c| (c.coupon_id, Some(c)))
        .collect();
    let pricing = price(order, &picked, now);
    debug_assert!(
        pricing.all_applicable(),
        "the model only picks applicable coupons"
    );
    debug_assert_eq!(
        pricing.discount, chosen.discount,
        "the model prices as price does"
    );
    if !pricing.all_applicable() {
        // Cannot happen (the model follows `price`); never hand out a refused coupon.
        let applied: Vec<(i64, Option<&CouponTerms>)> = picked
            .iter()
            .zip(&pricing.coupons)
            .filter(|(_, outcome)| outcome.result.is_ok())
            .map(|(p, _)| *p)
            .collect();
        return (
            applied.iter().map(|(id, _)| *id).collect(),
            price(order, &applied, now),
        );
    }
    (picked.iter().map(|(id, _)| *id).collect(), pricing)
}

/// A seller coupon priced alone.
struct SellerCoupon<'a> {
    terms: &'a CouponTerms,
    discount: i64,
    /// The part of `discount` on regular-price lines.
    on_regular: i64,
}

impl SellerCoupon<'_> {
    /// The part of the discount on the lines of a platform coupon.
    fn overlap(&self, regular_only: bool) -> i64 {
        if regular_only {
            self.on_regular
        } else {
            self.discount
        }
    }
}

/// Per seller of the order with at least one coupon giving something: its
/// coupons, best first (larger discount, then earlier expiry, then lower id).
fn seller_options<'a>(order: &CheckoutOrder, usable: &[&'a CouponTerms]) -> Vec<Vec<SellerCoupon<'a>>> {
    let mut lines_of: BTreeMap<&SellerId, Vec<usize>> = BTreeMap::new();
    for (l, line) in order.lines.iter().enumerate() {
        lines_of.entry(&line.seller_id).or_default().push(l);
    }
    let mut scratch = vec![0i64; order.lines.len()];
    lines_of
        .into_iter()
        .map(|(seller, lines)| {
            let regular: Vec<usize> = lines
                .iter()
                .copied()
                .filter(|&l| !order.lines[l].sale_price)
                .collect();
            let mut coupons: Vec<SellerCoupon<'a>> = usable
                .iter()
                .filter(|c| matches!(&c.issuer, Issuer::Seller(s) if s == seller))
                .filter_map(|&terms| {
                    let eligible = if terms.regular_price_only {
                        &regular
                    } else {
                        &lines
                    };
                    let Applied {
                        discount,
                        allocations,
                    } = apply(terms, eligible, &order.amounts, &mut scratch, false).ok()?;
                    let on_regular = allocations
                        .iter()
                        .filter(|(l, _)| !order.lines[*l].sale_price)
                        .map(|(_, share)| share)
                        .sum();
                    Some(SellerCoupon {
                        terms,
                        discount,
                        on_regular,
                    })
                })
                .filter(|c| c.discount > 0)
                .collect();
            coupons.sort_by_key(|c| (Reverse(c.discount), c.terms.expires_at, c.terms.coupon_id));
            coupons
        })
        .filter(|coupons| !coupons.is_empty())
        .collect()
}

/// A platform coupon with what the search needs of the order.
struct PlatformCoupon<'a> {
    terms: &'a CouponTerms,
    discount: Discount,
    regular_only: bool,
    /// The amount of its eligible lines before any seller discount.
    base: i64,
    /// The least it must have left to apply: its minimum purchase, and 1.
    floor: i64,
    /// The slope of its discount, in basis points, where it grows: a
    /// percentage's rate, 0 for an amount off.
    rate: i64,
}

/// The platform coupons that can apply, one per distinct set of terms (the one
/// expiring first, then the lowest id).
fn platform_options<'a>(order: &CheckoutOrder, usable: &[&'a CouponTerms]) -> Vec<PlatformCoupon<'a>> {
    let regular_base: i64 = order
        .lines
        .iter()
        .zip(&order.amounts)
        .filter(|(line, _)| !line.sale_price)
        .map(|(_, amount)| amount)
        .sum();
    let mut platforms: Vec<PlatformCoupon<'a>> = usable
        .iter()
        .filter(|c| c.issuer == Issuer::Platform)
        .map(|&terms| PlatformCoupon {
            terms,
            discount: terms.discount,
            regular_only: terms.regular_price_only,
            base: if terms.regular_price_only {
                regular_base
            } else {
                order.subtotal()
            },
            floor: terms.min_purchase.max(1),
            rate: match terms.discount {
                Discount::PercentOff { basis_points, .. } => i64::from(basis_points),
                Discount::AmountOff(_) => 0,
            },
        })
        .filter(|p| p.base >= p.floor && p.discount.on(p.base) > 0)
        .collect();
    let terms_of = |p: &PlatformCoupon| {
        let discount = match p.discount {
            Discount::AmountOff(amount) => (0, amount, 0),
            Discount::PercentOff {
                basis_points,
                max_minor,
            } => (1, i64::from(basis_points), max_minor.unwrap_or(-1)),
        };
        (discount, p.terms.min_purchase, p.regular_only)
    };
    platforms.sort_by_key(|p| (terms_of(p), p.terms.expires_at, p.terms.coupon_id));
    platforms.dedup_by(|later, first| terms_of(later) == terms_of(first));
    platforms
}

/// One way to use a seller's coupons, as a platform coupon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Choice {
    /// Index in the seller's coupons.
    coupon: usize,
    discount: i64,
    /// The part of `discount` on the platform coupon's lines.
    overlap: i64,
}

/// The sellers as platform coupons of one kind (all lines, or regular-price
/// lines only) see them.
struct Variant {
    /// Sellers whose best coupon does not touch the platform coupon's lines:
    /// always taken, `(seller, coupon)`.
    fixed: Vec<(usize, usize)>,
    fixed_discount: i64,
    /// The other sellers, largest best discount first, each with its Pareto
    /// front of `(discount high, overlap low)`, largest discount first.
    searched: Vec<(usize, Vec<Choice>)>,
    /// Whether taking no coupon of `searched[i]` can be best (no choice has
    /// zero overlap).
    none_allowed: Vec<bool>,
    /// Whether `searched[i]` has the same front as `searched[i - 1]`: their
    /// choices are interchangeable, so only non-decreasing indexes are tried.
    same_as_previous: Vec<bool>,
    /// From `searched[i]` on: the sums of the largest discount, of the largest
    /// discount outside the platform coupon's lines, and of the largest overlap.
    rest_discount: Vec<i64>,
    rest_outside: Vec<i64>,
    rest_overlap: Vec<i64>,
}

impl Variant {
    fn new(sellers: &[Vec<SellerCoupon>], regular_only: bool) -> Self {
        let mut fixed = Vec::new();
        let mut searched = Vec::new();
        for (s, coupons) in sellers.iter().enumerate() {
            let mut choices: Vec<Choice> = coupons
                .iter()
                .enumerate()
                .map(|(coupon, c)| Choice {
                    coupon,
                    discount: c.discount,
                    overlap: c.overlap(regular_only),
                })
                .collect();
            // Stable: among equal pairs the coupon preferred by `seller_options` stays first.
            choices.sort_by_key(|c| (Reverse(c.discount), c.overlap));
            let mut front: Vec<Choice> = Vec::new();
            for choice in choices {
                if front.last().is_none_or(|last| choice.overlap < last.overlap) {
                    front.push(choice);
                }
            }
            match front.as_slice() {
                [only] if only.overlap == 0 => fixed.push((s, only.coupon)),
                _ => searched.push((s, front)),
            }
        }
        // Largest best discount first; equal fronts side by side.
        searched.sort_by_cached_key(|(s, front)| {
            let pairs: Vec<(Reverse<i64>, i64)> =
                front.iter().map(|c| (Reverse(c.discount), c.overlap)).collect();
            (pairs, *s)
        });
        let same = |a: &[Choice], b: &[Choice]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x.discount, x.overlap) == (y.discount, y.overlap))
        };
        let same_as_previous = (0..searched.len())
            .map(|i| i > 0 && same(&searched[i].1, &searched[i - 1].1))
            .collect();
        let none_allowed = searched
            .iter()
            .map(|(_, front)| front.iter().all(|c| c.overlap > 0))
            .collect();
        let suffix = |f: &dyn Fn(&[Choice]) -> i64| {
            let mut sums = vec![0i64; searched.len() + 1];
            for i in (0..searched.len()).rev() {
                sums[i] = sums[i + 1] + f(&searched[i].1);
            }
            sums
        };
        let rest_discount = suffix(&|f| f[0].discount);
        let rest_outside = suffix(&|f| f.iter().map(|c| c.discount - c.overlap).max().unwrap_or(0));
        let rest_overlap = suffix(&|f| f[0].overlap);
        let fixed_discount = fixed.iter().map(|&(s, c)| sellers[s][c].discount).sum();
        Self {
            fixed,
            fixed_discount,
            searched,
            none_allowed,
            same_as_previous,
            rest_discount,
            rest_outside,
            rest_overlap,
        }
    }

    /// An upper bound of `discount + Σ d + g(left - Σ r)` over the choices of
    /// `searched[depth..]` that leave the platform coupon applicable;
    /// `rest_rated` as [`rated_suffix`](Self::rated_suffix) gives it.
    fn bound(
        &self,
        platform: &PlatformCoupon,
        rest_rated: &[i128],
        depth: usize,
        discount: i64,
        left: i64,
    ) -> i128 {
        let g = |x: i64| i128::from(platform.discount.on(x));
        let discount = i128::from(discount);
        // g is non-decreasing: the sellers at their largest, g as if they took nothing.
        let loose = discount + i128::from(self.rest_discount[depth]) + g(left);
        // With d = (d - r) + r and y = Σ r: y + g(left - y) is non-decreasing in y
        // (g is 1-Lipschitz), and y cannot go past what keeps the minimum.
        let y = self.rest_overlap[depth].min(left - platform.floor);
        let tight = discount + i128::from(self.rest_outside[depth]) + i128::from(y) + g(left - y);
        // In basis points, with the rate λ of a percentage (g(x) <= λx, and <= its
        // maximum): d = (d - λr) + λr, and λy + g(left - y) <= min(λ left, λy + max).
        let rate = i128::from(platform.rate);
        let rated = match platform.discount {
            Discount::PercentOff { max_minor, .. } => {
                let capped =
                    max_minor.map_or(i128::MAX, |max| rate * i128::from(y) + BASIS * i128::from(max));
                (rate * i128::from(left)).min(capped)
            }
            Discount::AmountOff(_) => BASIS * g(left),
        };
        let rated = (BASIS * discount + rest_rated[depth] + rated).div_euclid(BASIS);
        loose.min(tight).min(rated)
    }

    /// Per depth, the sum over `searched[depth..]` of each seller's largest
    /// `d - λr` in basis points (taking nothing counts as 0).
    fn rated_suffix(&self, rate: i64) -> Vec<i128> {
        let mut sums = vec![0i128; self.searched.len() + 1];
        for i in (0..self.searched.len()).rev() {
            let best = self.searched[i]
                .1
                .iter()
                .map(|c| rated(c, rate))
                .max()
                .unwrap_or(0)
                .max(0);
            sums[i] = sums[i + 1] + best;
        }
        sums
    }

    /// The bound before any choice.
    fn root_bound(&self, platform: &PlatformCoupon) -> i128 {
        let rest_rated = self.rated_suffix(platform.rate);
        i128::from(self.fixed_discount) + self.bound(platform, &rest_rated, 0, 0, platform.base)
    }
}

/// Basis points in a whole.
const BASIS: i128 = 10_000;

/// `d - λr` of a choice, in basis points, for a rate `λ` in basis points.
fn rated(choice: &Choice, rate: i64) -> i128 {
    BASIS * i128::from(choice.discount) - i128::from(rate) * i128::from(choice.overlap)
}

/// A combination: per seller the coupon index taken, and the platform coupon.
#[derive(Debug, Clone)]
struct Candidate {
    discount: i64,
    sellers: Vec<Option<usize>>,
    platform: Option<usize>,
}

impl Candidate {
    /// The best coupon of every seller, without a platform coupon.
    fn baseline(sellers: &[Vec<SellerCoupon>]) -> Self {
        Self {
            discount: sellers.iter().map(|coupons| coupons[0].discount).sum(),
            sellers: vec![Some(0); sellers.len()],
            platform: None,
        }
    }

    fn count(&self) -> usize {
        self.sellers.iter().flatten().count() + usize::from(self.platform.is_some())
    }

    /// The coupons, seller coupons in seller order then the platform coupon.
    fn coupons<'a>(
        &self,
        sellers: &[Vec<SellerCoupon<'a>>],
        platforms: &[PlatformCoupon<'a>],
    ) -> Vec<&'a CouponTerms> {
        let of_sellers = self
            .sellers
            .iter()
            .enumerate()
            .filter_map(|(s, c)| c.map(|c| sellers[s][c].terms));
        of_sellers
            .chain(self.platform.map(|p| platforms[p].terms))
            .collect()
    }

    /// Larger discount, then fewer coupons, then earlier expiries.
    fn rank(
        &self,
        sellers: &[Vec<SellerCoupon>],
        platforms: &[PlatformCoupon],
    ) -> (i64, Reverse<usize>, Reverse<Vec<DateTime<Utc>>>) {
        let mut expiries: Vec<DateTime<Utc>> = self
            .coupons(sellers, platforms)
            .iter()
            .map(|c| c.expires_at)
            .collect();
        expiries.sort();
        (self.discount, Reverse(self.count()), Reverse(expiries))
    }

    /// The discount of this combination in the model, `None` if the platform
    /// coupon would be refused.
    fn value(&self, sellers: &[Vec<SellerCoupon>], platforms: &[PlatformCoupon]) -> Option<i64> {
        let taken = || {
            self.sellers
                .iter()
                .enumerate()
                .filter_map(|(s, c)| c.map(|c| &sellers[s][c]))
        };
        let discount: i64 = taken().map(|c| c.discount).sum();
        let Some(p) = self.platform else {
            return Some(discount);
        };
        let platform = &platforms[p];
        let left = platform.base - taken().map(|c| c.overlap(platform.regular_only)).sum::<i64>();
        (left >= platform.floor).then(|| discount + platform.discount.on(left))
    }

    /// Drops the coupons whose removal keeps the discount (a platform coupon
    /// with nothing left to take, a seller coupon the platform coupon made up for).
    fn drop_idle(&mut self, sellers: &[Vec<SellerCoupon>], platforms: &[PlatformCoupon]) {
        let mut without = Candidate {
            platform: None,
            ..self.clone()
        };
        if self.platform.is_some() && without.value(sellers, platforms) >= Some(self.discount) {
            *self = Candidate {
                discount: without.value(sellers, platforms).unwrap_or(self.discount),
                ..without
            };
        }
        for s in 0..self.sellers.len() {
            if self.sellers[s].is_none() {
                continue;
            }
            without = self.clone();
            without.sellers[s] = None;
            if let Some(discount) = without.value(sellers, platforms).filter(|d| *d >= self.discount) {
                *self = Candidate { discount, ..without };
            }
        }
    }
}

/// The branch and bound over all platform coupons, with one incumbent.
struct Search<'s, 'a> {
    sellers: &'s [Vec<SellerCoupon<'a>>],
    platforms: &'s [PlatformCoupon<'a>],
    variants: &'s [Variant; 2],
    incumbent: Candidate,
    /// The choice per searched seller on the current branch: an index in its
    /// front, or `None`.
    path: Vec<Option<usize>>,
    /// The same as positions in `ranked` (`None` is the last position).
    positions: Vec<usize>,
    /// For the platform coupon searched: per searched seller, the indexes of
    /// its front in the order tried (largest `d - λr` first).
    ranked: Vec<Vec<usize>>,
    /// For the platform coupon searched: `Variant::rated_suffix`.
    rest_rated: Vec<i128>,
    nodes: u64,
    deadline: Instant,
    stopped: bool,
}

impl Search<'_, '_> {
    /// Keeps `candidate` if it ranks above the incumbent.
    fn offer(&mut self, candidate: Candidate) {
        debug_assert_eq!(
            candidate.value(self.sellers, self.platforms),
            Some(candidate.discount)
        );
        if candidate.discount < self.incumbent.discount
            || (candidate.discount == self.incumbent.discount && candidate.count() > self.incumbent.count())
        {
            return;
        }
        if candidate.rank(self.sellers, self.platforms) > self.incumbent.rank(self.sellers, self.platforms) {
            self.incumbent = candidate;
        }
    }

    /// The baseline: every platform coupon with the best coupon of every
    /// seller when it still applies, and alone.
    fn seed(&mut self) {
        let all = Candidate::baseline(self.sellers);
        for p in 0..self.platforms.len() {
            let with_all = Candidate {
                platform: Some(p),
                ..all.clone()
            };
            if let Some(discount) = with_all.value(self.sellers, self.platforms) {
                self.offer(Candidate { discount, ..with_all });
            }
            let alone = Candidate {
                discount: 0,
                sellers: vec![None; self.sellers.len()],
                platform: Some(p),
            };
            if let Some(discount) = alone.value(self.sellers, self.platforms) {
                self.offer(Candidate { discount, ..alone });
            }
        }
    }

    /// Searches the combinations with platform coupon `p`.
    fn run(&mut self, p: usize) {
        let platform = &self.platforms[p];
        let variant = &self.variants[usize::from(platform.regular_only)];
        self.path.clear();
        self.path.resize(variant.searched.len(), None);
        self.positions.clear();
        self.positions.resize(variant.searched.len(), 0);
        self.rest_rated = variant.rated_suffix(platform.rate);
        // Equal fronts get equal orders: the symmetry cut in `branch` relies on it.
        self.ranked = variant
            .searched
            .iter()
            .map(|(_, front)| {
                let mut order: Vec<usize> = (0..front.len()).collect();
                order.sort_by_key(|&k| (Reverse(rated(&front[k], platform.rate)), k));
                order
            })
            .collect();
        let count = variant.fixed.len() + 1;
        self.branch(p, 0, variant.fixed_discount, platform.base, count);
    }

    /// Visits the choices of `searched[depth]`, with `discount` taken so far
    /// and `left` on the platform coupon's lines.
    fn branch(&mut self, p: usize, depth: usize, discount: i64, left: i64, count: usize) {
        self.nodes += 1;
        if (self.nodes.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline)
            || self.nodes >= MAX_SEARCH_NODES
        {
            self.stopped = true;
        }
        if self.stopped {
            return;
        }
        let platforms = self.platforms;
        let variant = &self.variants[usize::from(platforms[p].regular_only)];
        let platform = &platforms[p];
        if depth == variant.searched.len() {
            let total = discount + platform.discount.on(left);
            if total > self.incumbent.discount
                || (total == self.incumbent.discount && count <= self.incumbent.count())
            {
                let candidate = self.candidate(p, total);
                self.offer(candidate);
            }
            return;
        }
        if variant.bound(platform, &self.rest_rated, depth, discount, left)
            <= i128::from(self.incumbent.discount)
        {
            return;
        }
        let front = &variant.searched[depth].1;
        // Sellers with equal fronts are interchangeable: their positions only grow.
        let from = match depth.checked_sub(1) {
            Some(previous) if variant.same_as_previous[depth] => self.positions[previous],
            _ => 0,
        };
        for position in from..front.len() {
            let k = self.ranked[depth][position];
            let choice = front[k];
            if left - choice.overlap < platform.floor {
                continue;
            }
            self.path[depth] = Some(k);
            self.positions[depth] = position;
            self.branch(
                p,
                depth + 1,
                discount + choice.discount,
                left - choice.overlap,
                count + 1,
            );
            if self.stopped {
                return;
            }
        }
        if variant.none_allowed[depth] {
            self.path[depth] = None;
            self.positions[depth] = front.len();
            self.branch(p, depth + 1, discount, left, count);
        }
    }

    /// The current branch as a combination.
    fn candidate(&self, p: usize, discount: i64) -> Candidate {
        let variant = &self.variants[usize::from(self.platforms[p].regular_only)];
        let mut sellers = vec![None; self.sellers.len()];
        for &(s, c) in &variant.fixed {
            sellers[s] = Some(c);
        }
        for (choice, (s, front)) in self.path.iter().zip(&variant.searched) {
            sellers[*s] = choice.map(|k| front[k].coupon);
        }
        Candidate {
            discount,
            sellers,
            platform: Some(p),
        }
    }
}
