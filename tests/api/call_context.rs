//! What every call says about itself: the request id of a write comes back in
//! its answer, and an error's `ErrorInfo.metadata` names the ids it concerns.

use std::collections::BTreeMap;

use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{checkout, checkout_line, order_request, platform_template, reason, spawn_app, ts};

/// `message` sent with `x-request-id: request_id`.
fn named<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    request
}

/// The `ErrorInfo.metadata` of an error status.
fn metadata(status: &tonic::Status) -> BTreeMap<String, String> {
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"))
        .metadata
        .into_iter()
        .collect()
}

fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

fn date(year: i32, month: i32, day: i32) -> Option<pb::Date> {
    Some(pb::Date { year, month, day })
}

#[sqlx::test]
async fn every_write_answers_with_the_callers_request_id(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (mut members, mut points, mut coupons) =
        (app.members.clone(), app.points.clone(), app.coupons.clone());
    // (request id sent, request id answered)
    let mut echoes: Vec<(&str, String)> = Vec::new();

    let register = |id| {
        named(
            pb::RegisterMemberRequest {
                account_id: "alice".into(),
                registered_at: Some(ts("2025-06-01T00:00:00Z")),
                birthday: None,
            },
            id,
        )
    };
    let first = members.register_member(register("w-register")).await.unwrap();
    echoes.push(("w-register", first.into_inner().request_id));
    // A replay answers with its own request id, not the first call's.
    let replay = members
        .register_member(register("w-register-again"))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    echoes.push(("w-register-again", replay.request_id));
    let answer = members
        .update_birthday(named(
            pb::UpdateBirthdayRequest {
                account_id: "alice".into(),
                birthday: date(1990, 1, 2),
            },
            "w-birthday",
        ))
        .await
        .unwrap();
    echoes.push(("w-birthday", answer.into_inner().request_id));

    // Points.
    let answer = points
        .record_confirmed_order(named(
            order_request("alice", "o-1", 2_000, "2026-06-14T10:00:00Z", &[("p1", "c1")]),
            "w-order",
        ))
        .await
        .unwrap();
    echoes.push(("w-order", answer.into_inner().request_id));
    let answer = points
        .record_review(named(
            pb::RecordReviewRequest {
                account_id: "alice".into(),
                review_id: "r-1".into(),
                order_id: "o-1".into(),
                product_id: "p1".into(),
                published_at: Some(ts("2026-06-14T11:00:00Z")),
            },
            "w-review",
        ))
        .await
        .unwrap();
    echoes.push(("w-review", answer.into_inner().request_id));
    let answer = points
        .record_visit(named(
            pb::RecordVisitRequest {
                account_id: "alice".into(),
                channel: pb::VisitChannel::Web.into(),
                visited_at: Some(ts("2026-06-14T12:00:00Z")),
            },
            "w-visit",
        ))
        .await
        .unwrap();
    echoes.push(("w-visit", answer.into_inner().request_id));
    let answer = points
        .record_post(named(
            pb::RecordPostRequest {
                account_id: "alice".into(),
                post_id: "post-1".into(),
                published_at: Some(ts("2026-06-14T13:00:00Z")),
            },
            "w-post",
        ))
        .await
        .unwrap();
    echoes.push(("w-post", answer.into_inner().request_id));
    let answer = points
        .reverse_order(named(
            pb::ReverseOrderRequest {
                account_id: "alice".into(),
                order_id: "o-1".into(),
                reason: pb::ReversalReason::Returned.into(),
                reversed_at: Some(ts("2026-06-14T14:00:00Z")),
            },
            "w-reverse",
        ))
        .await
        .unwrap();
    echoes.push(("w-reverse", answer.into_inner().request_id));
    let answer = points
        .grant_bonus(named(
            pb::GrantBonusRequest {
                account_id: "alice".into(),
                campaign_id: "may".into(),
                points: 2_000,
                description: String::new(),
                granted_at: Some(ts("2026-05-10T00:00:00Z")),
            },
            "w-bonus",
        ))
        .await
        .unwrap();
    echoes.push(("w-bonus", answer.into_inner().request_id));

    // The jobs: May's evaluation makes alice Diamond from 8 June.
    let answer = members
        .evaluate_levels(named(
            pb::EvaluateLevelsRequest {
                month: date(2026, 5, 1),
            },
            "w-evaluate",
        ))
        .await
        .unwrap();
    echoes.push(("w-evaluate", answer.into_inner().request_id));
    let answer = members
        .run_daily_rewards(named(
            pb::RunDailyRewardsRequest {
                date: date(2026, 6, 15),
            },
            "w-daily-rewards",
        ))
        .await
        .unwrap();
    echoes.push(("w-daily-rewards", answer.into_inner().request_id));

    // Coupons.
    let template = pb::CouponTemplate {
        daily_stock: Some(10),
        per_member_limit: 5,
        ..platform_template("t-1", 500)
    };
    let answer = coupons
        .create_coupon_template(named(
            pb::CreateCouponTemplateRequest {
                template: Some(template.clone()),
            },
            "w-create-template",
        ))
        .await
        .unwrap();
    echoes.push(("w-create-template", answer.into_inner().request_id));
    let answer = coupons
        .update_coupon_template(named(
            pb::UpdateCouponTemplateRequest {
                template: Some(pb::CouponTemplate {
                    name: "renamed".into(),
                    ..template
                }),
            },
            "w-update-template",
        ))
        .await
        .unwrap();
    echoes.push(("w-update-template", answer.into_inner().request_id));
    let answer = coupons
        .set_coupon_template_paused(named(
            pb::SetCouponTemplatePausedRequest {
                template_id: "t-1".into(),
                paused: false,
            },
            "w-pause",
        ))
        .await
        .unwrap();
    echoes.push(("w-pause", answer.into_inner().request_id));
    let answer = coupons
        .create_public_code(named(
            pb::CreatePublicCodeRequest {
                template_id: "t-1".into(),
                code: "HELLO-1".into(),
            },
            "w-public-code",
        ))
        .await
        .unwrap();
    echoes.push(("w-public-code", answer.into_inner().request_id));
    let answer = coupons
        .claim_coupon(named(
            pb::ClaimCouponRequest {
                account_id: "alice".into(),
                code: "hello-1".into(),
            },
            "w-claim",
        ))
        .await
        .unwrap();
    echoes.push(("w-claim", answer.into_inner().request_id));
    let answer = coupons
        .issue_coupon(named(
            pb::IssueCouponRequest {
                account_id: "alice".into(),
                template_id: "t-1".into(),
                issuance_id: "iss-1".into(),
            },
            "w-issue",
        ))
        .await
        .unwrap();
    echoes.push(("w-issue", answer.into_inner().request_id));
    let answer = coupons
        .generate_single_use_codes(named(
            pb::GenerateSingleUseCodesRequest {
                template_id: "t-1".into(),
                count: 2,
                request_id: "batch-1".into(),
            },
            "w-codes",
        ))
        .await
        .unwrap();
    echoes.push(("w-codes", answer.into_inner().request_id));
    let answer = members
        .set_reward_templates(named(
            pb::SetRewardTemplatesRequest {
                rewards: Some(pb::RewardTemplates {
                    reward: pb::RewardKind::DiamondDaily.into(),
                    level: 0,
                    template_ids: vec!["t-1".into()],
                }),
            },
            "w-reward-templates",
        ))
        .await
        .unwrap();
    echoes.push(("w-reward-templates", answer.into_inner().request_id));
    let answer = members
        .claim_daily_coupon(named(
            pb::ClaimDailyCouponRequest {
                account_id: "alice".into(),
            },
            "w-daily-coupon",
        ))
        .await
        .unwrap();
    echoes.push(("w-daily-coupon", answer.into_inner().request_id));

    // Fraud handling.
    let answer = members
        .flag_member(named(
            pb::FlagMemberRequest {
                account_id: "alice".into(),
                reason: "test".into(),
            },
            "w-flag",
        ))
        .await
        .unwrap();
    echoes.push(("w-flag", answer.into_inner().request_id));
    let answer = members
        .unflag_member(named(
            pb::UnflagMemberRequest {
                account_id: "alice".into(),
            },
            "w-unflag",
        ))
        .await
        .unwrap();
    echoes.push(("w-unflag", answer.into_inner().request_id));

    let wrong: Vec<_> = echoes
        .iter()
        .filter(|(sent, answered)| sent != answered)
        .collect();
    assert!(wrong.is_empty(), "answered with another request id: {wrong:?}");
    // Every write of the three services but the checkout's order transitions
    // (21), and one replay.
    assert_eq!(echoes.len(), 22);
}

