//! Membership levels (SPEC §3): the monthly evaluation, the membership view,
//! benefits, and the rewards (level-up, birthday, anniversary, Diamond daily).
//!
//! Jobs run under the `levels` row of `job_lock`, so that replicas take
//! turns. The daily rewards run is one transaction: a crash rolls it back, a
//! rerun finds the finished run and replays it. The evaluation runs in
//! batches of members, one transaction each: a crash keeps the batches done
//! and a rerun goes on from there. Rewards are queued in the transaction that
//! grants them (`member_reward`) and issued afterwards, one idempotent
//! issuance each, until none is pending.

use std::sync::Arc;

use futures::StreamExt;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::clock::Clock;
use crate::db;
use crate::db::levels::{EvaluationRow, LevelPeriodRow, PendingReward, RewardOutcome};
use crate::domain::calendar::{Calendar, month_start};
use crate::domain::coupons::{Coupons, IssuePolicy, Issued};
use crate::domain::ids::{AccountId, IssuanceId, TemplateId};
use crate::domain::levels::{
    Benefits, BenefitsTable, EvaluationMonth, Level, Thresholds, local_midnight, yearly_date,
};
use crate::domain::members::member_not_found;
use crate::domain::money::{Currency, Money};
use crate::domain::points::Points;
use crate::error::Error;

/// Which reward a set of templates is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reward {
    /// Reaching a higher level (Gold, Platinum or Diamond).
    LevelUp(Level),
    Birthday,
    Anniversary,
    /// The Diamond limited daily coupon.
    DiamondDaily,
}

impl Reward {
    fn columns(self) -> (&'static str, Option<Level>) {
        match self {
            Reward::LevelUp(level) => ("level_up", Some(level)),
            Reward::Birthday => ("birthday", None),
            Reward::Anniversary => ("anniversary", None),
            Reward::DiamondDaily => ("diamond_daily", None),
        }
    }

    fn from_columns(reward: &str, level: &str) -> Option<Self> {
        Some(match reward {
            "level_up" => Reward::LevelUp(Level::from_db(level)?),
            "birthday" => Reward::Birthday,
            "anniversary" => Reward::Anniversary,
            "diamond_daily" => Reward::DiamondDaily,
            _ => return None,
        })
    }
}

/// A level a member held from one instant to another (or still holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelPeriod {
    pub level: Level,
    pub effective_from: DateTime<Utc>,
    pub effective_to: Option<DateTime<Utc>>,
    /// The window points of the evaluation that gave the level (0 for the
    /// implicit Silver of a member never evaluated above it).
    pub window_points: i64,
    pub evaluation_month: Option<NaiveDate>,
}

impl TryFrom<LevelPeriodRow> for LevelPeriod {
    type Error = Error;

    fn try_from(row: LevelPeriodRow) -> Result<Self, Error> {
        Ok(LevelPeriod {
            level: Level::from_db(&row.level)
                .ok_or_else(|| anyhow::anyhow!("stored level {:?}", row.level))?,
            effective_from: row.effective_from,
            effective_to: row.effective_to,
            window_points: row.window_points,
            evaluation_month: row.evaluation_month,
        })
    }
}

/// The membership view (SPEC §3).
#[derive(Debug, Clone)]
pub struct MembershipView {
    pub account_id: AccountId,
    pub level: Level,
    /// Since when the member holds `level` without a break.
    pub level_since: DateTime<Utc>,
    pub window_points: i64,
    pub window_start: NaiveDate,
    pub window_end: NaiveDate,
    /// The level the next evaluation would give on today's points.
    pub projected_level: Level,
    /// Points still needed for the level above the projected one (None at Diamond).
    pub points_to_next_level: Option<i64>,
    /// The first day the next evaluation (of the current month) can run.
    pub next_evaluation_date: NaiveDate,
    /// When its levels take effect.
    pub next_effective_from: DateTime<Utc>,
    pub benefits: Benefits,
}

