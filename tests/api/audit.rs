//! The audit trail: every write and admin call records the calling service,
//! and `Audit/ListAudit` lists a template's, a member's and an order's.

use loyalty::pb;
use loyalty::pb::audit_client::AuditClient;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{
    TestApp, bad_fields, checkout, checkout_line, order_request, platform_template, spawn_app_with,
    tokens_file, ts,
};

/// `message` as `token`'s caller, with `x-request-id: request_id`.
fn signed<T>(message: T, token: &str, request_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    metadata.insert("x-request-id", request_id.parse().unwrap());
    request
}

async fn start(pool: PgPool) -> TestApp {
    let file = tokens_file(
        "audit",
        &[
            (
                "admin-console",
                "t-admin",
                "coupons:admin,coupons:issue,coupons:checkout,membership:admin",
            ),
            ("profile-service", "t-profile", "members:write"),
            ("fraud-desk", "t-fraud", "members:admin"),
            ("order-service", "t-orders", "members:write,points:earn"),
            ("auditor", "t-audit", "audit:read"),
        ],
    );
    spawn_app_with(pool, &["--auth-tokens-file", file.to_str().unwrap()]).await
}

fn template_audit(template_id: &str) -> pb::ListAuditRequest {
    pb::ListAuditRequest {
        template_id: template_id.into(),
        ..Default::default()
    }
}

fn member_audit(account_id: &str, order_id: &str) -> pb::ListAuditRequest {
    pb::ListAuditRequest {
        account_id: account_id.into(),
        order_id: order_id.into(),
        ..Default::default()
    }
}

/// Every entry of a listing, page by page (`page_size` per page).
async fn all_entries(
    app: &TestApp,
    mut request: pb::ListAuditRequest,
    page_size: i32,
) -> Vec<pb::AuditEntry> {
    let mut audit = AuditClient::new(app.channel.clone());
    let mut entries = Vec::new();
    request.page_size = page_size;
    for _ in 0..100 {
        let page = audit
            .list_audit(signed(request.clone(), "t-audit", "r-list"))
            .await
            .expect("the auditor lists")
            .into_inner();
        assert!(page.entries.len() <= page_size as usize);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        request.page_token = page.next_page_token;
    }
    panic!("the listing never ended");
}

/// (action, caller, request id) of each entry.
fn who(entries: &[pb::AuditEntry]) -> Vec<(String, String, String)> {
    entries
        .iter()
        .map(|e| (e.action.clone(), e.caller.clone(), e.request_id.clone()))
        .collect()
}

fn row(action: &str, caller: &str, request_id: &str) -> (String, String, String) {
    (action.into(), caller.into(), request_id.into())
}

fn detail_text(entry: &pb::AuditEntry, field: &str) -> String {
    use prost_types::value::Kind;
    match entry
        .detail
        .as_ref()
        .and_then(|d| d.fields.get(field))
        .and_then(|v| v.kind.clone())
    {
        Some(Kind::StringValue(s)) => s,
        Some(Kind::NumberValue(n)) => n.to_string(),
        other => panic!("{field} of {}: {other:?}", entry.action),
    }
}

