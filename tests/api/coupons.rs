//! Coupon templates, getting coupons, and the status machine.

use chrono::TimeDelta;
use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{
    TestApp, checkout, checkout_line, default_now, platform_template, reason, spawn_app, ts, usd,
};

fn claim(account_id: &str, code: &str) -> pb::ClaimCouponRequest {
    pb::ClaimCouponRequest {
        account_id: account_id.into(),
        code: code.into(),
    }
}

async fn public_code(app: &TestApp, template_id: &str, code: &str) {
    app.coupons
        .clone()
        .create_public_code(pb::CreatePublicCodeRequest {
            template_id: template_id.into(),
            code: code.into(),
        })
        .await
        .unwrap();
}

fn order_of(account: &str, order: &str) -> pb::CheckoutOrder {
    checkout(account, order, vec![checkout_line("l1", "s1", 2000, 1, false)])
}

#[sqlx::test]
async fn a_template_is_created_idempotently_and_read_back(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut coupons = app.coupons.clone();
    let template = platform_template("welcome", 500);

    let created = coupons
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(template.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let again = coupons
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(template.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let conflict = coupons
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(platform_template("welcome", 600)),
        })
        .await
        .unwrap_err();

    let stored = created.template.unwrap();
    assert!(!created.replayed && again.replayed);
    assert_eq!(stored.per_member_limit, 1, "0 means the default of 1");
    assert_eq!(
        stored.regular_price_only,
        Some(true),
        "absent means regular price only"
    );
    assert_eq!(
        (conflict.code(), reason(&conflict).as_str()),
        (Code::AlreadyExists, "TEMPLATE_EXISTS")
    );
    assert_eq!(app.template("welcome").await, stored);
}

