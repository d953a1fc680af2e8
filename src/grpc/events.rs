//! The `loyalty.v1.Events` service: the `Watch` stream, and the mapping of a
//! stored event to its `loyalty.v1.Event` (also the body the relay publishes).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::Stream;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::call::budget::Budget;
use crate::domain::coupons::CouponSource;
use crate::domain::events::{Cursor, EventType, Filter, MAX_FILTER_ACCOUNTS, StoredEvent};
use crate::domain::ids::AccountId;
use crate::domain::levels::Level;
use crate::domain::points::{CapReason, PointsSource};
use crate::domain::pricing::CouponStatus;
use crate::error::{Error, FieldContext};
use crate::events::{self, EventLog, Start};
use crate::grpc::convert::{date, timestamp};
use crate::grpc::coupons::{level_pb, status_pb};
use crate::grpc::points::{cap_reason_pb, source_pb};
use crate::pb;

/// The most events one read of the log returns to a watch.
const WATCH_BATCH: i64 = 256;

/// How often a watch with nothing to send says where it is.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a watch waits for its client to take a message before it gives
/// the client up as stalled.
const STALLED: Duration = Duration::from_secs(30);

/// Messages a watch keeps ready ahead of its client.
const BUFFER: usize = 64;

/// Reads of the log the watches of one replica run at once (each takes a
/// connection of the pool for a few statements).
const CONCURRENT_READS: usize = 4;

/// Serves `loyalty.v1.Events`.
#[derive(Debug, Clone)]
pub struct EventsService {
    pool: PgPool,
    log: EventLog,
    /// Turns of the watches' reads of the log.
    reads: Arc<Semaphore>,
}

