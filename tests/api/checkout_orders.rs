//! Checkout orders over the socket (SPEC §4.2, §4.3): holds that end, cart
//! revisions, the stored pricing read back, line refunds and their claw-backs.

use std::collections::BTreeMap;

use chrono::TimeDelta;
use futures::future::join_all;
use loyalty::clock::Clock;
use loyalty::pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;

use crate::helpers::{
    TestApp, bad_fields, checkout, checkout_line, platform_template, reason, seller_template, spawn_app,
};

/// One line of 20.00 from seller s1.
fn order_of(account: &str, order: &str) -> pb::CheckoutOrder {
    checkout(account, order, vec![checkout_line("l1", "s1", 2000, 1, false)])
}

fn minutes(minutes: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: minutes * 60,
        nanos: 0,
    }
}

/// A reserve request with a cart revision and a hold.
fn reserve_request(
    order: pb::CheckoutOrder,
    coupon_ids: Vec<i64>,
    cart_revision: u64,
    hold: Option<prost_types::Duration>,
) -> pb::ReserveCouponsRequest {
    pb::ReserveCouponsRequest {
        order: Some(order),
        coupon_ids,
        cart_revision,
        hold_duration: hold,
    }
}

impl TestApp {
    async fn reserve_with(
        &self,
        request: pb::ReserveCouponsRequest,
    ) -> Result<pb::OrderCheckout, tonic::Status> {
        self.coupons
            .clone()
            .reserve_coupons(request)
            .await
            .map(|r| r.into_inner().order.expect("order"))
    }

    async fn new_coupon(&self, template: pb::CouponTemplate) -> i64 {
        let template_id = template.template_id.clone();
        self.create_template(template).await;
        self.issue("alice", &template_id).await.unwrap().coupon_id
    }
}

/// Alice's coupon, held for her order `order_id` for one minute.
async fn held_for_a_minute(app: &TestApp, order_id: &str) -> i64 {
    app.register("alice").await;
    let coupon = app.new_coupon(platform_template("t", 100)).await;
    app.reserve_with(reserve_request(
        order_of("alice", order_id),
        vec![coupon],
        0,
        Some(minutes(1)),
    ))
    .await
    .unwrap();
    coupon
}

fn seconds(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    timestamp.as_ref().expect("a timestamp").seconds
}

fn held_ids(order: &pb::OrderCheckout) -> Vec<i64> {
    order
        .coupons
        .iter()
        .filter(|c| c.status() == pb::CouponStatus::Inactive && c.order_id == order.order_id)
        .map(|c| c.coupon_id)
        .collect()
}

fn amount(money: &Option<pb::Money>) -> i64 {
    money.as_ref().expect("an amount").amount_minor
}

#[sqlx::test]
async fn a_hold_lasts_what_was_asked_within_one_minute_to_a_day(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let coupon = app.new_coupon(platform_template("t", 100)).await;
    let now = app.clock.now().timestamp();

    let default = app
        .reserve_with(reserve_request(order_of("alice", "o-1"), vec![coupon], 0, None))
        .await
        .unwrap();
    let asked = app
        .reserve_with(reserve_request(
            order_of("alice", "o-2"),
            vec![],
            0,
            Some(minutes(90)),
        ))
        .await
        .unwrap();
    let mut refused = Vec::new();
    for bad in [
        prost_types::Duration {
            seconds: 59,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: 24 * 3600,
            nanos: 1,
        },
        prost_types::Duration {
            seconds: -60,
            nanos: 0,
        },
        prost_types::Duration {
            seconds: 120,
            nanos: -1,
        },
    ] {
        refused.push(
            app.reserve_with(reserve_request(order_of("alice", "o-3"), vec![], 0, Some(bad)))
                .await
                .unwrap_err(),
        );
    }

    assert_eq!(
        seconds(&default.hold_expire_time),
        now + 30 * 60,
        "the default hold"
    );
    assert_eq!(
        seconds(&default.coupons[0].hold_expire_time),
        now + 30 * 60,
        "the coupon says when its hold ends"
    );
    assert_eq!(seconds(&asked.hold_expire_time), now + 90 * 60);
    for error in refused {
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert_eq!(bad_fields(&error), vec!["hold_duration"]);
    }
    let missing = app.checkout_order("alice", "o-3").await.unwrap_err();
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "ORDER_NOT_FOUND"),
        "a refused reserve records no order"
    );
    use tonic_types::StatusExt;
    let metadata = missing.get_details_error_info().unwrap().metadata;
    assert_eq!(metadata.get("order_id").map(String::as_str), Some("o-3"));
    assert_eq!(metadata.get("account_id").map(String::as_str), Some("alice"));
}