/// The result of an evaluation (or of the daily rewards run), and whether it was
/// a replay of a finished one.
#[derive(Debug, Clone)]
pub struct JobOutcome<T> {
    pub result: T,
    pub replayed: bool,
    /// Rewards issued (or skipped) after the run.
    pub rewards_settled: u64,
}

/// The fast refund check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastRefund {
    pub eligible: bool,
    pub level: Level,
    /// The member's limit in the program currency; None without the benefit.
    pub limit_minor: Option<i64>,
}

/// The configured level rules.
#[derive(Debug, Clone)]
pub struct LevelRules {
    pub thresholds: Thresholds,
    pub benefits: BenefitsTable,
    /// Fast refund limits are in it.
    pub program_currency: Currency,
}

/// How many pending rewards one pass reads.
const REWARD_BATCH: i64 = 500;

/// How many rewards the process issues at once, each in its own transaction,
/// whatever the number of settlers. An issuance is a few round trips and a
/// commit, most of them outside the template's stock row (which the rewards
/// of one template take in turn), so a few at once overlap their waits. Small
/// next to the pool, which the calls share.
const REWARD_CONCURRENCY: usize = 4;

/// How many outcomes one statement records.
const REWARD_RECORD: usize = 50;

/// Membership-level operations.
#[derive(Clone)]
pub struct Membership {
    pool: PgPool,
    rules: Arc<LevelRules>,
    calendar: Calendar,
    clock: Arc<dyn Clock>,
    points: Points,
    coupons: Coupons,
    /// The process's turns to issue a reward ([`REWARD_CONCURRENCY`]).
    settling: Arc<tokio::sync::Semaphore>,
    /// How many members one batch of the evaluation reads.
    evaluation_batch: i64,
}

impl Membership {
    /// Membership operations over `pool`; the evaluation reads
    /// `evaluation_batch` members per transaction.
    pub fn new(
        pool: PgPool,
        rules: LevelRules,
        calendar: Calendar,
        clock: Arc<dyn Clock>,
        points: Points,
        coupons: Coupons,
        evaluation_batch: i64,
    ) -> Self {
        Self {
            pool,
            rules: Arc::new(rules),
            calendar,
            clock,
            points,
            coupons,
            settling: Arc::new(tokio::sync::Semaphore::new(REWARD_CONCURRENCY)),
            evaluation_batch: evaluation_batch.max(1),
        }
    }

    /// Evaluates every member for the month containing `month`, which must be
    /// over; then issues the level-up rewards it queued.
    ///
    /// The evaluation runs in batches of members, one transaction each under
    /// the `levels` row of `job_lock` ([`db::levels::evaluate_batch`]). A
    /// crash or the call's deadline keeps the batches done; the next call
    /// (or a concurrent one, taking turns batch by batch) goes on from
    /// there. The batch that evaluates the last members records the
    /// evaluation. A month already recorded is replayed.
    #[tracing::instrument(skip_all, fields(month = %month))]
    pub async fn evaluate(&self, month: NaiveDate) -> Result<JobOutcome<EvaluationRow>, Error> {
        let evaluation = EvaluationMonth::of(month, &self.calendar);
        let now = self.clock.now();
        if self.calendar.local_date(now) < evaluation.window_end {
            return Err(Error::FailedPrecondition {
                reason: "MONTH_NOT_OVER",
                message: format!("{} is not over yet", evaluation.month.format("%Y-%m")),
            });
        }
        let level_up = self.levels_with(|b| b.level_up_reward);
        let started = std::time::Instant::now();
        let mut batches = 0u64;
        let (result, replayed) = loop {
            let mut tx = db::begin(&self.pool).await?;
            db::levels::lock_level_jobs(&mut tx).await?;
            if let Some(done) = db::levels::find_evaluation(&mut tx, evaluation.month).await? {
                db::commit(tx).await?;
                break (done, true);
            }
            let run = match db::levels::current_run(&mut tx).await? {
                Some(run) if run.month == evaluation.month => run,
                Some(other) => {
                    return Err(Error::FailedPrecondition {
                        reason: "EVALUATION_IN_PROGRESS",
                        message: format!(
                            "the evaluation of {} is in progress: evaluate that month to finish it first",
                            other.month.format("%Y-%m")
                        ),
                    });
                }
                None => {
                    if let Some(last) = db::levels::last_evaluated_month(&mut tx).await?
                        && last > evaluation.month
                    {
                        return Err(Error::FailedPrecondition {
                            reason: "EVALUATION_OUT_OF_ORDER",
                            message: format!(
                                "{} was already evaluated, after this month",
                                last.format("%Y-%m")
                            ),
                        });
                    }
                    db::levels::start_run(&mut tx, &evaluation, now).await?
                }
            };
            let batch = db::levels::evaluate_batch(
                &mut tx,
                &evaluation,
                &run,
                self.evaluation_batch,
                &self.rules.thresholds,
                &level_up,
                now,
            )
            .await?;
            // A short batch that the sample did not end was the last.
            let finished = if !batch.bounded && batch.members < self.evaluation_batch {
                Some(db::levels::finish_evaluation(&mut tx, batch.run.month, now).await?)
            } else {
                None
            };
            db::commit(tx).await?;
            batches += 1;
            if let Some(row) = finished {
                tracing::info!(
                    month = %row.month,
                    members = row.members_evaluated,
                    changes = row.level_changes,
                    level_ups = row.level_ups,
                    batches,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "levels evaluated"
                );
                break (row, false);
            }
        };
        let rewards_settled = self.settle_rewards().await?;
        Ok(JobOutcome {
            result,
            replayed,
            rewards_settled,
        })
    }

