//! Each change writes exactly its event, with its typed payload and the
//! request id of the call that made it; a refused call writes none, and a
//! replayed one none again.

use std::collections::BTreeSet;

use chrono::TimeDelta;
use loyalty::pb;
use loyalty::pb::EventType::{
    CouponIssued, CouponReleased, CouponReserved, CouponRestored, CouponRevoked, CouponUsed, LevelChanged,
    MemberFlagged, MemberRegistered, MemberUnflagged, PointsAwarded, PointsReversed, RewardIssued,
};
use loyalty::pb::event::Payload;
use sqlx::PgPool;
use tonic::Code;

use super::{at, by_account, coupon_of, order_of, payload_of, summary};
use crate::helpers::{named, order_request, platform_template, reason, seller_template, spawn_app, ts};

#[sqlx::test]
async fn registering_flagging_and_unflagging_members_are_events_once_per_change(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut members = app.members.clone();
    let registration = |account: &str, birthday: Option<pb::Date>| pb::RegisterMemberRequest {
        account_id: account.into(),
        registered_at: Some(ts("2025-06-01T00:00:00Z")),
        birthday,
    };
    let birthday = pb::Date {
        year: 1990,
        month: 3,
        day: 4,
    };

    members
        .register_member(named(registration("alice", Some(birthday)), "r-register-alice"))
        .await
        .unwrap();
    members
        .register_member(named(registration("bob", None), "r-register-bob"))
        .await
        .unwrap();
    app.flag_by("alice", "chargebacks", "r-flag").await;
    app.flag_by("alice", "chargebacks again", "r-flag-again").await;
    app.unflag_by("alice", "r-unflag").await;
    app.unflag_by("alice", "r-unflag-again").await;
    app.unflag_by("bob", "r-unflag-bob").await;
    let events = by_account(app.logged_events(&pool).await);

    assert_eq!(
        summary(&events),
        [
            (MemberRegistered, "alice", "r-register-alice"),
            (MemberFlagged, "alice", "r-flag"),
            (MemberUnflagged, "alice", "r-unflag"),
            (MemberRegistered, "bob", "r-register-bob"),
        ],
        "flagging a flagged member or unflagging one not flagged is no event"
    );
    assert_eq!(
        events[0].payload,
        Some(Payload::MemberRegistered(pb::MemberRegistered {
            registered_at: Some(ts("2025-06-01T00:00:00Z")),
            has_birthday: true,
        }))
    );
    assert_eq!(
        events[3].payload,
        Some(Payload::MemberRegistered(pb::MemberRegistered {
            registered_at: Some(ts("2025-06-01T00:00:00Z")),
            has_birthday: false,
        }))
    );
    assert_eq!(
        events[1].payload,
        Some(Payload::MemberFlagged(pb::MemberFlagged {
            reason: "chargebacks".into(),
        }))
    );
    assert_eq!(
        events[2].payload,
        Some(Payload::MemberUnflagged(pb::MemberUnflagged {}))
    );
    for event in &events {
        assert_eq!(
            event.occurred_at,
            Some(ts("2026-06-15T12:00:00Z")),
            "the service's clock"
        );
        assert_eq!(event.caller, "", "authentication is off");
    }
    let ids: Vec<i64> = events[..3].iter().map(|e| e.event_id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "alice's ids grow: {ids:?}");
}