#[sqlx::test]
async fn a_lapsed_hold_frees_the_coupon_and_the_first_order_loses_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let coupon = held_for_a_minute(&app, "o-1").await;
    let taken = app
        .reserve(order_of("alice", "o-2"), vec![coupon])
        .await
        .unwrap_err();
    assert_eq!(
        reason(&taken),
        "COUPON_NOT_APPLICABLE",
        "held: not for another order"
    );

    app.clock.advance(TimeDelta::minutes(2));
    let listed = app
        .coupons
        .clone()
        .list_coupons(pb::ListCouponsRequest {
            account_id: "alice".into(),
            statuses: vec![pb::CouponStatus::Valid.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let validation = app
        .coupons
        .clone()
        .validate_coupons(pb::ValidateCouponsRequest {
            order: Some(order_of("alice", "o-2")),
            coupon_ids: vec![coupon],
        })
        .await
        .unwrap()
        .into_inner();
    let best = app
        .coupons
        .clone()
        .best_coupons(pb::BestCouponsRequest {
            order: Some(order_of("alice", "o-2")),
        })
        .await
        .unwrap()
        .into_inner();
    let second = app.reserve(order_of("alice", "o-2"), vec![coupon]).await.unwrap();
    let lost = app.complete("alice", "o-1").await.unwrap_err();

    assert_eq!(listed.coupons.len(), 1, "reads VALID once the hold lapsed");
    assert!(listed.coupons[0].order_id.is_empty());
    assert!(validation.pricing.unwrap().coupons[0].applicable);
    assert_eq!(best.coupon_ids, vec![coupon]);
    assert_eq!(held_ids(&second.order.unwrap()), vec![coupon]);
    assert_eq!(
        (lost.code(), reason(&lost).as_str()),
        (Code::FailedPrecondition, "HOLD_LOST")
    );
    assert!(lost.message().contains(&coupon.to_string()), "{}", lost.message());
    use tonic_types::StatusExt;
    let metadata = lost.get_details_error_info().unwrap().metadata;
    assert_eq!(metadata.get("coupon_id"), Some(&coupon.to_string()));
    assert_eq!(metadata.get("order_id").map(String::as_str), Some("o-1"));
    let history: Vec<(String, String)> = app
        .coupon("alice", coupon)
        .await
        .history
        .into_iter()
        .map(|t| (t.action, t.order_id))
        .collect();
    assert_eq!(
        history,
        [
            ("issue", ""),
            ("reserve", "o-1"),
            ("lapse", "o-1"),
            ("reserve", "o-2")
        ]
        .map(|(a, o)| (a.to_owned(), o.to_owned()))
        .to_vec(),
        "the lapse is recorded when the coupon is next touched"
    );
    assert_eq!(
        app.checkout_order("alice", "o-1").await.unwrap().status(),
        pb::OrderStatus::Open,
        "nothing of o-1 was completed"
    );
}

#[sqlx::test]
async fn completing_after_a_lapse_succeeds_when_no_other_order_took_the_coupon(pool: PgPool) {
    let app = spawn_app(pool).await;
    let coupon = held_for_a_minute(&app, "o-1").await;
    app.clock.advance(TimeDelta::minutes(5));

    let completed = app.complete("alice", "o-1").await.unwrap();

    assert_eq!(completed.status(), pb::OrderStatus::Completed);
    assert_eq!(completed.coupons[0].status(), pb::CouponStatus::Used);
    assert_eq!(completed.coupons[0].order_id, "o-1");
    assert_eq!(completed.coupons[0].coupon_id, coupon);
    let history: Vec<String> = app
        .coupon("alice", coupon)
        .await
        .history
        .into_iter()
        .map(|t| t.action)
        .collect();
    assert_eq!(
        history,
        vec!["issue", "reserve", "complete"],
        "no lapse: nobody took it"
    );
    assert!(
        completed.hold_expire_time.is_none(),
        "a closed order holds nothing"
    );
}

#[sqlx::test]
async fn a_lapsed_coupon_goes_to_exactly_one_of_many_concurrent_orders(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = options.max_connections(16).connect_with(connect).await.unwrap();
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.warm_up("alice").await;
    let coupon = app.new_coupon(platform_template("t", 100)).await;
    app.reserve_with(reserve_request(
        order_of("alice", "o-0"),
        vec![coupon],
        0,
        Some(minutes(1)),
    ))
    .await
    .unwrap();
    app.clock.advance(TimeDelta::minutes(2));

    let results =
        join_all((1..=30).map(|i| app.reserve(order_of("alice", &format!("o-{i}")), vec![coupon]))).await;
    let lost = app.complete("alice", "o-0").await.unwrap_err();

    let winners: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.order.as_ref().unwrap().order_id.clone())
        .collect();
    assert_eq!(winners.len(), 1, "exactly one order takes the lapsed coupon");
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(error), "COUPON_NOT_APPLICABLE", "{error:?}");
    }
    let held = app.coupon("alice", coupon).await;
    assert_eq!(held.coupon.unwrap().order_id, winners[0]);
    let lapses = held.history.iter().filter(|t| t.action == "lapse").count();
    assert_eq!(lapses, 1, "the old hold is closed once");
    assert_eq!(reason(&lost), "HOLD_LOST");
}