impl EventsService {
    pub fn new(pool: PgPool, log: EventLog) -> Self {
        Self {
            pool,
            log,
            reads: Arc::new(Semaphore::new(CONCURRENT_READS)),
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let request = request.into_inner();
        let (start, filter) = watch_request(&request)?;
        let from = events::resolve(&self.pool, start).await?;
        // The stream ends a little before its deadline, cleanly: the client
        // resumes from its last cursor.
        let deadline = Budget::current()
            .map(|budget| budget.deadline())
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        let (sender, receiver) = mpsc::channel(BUFFER);
        let watch = Watch {
            pool: self.pool.clone(),
            reads: self.reads.clone(),
            slices: self.log.subscribe(),
            filter,
            cursor: from,
            sender,
        };
        tokio::spawn(watch.run(deadline));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// Where a watch starts and what it wants, from its request.
fn watch_request(request: &pb::WatchRequest) -> Result<(Start, Filter), Error> {
    let start = if request.after.is_empty() {
        match pb::WatchStart::try_from(request.start) {
            Ok(pb::WatchStart::Unspecified | pb::WatchStart::Latest) => Start::Latest,
            Ok(pb::WatchStart::Oldest) => Start::Oldest,
            Err(_) => return Err(Error::invalid("start", "is not a WatchStart")),
        }
    } else {
        Start::After(Cursor::parse("after", &request.after)?)
    };
    if request.types.len() > EventType::ALL.len() {
        return Err(Error::invalid("types", "names at most 15 types"));
    }
    let mut types = Vec::with_capacity(request.types.len());
    for (i, &value) in request.types.iter().enumerate() {
        let field = || format!("types[{i}]");
        let kind =
            pb::EventType::try_from(value).map_err(|_| Error::invalid(field(), "is not an EventType"))?;
        let kind =
            event_type_domain(kind).ok_or_else(|| Error::invalid(field(), "must not be unspecified"))?;
        types.push(kind);
    }
    if request.account_ids.len() > MAX_FILTER_ACCOUNTS {
        return Err(Error::invalid("account_ids", "names at most 100 accounts"));
    }
    let accounts = request
        .account_ids
        .iter()
        .enumerate()
        .map(|(i, id)| AccountId::parse(id).field_with(|| format!("account_ids[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((start, Filter { types, accounts }))
}

/// One running watch: reads the log after its cursor, sends what passes its
/// filter, and waits for the next slice when it has caught up.
struct Watch {
    pool: PgPool,
    reads: Arc<Semaphore>,
    slices: watch::Receiver<i64>,
    filter: Filter,
    cursor: Cursor,
    sender: mpsc::Sender<Result<pb::WatchResponse, Status>>,
}

impl Watch {
    async fn run(mut self, deadline: Instant) {
        let ends = tokio::time::sleep_until(deadline);
        tokio::pin!(ends);
        // First, where the watch starts (a client starting "now" learns its cursor).
        let start = pb::WatchResponse {
            event: None,
            cursor: self.cursor.to_string(),
        };
        if !self.send(start, &mut ends).await {
            return;
        }
        let mut last_sent = Instant::now();
        loop {
            // Marked seen before the read: a slice cut during it wakes the next wait.
            self.slices.borrow_and_update();
            // A read is never cancelled halfway (its transaction would go back
            // to the pool open); it is short, bounded by the statement timeout.
            // Watches take turns for a few of the pool's connections, so that
            // they never crowd out the calls.
            let read = {
                let Ok(_turn) = self.reads.acquire().await else {
                    return;
                };
                events::read(&self.pool, self.cursor, &self.filter, WATCH_BATCH).await
            };
            if self.sender.is_closed() || ends.is_elapsed() {
                return;
            }
            let events::Read {
                events: batch,
                next,
                caught_up,
            } = match read {
                Ok(read) => read,
                Err(error) => {
                    // The client learns why (an expired cursor after pruning,
                    // the database gone) and resumes from its last cursor.
                    let _ = self.sender.send(Err(error.into())).await;
                    return;
                }
            };
            for event in batch {
                let message = pb::WatchResponse {
                    cursor: event.cursor.to_string(),
                    event: Some(event_pb(event)),
                };
                if !self.send(message, &mut ends).await {
                    return;
                }
                last_sent = Instant::now();
            }
            self.cursor = next;
            if !caught_up {
                continue;
            }
            // Caught up: say where the watch is now and then, then wait for a slice.
            if last_sent.elapsed() >= HEARTBEAT {
                let heartbeat = pb::WatchResponse {
                    event: None,
                    cursor: self.cursor.to_string(),
                };
                if !self.send(heartbeat, &mut ends).await {
                    return;
                }
                last_sent = Instant::now();
            }
            let wait = HEARTBEAT.saturating_sub(last_sent.elapsed());
            tokio::select! {
                changed = self.slices.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
                () = &mut ends => return,
                () = self.sender.closed() => return,
            }
        }
    }

    /// Sends one message; `false` when the watch must end (the client left,
    /// stalled, or the deadline came).
    async fn send(&self, message: pb::WatchResponse, ends: &mut Pin<&mut tokio::time::Sleep>) -> bool {
        tokio::select! {
            sent = tokio::time::timeout(STALLED, self.sender.send(Ok(message))) => {
                matches!(sent, Ok(Ok(())))
            }
            () = ends.as_mut() => false,
        }
    }
}

fn event_type_domain(kind: pb::EventType) -> Option<EventType> {
    EventType::ALL.into_iter().find(|t| event_type_pb(*t) == kind)
}

/// The wire type of an event type.
pub fn event_type_pb(kind: EventType) -> pb::EventType {
    match kind {
        EventType::MemberRegistered => pb::EventType::MemberRegistered,
        EventType::MemberFlagged => pb::EventType::MemberFlagged,
        EventType::MemberUnflagged => pb::EventType::MemberUnflagged,
        EventType::PointsAwarded => pb::EventType::PointsAwarded,
        EventType::PointsReversed => pb::EventType::PointsReversed,
        EventType::LevelChanged => pb::EventType::LevelChanged,
        EventType::RewardIssued => pb::EventType::RewardIssued,
        EventType::CouponIssued => pb::EventType::CouponIssued,
        EventType::CouponReserved => pb::EventType::CouponReserved,
        EventType::CouponReleased => pb::EventType::CouponReleased,
        EventType::CouponUsed => pb::EventType::CouponUsed,
        EventType::CouponRestored => pb::EventType::CouponRestored,
        EventType::CouponRevoked => pb::EventType::CouponRevoked,
        EventType::CouponExpiringSoon => pb::EventType::CouponExpiringSoon,
        EventType::CouponExpired => pb::EventType::CouponExpired,
    }
}

/// The wire form of a stored event. A payload that does not read (which only
/// a bug could store) leaves `payload` unset and is logged: the event still
/// goes out, with its type, account and instant.
pub fn event_pb(event: StoredEvent) -> pb::Event {
    let payload = match payload_pb(event.event_type, &event.account_id, event.payload) {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::error!(event_id = event.event_id, error = %error, "stored event payload does not read");
            None
        }
    };
    pb::Event {
        event_id: event.event_id.to_string(),
        r#type: event_type_pb(event.event_type).into(),
        account_id: event.account_id,
        occurred_at: Some(timestamp(event.occurred_at)),
        request_id: event.request_id,
        caller: event.caller,
        payload,
    }
}

#[derive(Deserialize)]
struct Registered {
    registered_at: DateTime<Utc>,
    has_birthday: bool,
}

#[derive(Deserialize)]
struct Flagged {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Entries {
    points: i64,
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    entry_id: i64,
    source: String,
    reference: String,
    points: i32,
    cap_reason: Option<String>,
    occurred_at: DateTime<Utc>,
    local_date: NaiveDate,
    recorded_at: DateTime<Utc>,
    reverses_entry_id: Option<i64>,
}

#[derive(Deserialize)]
struct LevelChange {
    previous_level: String,
    level: String,
    effective_from: DateTime<Utc>,
    window_points: i64,
    evaluation_month: NaiveDate,
}

#[derive(Deserialize)]
struct Reward {
    reward_key: String,
    template_id: String,
    coupon_id: i64,
}

#[derive(Deserialize)]
struct Issued {
    coupon_id: i64,
    template_id: String,
    source: CouponSource,
    valid_from: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Moved {
    coupon_id: i64,
    template_id: String,
    from_status: CouponStatus,
    to_status: CouponStatus,
    order_id: Option<String>,
    hold_until: Option<DateTime<Utc>>,
    action: String,
}

#[derive(Deserialize)]
struct Expiry {
    coupon_id: i64,
    template_id: String,
    expires_at: DateTime<Utc>,
}

fn level(name: &str) -> Result<pb::Level, String> {
    Level::from_db(name)
        .map(level_pb)
        .ok_or_else(|| format!("unknown level {name:?}"))
}

fn payload_pb(
    kind: EventType,
    account_id: &str,
    payload: serde_json::Value,
) -> Result<pb::event::Payload, String> {
    use pb::event::Payload;
    fn read<T: serde::de::DeserializeOwned>(payload: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(payload).map_err(|e| e.to_string())
    }
    let points = |payload: serde_json::Value| -> Result<pb::PointsChanged, String> {
        let changed: Entries = read(payload)?;
        let entries = changed
            .entries
            .into_iter()
            .map(|entry| {
                let source = PointsSource::from_db(&entry.source)
                    .ok_or_else(|| format!("unknown points source {:?}", entry.source))?;
                let cap_reason = entry
                    .cap_reason
                    .as_deref()
                    .map(|reason| {
                        CapReason::from_db(reason).ok_or_else(|| format!("unknown cap reason {reason:?}"))
                    })
                    .transpose()?;
                Ok(pb::PointEntry {
                    entry_id: entry.entry_id,
                    account_id: account_id.to_owned(),
                    source: source_pb(source).into(),
                    reference: entry.reference,
                    points: entry.points,
                    cap_reason: cap_reason_pb(cap_reason).into(),
                    occurred_at: Some(timestamp(entry.occurred_at)),
                    local_date: Some(date(entry.local_date)),
                    recorded_at: Some(timestamp(entry.recorded_at)),
                    reverses_entry_id: entry.reverses_entry_id.unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(pb::PointsChanged {
            points: changed.points,
            entries,
        })
    };
    let moved = |payload: serde_json::Value| -> Result<pb::CouponChanged, String> {
        let moved: Moved = read(payload)?;
        Ok(pb::CouponChanged {
            coupon_id: moved.coupon_id,
            template_id: moved.template_id,
            from_status: status_pb(moved.from_status).into(),
            to_status: status_pb(moved.to_status).into(),
            order_id: moved.order_id.unwrap_or_default(),
            hold_until: moved.hold_until.map(timestamp),
            action: moved.action,
        })
    };
    let expiry = |payload: serde_json::Value| -> Result<pb::CouponExpiry, String> {
        let expiry: Expiry = read(payload)?;
        Ok(pb::CouponExpiry {
            coupon_id: expiry.coupon_id,
            template_id: expiry.template_id,
            expires_at: Some(timestamp(expiry.expires_at)),
        })
    };
    Ok(match kind {
        EventType::MemberRegistered => {
            let registered: Registered = read(payload)?;
            Payload::MemberRegistered(pb::MemberRegistered {
                registered_at: Some(timestamp(registered.registered_at)),
                has_birthday: registered.has_birthday,
            })
        }
        EventType::MemberFlagged => {
            let flagged: Flagged = read(payload)?;
            Payload::MemberFlagged(pb::MemberFlagged {
                reason: flagged.reason.unwrap_or_default(),
            })
        }
        EventType::MemberUnflagged => Payload::MemberUnflagged(pb::MemberUnflagged {}),
        EventType::PointsAwarded => Payload::PointsAwarded(points(payload)?),
        EventType::PointsReversed => Payload::PointsReversed(points(payload)?),
        EventType::LevelChanged => {
            let change: LevelChange = read(payload)?;
            Payload::LevelChanged(pb::LevelChanged {
                previous_level: level(&change.previous_level)?.into(),
                level: level(&change.level)?.into(),
                effective_from: Some(timestamp(change.effective_from)),
                window_points: change.window_points,
                evaluation_month: Some(date(change.evaluation_month)),
            })
        }
        EventType::RewardIssued => {
            let reward: Reward = read(payload)?;
            Payload::RewardIssued(pb::RewardIssued {
                reward_key: reward.reward_key,
                template_id: reward.template_id,
                coupon_id: reward.coupon_id,
            })
        }
        EventType::CouponIssued => {
            let issued: Issued = read(payload)?;
            Payload::CouponIssued(pb::CouponIssued {
                coupon_id: issued.coupon_id,
                template_id: issued.template_id,
                source: match issued.source {
                    CouponSource::PublicCode => pb::CouponSource::PublicCode,
                    CouponSource::SingleUseCode => pb::CouponSource::SingleUseCode,
                    CouponSource::Issuance => pb::CouponSource::Issuance,
                }
                .into(),
                valid_from: Some(timestamp(issued.valid_from)),
                expires_at: Some(timestamp(issued.expires_at)),
            })
        }
        EventType::CouponReserved => Payload::CouponReserved(moved(payload)?),
        EventType::CouponReleased => Payload::CouponReleased(moved(payload)?),
        EventType::CouponUsed => Payload::CouponUsed(moved(payload)?),
        EventType::CouponRestored => Payload::CouponRestored(moved(payload)?),
        EventType::CouponRevoked => Payload::CouponRevoked(moved(payload)?),
        EventType::CouponExpiringSoon => Payload::CouponExpiringSoon(expiry(payload)?),
        EventType::CouponExpired => Payload::CouponExpired(expiry(payload)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_its_wire_type_and_back() {
        for kind in EventType::ALL {
            assert_eq!(event_type_domain(event_type_pb(kind)), Some(kind));
            let name = event_type_pb(kind).as_str_name().to_lowercase();
            assert_eq!(name, format!("event_type_{}", kind.as_str()));
        }
        assert_eq!(event_type_domain(pb::EventType::Unspecified), None);
    }

    #[test]
    fn a_coupon_payload_reads_as_its_message() {
        let payload = serde_json::json!({
            "coupon_id": 7, "template_id": "t1", "from_status": "valid", "to_status": "inactive",
            "order_id": "o1", "hold_until": "2026-12-04T10:00:00+00:00", "action": "reserve"
        });
        let Ok(pb::event::Payload::CouponReserved(moved)) =
            payload_pb(EventType::CouponReserved, "a", payload)
        else {
            panic!("not a reservation");
        };
        assert_eq!(moved.coupon_id, 7);
        assert_eq!(moved.to_status, pb::CouponStatus::Inactive as i32);
        assert_eq!(moved.order_id, "o1");
    }
}
