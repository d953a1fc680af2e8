//! Events for other services (SPEC §6), read through `Events.Watch` over the
//! socket: what each change writes ([`changes`]), how the log is delivered
//! ([`delivery`]), the expiry notices ([`notices`]), and the stream's limits
//! ([`stream`]).

mod changes;
mod delivery;
mod notices;
mod stream;

use chrono::{DateTime, Utc};
use loyalty::pb;
use loyalty::pb::event::Payload;

use crate::helpers::{TestApp, checkout, checkout_line, named, ts};

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

/// What each event says happened, to whom, and by which call.
fn summary(events: &[pb::Event]) -> Vec<(pb::EventType, &str, &str)> {
    events
        .iter()
        .map(|e| (e.r#type(), e.account_id.as_str(), e.request_id.as_str()))
        .collect()
}

/// The events grouped by member, each member's in the order delivered. SPEC §6
/// promises order per account: events of different members in one slice go by
/// id, and on Citus each node gives ids from its own range.
fn by_account(mut events: Vec<pb::Event>) -> Vec<pb::Event> {
    events.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    events
}

/// The payload of the one event of `kind` in `events`.
fn payload_of(events: &[pb::Event], kind: pb::EventType) -> &Payload {
    let matching: Vec<&pb::Event> = events.iter().filter(|e| e.r#type() == kind).collect();
    assert_eq!(matching.len(), 1, "one {kind:?} event in {events:?}");
    matching[0].payload.as_ref().expect("a payload")
}

/// The coupon a coupon event is about.
fn coupon_of(event: &pb::Event) -> i64 {
    match event.payload.as_ref().expect("a payload") {
        Payload::CouponIssued(issued) => issued.coupon_id,
        Payload::CouponReserved(moved)
        | Payload::CouponReleased(moved)
        | Payload::CouponUsed(moved)
        | Payload::CouponRestored(moved)
        | Payload::CouponRevoked(moved) => moved.coupon_id,
        Payload::CouponExpiringSoon(expiry) | Payload::CouponExpired(expiry) => expiry.coupon_id,
        other => panic!("not a coupon event: {other:?}"),
    }
}

/// A watch resuming after `cursor`.
fn after(cursor: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        after: cursor.to_owned(),
        ..Default::default()
    }
}

/// Whether an event made by the call `request_id` has come.
fn has_request(request_id: &'static str) -> impl FnMut(&[pb::Event]) -> bool {
    move |events| events.iter().any(|e| e.request_id == request_id)
}

impl TestApp {
    /// Registers `account_id` (registered a year before the test clock) by the call `request_id`.
    async fn register_by(&self, account_id: &str, request_id: &str) {
        self.members
            .clone()
            .register_member(named(
                pb::RegisterMemberRequest {
                    account_id: account_id.to_owned(),
                    registered_at: Some(ts("2025-06-01T00:00:00Z")),
                    birthday: None,
                },
                request_id,
            ))
            .await
            .expect("registration succeeds");
    }

    /// Grants `points` of campaign `campaign_id` by the call `request_id`.
    async fn bonus_by(
        &self,
        account_id: &str,
        campaign_id: &str,
        points: i32,
        request_id: &str,
    ) -> pb::PointEntry {
        self.points
            .clone()
            .grant_bonus(named(
                pb::GrantBonusRequest {
                    account_id: account_id.to_owned(),
                    campaign_id: campaign_id.to_owned(),
                    points,
                    description: String::new(),
                    granted_at: Some(ts("2026-06-14T09:00:00Z")),
                },
                request_id,
            ))
            .await
            .expect("bonus granted")
            .into_inner()
            .entry
            .unwrap()
    }

    async fn flag_by(&self, account_id: &str, reason: &str, request_id: &str) {
        self.members
            .clone()
            .flag_member(named(
                pb::FlagMemberRequest {
                    account_id: account_id.to_owned(),
                    reason: reason.to_owned(),
                },
                request_id,
            ))
            .await
            .expect("flagged");
    }

    async fn unflag_by(&self, account_id: &str, request_id: &str) {
        self.members
            .clone()
            .unflag_member(named(
                pb::UnflagMemberRequest {
                    account_id: account_id.to_owned(),
                },
                request_id,
            ))
            .await
            .expect("unflagged");
    }

    async fn issue_by(
        &self,
        account_id: &str,
        template_id: &str,
        issuance_id: &str,
        request_id: &str,
    ) -> pb::Coupon {
        self.coupons
            .clone()
            .issue_coupon(named(
                pb::IssueCouponRequest {
                    account_id: account_id.to_owned(),
                    template_id: template_id.to_owned(),
                    issuance_id: issuance_id.to_owned(),
                },
                request_id,
            ))
            .await
            .expect("issued")
            .into_inner()
            .coupon
            .unwrap()
    }

    async fn reserve_by(
        &self,
        order_id: &str,
        coupon_id: i64,
        request_id: &str,
    ) -> Result<pb::ReserveCouponsResponse, tonic::Status> {
        self.coupons
            .clone()
            .reserve_coupons(named(
                pb::ReserveCouponsRequest {
                    order: Some(order_of("alice", order_id)),
                    coupon_ids: vec![coupon_id],
                    ..Default::default()
                },
                request_id,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn complete_by(
        &self,
        order_id: &str,
        request_id: &str,
    ) -> Result<pb::OrderCheckout, tonic::Status> {
        self.coupons
            .clone()
            .complete_order(named(
                pb::CompleteOrderRequest {
                    account_id: "alice".into(),
                    order_id: order_id.into(),
                },
                request_id,
            ))
            .await
            .map(|r| r.into_inner().order.unwrap())
    }

    async fn cancel_by(&self, order_id: &str, request_id: &str) -> Result<pb::OrderCheckout, tonic::Status> {
        self.coupons
            .clone()
            .cancel_order(named(
                pb::CancelOrderRequest {
                    account_id: "alice".into(),
                    order_id: order_id.into(),
                },
                request_id,
            ))
            .await
            .map(|r| r.into_inner().order.unwrap())
    }

    async fn run_notices(&self, request_id: &str) -> (i64, i64) {
        let sent = self
            .coupons
            .clone()
            .run_expiry_notices(named(pb::RunExpiryNoticesRequest {}, request_id))
            .await
            .expect("notices sent")
            .into_inner();
        (sent.expiring_soon, sent.expired)
    }
}

/// Alice's order of one line of 20.00 from seller s1.
fn order_of(account: &str, order_id: &str) -> pb::CheckoutOrder {
    checkout(account, order_id, vec![checkout_line("l1", "s1", 2000, 1, false)])
}