#[sqlx::test]
async fn cart_revisions_replay_refuse_replace_and_go_stale(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let first = app.new_coupon(platform_template("p", 500)).await;
    let second = app.new_coupon(seller_template("s", "s1", 1000)).await;
    let mut too_big = seller_template("big", "s2", 1000);
    too_big.min_purchase = Some(pb::Money {
        amount_minor: 1_000_000,
        currency_code: "USD".into(),
    });
    let refused_one = app.new_coupon(too_big).await;
    let cart = |lines: Vec<pb::CheckoutLine>| checkout("alice", "o-1", lines);
    let one_line = || vec![checkout_line("l1", "s1", 2000, 1, false)];
    let two_lines = || {
        vec![
            checkout_line("l1", "s1", 2000, 1, false),
            checkout_line("l2", "s2", 3000, 2, false),
        ]
    };

    let reserved = app
        .reserve_with(reserve_request(cart(one_line()), vec![first], 1, None))
        .await
        .unwrap();
    let replay = app
        .coupons
        .clone()
        .reserve_coupons(reserve_request(cart(one_line()), vec![first], 1, None))
        .await
        .unwrap()
        .into_inner();
    let same_revision_other_cart = app
        .reserve_with(reserve_request(cart(two_lines()), vec![first], 1, None))
        .await
        .unwrap_err();
    let same_revision_other_coupons = app
        .reserve_with(reserve_request(cart(one_line()), vec![second], 1, None))
        .await
        .unwrap_err();
    app.clock.advance(TimeDelta::minutes(10));
    let replaced = app
        .reserve_with(reserve_request(cart(two_lines()), vec![second], 3, None))
        .await
        .unwrap();
    let refused = app
        .reserve_with(reserve_request(
            cart(two_lines()),
            vec![first, refused_one],
            4,
            None,
        ))
        .await
        .unwrap_err();
    let stale = app
        .reserve_with(reserve_request(cart(one_line()), vec![first], 2, None))
        .await
        .unwrap_err();

    assert_eq!(reserved.cart_revision, 1);
    assert!(replay.replayed);
    assert_eq!(replay.order.unwrap().pricing, reserved.pricing);
    for error in [&same_revision_other_cart, &same_revision_other_coupons] {
        assert_eq!(
            (error.code(), reason(error).as_str()),
            (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
        );
    }
    // Revision 3 dropped `first` and held `second`, priced on the new cart.
    assert_eq!(replaced.cart_revision, 3);
    assert_eq!(held_ids(&replaced), vec![second]);
    assert_eq!(app.status_of("alice", first).await, pb::CouponStatus::Valid);
    assert_eq!(replaced.lines.len(), 2);
    let stored = app.checkout_order("alice", "o-1").await.unwrap();
    assert_eq!(stored.pricing, replaced.pricing);
    assert_eq!(
        seconds(&stored.hold_expire_time),
        app.clock.now().timestamp() + 30 * 60,
        "a new revision holds anew"
    );
    // Revision 4 was refused whole: revision 3 stands.
    assert_eq!(reason(&refused), "COUPON_NOT_APPLICABLE");
    assert_eq!(stored.cart_revision, 3);
    assert_eq!(held_ids(&stored), vec![second]);
    assert_eq!(app.status_of("alice", first).await, pb::CouponStatus::Valid);
    assert_eq!(
        (stale.code(), reason(&stale).as_str()),
        (Code::FailedPrecondition, "STALE_CART_REVISION")
    );
    let releases: Vec<String> = app
        .coupon("alice", first)
        .await
        .history
        .into_iter()
        .map(|t| t.action)
        .collect();
    assert_eq!(releases, vec!["issue", "reserve", "release"]);
}

#[sqlx::test]
async fn racing_revisions_of_one_order_leave_the_newest_accepted_one_whole(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = options.max_connections(16).connect_with(connect).await.unwrap();
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.warm_up("alice").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(app.new_coupon(platform_template(&format!("p{i}"), 100 + i)).await);
    }

    // Revision r holds coupon r-1 only; all ten race.
    let results = join_all((1..=10u64).map(|revision| {
        app.reserve_with(reserve_request(
            order_of("alice", "o-1"),
            vec![ids[usize::try_from(revision).unwrap() - 1]],
            revision,
            None,
        ))
    }))
    .await;

    let order = app.checkout_order("alice", "o-1").await.unwrap();
    let accepted: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|o| o.cart_revision)
        .collect();
    for error in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(reason(error), "STALE_CART_REVISION", "{error:?}");
    }
    let newest = *accepted.iter().max().unwrap();
    assert_eq!(order.cart_revision, newest);
    let held = ids[usize::try_from(newest).unwrap() - 1];
    assert_eq!(
        held_ids(&order),
        vec![held],
        "only the newest revision's coupon is held"
    );
    for id in ids.iter().filter(|id| **id != held) {
        assert_eq!(
            app.status_of("alice", *id).await,
            pb::CouponStatus::Valid,
            "coupon {id}"
        );
    }
    let discount: i64 = order
        .pricing
        .unwrap()
        .coupons
        .iter()
        .flat_map(|c| c.allocations.clone())
        .map(|a| amount(&a.discount))
        .sum();
    assert_eq!(
        discount,
        100 + i64::try_from(newest).unwrap() - 1,
        "priced as the newest revision"
    );
}