#[sqlx::test]
async fn a_malformed_template_names_the_bad_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut coupons = app.coupons.clone();
    let with = |f: &dyn Fn(&mut pb::CouponTemplate)| {
        let mut t = platform_template("t", 100);
        f(&mut t);
        t
    };
    let cases: Vec<(pb::CouponTemplate, &str)> = vec![
        (with(&|t| t.template_id = "bad id".into()), "template.template_id"),
        (with(&|t| t.name = String::new()), "template.name"),
        (with(&|t| t.issuer = 0), "template.issuer"),
        (with(&|t| t.seller_id = "s1".into()), "template.seller_id"),
        (with(&|t| t.discount = None), "template.discount"),
        (
            with(&|t| {
                t.discount = Some(pb::Discount {
                    kind: Some(pb::discount::Kind::AmountOff(usd(0))),
                })
            }),
            "template.discount.amount_off.amount_minor",
        ),
        (
            with(&|t| {
                t.discount = Some(pb::Discount {
                    kind: Some(pb::discount::Kind::AmountOff(pb::Money {
                        amount_minor: 500,
                        currency_code: "EUR".into(),
                    })),
                })
            }),
            "template.discount.amount_off.currency_code",
        ),
        (
            with(&|t| {
                t.discount = Some(pb::Discount {
                    kind: Some(pb::discount::Kind::AmountOff(pb::Money {
                        amount_minor: 500,
                        currency_code: "XAU".into(),
                    })),
                })
            }),
            "template.discount.amount_off.currency_code",
        ),
        (
            with(&|t| {
                t.discount = Some(pb::Discount {
                    kind: Some(pb::discount::Kind::PercentOff(pb::PercentOff {
                        basis_points: 1000,
                        max_discount: Some(pb::Money {
                            amount_minor: 500,
                            currency_code: "JPY".into(),
                        }),
                    })),
                })
            }),
            "template.discount.percent_off.max_discount.currency_code",
        ),
        (
            with(&|t| {
                t.discount = Some(pb::Discount {
                    kind: Some(pb::discount::Kind::PercentOff(pb::PercentOff {
                        basis_points: 1000,
                        max_discount: Some(usd(0)),
                    })),
                })
            }),
            "template.discount.percent_off.max_discount.amount_minor",
        ),
        (
            with(&|t| {
                t.discount = Some(pb::Discount {
                    kind: Some(pb::discount::Kind::PercentOff(pb::PercentOff {
                        basis_points: 10_001,
                        max_discount: None,
                    })),
                })
            }),
            "template.discount.percent_off.basis_points",
        ),
        (
            with(&|t| t.currency_code = "dollars".into()),
            "template.currency_code",
        ),
        (
            with(&|t| t.currency_code = "ABC".into()),
            "template.currency_code",
        ),
        (
            with(&|t| t.min_purchase = Some(usd(-1))),
            "template.min_purchase.amount_minor",
        ),
        (
            with(&|t| {
                t.min_purchase = Some(pb::Money {
                    amount_minor: 2000,
                    currency_code: "EUR".into(),
                })
            }),
            "template.min_purchase.currency_code",
        ),
        (
            with(&|t| {
                t.validity = Some(pb::Validity {
                    kind: Some(pb::validity::Kind::DaysFromIssuance(0)),
                })
            }),
            "template.validity.days_from_issuance",
        ),
        (with(&|t| t.daily_stock = Some(0)), "template.daily_stock"),
        (
            with(&|t| t.allowed_levels = vec![9]),
            "template.allowed_levels[0]",
        ),
    ];
    for (template, field) in cases {
        let error = coupons
            .create_coupon_template(pb::CreateCouponTemplateRequest {
                template: Some(template),
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert_eq!(crate::helpers::bad_fields(&error), vec![field.to_owned()]);
    }
    let missing = coupons
        .get_coupon_template(pb::GetCouponTemplateRequest {
            template_id: "t".into(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound, "nothing was stored");
}

#[sqlx::test]
async fn changing_a_template_never_changes_issued_coupons(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    app.create_template(platform_template("t", 500)).await;
    let before = app.issue("alice", "t").await.unwrap();

    let mut changed = platform_template("t", 900);
    changed.validity = Some(pb::Validity {
        kind: Some(pb::validity::Kind::DaysFromIssuance(365)),
    });
    app.coupons
        .clone()
        .update_coupon_template(pb::UpdateCouponTemplateRequest {
            template: Some(changed),
        })
        .await
        .unwrap();
    let after = app.issue("bob", "t").await.unwrap();

    let alice = app.coupon("alice", before.coupon_id).await.coupon.unwrap();
    assert_eq!(alice.discount, before.discount, "issued coupons keep their terms");
    assert_eq!(alice.expires_at, before.expires_at, "and their validity");
    assert_eq!(
        alice.expires_at,
        Some(ts(&(default_now() + TimeDelta::days(30)).to_rfc3339()))
    );
    assert_eq!(
        after.discount.unwrap().kind,
        Some(pb::discount::Kind::AmountOff(usd(900)))
    );
    assert_eq!(
        after.expires_at,
        Some(ts(&(default_now() + TimeDelta::days(365)).to_rfc3339()))
    );
}

#[sqlx::test]
async fn a_template_update_cannot_change_its_issuer_or_drop_stock_below_issued(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut limited = platform_template("t", 500);
    limited.total_stock = Some(10);
    app.create_template(limited.clone()).await;
    app.issue("alice", "t").await.unwrap();
    let mut coupons = app.coupons.clone();

    let seller = pb::CouponTemplate {
        issuer: pb::Issuer::Seller.into(),
        seller_id: "s1".into(),
        ..limited.clone()
    };
    let issuer_error = coupons
        .update_coupon_template(pb::UpdateCouponTemplateRequest {
            template: Some(seller),
        })
        .await
        .unwrap_err();
    let stock_error = coupons
        .update_coupon_template(pb::UpdateCouponTemplateRequest {
            template: Some(pb::CouponTemplate {
                total_stock: Some(0),
                ..limited
            }),
        })
        .await
        .unwrap_err();

    assert_eq!(issuer_error.code(), Code::InvalidArgument);
    assert_eq!(
        (stock_error.code(), reason(&stock_error).as_str()),
        (Code::FailedPrecondition, "STOCK_BELOW_ISSUED")
    );
}

#[sqlx::test]
async fn a_public_code_is_claimed_once_per_member(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    let mut template = platform_template("promo", 300);
    template.per_member_limit = 5;
    app.create_template(template).await;
    public_code(&app, "promo", "Summer-25").await;
    let mut coupons = app.coupons.clone();

    let first = coupons
        .claim_coupon(claim("alice", "SUMMER-25"))
        .await
        .unwrap()
        .into_inner();
    let again = coupons
        .claim_coupon(claim("alice", "summer25"))
        .await
        .unwrap()
        .into_inner();
    let bob = coupons
        .claim_coupon(claim("bob", "summer-25"))
        .await
        .unwrap()
        .into_inner();
    let unknown = coupons
        .claim_coupon(claim("alice", "WINTER-25"))
        .await
        .unwrap_err();

    assert!(
        !first.replayed && again.replayed,
        "case and dashes do not matter; a member claims once"
    );
    assert_eq!(first.coupon, again.coupon);
    assert_eq!(
        first.coupon.as_ref().unwrap().source(),
        pb::CouponSource::PublicCode
    );
    assert_ne!(bob.coupon.unwrap().coupon_id, first.coupon.unwrap().coupon_id);
    assert_eq!(
        (unknown.code(), reason(&unknown).as_str()),
        (Code::NotFound, "CODE_NOT_FOUND")
    );
}

#[sqlx::test]
async fn single_use_codes_are_returned_once_stored_hashed_and_claimed_once(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.register("bob").await;
    app.create_template(platform_template("gift", 1000)).await;
    let mut coupons = app.coupons.clone();

    let codes = coupons
        .generate_single_use_codes(pb::GenerateSingleUseCodesRequest {
            template_id: "gift".into(),
            count: 50,
            request_id: "gift-batch-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .codes;
    let claimed = coupons
        .claim_coupon(claim("alice", &codes[0]))
        .await
        .unwrap()
        .into_inner();
    let taken = coupons.claim_coupon(claim("bob", &codes[0])).await.unwrap_err();

    assert_eq!(codes.len(), 50);
    assert_eq!(claimed.coupon.unwrap().source(), pb::CouponSource::SingleUseCode);
    assert_eq!(
        (taken.code(), reason(&taken).as_str()),
        (Code::FailedPrecondition, "CODE_ALREADY_USED")
    );
    let stored_text: i64 = sqlx::query_scalar(
        "select count(*) from claim_code where kind = 'single_use' and (public_code is not null or code_hash = $1)",
    )
    .bind(codes[1].as_bytes())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored_text, 0, "no single-use code is stored as text");
    // What is stored is the sha256 of the code without its dashes, and nothing else.
    let (single_use, hashed_as_documented): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where code_hash = any ( \
             select sha256(convert_to(replace(c, '-', ''), 'UTF8')) from unnest($1::text[]) c)) \
         from claim_code where kind = 'single_use'",
    )
    .bind(&codes)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((single_use, hashed_as_documented), (50, 50));
}

#[sqlx::test]
async fn coupon_calls_on_an_unknown_account_are_not_found(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 100)).await;
    let alices = app.issue("alice", "t").await.unwrap().coupon_id;
    let mut coupons = app.coupons.clone();
    let ghost_order = || order_of("ghost", "o-1");

    let results = vec![
        (
            "ValidateCoupons",
            coupons
                .validate_coupons(pb::ValidateCouponsRequest {
                    order: Some(ghost_order()),
                    coupon_ids: vec![alices],
                })
                .await
                .unwrap_err(),
        ),
        (
            "ValidateCoupons without coupons",
            coupons
                .validate_coupons(pb::ValidateCouponsRequest {
                    order: Some(ghost_order()),
                    coupon_ids: vec![],
                })
                .await
                .unwrap_err(),
        ),
        (
            "BestCoupons",
            coupons
                .best_coupons(pb::BestCouponsRequest {
                    order: Some(ghost_order()),
                })
                .await
                .unwrap_err(),
        ),
        (
            "ReserveCoupons",
            app.reserve(ghost_order(), vec![alices]).await.unwrap_err(),
        ),
        ("CompleteOrder", app.complete("ghost", "o-1").await.unwrap_err()),
        ("IssueCoupon", app.issue("ghost", "t").await.unwrap_err()),
        (
            "ListCoupons",
            coupons
                .list_coupons(pb::ListCouponsRequest {
                    account_id: "ghost".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (call, error) in results {
        assert_eq!(
            (error.code(), reason(&error).as_str()),
            (Code::NotFound, "MEMBER_NOT_FOUND"),
            "{call}"
        );
    }
}

#[sqlx::test]
async fn an_issuance_is_idempotent_and_limits_hold(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.register("bob").await;
    let mut template = platform_template("t", 100);
    template.per_member_limit = 2;
    template.total_stock = Some(3);
    app.create_template(template).await;

    let first = app.issue_as("alice", "t", "job-1").await.unwrap();
    let retry = app.issue_as("alice", "t", "job-1").await.unwrap();
    app.issue_as("alice", "t", "job-2").await.unwrap();
    let over_limit = app.issue_as("alice", "t", "job-3").await.unwrap_err();
    app.issue_as("bob", "t", "job-4").await.unwrap();
    let sold_out = app.issue_as("bob", "t", "job-5").await.unwrap_err();

    assert_eq!(first, retry);
    assert_eq!(reason(&over_limit), "PER_MEMBER_LIMIT_REACHED");
    assert_eq!(reason(&sold_out), "OUT_OF_STOCK");
    assert_eq!(app.template("t").await.issued_count, 3);
}

#[sqlx::test]
async fn daily_stock_resets_each_local_day(pool: PgPool) {
    let app = spawn_app(pool).await;
    for who in ["a", "b", "c"] {
        app.register(who).await;
    }
    let mut template = platform_template("daily", 100);
    template.daily_stock = Some(1);
    template.per_member_limit = 5;
    app.create_template(template).await;

    app.issue_as("a", "daily", "1").await.unwrap();
    let gone = app.issue_as("b", "daily", "2").await.unwrap_err();
    app.clock.advance(TimeDelta::days(1));
    let tomorrow = app.issue_as("b", "daily", "3").await;

    assert_eq!(reason(&gone), "DAILY_STOCK_EXHAUSTED");
    assert!(tomorrow.is_ok());
}

#[sqlx::test]
async fn paused_ended_and_level_restricted_templates_issue_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.create_template(platform_template("paused", 100)).await;
    app.coupons
        .clone()
        .set_coupon_template_paused(pb::SetCouponTemplatePausedRequest {
            template_id: "paused".into(),
            paused: true,
        })
        .await
        .unwrap();
    let mut ended = platform_template("ended", 100);
    ended.validity = Some(pb::Validity {
        kind: Some(pb::validity::Kind::Window(pb::ValidityWindow {
            valid_from: Some(ts("2026-01-01T00:00:00Z")),
            valid_until: Some(ts("2026-06-01T00:00:00Z")),
        })),
    });
    app.create_template(ended).await;
    let mut gold = platform_template("gold-only", 100);
    gold.allowed_levels = vec![pb::Level::Gold.into(), pb::Level::Diamond.into()];
    app.create_template(gold).await;

    assert_eq!(
        reason(&app.issue("alice", "paused").await.unwrap_err()),
        "TEMPLATE_PAUSED"
    );
    assert_eq!(
        reason(&app.issue("alice", "ended").await.unwrap_err()),
        "TEMPLATE_EXPIRED"
    );
    assert_eq!(
        reason(&app.issue("alice", "gold-only").await.unwrap_err()),
        "LEVEL_NOT_ALLOWED"
    );
    assert_eq!(
        reason(&app.issue("alice", "nope").await.unwrap_err()),
        "TEMPLATE_NOT_FOUND"
    );

    // Once a Gold level is in effect for the member, the template issues.
    sqlx::query(
        "insert into member_level (account_id, effective_from, level, window_points) \
         values ('alice', '2026-06-08T00:00:00Z', 'gold', 200)",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert!(app.issue("alice", "gold-only").await.is_ok());
}

#[sqlx::test]
async fn flagging_a_member_revokes_its_valid_coupons_and_stops_new_ones(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("mallory").await;
    app.create_template(platform_template("a", 100)).await;
    app.create_template(platform_template("b", 100)).await;
    let valid = app.issue("mallory", "a").await.unwrap();
    let reserved = app.issue("mallory", "b").await.unwrap();
    app.reserve(order_of("mallory", "o-1"), vec![reserved.coupon_id])
        .await
        .unwrap();

    app.members
        .clone()
        .flag_member(pb::FlagMemberRequest {
            account_id: "mallory".into(),
            reason: "fraud ring".into(),
        })
        .await
        .unwrap();

    let revoked = app.coupon("mallory", valid.coupon_id).await;
    assert_eq!(revoked.coupon.unwrap().status(), pb::CouponStatus::Revoked);
    assert_eq!(revoked.history.last().unwrap().action, "revoke");
    assert_eq!(
        app.status_of("mallory", reserved.coupon_id).await,
        pb::CouponStatus::Inactive,
        "only VALID ones"
    );
    app.create_template(platform_template("c", 100)).await;
    assert_eq!(
        reason(&app.issue("mallory", "c").await.unwrap_err()),
        "MEMBER_FLAGGED"
    );
    // Its reserved coupon does not come back usable when the order is cancelled.
    let cancelled = app.cancel("mallory", "o-1").await.unwrap();
    assert_eq!(cancelled.coupons[0].status(), pb::CouponStatus::Revoked);
    let reserve = app
        .reserve(order_of("mallory", "o-2"), vec![valid.coupon_id])
        .await
        .unwrap_err();
    assert_eq!(reason(&reserve), "MEMBER_FLAGGED");
}

#[sqlx::test]
async fn expiry_shows_at_once_in_every_read(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut short = platform_template("short", 100);
    short.validity = Some(pb::Validity {
        kind: Some(pb::validity::Kind::DaysFromIssuance(1)),
    });
    app.create_template(short).await;
    let coupon = app.issue("alice", "short").await.unwrap();

    app.clock.advance(TimeDelta::days(1));

    assert_eq!(
        app.status_of("alice", coupon.coupon_id).await,
        pb::CouponStatus::Expired
    );
    let listed = app
        .coupons
        .clone()
        .list_coupons(pb::ListCouponsRequest {
            account_id: "alice".into(),
            statuses: vec![pb::CouponStatus::Expired.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.coupons.len(), 1);
    let validation = app
        .coupons
        .clone()
        .validate_coupons(pb::ValidateCouponsRequest {
            order: Some(order_of("alice", "o-1")),
            coupon_ids: vec![coupon.coupon_id],
        })
        .await
        .unwrap()
        .into_inner()
        .pricing
        .unwrap();
    assert_eq!(validation.coupons[0].reason(), pb::NotApplicableReason::Expired);
}

#[sqlx::test]
async fn reserve_complete_and_every_retry_return_the_same_outcome(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 500)).await;
    let coupon = app.issue("alice", "t").await.unwrap();
    let reserved = app
        .reserve(order_of("alice", "o-1"), vec![coupon.coupon_id])
        .await
        .unwrap();
    let reserved_again = app
        .reserve(order_of("alice", "o-1"), vec![coupon.coupon_id])
        .await
        .unwrap();
    assert_eq!(
        app.status_of("alice", coupon.coupon_id).await,
        pb::CouponStatus::Inactive
    );
    let completed = app.complete("alice", "o-1").await.unwrap();
    let completed_again = app.complete("alice", "o-1").await.unwrap();

    assert!(!reserved.replayed && reserved_again.replayed);
    let (reserved, reserved_again) = (reserved.order.unwrap(), reserved_again.order.unwrap());
    assert_eq!(reserved.pricing, reserved_again.pricing);
    assert_eq!(reserved.coupons[0].order_id, "o-1");
    assert_eq!(completed.coupons, completed_again.coupons);
    assert_eq!(completed.coupons[0].status(), pb::CouponStatus::Used);
    let history: Vec<String> = app
        .coupon("alice", coupon.coupon_id)
        .await
        .history
        .into_iter()
        .map(|t| t.action)
        .collect();
    assert_eq!(history, vec!["issue", "reserve", "complete"]);
    // A completed order cannot be cancelled.
    let cancel = app.cancel("alice", "o-1").await.unwrap_err();
    assert_eq!(reason(&cancel), "ORDER_COMPLETED");
}

#[sqlx::test]
async fn a_coupon_reserved_by_another_order_cannot_be_applied(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 500)).await;
    app.create_template(platform_template("u", 100)).await;
    let coupon = app.issue("alice", "t").await.unwrap();
    let other = app.issue("alice", "u").await.unwrap();
    app.reserve(order_of("alice", "o-1"), vec![coupon.coupon_id])
        .await
        .unwrap();

    let error = app
        .reserve(order_of("alice", "o-2"), vec![coupon.coupon_id])
        .await
        .unwrap_err();
    let switched = app
        .reserve(order_of("alice", "o-1"), vec![other.coupon_id])
        .await
        .unwrap_err();

    assert_eq!(
        (error.code(), reason(&error).as_str()),
        (Code::FailedPrecondition, "COUPON_NOT_APPLICABLE")
    );
    use tonic_types::StatusExt;
    let violations = error.get_details_precondition_failure().unwrap().violations;
    assert_eq!(violations[0].r#type, "ALREADY_APPLIED");
    assert_eq!(violations[0].subject, coupon.coupon_id.to_string());
    assert_eq!(
        (switched.code(), reason(&switched).as_str()),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"),
        "the same revision with other coupons"
    );
    assert_eq!(
        app.status_of("alice", other.coupon_id).await,
        pb::CouponStatus::Valid
    );
}

#[sqlx::test]
async fn a_reservation_is_all_or_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("good", 100)).await;
    let mut minimum = crate::helpers::seller_template("min", "s1", 1000);
    minimum.min_purchase = Some(usd(100_000));
    app.create_template(minimum).await;
    let good = app.issue("alice", "good").await.unwrap();
    let too_big = app.issue("alice", "min").await.unwrap();

    let error = app
        .reserve(order_of("alice", "o-1"), vec![good.coupon_id, too_big.coupon_id])
        .await
        .unwrap_err();

    assert_eq!(reason(&error), "COUPON_NOT_APPLICABLE");
    assert_eq!(
        app.status_of("alice", good.coupon_id).await,
        pb::CouponStatus::Valid,
        "nothing reserved"
    );
    assert!(
        app.reserve(order_of("alice", "o-1"), vec![good.coupon_id])
            .await
            .is_ok()
    );
}

#[sqlx::test]
async fn cancelling_releases_coupons_and_expired_ones_become_expired(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut short = platform_template("short", 100);
    short.validity = Some(pb::Validity {
        kind: Some(pb::validity::Kind::DaysFromIssuance(1)),
    });
    app.create_template(short).await;
    app.create_template(platform_template("long", 100)).await;
    let expiring = app.issue("alice", "short").await.unwrap();
    let lasting = app.issue("alice", "long").await.unwrap();
    app.clock.advance(TimeDelta::hours(12));
    app.coupons
        .clone()
        .reserve_coupons(pb::ReserveCouponsRequest {
            order: Some(order_of("alice", "o-1")),
            coupon_ids: vec![expiring.coupon_id],
            hold_duration: Some(prost_types::Duration {
                seconds: 24 * 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    app.reserve(order_of("alice", "o-2"), vec![lasting.coupon_id])
        .await
        .unwrap();

    // Past its expiry while held, it stays INACTIVE until the order closes.
    app.clock.advance(TimeDelta::hours(13));
    assert_eq!(
        app.status_of("alice", expiring.coupon_id).await,
        pb::CouponStatus::Inactive
    );
    let first = app.cancel("alice", "o-1").await.unwrap();
    let retry = app.cancel("alice", "o-1").await.unwrap();
    app.cancel("alice", "o-2").await.unwrap();

    assert_eq!(first.coupons[0].status(), pb::CouponStatus::Expired);
    assert_eq!(first, retry);
    assert_eq!(
        app.status_of("alice", lasting.coupon_id).await,
        pb::CouponStatus::Valid
    );
    let complete = app.complete("alice", "o-1").await.unwrap_err();
    assert_eq!(reason(&complete), "ORDER_CANCELLED");
    let mut reserve_again = pb::ReserveCouponsRequest {
        order: Some(order_of("alice", "o-2")),
        coupon_ids: vec![lasting.coupon_id],
        cart_revision: 1,
        ..Default::default()
    };
    let error = app
        .coupons
        .clone()
        .reserve_coupons(reserve_again.clone())
        .await
        .unwrap_err();
    assert_eq!(reason(&error), "ORDER_CLOSED");
    reserve_again.cart_revision = 0;
    assert!(
        app.coupons
            .clone()
            .reserve_coupons(reserve_again)
            .await
            .unwrap()
            .into_inner()
            .replayed,
        "the same reservation again replays, even once the order closed"
    );
}

async fn used_coupon(app: &TestApp, template: pb::CouponTemplate, order: &str) -> pb::Coupon {
    let template_id = template.template_id.clone();
    app.create_template(template).await;
    let coupon = app.issue("alice", &template_id).await.unwrap();
    let lines = vec![checkout_line("l1", "s1", 1000, 2, false)];
    app.reserve(checkout("alice", order, lines), vec![coupon.coupon_id])
        .await
        .unwrap();
    app.complete("alice", order).await.unwrap();
    coupon
}

/// Refunds the whole order (no lines), or units of its lines.
async fn refund(app: &TestApp, order: &str, lines: &[(&str, i32)]) -> pb::OrderCheckout {
    app.refund("alice", order, "r-1", lines)
        .await
        .unwrap()
        .order
        .unwrap()
}

#[sqlx::test]
async fn a_full_refund_restores_a_platform_coupon_and_nothing_else(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let platform_full = used_coupon(&app, platform_template("p1", 100), "o-1").await;
    let platform_partial = used_coupon(&app, platform_template("p2", 100), "o-2").await;
    let seller_full = used_coupon(&app, crate::helpers::seller_template("s", "s1", 500), "o-3").await;

    let full = refund(&app, "o-1", &[]).await;
    let full_again = refund(&app, "o-1", &[]).await;
    // One unit of the line's two.
    refund(&app, "o-2", &[("l1", 1)]).await;
    refund(&app, "o-3", &[]).await;

    assert_eq!(full.coupons[0].status(), pb::CouponStatus::Valid);
    assert_eq!(full, full_again);
    assert_eq!(
        app.status_of("alice", platform_partial.coupon_id).await,
        pb::CouponStatus::Used
    );
    assert_eq!(
        app.status_of("alice", seller_full.coupon_id).await,
        pb::CouponStatus::Used
    );
    // The restored coupon can be used again.
    assert!(
        app.reserve(order_of("alice", "o-4"), vec![platform_full.coupon_id])
            .await
            .is_ok()
    );
}

#[sqlx::test]
async fn a_refunded_coupon_past_its_expiry_comes_back_expired_and_its_code_stays_consumed(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut short = platform_template("short", 100);
    short.validity = Some(pb::Validity {
        kind: Some(pb::validity::Kind::DaysFromIssuance(1)),
    });
    app.create_template(short).await;
    public_code(&app, "short", "FLASH-1").await;
    let coupon = app
        .coupons
        .clone()
        .claim_coupon(claim("alice", "FLASH-1"))
        .await
        .unwrap()
        .into_inner()
        .coupon
        .unwrap();
    app.reserve(order_of("alice", "o-1"), vec![coupon.coupon_id])
        .await
        .unwrap();
    app.complete("alice", "o-1").await.unwrap();
    app.clock.advance(TimeDelta::days(2));

    let refunded = refund(&app, "o-1", &[]).await;
    let claim_again = app
        .coupons
        .clone()
        .claim_coupon(claim("alice", "FLASH-1"))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(refunded.coupons[0].status(), pb::CouponStatus::Expired);
    assert!(claim_again.replayed, "the code stays consumed: no second coupon");
    assert_eq!(claim_again.coupon.unwrap().coupon_id, coupon.coupon_id);
}

#[sqlx::test]
async fn refunding_an_order_not_completed_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 100)).await;
    let coupon = app.issue("alice", "t").await.unwrap();
    app.reserve(order_of("alice", "o-1"), vec![coupon.coupon_id])
        .await
        .unwrap();

    let error = app.refund("alice", "o-1", "r-1", &[]).await.unwrap_err();

    assert_eq!(reason(&error), "ORDER_NOT_COMPLETED");
    assert_eq!(
        app.status_of("alice", coupon.coupon_id).await,
        pb::CouponStatus::Inactive
    );
}

#[sqlx::test]
async fn my_coupons_lists_newest_first_by_status_with_stable_pages(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    let mut template = platform_template("t", 100);
    template.per_member_limit = 50;
    app.create_template(template).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            app.issue_as("alice", "t", &format!("i{i}"))
                .await
                .unwrap()
                .coupon_id,
        );
    }
    app.reserve(order_of("alice", "o-1"), vec![ids[3]]).await.unwrap();
    let mut coupons = app.coupons.clone();
    let list = |token: String, statuses: Vec<i32>| pb::ListCouponsRequest {
        account_id: "alice".into(),
        statuses,
        page_size: 10,
        page_token: token,
    };

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = coupons
            .list_coupons(list(token, vec![]))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.coupons.iter().map(|c| c.coupon_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let inactive = coupons
        .list_coupons(list(String::new(), vec![pb::CouponStatus::Inactive.into()]))
        .await
        .unwrap()
        .into_inner();

    ids.reverse();
    assert_eq!(seen, ids);
    assert_eq!(
        inactive.coupons.iter().map(|c| c.coupon_id).collect::<Vec<_>>(),
        vec![ids[21]]
    );
    assert_eq!(inactive.coupons[0].name, "t name", "with the template's name");
}

#[sqlx::test]
async fn templates_are_listed_by_id_in_stable_pages(pool: PgPool) {
    let app = spawn_app(pool).await;
    for id in ["c", "a", "e", "b", "d"] {
        app.create_template(platform_template(id, 100)).await;
    }
    let mut coupons = app.coupons.clone();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = coupons
            .list_coupon_templates(pb::ListCouponTemplatesRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.templates.into_iter().map(|t| t.template_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let bad = coupons
        .list_coupon_templates(pb::ListCouponTemplatesRequest {
            page_size: 2,
            page_token: "nope".into(),
        })
        .await
        .unwrap_err();

    assert_eq!(seen, vec!["a", "b", "c", "d", "e"]);
    assert_eq!(crate::helpers::bad_fields(&bad), vec!["page_token".to_owned()]);
}

#[sqlx::test]
async fn a_coupon_stored_in_a_currency_iso_withdrew_still_reads(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register("alice").await;
    app.create_template(platform_template("t", 500)).await;
    let coupon = app.issue("alice", "t").await.unwrap();
    // A row written before the ISO 4217 table, in kuna (withdrawn in 2023).
    sqlx::query("update coupon set currency = 'HRK'")
        .execute(&pool)
        .await
        .unwrap();

    let read = app.coupon("alice", coupon.coupon_id).await.coupon.unwrap();
    let validation = app
        .coupons
        .clone()
        .validate_coupons(pb::ValidateCouponsRequest {
            order: Some(order_of("alice", "o-1")),
            coupon_ids: vec![coupon.coupon_id],
        })
        .await
        .unwrap()
        .into_inner()
        .pricing
        .unwrap();

    assert_eq!(read.currency_code, "HRK");
    assert_eq!(
        validation.coupons[0].reason(),
        pb::NotApplicableReason::CurrencyMismatch
    );
}