#[sqlx::test]
async fn a_generated_request_id_is_the_one_of_the_response_header(pool: PgPool) {
    let app = spawn_app(pool).await;

    let response = app
        .members
        .clone()
        .register_member(pb::RegisterMemberRequest {
            account_id: "alice".into(),
            registered_at: Some(ts("2025-06-01T00:00:00Z")),
            birthday: None,
        })
        .await
        .unwrap();

    let header = response
        .metadata()
        .get("x-request-id")
        .expect("an x-request-id header")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(header.len(), 32);
    assert_eq!(response.into_inner().request_id, header);
}

#[sqlx::test]
async fn a_call_on_an_unknown_account_names_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_template(platform_template("t-1", 500)).await;

    let balance = app
        .points
        .clone()
        .get_balance(pb::GetBalanceRequest {
            account_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    let issue = app.issue_as("ghost", "t-1", "iss-1").await.unwrap_err();

    assert_eq!(balance.code(), Code::NotFound);
    assert_eq!(reason(&balance), "MEMBER_NOT_FOUND");
    assert_eq!(metadata(&balance), ids(&[("account_id", "ghost")]));
    assert_eq!(issue.code(), Code::NotFound);
    assert_eq!(
        metadata(&issue),
        ids(&[
            ("account_id", "ghost"),
            ("issuance_id", "iss-1"),
            ("template_id", "t-1"),
        ])
    );
}

#[sqlx::test]
async fn a_refused_order_transition_names_the_member_and_the_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("t-1", 500)).await;
    let coupon = app.issue("alice", "t-1").await.unwrap();
    let order = checkout("alice", "o-1", vec![checkout_line("l1", "acme", 2_000, 1, false)]);
    app.reserve(order, vec![coupon.coupon_id]).await.unwrap();
    let mut coupons = app.coupons.clone();
    coupons
        .cancel_order(pb::CancelOrderRequest {
            account_id: "alice".into(),
            order_id: "o-1".into(),
        })
        .await
        .unwrap();

    let completion = coupons
        .complete_order(pb::CompleteOrderRequest {
            account_id: "alice".into(),
            order_id: "o-1".into(),
        })
        .await
        .unwrap_err();

    assert_eq!(completion.code(), Code::FailedPrecondition);
    assert_eq!(reason(&completion), "ORDER_CANCELLED");
    assert_eq!(
        metadata(&completion),
        ids(&[("account_id", "alice"), ("order_id", "o-1")])
    );
}