/// Alice's order o-1: acme 2 x 10.00 and 1 x 5.00, globex 3 x 7.00, with a 10%
/// acme coupon and a 6.00 platform coupon.
async fn completed_order(app: &TestApp) -> (i64, i64) {
    app.register("alice").await;
    let seller = app.new_coupon(seller_template("acme-10", "acme", 1000)).await;
    let mut site = platform_template("site-6", 600);
    site.regular_price_only = Some(false);
    let platform = app.new_coupon(site).await;
    let order = checkout(
        "alice",
        "o-1",
        vec![
            checkout_line("a1", "acme", 1000, 2, false),
            checkout_line("a2", "acme", 500, 1, false),
            checkout_line("g1", "globex", 700, 3, false),
        ],
    );
    app.reserve(order, vec![seller, platform]).await.unwrap();
    app.complete("alice", "o-1").await.unwrap();
    (seller, platform)
}

/// Per (line, coupon), the stored allocation of an order.
fn allocations(order: &pb::OrderCheckout) -> BTreeMap<(String, i64), i64> {
    order
        .pricing
        .as_ref()
        .unwrap()
        .coupons
        .iter()
        .flat_map(|c| {
            c.allocations
                .iter()
                .map(move |a| ((a.line_id.clone(), c.coupon_id), amount(&a.discount)))
        })
        .collect()
}

fn clawed(refund: &pb::Refund) -> BTreeMap<(String, i64), i64> {
    refund
        .clawbacks
        .iter()
        .map(|c| ((c.line_id.clone(), c.coupon_id), amount(&c.discount)))
        .collect()
}

#[sqlx::test]
async fn line_refunds_claw_back_the_stored_allocation_and_the_last_one_restores(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (seller, platform) = completed_order(&app).await;
    let stored = app.checkout_order("alice", "o-1").await.unwrap();
    let allocated = allocations(&stored);

    let first = app
        .refund("alice", "o-1", "r-1", &[("a1", 1), ("g1", 1)])
        .await
        .unwrap();
    let replay = app
        .refund("alice", "o-1", "r-1", &[("g1", 1), ("a1", 1)])
        .await
        .unwrap();
    let reused = app.refund("alice", "o-1", "r-1", &[("a1", 2)]).await.unwrap_err();
    let over = app.refund("alice", "o-1", "r-2", &[("g1", 3)]).await.unwrap_err();
    let second = app.refund("alice", "o-1", "r-3", &[("g1", 2)]).await.unwrap();
    assert_eq!(
        app.status_of("alice", platform).await,
        pb::CouponStatus::Used,
        "a partial refund keeps the platform coupon used"
    );
    let last = app.refund("alice", "o-1", "r-4", &[]).await.unwrap();
    let after_all = app.refund("alice", "o-1", "r-5", &[("a2", 1)]).await.unwrap_err();

    assert!(replay.replayed && !first.replayed);
    assert_eq!(replay.refund, first.refund);
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
    );
    assert_eq!(
        (over.code(), reason(&over).as_str()),
        (Code::FailedPrecondition, "OVER_REFUND"),
        "g1 has 2 units left"
    );
    // Every unit back: per (line, coupon), the claw-backs add up to the allocation.
    let mut total: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for refund in [&first, &second, &last] {
        for (key, discount) in clawed(refund.refund.as_ref().unwrap()) {
            *total.entry(key).or_default() += discount;
        }
    }
    assert_eq!(total, allocated);
    let last_refund = last.refund.as_ref().unwrap();
    assert!(last_refund.completes_order && last_refund.whole_order);
    assert!(!first.refund.as_ref().unwrap().completes_order);
    let order = last.order.unwrap();
    assert_eq!(order.status(), pb::OrderStatus::Refunded);
    assert_eq!(order.refunds.len(), 3);
    assert_eq!(app.status_of("alice", platform).await, pb::CouponStatus::Valid);
    assert_eq!(app.status_of("alice", seller).await, pb::CouponStatus::Used);
    assert_eq!(reason(&after_all), "ORDER_FULLY_REFUNDED");
    let restores = app
        .coupon("alice", platform)
        .await
        .history
        .iter()
        .filter(|t| t.action == "refund_full")
        .count();
    assert_eq!(restores, 1, "restored once");
}

