//! The checkout path end to end over the socket: validate, best choice,
//! reserve, complete, refund, with exact amounts.

use loyalty::pb;
use sqlx::PgPool;

use crate::helpers::{checkout, checkout_line, platform_template, seller_template, spawn_app};

fn allocations(outcome: &pb::CouponOutcome) -> Vec<(&str, i64)> {
    outcome
        .allocations
        .iter()
        .map(|a| (a.line_id.as_str(), a.discount_minor))
        .collect()
}

#[sqlx::test]
async fn validate_reserve_complete_refund_to_the_minor_unit(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(seller_template("acme-10", "acme", 1000))
        .await;
    let mut platform = platform_template("site-5", 500);
    platform.min_purchase_minor = 2000;
    platform.regular_price_only = Some(false);
    app.create_template(platform).await;
    let seller = app.issue("alice", "acme-10").await.unwrap();
    let site = app.issue("alice", "site-5").await.unwrap();
    // acme: 10.00 regular + 5.00 on sale; globex: 3 x 5.00.
    let order = checkout(
        "alice",
        "o-9",
        vec![
            checkout_line("a1", "acme", 1000, 1, false),
            checkout_line("a2", "acme", 500, 1, true),
            checkout_line("g1", "globex", 500, 3, false),
        ],
    );
    let mut coupons = app.coupons.clone();

    let validated = coupons
        .validate_coupons(pb::ValidateCouponsRequest {
            order: Some(order.clone()),
            coupon_ids: vec![site.coupon_id, seller.coupon_id],
        })
        .await
        .unwrap()
        .into_inner()
        .pricing
        .unwrap();

    assert!(validated.coupons.iter().all(|c| c.applicable));
    assert_eq!(
        allocations(&validated.coupons[1]),
        vec![("a1", 100)],
        "10% of acme's regular line"
    );
    assert_eq!(
        allocations(&validated.coupons[0]),
        vec![("a1", 155), ("a2", 86), ("g1", 259)]
    );
    assert_eq!(
        (
            validated.subtotal_minor,
            validated.discount_minor,
            validated.total_minor
        ),
        (3000, 600, 2400)
    );
    let totals: Vec<i64> = validated.lines.iter().map(|l| l.total_minor).collect();
    assert_eq!(totals, vec![745, 414, 1241]);

    let best = coupons
        .best_coupons(pb::BestCouponsRequest {
            order: Some(order.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let mut best_ids = best.coupon_ids.clone();
    best_ids.sort();
    let mut both = vec![seller.coupon_id, site.coupon_id];
    both.sort();
    assert_eq!(best_ids, both);
    assert_eq!(best.pricing.unwrap().discount_minor, 600);

    let reserved = app
        .reserve(order.clone(), vec![site.coupon_id, seller.coupon_id])
        .await
        .unwrap();
    let reserved = reserved.order.unwrap();
    assert_eq!(
        reserved.pricing.as_ref(),
        Some(&validated),
        "reserve prices exactly as validate did, and stores it"
    );
    assert_eq!(
        app.checkout_order("alice", "o-9").await.unwrap().pricing.as_ref(),
        Some(&validated),
        "the stored pricing reads back"
    );
    assert!(
        reserved
            .coupons
            .iter()
            .all(|c| c.status() == pb::CouponStatus::Inactive)
    );
    // Once reserved, the best choice for another order has nothing left.
    let mut other = order.clone();
    other.order_id = "o-10".into();
    let nothing = coupons
        .best_coupons(pb::BestCouponsRequest { order: Some(other) })
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.coupon_ids.is_empty());
    assert_eq!(nothing.pricing.unwrap().total_minor, 3000);

    let completed = app.complete("alice", "o-9").await.unwrap();
    assert!(
        completed
            .coupons
            .iter()
            .all(|c| c.status() == pb::CouponStatus::Used)
    );

    let refunded = app.refund("alice", "o-9", "r-1", &[]).await.unwrap();
    let status_of = |id: i64| {
        refunded
            .order
            .as_ref()
            .unwrap()
            .coupons
            .iter()
            .find(|c| c.coupon_id == id)
            .unwrap()
            .status()
    };
    assert_eq!(
        status_of(site.coupon_id),
        pb::CouponStatus::Valid,
        "platform coupon restored"
    );
    assert_eq!(
        status_of(seller.coupon_id),
        pb::CouponStatus::Used,
        "seller coupon stays used"
    );
}

#[sqlx::test]
async fn validate_reports_a_reason_per_coupon_and_changes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    app.create_template(platform_template("p1", 100)).await;
    app.create_template(platform_template("p2", 100)).await;
    app.create_template(seller_template("zed", "zed", 1000)).await;
    let p1 = app.issue("alice", "p1").await.unwrap();
    let p2 = app.issue("alice", "p2").await.unwrap();
    let zed = app.issue("alice", "zed").await.unwrap();
    let bobs = app.issue("bob", "p1").await.unwrap();
    let order = checkout("alice", "o-1", vec![checkout_line("l1", "acme", 1000, 1, false)]);

    let pricing = app
        .coupons
        .clone()
        .validate_coupons(pb::ValidateCouponsRequest {
            order: Some(order),
            coupon_ids: vec![p1.coupon_id, p2.coupon_id, zed.coupon_id, bobs.coupon_id, 987_654],
        })
        .await
        .unwrap()
        .into_inner()
        .pricing
        .unwrap();

    let reasons: Vec<pb::NotApplicableReason> = pricing.coupons.iter().map(|c| c.reason()).collect();
    assert_eq!(
        reasons,
        vec![
            pb::NotApplicableReason::Unspecified,
            pb::NotApplicableReason::StackingConflict,
            pb::NotApplicableReason::WrongSeller,
            pb::NotApplicableReason::NotOwner,
            pb::NotApplicableReason::NotOwner,
        ]
    );
    assert_eq!(pricing.total_minor, 900);
    assert_eq!(
        app.status_of("alice", p1.coupon_id).await,
        pb::CouponStatus::Valid
    );
}