    /// Queues the birthday and anniversary rewards of `day` (once per date) and
    /// issues them.
    #[tracing::instrument(skip_all, fields(day = %day))]
    pub async fn run_daily_rewards(
        &self,
        day: NaiveDate,
    ) -> Result<JobOutcome<db::levels::DailyRunRow>, Error> {
        let now = self.clock.now();
        if day > self.calendar.local_date(now) {
            return Err(Error::FailedPrecondition {
                reason: "DAY_NOT_STARTED",
                message: format!("{day} has not started yet"),
            });
        }
        let mut tx = db::begin(&self.pool).await?;
        db::levels::lock_level_jobs(&mut tx).await?;
        let (result, replayed) = match db::levels::find_daily_run(&mut tx, day).await? {
            Some(done) => (done, true),
            None => {
                // Set at least 2 days before: before 00:00 of the day before.
                let cutoff = local_midnight(&self.calendar, day - TimeDelta::days(1));
                let leap_day_too =
                    day.month() == 2 && day.day() == 28 && yearly_date(day.year(), 2, 29) == Some(day);
                let (birthday, anniversary) = (
                    self.levels_with(|b| b.birthday_reward),
                    self.levels_with(|b| b.anniversary_reward),
                );
                let levels = db::levels::DailyRewardLevels {
                    day_start: local_midnight(&self.calendar, day),
                    birthday: &birthday,
                    anniversary: &anniversary,
                };
                let row = db::levels::queue_daily_rewards(
                    &mut tx,
                    day,
                    self.calendar.time_zone().name(),
                    cutoff,
                    leap_day_too,
                    &levels,
                    now,
                )
                .await?;
                (row, false)
            }
        };
        db::commit(tx).await?;
        let rewards_settled = self.settle_rewards().await?;
        Ok(JobOutcome {
            result,
            replayed,
            rewards_settled,
        })
    }

