//! The expiry notice job (SPEC §6): `coupon_expiring_soon` a notice period
//! before a usable coupon expires, and `coupon_expired` once its expiry has
//! passed, each once per coupon. The read model does not depend on it (a
//! coupon past its expiry reads EXPIRED whether or not the job ran); the job
//! only tells other services. Set-based, in bounded batches of their own
//! transactions: a crash keeps the batches done, and a rerun sends the rest.
//! Runs take turns batch by batch on the `expiry_notices` row of `job_lock`.
//!
//! A run goes through the due coupons by expiry, then by the hash of their
//! member's account id ([`NoticePlace`]), one window of that order per batch,
//! from the earliest due. Each window is sized from the last to hold about a
//! batch; after a window that fills a batch (the limit cuts a window denser
//! than expected), the next starts at the batch's last place (every due
//! coupon before it was picked) and spans the stretch the batch took; after
//! a window that split one instant by hash and went past it, the next is all
//! the rest, as at the run's start. On Citus a batch therefore reads the
//! window's coupons on each shard, about what it marks, instead of a batch's
//! worth on every shard ([`db::coupons::send_expiry_notices`]); the hash
//! splits the coupons of one expiry instant into windows too, each a stretch
//! of one or two shards.

use std::time::Duration;

use super::*;
use crate::db::coupons::{Notice, NoticePlace};

/// How a run sends expiry notices (config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryNotices {
    /// How long before its expiry a coupon is expiring soon.
    pub period: Duration,
    /// The most coupons one batch (one statement, one transaction) tells.
    pub batch: i64,
}

/// What an expiry notice run sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticesSent {
    pub expiring_soon: i64,
    pub expired: i64,
}

impl Coupons {
    /// Sends the expiry notices due now.
    #[tracing::instrument(skip_all)]
    pub async fn send_expiry_notices(&self, notices: ExpiryNotices) -> Result<NoticesSent, Error> {
        let now = self.clock.now();
        let period =
            chrono::Duration::from_std(notices.period).map_err(|e| anyhow::anyhow!("notice period: {e}"))?;
        let horizon = now.checked_add_signed(period).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let limit = notices.batch.max(1);
        let mut sent = NoticesSent::default();
        let mut batches = 0u64;
        for notice in [Notice::Expired, Notice::ExpiringSoon] {
            // The windows cover the due expiries: up to `now` for the expired,
            // up to `horizon` for the expiring soon (one microsecond, the
            // database's precision, past it: windows end before their end).
            let last = match notice {
                Notice::Expired => now,
                Notice::ExpiringSoon => horizon,
            };
            let first = {
                let mut conn = db::acquire(&self.pool).await?;
                db::coupons::first_due(&mut conn, notice, now, horizon).await?
            };
            let Some(first) = first else { continue };
            let end = rank(NoticePlace::at(
                last.checked_add_signed(chrono::Duration::microseconds(1))
                    .unwrap_or(last),
            ));
            let mut from = rank(NoticePlace::at(first));
            // The first window is all of it: a run with less than a batch due
            // sends one batch.
            let mut span = end - from;
            loop {
                let to = if end - from <= span { end } else { from + span };
                let window = (place(from)?, place(to)?);
                let mut tx = db::begin(&self.pool).await?;
                db::levels::lock_job(&mut tx, "expiry_notices").await?;
                let batch =
                    db::coupons::send_expiry_notices(&mut tx, notice, now, horizon, window, limit).await?;
                db::commit(tx).await?;
                batches += 1;
                match notice {
                    Notice::Expired => sent.expired += batch.sent,
                    Notice::ExpiringSoon => sent.expiring_soon += batch.sent,
                }
                if batch.picked >= limit {
                    // A full window may hold more. Every due coupon before the
                    // batch's last place was picked (and is no longer due,
                    // told or changed meanwhile): the next window starts there,
                    // as long as the stretch that held this batch. A member's
                    // coupons of one instant share a place and keep the span;
                    // they go a batch at a time.
                    let last = batch.last.map(rank).unwrap_or(from);
                    if last > from {
                        span = last - from;
                        from = last;
                    }
                    continue;
                }
                if to >= end {
                    break;
                }
                // A window that split one instant by hash and went past it
                // (the instant told): what follows is as unknown as at the
                // run's start, and a span of hashes would take many windows
                // to grow to one of time. The next window is all the rest.
                let past_instant = span < HASHES && place(to)?.expiry > place(from)?.expiry;
                from = to;
                span = if past_instant {
                    end - from
                } else {
                    next_span(span, batch.picked, limit)
                };
            }
        }
        tracing::info!(
            expiring_soon = sent.expiring_soon,
            expired = sent.expired,
            batches,
            "expiry notices sent"
        );
        Ok(sent)
    }
}