#[sqlx::test]
async fn earning_and_reversing_points_are_events_carrying_their_entries(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let mut points = app.points.clone();
    app.register_by("alice", "r-register").await;
    let reversal = |order_id: &str| pb::ReverseOrderRequest {
        account_id: "alice".into(),
        order_id: order_id.into(),
        reason: pb::ReversalReason::Returned.into(),
        reversed_at: Some(ts("2026-06-14T12:00:00Z")),
    };

    // Order points and a category-variety point; then a second order of the
    // day, fully capped (0 points); then both reversed.
    let first = points
        .record_confirmed_order(named(
            order_request(
                "alice",
                "order-1",
                2_000,
                "2026-06-14T10:00:00Z",
                &[("p1", "c1"), ("p2", "c2")],
            ),
            "r-order-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let capped = points
        .record_confirmed_order(named(
            order_request("alice", "order-2", 2_000, "2026-06-14T11:00:00Z", &[("p3", "c1")]),
            "r-order-2",
        ))
        .await
        .unwrap()
        .into_inner();
    let reversed = points
        .reverse_order(named(reversal("order-1"), "r-reverse-1"))
        .await
        .unwrap()
        .into_inner();
    let nothing_to_reverse = points
        .reverse_order(named(reversal("order-2"), "r-reverse-2"))
        .await
        .unwrap()
        .into_inner();
    let events = app.logged_events(&pool).await;

    assert_eq!(
        summary(&events),
        [
            (MemberRegistered, "alice", "r-register"),
            (PointsAwarded, "alice", "r-order-1"),
            (PointsAwarded, "alice", "r-order-2"),
            (PointsReversed, "alice", "r-reverse-1"),
        ],
        "a reversal that appends no entry is no event"
    );
    assert_eq!(first.entries.len(), 2, "order and category variety");
    assert_eq!(
        events[1].payload,
        Some(Payload::PointsAwarded(pb::PointsChanged {
            points: 6,
            entries: first.entries.clone(),
        })),
        "the entries as ListPointEntries shows them"
    );
    assert_eq!(
        (capped.entries[0].points, capped.entries[0].cap_reason()),
        (0, pb::CapReason::DailyCap)
    );
    assert_eq!(
        events[2].payload,
        Some(Payload::PointsAwarded(pb::PointsChanged {
            points: 0,
            entries: capped.entries,
        })),
        "a fully capped award is an event too"
    );
    assert_eq!(
        events[3].payload,
        Some(Payload::PointsReversed(pb::PointsChanged {
            points: -6,
            entries: reversed.entries.clone(),
        }))
    );
    let reverses: Vec<i64> = reversed.entries.iter().map(|e| e.reverses_entry_id).collect();
    let earned: Vec<i64> = first.entries.iter().map(|e| e.entry_id).collect();
    assert_eq!(reverses, earned);
    assert!(nothing_to_reverse.entries.is_empty());
}

#[sqlx::test]
async fn an_evaluation_raising_a_level_sends_level_changed_and_the_reward_with_its_coupon(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.clock.set(at("2026-11-02T00:00:00Z"));
    app.create_template(platform_template("gold-welcome", 500)).await;
    app.members
        .clone()
        .set_reward_templates(pb::SetRewardTemplatesRequest {
            rewards: Some(pb::RewardTemplates {
                reward: pb::RewardKind::LevelUp.into(),
                level: pb::Level::Gold.into(),
                template_ids: vec!["gold-welcome".into()],
            }),
        })
        .await
        .unwrap();
    app.register_by("alice", "r-register-alice").await;
    app.register_by("bob", "r-register-bob").await;
    app.points
        .clone()
        .grant_bonus(named(
            pb::GrantBonusRequest {
                account_id: "alice".into(),
                campaign_id: "october".into(),
                points: 150,
                description: String::new(),
                granted_at: Some(ts("2026-10-05T00:00:00Z")),
            },
            "r-bonus",
        ))
        .await
        .unwrap();
    let evaluate = |request_id| {
        named(
            pb::EvaluateLevelsRequest {
                month: Some(pb::Date {
                    year: 2026,
                    month: 10,
                    day: 1,
                }),
            },
            request_id,
        )
    };

    let run = app
        .members
        .clone()
        .evaluate_levels(evaluate("r-evaluate"))
        .await
        .unwrap()
        .into_inner();
    let rerun = app
        .members
        .clone()
        .evaluate_levels(evaluate("r-evaluate-again"))
        .await
        .unwrap()
        .into_inner();
    let events = by_account(app.logged_events(&pool).await);

    assert_eq!((run.level_ups, run.rewards_settled, rerun.replayed), (1, 1, true));
    assert_eq!(
        summary(&events),
        [
            (MemberRegistered, "alice", "r-register-alice"),
            (PointsAwarded, "alice", "r-bonus"),
            (LevelChanged, "alice", "r-evaluate"),
            (CouponIssued, "alice", "r-evaluate"),
            (RewardIssued, "alice", "r-evaluate"),
            (MemberRegistered, "bob", "r-register-bob"),
        ],
        "bob stays Silver: no event; the rerun changes nothing: none"
    );
    assert_eq!(
        payload_of(&events, LevelChanged),
        &Payload::LevelChanged(pb::LevelChanged {
            previous_level: pb::Level::Silver.into(),
            level: pb::Level::Gold.into(),
            effective_from: Some(ts("2026-11-08T00:00:00Z")),
            window_points: 150,
            evaluation_month: Some(pb::Date {
                year: 2026,
                month: 10,
                day: 1,
            }),
        })
    );
    let coupons = app
        .coupons
        .clone()
        .list_coupons(pb::ListCouponsRequest {
            account_id: "alice".into(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .coupons;
    assert_eq!(coupons.len(), 1);
    let coupon = &coupons[0];
    assert_eq!(
        payload_of(&events, RewardIssued),
        &Payload::RewardIssued(pb::RewardIssued {
            reward_key: "level-up:2026-10".into(),
            template_id: "gold-welcome".into(),
            coupon_id: coupon.coupon_id,
        })
    );
    assert_eq!(
        payload_of(&events, CouponIssued),
        &Payload::CouponIssued(pb::CouponIssued {
            coupon_id: coupon.coupon_id,
            template_id: "gold-welcome".into(),
            source: coupon.source,
            valid_from: coupon.valid_from,
            expires_at: coupon.expires_at,
        })
    );
}

#[sqlx::test]
async fn a_coupon_moving_through_its_statuses_sends_one_event_per_move(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register_by("alice", "r-register").await;
    app.create_template(platform_template("t", 500)).await;
    app.create_template(platform_template("t2", 500)).await;

    let coupon = app.issue_by("alice", "t", "i-1", "r-issue").await;
    let first_hold = app
        .reserve_by("o-1", coupon.coupon_id, "r-reserve-1")
        .await
        .unwrap();
    app.cancel_by("o-1", "r-cancel").await.unwrap();
    let second_hold = app
        .reserve_by("o-2", coupon.coupon_id, "r-reserve-2")
        .await
        .unwrap();
    app.complete_by("o-2", "r-complete").await.unwrap();
    app.coupons
        .clone()
        .refund_order(named(
            pb::RefundOrderRequest {
                account_id: "alice".into(),
                order_id: "o-2".into(),
                refund_id: "refund-1".into(),
                extent: Some(pb::refund_order_request::Extent::WholeOrder(pb::WholeOrder {})),
            },
            "r-refund",
        ))
        .await
        .unwrap();
    let other = app.issue_by("alice", "t2", "i-2", "r-issue-2").await;
    // Flagging revokes both VALID coupons.
    app.flag_by("alice", "fraud ring", "r-flag").await;
    let events = app.logged_events(&pool).await;

    assert_eq!(
        summary(&events)[..9],
        [
            (MemberRegistered, "alice", "r-register"),
            (CouponIssued, "alice", "r-issue"),
            (CouponReserved, "alice", "r-reserve-1"),
            (CouponReleased, "alice", "r-cancel"),
            (CouponReserved, "alice", "r-reserve-2"),
            (CouponUsed, "alice", "r-complete"),
            (CouponRestored, "alice", "r-refund"),
            (CouponIssued, "alice", "r-issue-2"),
            (MemberFlagged, "alice", "r-flag"),
        ]
    );
    // The two revocations of one statement, in either order.
    let revoked: BTreeSet<(i64, pb::EventType, &str)> = events[9..]
        .iter()
        .map(|e| (coupon_of(e), e.r#type(), e.request_id.as_str()))
        .collect();
    assert_eq!(events.len(), 11, "{events:?}");
    assert_eq!(
        revoked,
        BTreeSet::from([
            (coupon.coupon_id, CouponRevoked, "r-flag"),
            (other.coupon_id, CouponRevoked, "r-flag"),
        ])
    );

    assert_eq!(
        events[1].payload,
        Some(Payload::CouponIssued(pb::CouponIssued {
            coupon_id: coupon.coupon_id,
            template_id: "t".into(),
            source: pb::CouponSource::Issuance.into(),
            valid_from: coupon.valid_from,
            expires_at: coupon.expires_at,
        }))
    );
    let moved =
        |from: pb::CouponStatus, to: pb::CouponStatus, order_id: &str, action: &str| pb::CouponChanged {
            coupon_id: coupon.coupon_id,
            template_id: "t".into(),
            from_status: from.into(),
            to_status: to.into(),
            order_id: order_id.into(),
            hold_until: None,
            action: action.into(),
        };
    use pb::CouponStatus::{Inactive, Revoked, Used, Valid};
    let first_hold_until = first_hold.order.unwrap().hold_expire_time;
    assert_eq!(
        first_hold_until,
        Some(ts("2026-06-15T12:30:00Z")),
        "the default hold"
    );
    assert_eq!(
        events[2].payload,
        Some(Payload::CouponReserved(pb::CouponChanged {
            hold_until: first_hold_until,
            ..moved(Valid, Inactive, "o-1", "reserve")
        }))
    );
    assert_eq!(
        events[3].payload,
        Some(Payload::CouponReleased(moved(Inactive, Valid, "o-1", "cancel")))
    );
    assert_eq!(
        events[4].payload,
        Some(Payload::CouponReserved(pb::CouponChanged {
            hold_until: second_hold.order.unwrap().hold_expire_time,
            ..moved(Valid, Inactive, "o-2", "reserve")
        }))
    );
    assert_eq!(
        events[5].payload,
        Some(Payload::CouponUsed(moved(Inactive, Used, "o-2", "complete")))
    );
    assert_eq!(
        events[6].payload,
        Some(Payload::CouponRestored(moved(Used, Valid, "o-2", "refund_full")))
    );
    let revocation = events[9..]
        .iter()
        .find(|e| coupon_of(e) == coupon.coupon_id)
        .unwrap();
    assert_eq!(
        revocation.payload,
        Some(Payload::CouponRevoked(moved(Valid, Revoked, "", "revoke")))
    );
}

#[sqlx::test]
async fn a_coupon_dropped_by_a_newer_cart_or_taken_after_its_hold_lapsed_is_released(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    app.register_by("alice", "r-register").await;
    app.create_template(platform_template("p", 100)).await;
    app.create_template(seller_template("s", "s1", 1000)).await;
    let platform = app.issue_by("alice", "p", "i-1", "r-issue-p").await.coupon_id;
    let seller = app.issue_by("alice", "s", "i-2", "r-issue-s").await.coupon_id;
    let reserve = |order_id: &str, coupon_ids: Vec<i64>, cart_revision, request_id| {
        let mut coupons = app.coupons.clone();
        let request = named(
            pb::ReserveCouponsRequest {
                order: Some(order_of("alice", order_id)),
                coupon_ids,
                cart_revision,
                hold_duration: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            },
            request_id,
        );
        async move { coupons.reserve_coupons(request).await.unwrap() }
    };

    reserve("o-1", vec![platform, seller], 1, "r-cart-1").await;
    // Revision 2 drops the seller coupon and renews the platform one's hold.
    reserve("o-1", vec![platform], 2, "r-cart-2").await;
    // The hold lapses; another order takes the platform coupon.
    app.clock.advance(TimeDelta::minutes(2));
    reserve("o-2", vec![platform], 1, "r-other-order").await;
    let events = app.logged_events(&pool).await;

    let moves: Vec<(pb::EventType, i64, &str, &str, &str)> = events
        .iter()
        .filter_map(|e| match e.payload.as_ref()? {
            Payload::CouponReserved(m) | Payload::CouponReleased(m) => Some((
                e.r#type(),
                m.coupon_id,
                m.order_id.as_str(),
                m.action.as_str(),
                e.request_id.as_str(),
            )),
            _ => None,
        })
        .collect();
    let (first_cart, rest) = moves.split_at(2);
    assert_eq!(
        first_cart.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            (CouponReserved, platform, "o-1", "reserve", "r-cart-1"),
            (CouponReserved, seller, "o-1", "reserve", "r-cart-1"),
        ])
    );
    assert_eq!(
        rest,
        [
            (CouponReleased, seller, "o-1", "release", "r-cart-2"),
            (CouponReleased, platform, "o-1", "lapse", "r-other-order"),
            (CouponReserved, platform, "o-2", "reserve", "r-other-order"),
        ],
        "a renewed hold is no event"
    );
    let Some(Payload::CouponReleased(lapsed)) = &events
        .iter()
        .find(|e| e.r#type() == CouponReleased && coupon_of(e) == platform)
        .unwrap()
        .payload
    else {
        panic!("the platform coupon's release carries its move")
    };
    assert_eq!(
        (lapsed.from_status(), lapsed.to_status()),
        (pb::CouponStatus::Inactive, pb::CouponStatus::Valid)
    );
}

#[sqlx::test]
async fn refused_and_replayed_calls_write_no_event(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (mut members, mut points) = (app.members.clone(), app.points.clone());
    app.create_template(platform_template("t", 500)).await;
    let registration = |registered_at: &str| pb::RegisterMemberRequest {
        account_id: "alice".into(),
        registered_at: Some(ts(registered_at)),
        birthday: None,
    };
    let order =
        |account: &str| order_request(account, "order-1", 2_000, "2026-06-14T10:00:00Z", &[("p1", "c1")]);
    let reversal = || pb::ReverseOrderRequest {
        account_id: "alice".into(),
        order_id: "order-1".into(),
        reason: pb::ReversalReason::Returned.into(),
        reversed_at: Some(ts("2026-06-14T12:00:00Z")),
    };

    // Members: a replay, a conflicting registration, a flag of nobody, an
    // unflag of a member not flagged.
    members
        .register_member(named(registration("2025-06-01T00:00:00Z"), "r-register"))
        .await
        .unwrap();
    let replayed = members
        .register_member(named(registration("2025-06-01T00:00:00Z"), "r-register-again"))
        .await
        .unwrap()
        .into_inner();
    let conflict = members
        .register_member(named(registration("2025-07-01T00:00:00Z"), "r-register-conflict"))
        .await;
    let nobody = members
        .flag_member(named(
            pb::FlagMemberRequest {
                account_id: "nobody".into(),
                reason: "x".into(),
            },
            "r-flag-nobody",
        ))
        .await
        .unwrap_err();
    app.unflag_by("alice", "r-unflag-not-flagged").await;
    // Points: replays of an order, a bonus and a reversal; an order of nobody.
    points
        .record_confirmed_order(named(order("alice"), "r-order"))
        .await
        .unwrap();
    let order_replay = points
        .record_confirmed_order(named(order("alice"), "r-order-again"))
        .await
        .unwrap()
        .into_inner();
    let unknown = points
        .record_confirmed_order(named(order("nobody"), "r-order-nobody"))
        .await
        .unwrap_err();
    app.bonus_by("alice", "spring", 50, "r-bonus").await;
    app.bonus_by("alice", "spring", 50, "r-bonus-again").await;
    points
        .reverse_order(named(reversal(), "r-reverse"))
        .await
        .unwrap();
    let reverse_replay = points
        .reverse_order(named(reversal(), "r-reverse-again"))
        .await
        .unwrap()
        .into_inner();
    // Coupons: an issuance replayed, a reservation replayed and one refused
    // (the coupon is held by another order), a completion replayed, a cancel
    // of a completed order.
    let coupon = app.issue_by("alice", "t", "i-1", "r-issue").await;
    let again = app.issue_by("alice", "t", "i-1", "r-issue-again").await;
    app.reserve_by("o-1", coupon.coupon_id, "r-reserve")
        .await
        .unwrap();
    let reserve_replay = app
        .reserve_by("o-1", coupon.coupon_id, "r-reserve-again")
        .await
        .unwrap();
    let taken = app
        .reserve_by("o-2", coupon.coupon_id, "r-reserve-taken")
        .await
        .unwrap_err();
    app.complete_by("o-1", "r-complete").await.unwrap();
    let complete_again = app.complete_by("o-1", "r-complete-again").await;
    let cancel_completed = app.cancel_by("o-1", "r-cancel-completed").await;
    let events = app.logged_events(&pool).await;

    assert!(replayed.replayed && order_replay.replayed && reverse_replay.replayed && reserve_replay.replayed);
    assert_eq!(again.coupon_id, coupon.coupon_id);
    let conflict = conflict.unwrap_err();
    assert_eq!(
        (conflict.code(), reason(&conflict).as_str()),
        (Code::AlreadyExists, "MEMBER_ALREADY_REGISTERED")
    );
    assert_eq!(nobody.code(), Code::NotFound);
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        (taken.code(), reason(&taken).as_str()),
        (Code::FailedPrecondition, "COUPON_NOT_APPLICABLE")
    );
    assert!(
        complete_again.is_ok(),
        "a completion is idempotent: {complete_again:?}"
    );
    let cancel_completed = cancel_completed.unwrap_err();
    assert_eq!(
        (cancel_completed.code(), reason(&cancel_completed).as_str()),
        (Code::FailedPrecondition, "ORDER_COMPLETED")
    );
    assert_eq!(
        summary(&events),
        [
            (MemberRegistered, "alice", "r-register"),
            (PointsAwarded, "alice", "r-order"),
            (PointsAwarded, "alice", "r-bonus"),
            (PointsReversed, "alice", "r-reverse"),
            (CouponIssued, "alice", "r-issue"),
            (CouponReserved, "alice", "r-reserve"),
            (CouponUsed, "alice", "r-complete"),
        ]
    );
}