    /// The levels whose benefits pass `has`.
    fn levels_with(&self, has: impl Fn(&Benefits) -> bool) -> Vec<&'static str> {
        Level::ALL
            .into_iter()
            .filter(|level| has(self.rules.benefits.of(*level)))
            .map(Level::as_str)
            .collect()
    }

    /// Issues every pending reward; returns how many this call recorded.
    ///
    /// Goes through the members' hash ranges in turn (one shard each on
    /// Citus, [`db::levels::member_ranges`]). A pass reads up to
    /// [`REWARD_BATCH`] pending rewards of a range and issues them a few at
    /// once (at most [`REWARD_CONCURRENCY`] in the process, whatever the
    /// number of settlers), each in its own transaction; their outcomes are
    /// recorded [`REWARD_RECORD`] at a time, in one statement each. Each
    /// issuance is idempotent (its id derives from the reward), so a crash or
    /// a deadline before the record, or a concurrent settler, never issues a
    /// reward twice: a later run finds the coupon and records it.
    ///
    /// An issuance that fails other than by a refusal ends its range (the
    /// outcomes in hand are recorded, the issuances in flight dropped: their
    /// rewards stay pending); the other ranges still go, and the first such
    /// error is the run's. So one reward that keeps failing holds back no
    /// other range. A database error reading or recording ends the run.
    pub async fn settle_rewards(&self) -> Result<u64, Error> {
        let ranges = {
            let mut conn = db::acquire(&self.pool).await?;
            db::levels::member_ranges(&mut conn).await?
        };
        let mut settled = 0;
        let mut failed = None;
        for range in ranges {
            if let Some(error) = self.settle_range(range, &mut settled).await? {
                match failed {
                    None => failed = Some(error),
                    Some(_) => tracing::warn!(%error, "reward not settled"),
                }
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(settled),
        }
    }

    /// Settles the pending rewards of one hash range, adding to `settled`
    /// what it records; answers the issuance error that ended it early, if
    /// any.
    async fn settle_range(&self, range: (i32, i32), settled: &mut u64) -> Result<Option<Error>, Error> {
        loop {
            let mut conn = db::acquire(&self.pool).await?;
            let batch = db::levels::pending_rewards(&mut conn, range, REWARD_BATCH).await?;
            drop(conn);
            let last_pass = (batch.len() as i64) < REWARD_BATCH;
            // Owned rewards, futures made by the iterator: a `Stream::map`
            // closure over borrowed ones is not `Send` for every lifetime.
            let settling = batch.into_iter().map(|reward| self.reward_outcome(reward));
            let mut outcomes = futures::stream::iter(settling)
                .buffer_unordered(REWARD_CONCURRENCY)
                .chunks(REWARD_RECORD);
            while let Some(chunk) = outcomes.next().await {
                let mut failed = None;
                let mut done = Vec::with_capacity(chunk.len());
                for outcome in chunk {
                    match outcome {
                        Ok(outcome) => done.push(outcome),
                        Err(error) if failed.is_none() => failed = Some(error),
                        Err(error) => tracing::warn!(%error, "reward not settled"),
                    }
                }
                if !done.is_empty() {
                    let mut conn = db::acquire(&self.pool).await?;
                    *settled += db::levels::settle_rewards(&mut conn, &mut done, self.clock.now()).await?;
                }
                if failed.is_some() {
                    return Ok(failed);
                }
            }
            if last_pass {
                return Ok(None);
            }
        }
    }

    /// Issues one reward, or says why it is skipped (a refusal: the template
    /// is paused, out of stock, gone...). Waits for one of the process's
    /// [`REWARD_CONCURRENCY`] turns first.
    async fn reward_outcome(&self, reward: PendingReward) -> Result<RewardOutcome, Error> {
        let _turn = self
            .settling
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("reward turns: {e}"))?;
        let issuance = reward_issuance(&reward)?;
        let (coupon_id, note) = match self.issue_reward(&reward, &issuance).await {
            Ok(issued) => (Some(issued.coupon.coupon_id), String::new()),
            Err(refusal)
                if matches!(
                    refusal.inner(),
                    Error::FailedPrecondition { .. } | Error::NotFound { .. }
                ) =>
            {
                let reason = refusal.reason();
                tracing::info!(account_id = %reward.account_id, reason, "reward skipped");
                (None, format!("{reason}: {refusal}"))
            }
            Err(other) => return Err(other),
        };
        Ok(RewardOutcome {
            reward,
            issuance_id: issuance.as_str().to_owned(),
            coupon_id,
            note,
        })
    }

    async fn issue_reward(&self, reward: &PendingReward, issuance: &IssuanceId) -> Result<Issued, Error> {
        let template =
            TemplateId::parse(&reward.template_id).map_err(|e| anyhow::anyhow!("stored template: {e}"))?;
        let level = match reward.level.as_deref() {
            Some(name) => Some(Level::from_db(name).ok_or_else(|| anyhow::anyhow!("stored level {name:?}"))?),
            None => None,
        };
        self.coupons
            .issue(
                &reward.account_id,
                &template,
                issuance,
                IssuePolicy::Reward { level },
            )
            .await
    }

    /// The member's level period at `at` (Silver when none is recorded).
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn level_at(&self, account_id: &AccountId, at: DateTime<Utc>) -> Result<LevelPeriod, Error> {
        let mut conn = db::acquire(&self.pool).await?;
        let member = db::members::get(&mut conn, account_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        if let Some(period) = db::levels::period_at(&mut conn, account_id, at).await? {
            return period.try_into();
        }
        // Silver: since the last recorded period ended, or since registration.
        let since = db::levels::last_period_end(&mut conn, account_id, at)
            .await?
            .unwrap_or(member.registered_at);
        Ok(LevelPeriod {
            level: Level::Silver,
            effective_from: since,
            effective_to: None,
            window_points: 0,
            evaluation_month: None,
        })
    }

    /// A page of the member's level periods, newest first, starting before the
    /// period that began at `before` (the previous page's last); and where the
    /// next page starts, if there is one.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn history(
        &self,
        account_id: &AccountId,
        before: Option<DateTime<Utc>>,
        page_size: u32,
    ) -> Result<(Vec<LevelPeriod>, Option<DateTime<Utc>>), Error> {
        let mut conn = db::acquire(&self.pool).await?;
        db::members::get(&mut conn, account_id)
            .await?
            .ok_or_else(|| member_not_found(account_id))?;
        let mut periods = db::levels::history(&mut conn, account_id, before, page_size + 1)
            .await?
            .into_iter()
            .map(LevelPeriod::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if periods.len() > page_size as usize {
            periods.truncate(page_size as usize);
            periods.last().map(|p| p.effective_from)
        } else {
            None
        };
        Ok((periods, next))
    }

    /// The membership view now.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn view(&self, account_id: &AccountId) -> Result<MembershipView, Error> {
        let now = self.clock.now();
        let current = self.level_at(account_id, now).await?;
        let balance = self.points.balance(account_id).await?;
        let projected_level = self.rules.thresholds.level_for(balance.window_points);
        // The next evaluation is the previous month's until it has run, then the
        // current month's.
        let mut conn = db::acquire(&self.pool).await?;
        let last = db::levels::last_evaluated_month(&mut conn).await?;
        let previous = EvaluationMonth::of(self.previous_month(), &self.calendar);
        let next = if last.is_none_or(|last| last < previous.month) {
            previous
        } else {
            EvaluationMonth::of(self.calendar.local_date(now), &self.calendar)
        };
        Ok(MembershipView {
            account_id: account_id.clone(),
            level: current.level,
            level_since: current.effective_from,
            window_points: balance.window_points,
            window_start: balance.window_start,
            window_end: balance.window_end,
            projected_level,
            points_to_next_level: projected_level
                .next()
                .map(|above| self.rules.thresholds.minimum(above) - balance.window_points),
            next_evaluation_date: next.window_end,
            next_effective_from: next.effective_from,
            benefits: self.rules.benefits.of(current.level).clone(),
        })
    }

    /// Whether a refund of `amount` qualifies for the member's fast refund.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn fast_refund(&self, account_id: &AccountId, amount: Money) -> Result<FastRefund, Error> {
        let level = self.level_at(account_id, self.clock.now()).await?.level;
        let limit = self.rules.benefits.of(level).fast_refund_limit_minor;
        let eligible = amount.currency() == self.rules.program_currency
            && limit.is_some_and(|limit| amount.minor() <= limit);
        Ok(FastRefund {
            eligible,
            level,
            limit_minor: limit,
        })
    }

    /// Replaces the templates a reward issues.
    #[tracing::instrument(skip_all)]
    pub async fn set_reward_templates(&self, reward: Reward, templates: &[TemplateId]) -> Result<(), Error> {
        if let Reward::LevelUp(Level::Silver) = reward {
            return Err(Error::invalid(
                "level",
                "a level-up reaches Gold, Platinum or Diamond",
            ));
        }
        let mut tx = db::begin(&self.pool).await?;
        for template in templates {
            db::coupons::get_template(&mut tx, template)
                .await?
                .ok_or_else(|| {
                    Error::NotFound {
                        reason: "TEMPLATE_NOT_FOUND",
                        message: format!("no coupon template {template}"),
                    }
                    .concerning("template_id", template)
                })?;
        }
        let (name, level) = reward.columns();
        db::levels::set_reward_templates(&mut tx, name, level, templates, self.clock.now()).await?;
        db::commit(tx).await?;
        Ok(())
    }

    /// Every reward's templates.
    pub async fn reward_templates(&self) -> Result<Vec<(Reward, TemplateId)>, Error> {
        let mut conn = db::acquire(&self.pool).await?;
        db::levels::reward_templates(&mut conn)
            .await?
            .into_iter()
            .map(|(reward, level, template)| {
                let reward = Reward::from_columns(&reward, &level)
                    .ok_or_else(|| anyhow::anyhow!("stored reward {reward:?} {level:?}"))?;
                let template =
                    TemplateId::parse(&template).map_err(|e| anyhow::anyhow!("stored template: {e}"))?;
                Ok((reward, template))
            })
            .collect()
    }

    /// A Diamond member claims today's limited daily coupon: one per member and
    /// local day, while the template's daily stock lasts.
    #[tracing::instrument(skip_all, fields(account_id = %account_id))]
    pub async fn claim_daily_coupon(&self, account_id: &AccountId) -> Result<Issued, Error> {
        let now = self.clock.now();
        let level = self.level_at(account_id, now).await?.level;
        if !self.rules.benefits.of(level).limited_daily_coupons {
            return Err(Error::FailedPrecondition {
                reason: "LEVEL_NOT_ALLOWED",
                message: format!("limited daily coupons are a benefit of Diamond, not {level}"),
            });
        }
        let template = self
            .reward_templates()
            .await?
            .into_iter()
            .find_map(|(reward, template)| (reward == Reward::DiamondDaily).then_some(template))
            .ok_or_else(|| Error::FailedPrecondition {
                reason: "NO_DAILY_COUPON",
                message: "no template is set for the Diamond daily coupon".to_owned(),
            })?;
        let today = self.calendar.local_date(now);
        let issuance = IssuanceId::parse(&format!("daily:{today}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.coupons
            .issue(
                account_id,
                &template,
                &issuance,
                IssuePolicy::Reward { level: Some(level) },
            )
            .await
            .map_err(|error| {
                error
                    .concerning("template_id", &template)
                    .concerning("issuance_id", &issuance)
            })
    }

    /// The month whose evaluation is in progress (cut short by its deadline
    /// or a crash), if any.
    pub async fn month_in_progress(&self) -> Result<Option<NaiveDate>, Error> {
        let mut conn = db::acquire(&self.pool).await?;
        Ok(db::levels::current_run(&mut conn).await?.map(|run| run.month))
    }

    /// The month an automatic evaluation would run now: the previous month.
    pub fn previous_month(&self) -> NaiveDate {
        let today = self.calendar.local_date(self.clock.now());
        month_start(today)
            .checked_sub_months(Months::new(1))
            .unwrap_or(today)
    }

    /// Today in the program time zone.
    pub fn today(&self) -> NaiveDate {
        self.calendar.local_date(self.clock.now())
    }
}

/// A reward's issuance id: one issuance per (reward, template), within the 64
/// characters of an id.
fn reward_issuance(reward: &PendingReward) -> Result<IssuanceId, Error> {
    let digest = Sha256::digest(reward.template_id.as_bytes());
    let suffix: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    IssuanceId::parse(&format!("{}:{suffix}", reward.reward_key))
        .map_err(|e| anyhow::anyhow!("reward issuance id: {e}").into())
}