/// The number of hashes (`i32`) in one microsecond of expiry.
const HASHES: i128 = 1 << 32;

/// A place as a number, in the same order: its expiry's microseconds since
/// 1970 times the number of hashes, plus its hash's rank among them. A
/// window's span is a difference of these: within one microsecond it counts
/// hashes, so that the coupons of one instant are split by their hash.
fn rank(place: NoticePlace) -> i128 {
    i128::from(place.expiry.timestamp_micros()) * HASHES + i128::from(place.hash) - i128::from(i32::MIN)
}

/// The place of a rank (the inverse of [`rank`]).
fn place(rank: i128) -> Result<NoticePlace, Error> {
    let micros = i64::try_from(rank.div_euclid(HASHES)).ok();
    let expiry = micros.and_then(DateTime::from_timestamp_micros);
    let hash = i32::try_from(rank.rem_euclid(HASHES) + i128::from(i32::MIN)).ok();
    match (expiry, hash) {
        (Some(expiry), Some(hash)) => Ok(NoticePlace { expiry, hash }),
        _ => Err(anyhow::anyhow!("expiry notice window out of range: {rank}").into()),
    }
}

/// The span of the next window: the last one's, scaled so that the coupons
/// of its density fill a batch, by no more than 8 times (sparse stretches
/// grow it quickly). A window that held less than a batch never shrinks the
/// next; one that held more was cut by the limit, and the next is sized from
/// what the batch took.
fn next_span(span: i128, picked: i64, limit: i64) -> i128 {
    let factor = (limit as f64 / picked.max(1) as f64).clamp(1.0, 8.0);
    (span as f64 * factor).clamp(1.0, i128::MAX as f64 / 16.0) as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_aims_at_a_batch_within_one_and_eight_times_its_span() {
        let hour = 3_600_000_000 * HASHES;
        assert_eq!(
            next_span(hour, 500, 1000),
            hour * 2,
            "half a batch: twice as long"
        );
        assert_eq!(next_span(hour, 1000, 1000), hour);
        assert_eq!(next_span(hour, 0, 1000), hour * 8, "empty: at most 8 times");
        assert_eq!(next_span(1, 999, 1000), 1, "one hash at least");
    }

    #[test]
    fn a_places_rank_keeps_its_order_and_gives_it_back() {
        let at = |s: &str, hash| NoticePlace {
            expiry: s.parse().unwrap(),
            hash,
        };
        let places = [
            at("1969-12-31T23:59:59.999999Z", i32::MAX),
            at("1970-01-01T00:00:00Z", i32::MIN),
            at("1970-01-01T00:00:00Z", -1),
            at("1970-01-01T00:00:00Z", 0),
            at("1970-01-01T00:00:00Z", i32::MAX),
            at("1970-01-01T00:00:00.000001Z", i32::MIN),
            at("2026-06-17T00:00:00Z", 7),
            at("9999-12-31T23:59:59.999999Z", i32::MAX),
        ];
        for pair in places.windows(2) {
            assert!(pair[0] < pair[1] && rank(pair[0]) < rank(pair[1]), "{pair:?}");
        }
        assert_eq!(
            rank(places[5]) - rank(places[4]),
            1,
            "the next microsecond follows the last hash"
        );
        for p in places {
            assert_eq!(place(rank(p)).unwrap(), p);
            assert!(
                NoticePlace::at(p.expiry) <= p,
                "an instant's first place is before its every hash: {p:?}"
            );
        }
        assert!(place(i128::MAX).is_err(), "out of range is an error, not a panic");
    }
}