#[sqlx::test]
async fn template_changes_and_a_flag_are_listed_with_the_caller_that_made_them(pool: PgPool) {
    let app = start(pool).await;
    let tick = || app.clock.advance(chrono::TimeDelta::seconds(1));
    let mut coupons = app.coupons.clone();
    let mut members = app.members.clone();
    let mut points = app.points.clone();

    let mut template = platform_template("spring", 500);
    coupons
        .create_coupon_template(signed(
            pb::CreateCouponTemplateRequest {
                template: Some(template.clone()),
            },
            "t-admin",
            "r-create",
        ))
        .await
        .unwrap();
    tick();
    template.name = "Spring sale, extended".into();
    coupons
        .update_coupon_template(signed(
            pb::UpdateCouponTemplateRequest {
                template: Some(template.clone()),
            },
            "t-admin",
            "r-update",
        ))
        .await
        .unwrap();
    coupons
        .update_coupon_template(signed(
            pb::UpdateCouponTemplateRequest {
                template: Some(template.clone()),
            },
            "t-admin",
            "r-update-again",
        ))
        .await
        .unwrap();
    for (paused, request_id) in [(true, "r-pause"), (true, "r-pause-again"), (false, "r-resume")] {
        tick();
        coupons
            .set_coupon_template_paused(signed(
                pb::SetCouponTemplatePausedRequest {
                    template_id: "spring".into(),
                    paused,
                },
                "t-admin",
                request_id,
            ))
            .await
            .unwrap();
    }

    tick();
    members
        .register_member(signed(
            pb::RegisterMemberRequest {
                account_id: "alice".into(),
                registered_at: Some(ts("2025-06-01T00:00:00Z")),
                birthday: None,
            },
            "t-orders",
            "r-register",
        ))
        .await
        .unwrap();
    tick();
    let order = order_request("alice", "o-1", 12_000, "2026-06-14T10:00:00Z", &[("p1", "books")]);
    let mut awarded = Vec::new();
    for request_id in ["r-order", "r-order-retry"] {
        let response = points
            .record_confirmed_order(signed(order.clone(), "t-orders", request_id))
            .await
            .unwrap()
            .into_inner();
        awarded.push((response.points_awarded, response.replayed));
    }
    assert!(awarded[0].0 > 0);
    assert_eq!(awarded[1], (awarded[0].0, true), "the retry is a replay");
    tick();
    let coupon = coupons
        .issue_coupon(signed(
            pb::IssueCouponRequest {
                account_id: "alice".into(),
                template_id: "spring".into(),
                issuance_id: "i-1".into(),
            },
            "t-admin",
            "r-issue",
        ))
        .await
        .unwrap()
        .into_inner()
        .coupon
        .unwrap();
    tick();
    coupons
        .reserve_coupons(signed(
            pb::ReserveCouponsRequest {
                order: Some(checkout(
                    "alice",
                    "o-2",
                    vec![checkout_line("l1", "seller-1", 10_000, 1, false)],
                )),
                coupon_ids: vec![coupon.coupon_id],
                ..Default::default()
            },
            "t-admin",
            "r-reserve",
        ))
        .await
        .unwrap();
    tick();
    coupons
        .complete_order(signed(
            pb::CompleteOrderRequest {
                account_id: "alice".into(),
                order_id: "o-2".into(),
            },
            "t-admin",
            "r-complete",
        ))
        .await
        .unwrap();
    for request_id in ["r-flag", "r-flag-again"] {
        tick();
        members
            .flag_member(signed(
                pb::FlagMemberRequest {
                    account_id: "alice".into(),
                    reason: "chargebacks".into(),
                },
                "t-fraud",
                request_id,
            ))
            .await
            .unwrap();
    }

    // The template's history, newest first; the same terms again and a pause
    // of a paused template changed nothing and are not there.
    let spring = all_entries(&app, template_audit("spring"), 2).await;
    assert_eq!(
        who(&spring),
        vec![
            row("template.resume", "admin-console", "r-resume"),
            row("template.pause", "admin-console", "r-pause"),
            row("template.update", "admin-console", "r-update"),
            row("template.create", "admin-console", "r-create"),
        ]
    );
    assert_eq!(detail_text(&spring[2], "name"), "Spring sale, extended");
    assert_eq!(detail_text(&spring[3], "name"), template_name_before_update());
    assert!(
        spring
            .iter()
            .all(|e| e.template_id == "spring" && e.account_id.is_empty())
    );

    // The member's: the flag (once), the order's and the coupon's changes,
    // the earning (once: the retry replayed), the registration.
    let alice = all_entries(&app, member_audit("alice", ""), 3).await;
    assert_eq!(
        who(&alice),
        vec![
            row("member.flag", "fraud-desk", "r-flag"),
            row("order.complete", "admin-console", "r-complete"),
            row("coupon.complete", "admin-console", "r-complete"),
            row("order.reserve", "admin-console", "r-reserve"),
            row("coupon.reserve", "admin-console", "r-reserve"),
            row("coupon.issue", "admin-console", "r-issue"),
            row("points.order", "order-service", "r-order"),
            row("member.register", "order-service", "r-register"),
        ]
    );
    assert_eq!(detail_text(&alice[0], "reason"), "chargebacks");
    assert_eq!(
        (
            alice[2].coupon_id,
            alice[2].template_id.as_str(),
            alice[2].order_id.as_str()
        ),
        (coupon.coupon_id, "spring", "o-2")
    );
    assert_eq!(detail_text(&alice[2], "to"), "used");
    assert_eq!(alice[6].order_id, "o-1");
    assert_eq!(detail_text(&alice[6], "points"), awarded[0].0.to_string());

    // One order of the member.
    let o2 = all_entries(&app, member_audit("alice", "o-2"), 20).await;
    assert_eq!(
        who(&o2),
        vec![
            row("order.complete", "admin-console", "r-complete"),
            row("coupon.complete", "admin-console", "r-complete"),
            row("order.reserve", "admin-console", "r-reserve"),
            row("coupon.reserve", "admin-console", "r-reserve"),
        ]
    );
    let o1 = all_entries(&app, member_audit("alice", "o-1"), 20).await;
    assert_eq!(who(&o1), vec![row("points.order", "order-service", "r-order")]);
}