#[sqlx::test]
async fn malformed_refunds_name_the_field_and_refund_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    completed_order(&app).await;
    let mut coupons = app.coupons.clone();
    let request = |extent| pb::RefundOrderRequest {
        account_id: "alice".into(),
        order_id: "o-1".into(),
        refund_id: "r-1".into(),
        extent,
    };
    let lines = |lines: &[(&str, i32)]| {
        Some(pb::refund_order_request::Extent::Lines(pb::RefundLines {
            lines: lines
                .iter()
                .map(|(l, q)| pb::RefundLine {
                    line_id: (*l).into(),
                    quantity: *q,
                })
                .collect(),
        }))
    };

    let cases = [
        (request(None), "extent"),
        (request(lines(&[])), "lines.lines"),
        (request(lines(&[("a1", 0)])), "lines.lines[0].quantity"),
        (request(lines(&[("a1", 1), ("zz", 1)])), "lines.lines[1].line_id"),
        (request(lines(&[("a1", 1), ("a1", 1)])), "lines.lines[1].line_id"),
        (
            pb::RefundOrderRequest {
                refund_id: String::new(),
                ..request(lines(&[("a1", 1)]))
            },
            "refund_id",
        ),
    ];
    for (request, field) in cases {
        let error = coupons.refund_order(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert_eq!(bad_fields(&error), vec![field]);
    }
    assert!(
        app.checkout_order("alice", "o-1")
            .await
            .unwrap()
            .refunds
            .is_empty()
    );
}