#[sqlx::test]
async fn a_review_of_an_unconfirmed_product_names_the_review_order_and_product(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    let review = app
        .points
        .clone()
        .record_review(pb::RecordReviewRequest {
            account_id: "alice".into(),
            review_id: "r-1".into(),
            order_id: "o-9".into(),
            product_id: "p-9".into(),
            published_at: Some(ts("2026-06-14T11:00:00Z")),
        })
        .await
        .unwrap_err();

    assert_eq!(reason(&review), "ORDER_PRODUCT_NOT_CONFIRMED");
    assert_eq!(
        metadata(&review),
        ids(&[
            ("account_id", "alice"),
            ("order_id", "o-9"),
            ("product_id", "p-9"),
            ("review_id", "r-1"),
        ])
    );
}

#[sqlx::test]
async fn a_template_taken_with_other_terms_names_the_template(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create_template(platform_template("t-1", 500)).await;

    let again = app
        .coupons
        .clone()
        .create_coupon_template(pb::CreateCouponTemplateRequest {
            template: Some(platform_template("t-1", 700)),
        })
        .await
        .unwrap_err();

    assert_eq!(again.code(), Code::AlreadyExists);
    assert_eq!(reason(&again), "TEMPLATE_EXISTS");
    assert_eq!(metadata(&again), ids(&[("template_id", "t-1")]));
}

#[sqlx::test]
async fn an_error_names_the_ids_only_the_domain_knew(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;
    app.create_template(platform_template("t-1", 500)).await;
    app.create_template(platform_template("t-2", 500)).await;
    let first = app.issue_as("alice", "t-1", "iss-1").await.unwrap();
    let mut coupons = app.coupons.clone();
    coupons
        .create_public_code(pb::CreatePublicCodeRequest {
            template_id: "t-2".into(),
            code: "HELLO-2".into(),
        })
        .await
        .unwrap();
    coupons
        .set_coupon_template_paused(pb::SetCouponTemplatePausedRequest {
            template_id: "t-2".into(),
            paused: true,
        })
        .await
        .unwrap();

    // The issuance id already issued another template: which coupon it gave.
    let reused = app.issue_as("alice", "t-2", "iss-1").await.unwrap_err();
    // A code names no template: the refusal says which one it claims.
    let paused = coupons
        .claim_coupon(pb::ClaimCouponRequest {
            account_id: "alice".into(),
            code: "hello-2".into(),
        })
        .await
        .unwrap_err();

    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    let coupon_id = first.coupon_id.to_string();
    assert_eq!(
        metadata(&reused),
        ids(&[
            ("account_id", "alice"),
            ("coupon_id", &coupon_id),
            ("issuance_id", "iss-1"),
            ("template_id", "t-2"),
        ])
    );
    assert_eq!(reason(&paused), "TEMPLATE_PAUSED");
    assert_eq!(
        metadata(&paused),
        ids(&[("account_id", "alice"), ("template_id", "t-2")])
    );
}

#[sqlx::test]
async fn bad_input_names_the_ids_parsed_before_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("alice").await;

    let flag = app
        .members
        .clone()
        .flag_member(pb::FlagMemberRequest {
            account_id: "alice".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    let malformed = app
        .members
        .clone()
        .get_member(pb::GetMemberRequest {
            account_id: "not an id".into(),
        })
        .await
        .unwrap_err();

    assert_eq!(flag.code(), Code::InvalidArgument);
    assert_eq!(metadata(&flag), ids(&[("account_id", "alice")]));
    // A malformed id is not echoed as an id (the BadRequest names the field).
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(metadata(&malformed), ids(&[]));
}