fn template_name_before_update() -> String {
    platform_template("spring", 500).name
}

#[sqlx::test]
async fn listing_the_audit_needs_its_scope_and_one_subject(pool: PgPool) {
    let app = start(pool).await;
    let mut audit = AuditClient::new(app.channel.clone());

    let admin = audit
        .list_audit(signed(template_audit("spring"), "t-admin", "r-1"))
        .await
        .unwrap_err();
    assert_eq!(admin.code(), Code::PermissionDenied, "{admin:?}");

    for (request, field) in [
        (pb::ListAuditRequest::default(), "template_id"),
        (member_audit("", "o-1"), "account_id"),
        (
            pb::ListAuditRequest {
                template_id: "spring".into(),
                account_id: "alice".into(),
                ..Default::default()
            },
            "template_id",
        ),
        (member_audit("bad account!", ""), "account_id"),
        (member_audit("alice", "o/1"), "order_id"),
    ] {
        let status = audit
            .list_audit(signed(request.clone(), "t-audit", "r-2"))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), bad_fields(&status)),
            (Code::InvalidArgument, vec![field.to_owned()]),
            "{request:?}"
        );
    }

    // A token of one subject's listing does not continue another's.
    let create = |id: &str| pb::CreateCouponTemplateRequest {
        template: Some(platform_template(id, 100)),
    };
    let mut coupons = app.coupons.clone();
    for (n, id) in ["a", "b"].iter().enumerate() {
        for _ in 0..2 {
            let _ = coupons
                .create_coupon_template(signed(create(id), "t-admin", &format!("r-{n}")))
                .await;
        }
        coupons
            .set_coupon_template_paused(signed(
                pb::SetCouponTemplatePausedRequest {
                    template_id: (*id).into(),
                    paused: true,
                },
                "t-admin",
                "r-pause",
            ))
            .await
            .unwrap();
    }
    let first = audit
        .list_audit(signed(
            pb::ListAuditRequest {
                page_size: 1,
                ..template_audit("a")
            },
            "t-audit",
            "r-3",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.entries.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let other = audit
        .list_audit(signed(
            pb::ListAuditRequest {
                page_token: first.next_page_token,
                ..template_audit("b")
            },
            "t-audit",
            "r-4",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (other.code(), bad_fields(&other)),
        (Code::InvalidArgument, vec!["page_token".to_owned()])
    );
    // The create that found the id taken changed nothing: "a" has one create
    // and one pause.
    let a = all_entries(&app, template_audit("a"), 1).await;
    assert_eq!(
        a.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["template.pause", "template.create"]
    );
}

#[sqlx::test]
async fn codes_reward_templates_jobs_and_birthdays_are_audited_once_per_change(pool: PgPool) {
    let app = start(pool).await;
    let tick = || app.clock.advance(chrono::TimeDelta::seconds(1));
    let mut coupons = app.coupons.clone();
    let mut members = app.members.clone();
    coupons
        .create_coupon_template(signed(
            pb::CreateCouponTemplateRequest {
                template: Some(platform_template("gift", 300)),
            },
            "t-admin",
            "r-create",
        ))
        .await
        .unwrap();
    tick();
    for request_id in ["r-code", "r-code-again"] {
        coupons
            .create_public_code(signed(
                pb::CreatePublicCodeRequest {
                    template_id: "gift".into(),
                    code: "WELCOME".into(),
                },
                "t-admin",
                request_id,
            ))
            .await
            .unwrap();
    }
    tick();
    for request_id in ["r-batch", "r-batch-retry"] {
        coupons
            .generate_single_use_codes(signed(
                pb::GenerateSingleUseCodesRequest {
                    template_id: "gift".into(),
                    count: 3,
                    request_id: "batch-1".into(),
                },
                "t-admin",
                request_id,
            ))
            .await
            .unwrap();
    }
    tick();
    members
        .set_reward_templates(signed(
            pb::SetRewardTemplatesRequest {
                rewards: Some(pb::RewardTemplates {
                    reward: pb::RewardKind::Birthday.into(),
                    level: 0,
                    template_ids: vec!["gift".into()],
                }),
            },
            "t-admin",
            "r-rewards",
        ))
        .await
        .unwrap();
    for (templates, request_id) in [
        (vec!["gift".to_owned()], "r-rewards-again"),
        (vec![], "r-rewards-clear"),
    ] {
        tick();
        members
            .set_reward_templates(signed(
                pb::SetRewardTemplatesRequest {
                    rewards: Some(pb::RewardTemplates {
                        reward: pb::RewardKind::Birthday.into(),
                        level: 0,
                        template_ids: templates,
                    }),
                },
                "t-admin",
                request_id,
            ))
            .await
            .unwrap();
    }
    tick();
    members
        .evaluate_levels(signed(
            pb::EvaluateLevelsRequest {
                month: Some(pb::Date {
                    year: 2026,
                    month: 5,
                    day: 1,
                }),
            },
            "t-admin",
            "r-evaluate",
        ))
        .await
        .unwrap();

    let gift = all_entries(&app, template_audit("gift"), 10).await;
    assert_eq!(
        who(&gift),
        vec![
            row("reward_templates.set", "admin-console", "r-rewards-clear"),
            row("reward_templates.set", "admin-console", "r-rewards"),
            row("template.single_use_codes", "admin-console", "r-batch"),
            row("template.public_code", "admin-console", "r-code"),
            row("template.create", "admin-console", "r-create"),
        ],
        "a replayed code or batch, or the same reward templates again, records nothing"
    );
    assert_eq!(detail_text(&gift[1], "reward"), "birthday");
    assert_eq!(detail_text(&gift[2], "batch_request_id"), "batch-1");
    assert_eq!(detail_text(&gift[2], "code_count"), "3");
    assert_eq!(detail_text(&gift[3], "code"), "WELCOME");

    // The admin changes: the template's, and the job's run.
    let admin = all_entries(
        &app,
        pb::ListAuditRequest {
            admin_changes: true,
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(admin.len(), 6, "{:?}", who(&admin));
    assert_eq!(admin[0].action, "job.evaluate_levels");
    assert_eq!(
        (admin[0].caller.as_str(), admin[0].request_id.as_str()),
        ("admin-console", "r-evaluate")
    );
    assert_eq!(detail_text(&admin[0], "month"), "2026-05-01");
    assert_eq!(who(&admin[1..]), who(&gift));

    // A birthday set, then set again to the same date: one change.
    members
        .register_member(signed(
            pb::RegisterMemberRequest {
                account_id: "bob".into(),
                registered_at: Some(ts("2025-06-01T00:00:00Z")),
                birthday: None,
            },
            "t-profile",
            "r-register",
        ))
        .await
        .unwrap();
    for request_id in ["r-birthday", "r-birthday-again"] {
        tick();
        members
            .update_birthday(signed(
                pb::UpdateBirthdayRequest {
                    account_id: "bob".into(),
                    birthday: Some(pb::Date {
                        year: 0,
                        month: 2,
                        day: 29,
                    }),
                },
                "t-profile",
                request_id,
            ))
            .await
            .unwrap();
    }
    let bob = all_entries(&app, member_audit("bob", ""), 10).await;
    assert_eq!(
        who(&bob),
        vec![
            row("member.birthday", "profile-service", "r-birthday"),
            row("member.register", "profile-service", "r-register"),
        ]
    );
    assert_eq!(detail_text(&bob[0], "day"), "29");
}

#[sqlx::test]
async fn an_orders_audit_has_its_reservations_completion_and_refunds_once_each(pool: PgPool) {
    // Authentication off: the caller is empty, the changes are still recorded.
    let app = crate::helpers::spawn_app(pool).await;
    let tick = || app.clock.advance(chrono::TimeDelta::seconds(1));
    app.register("carol").await;
    app.create_template(platform_template("t5", 500)).await;
    let coupon = app.issue("carol", "t5").await.unwrap();
    tick();
    let order = checkout(
        "carol",
        "o-9",
        vec![checkout_line("l1", "seller-1", 10_000, 2, false)],
    );
    app.reserve(order.clone(), vec![coupon.coupon_id]).await.unwrap();
    tick();
    app.complete("carol", "o-9").await.unwrap();
    app.complete("carol", "o-9").await.unwrap();
    tick();
    app.refund("carol", "o-9", "r-1", &[("l1", 1)]).await.unwrap();
    app.refund("carol", "o-9", "r-1", &[("l1", 1)]).await.unwrap();

    let mut audit = AuditClient::new(app.channel.clone());
    let entries = audit
        .list_audit(member_audit("carol", "o-9"))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "order.refund",
            "coupon.refund_partial",
            "order.complete",
            "coupon.complete",
            "order.reserve",
            "coupon.reserve"
        ],
        "a replayed completion or refund records nothing"
    );
    assert_eq!(detail_text(&entries[0], "refund_id"), "r-1");
    assert!(
        entries
            .iter()
            .all(|e| e.caller.is_empty() && !e.request_id.is_empty())
    );
}
