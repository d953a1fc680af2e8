use loyalty::pb;
use sqlx::PgPool;
use tonic::Code;

use crate::helpers::{bad_fields, default_now, reason, spawn_app, ts};

fn registration(account_id: &str, at: &str) -> pb::RegisterMemberRequest {
    pb::RegisterMemberRequest {
        account_id: account_id.to_owned(),
        registered_at: Some(ts(at)),
        birthday: Some(pb::Date {
            year: 1990,
            month: 7,
            day: 14,
        }),
    }
}

#[sqlx::test]
async fn registering_twice_with_the_same_instant_replays_the_first_registration(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut members = app.members.clone();

    let first = members
        .register_member(registration("alice", "2026-01-02T03:04:05Z"))
        .await
        .unwrap()
        .into_inner();
    let again = members
        .register_member(registration("alice", "2026-01-02T03:04:05Z"))
        .await
        .unwrap()
        .into_inner();

    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(first.member, again.member);
    let member = first.member.unwrap();
    assert_eq!(
        member.birthday,
        Some(pb::Date {
            year: 1990,
            month: 7,
            day: 14
        })
    );
    // A birthday given at registration counts as set when the account registered.
    assert_eq!(member.birthday_updated_at, Some(ts("2026-01-02T03:04:05Z")));
}