/// Random carts and random refund sequences over the socket: the claw-backs
/// of each (line, coupon) add up to its stored allocation exactly.
#[sqlx::test]
async fn random_refund_sequences_claw_back_exactly_the_allocations(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut rng = StdRng::seed_from_u64(8);
    for round in 0..6 {
        let sellers = ["s1", "s2", "s3"];
        let mut ids = vec![
            app.new_coupon({
                let mut t = platform_template(&format!("p{round}"), rng.gen_range(100..5000));
                t.regular_price_only = Some(false);
                t
            })
            .await,
        ];
        for seller in sellers {
            ids.push(
                app.new_coupon(seller_template(
                    &format!("{seller}-{round}"),
                    seller,
                    rng.gen_range(100..5000),
                ))
                .await,
            );
        }
        let lines: Vec<pb::CheckoutLine> = (0..rng.gen_range(1..8))
            .map(|l| {
                checkout_line(
                    &format!("l{l}"),
                    sellers[rng.gen_range(0..3)],
                    rng.gen_range(1..20_000),
                    rng.gen_range(1..6),
                    false,
                )
            })
            .collect();
        let order_id = format!("o-{round}");
        let applicable = app
            .coupons
            .clone()
            .validate_coupons(pb::ValidateCouponsRequest {
                order: Some(checkout("alice", &order_id, lines.clone())),
                coupon_ids: ids.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .pricing
            .unwrap()
            .coupons
            .iter()
            .filter(|c| c.applicable)
            .map(|c| c.coupon_id)
            .collect();
        app.reserve(checkout("alice", &order_id, lines.clone()), applicable)
            .await
            .unwrap();
        let allocated = allocations(&app.complete("alice", &order_id).await.unwrap());

        let mut left: Vec<i32> = lines.iter().map(|l| l.quantity).collect();
        let mut total: BTreeMap<(String, i64), i64> = BTreeMap::new();
        let mut refund = 0;
        while left.iter().any(|q| *q > 0) {
            let mut asked: Vec<(String, i32)> = Vec::new();
            for (line, left) in lines.iter().zip(left.iter_mut()) {
                if *left > 0 && rng.gen_bool(0.6) {
                    let units = rng.gen_range(1..=*left);
                    *left -= units;
                    asked.push((line.line_id.clone(), units));
                }
            }
            if asked.is_empty() {
                continue;
            }
            refund += 1;
            let asked: Vec<(&str, i32)> = asked.iter().map(|(l, q)| (l.as_str(), *q)).collect();
            let answer = app
                .refund("alice", &order_id, &format!("r-{refund}"), &asked)
                .await
                .unwrap();
            for (key, discount) in clawed(answer.refund.as_ref().unwrap()) {
                *total.entry(key).or_default() += discount;
            }
        }
        let allocated: BTreeMap<_, _> = allocated.into_iter().filter(|(_, d)| *d > 0).collect();
        assert_eq!(total, allocated, "round {round}");
        assert_eq!(
            app.checkout_order("alice", &order_id).await.unwrap().status(),
            pb::OrderStatus::Refunded
        );
    }
}

/// The whole story: reserve, change the cart, the hold lapses, reserve again,
/// complete, refund two lines in three refunds, the platform coupon comes back.
#[sqlx::test]
async fn a_checkout_story_from_reserve_to_restore(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let platform = app.new_coupon(platform_template("site-3", 300)).await;
    let seller = app.new_coupon(seller_template("acme-10", "acme", 1000)).await;
    let first_cart = vec![checkout_line("a1", "acme", 1000, 2, false)];
    let second_cart = vec![
        checkout_line("a1", "acme", 1000, 2, false),
        checkout_line("g1", "globex", 2500, 1, false),
    ];

    // Reserve revision 1 with the platform coupon; the buyer adds a line and
    // the seller coupon (revision 2).
    let one = app
        .reserve_with(reserve_request(
            checkout("alice", "o-1", first_cart),
            vec![platform],
            1,
            Some(minutes(5)),
        ))
        .await
        .unwrap();
    let two = app
        .reserve_with(reserve_request(
            checkout("alice", "o-1", second_cart.clone()),
            vec![platform, seller],
            2,
            Some(minutes(5)),
        ))
        .await
        .unwrap();
    assert_eq!(held_ids(&one), vec![platform]);
    assert_eq!(held_ids(&two), vec![platform, seller]);

    // The buyer goes away; the hold lapses; the coupons read VALID.
    app.clock.advance(TimeDelta::minutes(6));
    assert_eq!(app.status_of("alice", platform).await, pb::CouponStatus::Valid);
    // Back, the checkout reserves again (revision 3) and the order completes.
    let three = app
        .reserve_with(reserve_request(
            checkout("alice", "o-1", second_cart),
            vec![platform, seller],
            3,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(held_ids(&three), vec![platform, seller]);
    let completed = app.complete("alice", "o-1").await.unwrap();
    assert_eq!(completed.status(), pb::OrderStatus::Completed);
    let allocated = allocations(&completed);

    // Two lines refunded in three refunds.
    let r1 = app.refund("alice", "o-1", "r-1", &[("a1", 1)]).await.unwrap();
    let r2 = app.refund("alice", "o-1", "r-2", &[("g1", 1)]).await.unwrap();
    assert_eq!(app.status_of("alice", platform).await, pb::CouponStatus::Used);
    let r3 = app.refund("alice", "o-1", "r-3", &[("a1", 1)]).await.unwrap();

    let mut total: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for refund in [&r1, &r2, &r3] {
        for (key, discount) in clawed(refund.refund.as_ref().unwrap()) {
            *total.entry(key).or_default() += discount;
        }
    }
    assert_eq!(total, allocated);
    assert!(r3.refund.as_ref().unwrap().completes_order);
    let order = app.checkout_order("alice", "o-1").await.unwrap();
    assert_eq!(order.status(), pb::OrderStatus::Refunded);
    assert_eq!(order.cart_revision, 3);
    assert_eq!(
        app.status_of("alice", platform).await,
        pb::CouponStatus::Valid,
        "restored"
    );
    assert_eq!(app.status_of("alice", seller).await, pb::CouponStatus::Used);
    assert!(
        app.reserve(order_of("alice", "o-2"), vec![platform])
            .await
            .is_ok(),
        "the restored coupon serves another order"
    );
}

#[sqlx::test]
async fn a_revision_beyond_what_is_stored_is_refused_and_expired_coupons_are_not_held_again(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut short = platform_template("short", 100);
    short.validity = Some(pb::Validity {
        kind: Some(pb::validity::Kind::DaysFromIssuance(1)),
    });
    let expiring = app.new_coupon(short).await;

    let too_high = app
        .reserve_with(reserve_request(order_of("alice", "o-1"), vec![], u64::MAX, None))
        .await
        .unwrap_err();
    app.clock.advance(TimeDelta::hours(12));
    app.reserve_with(reserve_request(
        order_of("alice", "o-1"),
        vec![expiring],
        1,
        Some(minutes(24 * 60)),
    ))
    .await
    .unwrap();
    // Past its expiry (a day after issuance), still held: a new revision
    // cannot hold it again.
    app.clock.advance(TimeDelta::hours(12) + TimeDelta::minutes(1));
    let again = app
        .reserve_with(reserve_request(order_of("alice", "o-1"), vec![expiring], 2, None))
        .await
        .unwrap_err();

    assert_eq!(too_high.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&too_high), vec!["cart_revision"]);
    assert_eq!(reason(&again), "COUPON_NOT_APPLICABLE");
    use tonic_types::StatusExt;
    assert_eq!(
        again.get_details_precondition_failure().unwrap().violations[0].r#type,
        "EXPIRED"
    );
    assert_eq!(
        app.status_of("alice", expiring).await,
        pb::CouponStatus::Inactive,
        "revision 1 still holds it"
    );
    let cancelled = app.cancel("alice", "o-1").await.unwrap();
    assert_eq!(cancelled.coupons[0].status(), pb::CouponStatus::Expired);
}

#[sqlx::test]
async fn reading_an_order_while_its_cart_changes_sees_one_revision_whole(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let coupon = app.new_coupon(platform_template("p", 500)).await;
    let cart = |revision: u64| {
        checkout(
            "alice",
            "o-1",
            vec![checkout_line(
                &format!("l{revision}"),
                "s1",
                1000 + i64::try_from(revision).unwrap(),
                1,
                false,
            )],
        )
    };
    app.reserve_with(reserve_request(cart(0), vec![coupon], 0, None))
        .await
        .unwrap();

    let writer = async {
        for revision in 1..=40 {
            app.reserve_with(reserve_request(cart(revision), vec![coupon], revision, None))
                .await
                .unwrap();
        }
    };
    let reader = async {
        let mut reads = Vec::new();
        for _ in 0..120 {
            reads.push(app.checkout_order("alice", "o-1").await);
        }
        reads
    };
    let ((), reads) = futures::join!(writer, reader);

    for read in reads {
        let order = read.expect("a read never fails");
        let line = &order.lines[0].line_id;
        assert_eq!(
            *line,
            format!("l{}", order.cart_revision),
            "the header and the cart agree"
        );
        let allocated: Vec<&String> = order.pricing.as_ref().unwrap().coupons[0]
            .allocations
            .iter()
            .map(|a| &a.line_id)
            .collect();
        assert_eq!(allocated, vec![line], "the allocations are the cart's");
    }
}

#[sqlx::test]
async fn an_order_reserved_before_revisions_existed_is_adopted_by_its_retry(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    let coupon = app.new_coupon(platform_template("p", 500)).await;
    app.reserve(order_of("alice", "o-1"), vec![coupon]).await.unwrap();
    // What the migration leaves of an order reserved by the previous release:
    // no digest, no cart.
    sqlx::query("update checkout_order set content_digest = null")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("delete from checkout_order_line")
        .execute(&pool)
        .await
        .unwrap();

    let adopted = app.reserve(order_of("alice", "o-1"), vec![coupon]).await.unwrap();
    let replayed = app.reserve(order_of("alice", "o-1"), vec![coupon]).await.unwrap();
    let other = app.reserve(order_of("alice", "o-1"), vec![]).await.unwrap_err();

    assert!(!adopted.replayed && replayed.replayed);
    assert_eq!(adopted.order.unwrap().lines.len(), 1, "its cart is stored now");
    assert_eq!(reason(&other), "IDEMPOTENCY_KEY_REUSED");

    // A completed legacy order without a cart refunds whole, not by line.
    app.complete("alice", "o-1").await.unwrap();
    sqlx::query("delete from checkout_order_line")
        .execute(&pool)
        .await
        .unwrap();
    let by_line = app.refund("alice", "o-1", "r-1", &[("l1", 1)]).await.unwrap_err();
    let whole = app.refund("alice", "o-1", "r-2", &[]).await.unwrap();
    assert_eq!(
        (by_line.code(), reason(&by_line).as_str()),
        (Code::FailedPrecondition, "ORDER_HAS_NO_LINES")
    );
    assert!(whole.refund.unwrap().completes_order);
    assert_eq!(app.status_of("alice", coupon).await, pb::CouponStatus::Valid);
}

#[sqlx::test]
async fn an_order_takes_a_bounded_number_of_refunds_then_only_the_rest_whole(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let coupon = app.new_coupon(platform_template("p", 500)).await;
    let order = checkout("alice", "o-1", vec![checkout_line("l1", "s1", 100, 102, false)]);
    app.reserve(order, vec![coupon]).await.unwrap();
    app.complete("alice", "o-1").await.unwrap();

    for i in 0..100 {
        app.refund("alice", "o-1", &format!("r-{i}"), &[("l1", 1)])
            .await
            .unwrap();
    }
    let one_more = app
        .refund("alice", "o-1", "r-100", &[("l1", 1)])
        .await
        .unwrap_err();
    let retry = app.refund("alice", "o-1", "r-99", &[("l1", 1)]).await.unwrap();
    let rest = app.refund("alice", "o-1", "r-101", &[]).await.unwrap();

    assert_eq!(
        (one_more.code(), reason(&one_more).as_str()),
        (Code::FailedPrecondition, "TOO_MANY_REFUNDS")
    );
    assert!(retry.replayed, "a retry of an earlier refund still replays");
    let last = rest.refund.unwrap();
    assert!(last.completes_order);
    assert_eq!(last.lines[0].quantity, 2);
    assert_eq!(rest.order.unwrap().refunds.len(), 101);
    assert_eq!(app.status_of("alice", coupon).await, pb::CouponStatus::Valid);
}

#[sqlx::test]
async fn a_reservation_waits_for_a_fraud_flag_under_way_and_is_refused(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    let coupon = app.new_coupon(platform_template("p", 500)).await;
    // A flag under way: the member row updated, not committed yet.
    let mut flag = pool.begin().await.unwrap();
    sqlx::query(
        "update member set fraud_flagged_at = now(), fraud_reason = 'test' where account_id = 'alice'",
    )
    .execute(&mut *flag)
    .await
    .unwrap();

    let reserve = tokio::spawn({
        let coupons = app.coupons.clone();
        async move {
            coupons
                .clone()
                .reserve_coupons(reserve_request(order_of("alice", "o-1"), vec![coupon], 0, None))
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!reserve.is_finished(), "the reservation waits for the flag");
    flag.commit().await.unwrap();
    let refused = reserve.await.unwrap().unwrap_err();

    assert_eq!(reason(&refused), "MEMBER_FLAGGED");
    assert_eq!(app.status_of("alice", coupon).await, pb::CouponStatus::Valid);
}

/// An order's calls take turns on its `order_lock` row (a row lock, which holds
/// on Citus whichever node a server is connected to): while another
/// transaction holds the row, the order's completion waits for it, and with a
/// short lock timeout and one attempt it is `ABORTED`; once the row is free it
/// completes. A reservation of the same order by a second member is another
/// order and does not wait.
#[sqlx::test]
async fn an_orders_calls_wait_for_its_lock_row(pool: PgPool) {
    let app = crate::helpers::spawn_app_with(
        pool.clone(),
        &["--db-lock-timeout-ms", "100", "--conflict-attempts", "1"],
    )
    .await;
    app.create_template(platform_template("five-off", 500)).await;
    for member in ["alice", "bob"] {
        app.register(member).await;
    }
    let coupon = app.issue("alice", "five-off").await.unwrap();
    app.reserve(order_of("alice", "o1"), vec![coupon.coupon_id])
        .await
        .unwrap();
    let rows: i64 =
        sqlx::query_scalar("select count(*) from order_lock where account_id = 'alice' and order_id = 'o1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 1, "the first call of an order inserts its lock row");

    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("select 1 from order_lock where account_id = 'alice' and order_id = 'o1' for update")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let error = app.complete("alice", "o1").await.unwrap_err();
    assert_eq!(error.code(), Code::Aborted, "{error:?}");
    assert_eq!(reason(&error), "LOCK_TIMEOUT");
    // Another member's order of the same id is another lock.
    app.reserve(order_of("bob", "o1"), vec![]).await.unwrap();
    blocker.rollback().await.unwrap();

    let completed = app.complete("alice", "o1").await.unwrap();
    assert_eq!(completed.status(), pb::OrderStatus::Completed);
}