#[sqlx::test]
async fn registering_again_with_another_instant_is_already_exists(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut members = app.members.clone();
    members
        .register_member(registration("alice", "2026-01-02T03:04:05Z"))
        .await
        .unwrap();

    let error = members
        .register_member(registration("alice", "2026-01-03T00:00:00Z"))
        .await
        .unwrap_err();

    assert_eq!(error.code(), Code::AlreadyExists);
    assert_eq!(reason(&error), "MEMBER_ALREADY_REGISTERED");
    let stored = members
        .get_member(pb::GetMemberRequest {
            account_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(stored.registered_at, Some(ts("2026-01-02T03:04:05Z")));
}

#[sqlx::test]
async fn a_malformed_registration_names_the_bad_field_and_stores_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut members = app.members.clone();
    let future = (default_now() + chrono::TimeDelta::minutes(6)).to_rfc3339();
    let cases = [
        (registration("", "2026-01-01T00:00:00Z"), "account_id"),
        (
            registration(&"a".repeat(65), "2026-01-01T00:00:00Z"),
            "account_id",
        ),
        (registration("bad id", "2026-01-01T00:00:00Z"), "account_id"),
        (registration("bob", &future), "registered_at"),
        (
            pb::RegisterMemberRequest {
                registered_at: None,
                ..registration("bob", "2026-01-01T00:00:00Z")
            },
            "registered_at",
        ),
        (
            pb::RegisterMemberRequest {
                registered_at: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..registration("bob", "2026-01-01T00:00:00Z")
            },
            "registered_at",
        ),
        (
            pb::RegisterMemberRequest {
                birthday: Some(pb::Date {
                    year: 2023,
                    month: 2,
                    day: 29,
                }),
                ..registration("bob", "2026-01-01T00:00:00Z")
            },
            "birthday",
        ),
        (
            pb::RegisterMemberRequest {
                birthday: Some(pb::Date {
                    year: 0,
                    month: 13,
                    day: 1,
                }),
                ..registration("bob", "2026-01-01T00:00:00Z")
            },
            "birthday",
        ),
    ];
    for (request, field) in cases {
        let error = members.register_member(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}: {error:?}");
        assert_eq!(reason(&error), "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&error), vec![field.to_owned()]);
    }
    let error = members
        .get_member(pb::GetMemberRequest {
            account_id: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "nothing was stored");
}

#[sqlx::test]
async fn a_birthday_can_be_changed_and_cleared_and_the_change_time_is_kept(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("carol").await;
    let mut members = app.members.clone();

    let changed = members
        .update_birthday(pb::UpdateBirthdayRequest {
            account_id: "carol".into(),
            birthday: Some(pb::Date {
                year: 0,
                month: 2,
                day: 29,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(
        changed.birthday,
        Some(pb::Date {
            year: 0,
            month: 2,
            day: 29
        })
    );
    assert_eq!(changed.birthday_updated_at, Some(ts(&default_now().to_rfc3339())));

    app.clock.advance(chrono::TimeDelta::days(1));
    let same_again = members
        .update_birthday(pb::UpdateBirthdayRequest {
            account_id: "carol".into(),
            birthday: Some(pb::Date {
                year: 0,
                month: 2,
                day: 29,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(
        same_again.birthday_updated_at, changed.birthday_updated_at,
        "setting the same birthday again is not a change"
    );

    app.clock.advance(chrono::TimeDelta::days(2));
    let cleared = members
        .update_birthday(pb::UpdateBirthdayRequest {
            account_id: "carol".into(),
            birthday: None,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(cleared.birthday, None);
    assert_eq!(
        cleared.birthday_updated_at,
        Some(ts(&(default_now() + chrono::TimeDelta::days(3)).to_rfc3339()))
    );
}

#[sqlx::test]
async fn a_flagged_member_earns_nothing_until_unflagged(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("mallory").await;
    let mut members = app.members.clone();

    let flagged = members
        .flag_member(pb::FlagMemberRequest {
            account_id: "mallory".into(),
            reason: "chargebacks".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert!(flagged.fraud_flagged);
    assert_eq!(flagged.fraud_reason, "chargebacks");
    // Flagging again keeps the first flag and reason.
    let again = members
        .flag_member(pb::FlagMemberRequest {
            account_id: "mallory".into(),
            reason: "other".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(again.fraud_reason, "chargebacks");

    let while_flagged = app
        .confirm_order(
            "mallory",
            "o-1",
            5_000,
            "2026-06-14T10:00:00Z",
            &[("p1", "c1"), ("p2", "c2")],
        )
        .await
        .unwrap();
    assert_eq!(while_flagged.points_awarded, 0);
    assert_eq!(while_flagged.entries.len(), 1, "no variety entry while flagged");
    assert_eq!(
        while_flagged.entries[0].cap_reason(),
        pb::CapReason::MemberFlagged
    );
    let visit = app.visit("mallory", "2026-06-14T10:00:00Z").await.unwrap();
    assert_eq!(visit.entry.unwrap().cap_reason(), pb::CapReason::MemberFlagged);

    let unflagged = members
        .unflag_member(pb::UnflagMemberRequest {
            account_id: "mallory".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert!(!unflagged.fraud_flagged);
    assert_eq!(unflagged.fraud_flagged_at, None);

    let after = app
        .confirm_order(
            "mallory",
            "o-2",
            5_000,
            "2026-06-15T10:00:00Z",
            &[("p1", "c1"), ("p2", "c2")],
        )
        .await
        .unwrap();
    assert_eq!(after.points_awarded, 5 + 1);
    // Unflagging is for future activity: the flagged order stays at 0.
    assert_eq!(app.balance("mallory").await.lifetime_points, 6);
}

#[sqlx::test]
async fn an_empty_fraud_reason_is_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.register("dave").await;
    let error = app
        .members
        .clone()
        .flag_member(pb::FlagMemberRequest {
            account_id: "dave".into(),
            reason: "  ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&error), vec!["reason".to_owned()]);
}

#[sqlx::test]
async fn every_per_account_call_on_an_unknown_account_is_not_found(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (mut members, mut points) = (app.members.clone(), app.points.clone());
    let who = || "ghost".to_owned();
    let at = || Some(ts("2026-06-15T11:00:00Z"));
    let results: Vec<(&str, tonic::Status)> = vec![
        (
            "GetMember",
            members
                .get_member(pb::GetMemberRequest { account_id: who() })
                .await
                .unwrap_err(),
        ),
        (
            "UpdateBirthday",
            members
                .update_birthday(pb::UpdateBirthdayRequest {
                    account_id: who(),
                    birthday: None,
                })
                .await
                .unwrap_err(),
        ),
        (
            "FlagMember",
            members
                .flag_member(pb::FlagMemberRequest {
                    account_id: who(),
                    reason: "x".into(),
                })
                .await
                .unwrap_err(),
        ),
        (
            "UnflagMember",
            members
                .unflag_member(pb::UnflagMemberRequest { account_id: who() })
                .await
                .unwrap_err(),
        ),
        (
            "RecordConfirmedOrder",
            app.confirm_order("ghost", "o-1", 500, "2026-06-15T11:00:00Z", &[("p", "c")])
                .await
                .unwrap_err(),
        ),
        (
            "ReverseOrder",
            points
                .reverse_order(pb::ReverseOrderRequest {
                    account_id: who(),
                    order_id: "o-1".into(),
                    reason: pb::ReversalReason::Returned.into(),
                    reversed_at: at(),
                })
                .await
                .unwrap_err(),
        ),
        (
            "RecordReview",
            points
                .record_review(pb::RecordReviewRequest {
                    account_id: who(),
                    review_id: "r".into(),
                    order_id: "o".into(),
                    product_id: "p".into(),
                    published_at: at(),
                })
                .await
                .unwrap_err(),
        ),
        (
            "RecordVisit",
            app.visit("ghost", "2026-06-15T11:00:00Z").await.unwrap_err(),
        ),
        (
            "RecordPost",
            app.post("ghost", "post-1", "2026-06-15T11:00:00Z")
                .await
                .unwrap_err(),
        ),
        (
            "GrantBonus",
            points
                .grant_bonus(pb::GrantBonusRequest {
                    account_id: who(),
                    campaign_id: "c".into(),
                    points: 5,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "GetBalance",
            points
                .get_balance(pb::GetBalanceRequest { account_id: who() })
                .await
                .unwrap_err(),
        ),
        (
            "ListPointEntries",
            points
                .list_point_entries(pb::ListPointEntriesRequest {
                    account_id: who(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (call, error) in results {
        assert_eq!(error.code(), Code::NotFound, "{call}: {error:?}");
        assert_eq!(reason(&error), "MEMBER_NOT_FOUND", "{call}");
    }
}
