//! Queries on levels: the monthly evaluation (one set-based statement per
//! batch of members), level periods, reward configuration and the reward
//! outbox.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use sqlx::PgConnection;

use crate::db::{audit, events};
use crate::domain::events::Origin;
use crate::domain::ids::{AccountId, TemplateId};
use crate::domain::levels::{EvaluationMonth, Level, Thresholds};

/// The key of the advisory lock that made level jobs run one at a time across
/// replicas before `job_lock` ("LOYALTYL" in ASCII).
const LEVEL_JOBS_LOCK: i64 = 0x4C4F_5941_4C54_594C;

/// Waits for the level jobs lock until the transaction ends: the `levels` row
/// of `job_lock`. The advisory lock of earlier releases is taken first, so
/// that during a rolling deploy an older server's run and this one's still
/// take turns; the next release drops it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn lock_level_jobs(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // One statement, as `lock_job`, the advisory lock first.
    sqlx::query(
        "with advisory as (select pg_advisory_xact_lock($1)) \
         insert into job_lock (job) select 'levels' from advisory \
         on conflict (job) do update set job = excluded.job where false",
    )
    .bind(LEVEL_JOBS_LOCK)
    .execute(conn)
    .await?;
    Ok(())
}

/// Waits for `job`'s turn until the transaction ends: its row of `job_lock`,
/// inserted if missing, else only locked (one statement, as `lock_order`).
/// A row lock, so that replicas take turns on Citus too.
#[tracing::instrument(level = "debug", skip_all, fields(job))]
pub async fn lock_job(conn: &mut PgConnection, job: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into job_lock (job) values ($1) \
         on conflict (job) do update set job = excluded.job where false",
    )
    .bind(job)
    .execute(conn)
    .await?;
    Ok(())
}

/// What an evaluation did.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EvaluationRow {
    pub month: NaiveDate,
    pub effective_from: DateTime<Utc>,
    pub members_evaluated: i64,
    pub level_changes: i64,
    pub level_ups: i64,
    pub finished_at: DateTime<Utc>,
}

/// The evaluation of a month, if it ran.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_evaluation(
    conn: &mut PgConnection,
    month: NaiveDate,
) -> Result<Option<EvaluationRow>, sqlx::Error> {
    sqlx::query_as("select * from level_evaluation where month = $1")
        .bind(month)
        .fetch_optional(conn)
        .await
}

/// The latest evaluated month.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn last_evaluated_month(conn: &mut PgConnection) -> Result<Option<NaiveDate>, sqlx::Error> {
    sqlx::query_scalar("select max(month) from level_evaluation")
        .fetch_one(conn)
        .await
}

/// The rank of a level column, for comparisons in SQL.
fn rank(column: &str) -> String {
    format!("(case {column} when 'silver' then 0 when 'gold' then 1 when 'platinum' then 2 else 3 end)")
}

/// An evaluation in progress ([`evaluate_batch`] says how it goes).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EvaluationRun {
    pub month: NaiveDate,
    pub effective_from: DateTime<Utc>,
    /// The members up to this one (in account id order) have been evaluated.
    pub last_account: Option<String>,
    pub members_evaluated: i64,
    pub level_changes: i64,
    pub level_ups: i64,
}

const RUN_COLUMNS: &str = "month, effective_from, last_account, members_evaluated, level_changes, level_ups";

/// The evaluation in progress, if any. A run whose month, or a later one,
/// has been recorded meanwhile (by an earlier release's one-statement
/// evaluation, during a rolling deploy) is not one: going on with it would
/// write its levels after a later month's.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn current_run(conn: &mut PgConnection) -> Result<Option<EvaluationRun>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {RUN_COLUMNS} from level_evaluation_run r \
         where not exists (select 1 from level_evaluation e where e.month >= r.month)"
    ))
    .fetch_optional(conn)
    .await
}

/// Starts the evaluation of `evaluation.month`, from the first member; drops
/// the rows of runs that [`current_run`] no longer takes, if any.
#[tracing::instrument(level = "debug", skip_all, fields(month = %evaluation.month))]
pub async fn start_run(
    conn: &mut PgConnection,
    evaluation: &EvaluationMonth,
    now: DateTime<Utc>,
) -> Result<EvaluationRun, sqlx::Error> {
    sqlx::query(
        "delete from level_evaluation_run r \
         where exists (select 1 from level_evaluation e where e.month >= r.month)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(&format!(
        "insert into level_evaluation_run (month, effective_from, started_at) \
         values ($1, $2, $3) returning {RUN_COLUMNS}"
    ))
    .bind(evaluation.month)
    .bind(evaluation.effective_from)
    .bind(now)
    .fetch_one(conn)
    .await
}

/// The members whose account id's hash (`hashtext`, Citus's hash of the
/// shard key) is below this, 1 in [`SAMPLE_SHARE`]: the evaluation's sample
/// of the members in account id order (index `member_sample`). On Citus they
/// are in the shard (or shards) of the lowest hashes; every other shard's part
/// of the index is empty.
const SAMPLE_BELOW: i64 = i32::MIN as i64 + (1 << 32) / SAMPLE_SHARE;

/// One member in this many is in the sample ([`SAMPLE_BELOW`]).
const SAMPLE_SHARE: i64 = 256;

/// What a batch of the evaluation did ([`evaluate_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluatedBatch {
    /// The run, moved past the batch.
    pub run: EvaluationRun,
    /// The members of the batch.
    pub members: i64,
    /// Whether the sample ended the batch's range: more members follow it.
    pub bounded: bool,
}

/// Evaluates the next batch of `run` for `evaluation.month` in one
/// statement: at most `limit` members in account id order after
/// `run.last_account`, up to an end the sample sets. New levels take effect at the run's
/// `effective_from`, which the month records. Sums their window points, computes the levels of
/// those with points or a recorded level (every other member is Silver and
/// stays so), closes the periods of the members whose level changes and
/// opens their new ones from `effective_from`, queues the level-up rewards,
/// and moves the run past the batch with the batch's counts. Members whose
/// level does not change are not written at all. Level-up rewards are queued
/// for the levels in `level_up_levels` (those with the benefit).
///
/// The batch is an account range, so that the ledger and the level periods
/// are read as index ranges (`point_entry_account_date`,
/// `member_level_open`): each entry is read once over the run, as by one
/// statement over every member.
///
/// The range's end comes from the sample: the `limit / SAMPLE_SHARE`-th
/// sampled member after the run's last account, which about `limit` members
/// precede. On Citus each shard then reads its members of the range, about
/// `limit` in all, where `order by … limit` alone had each shard read up to
/// `limit` for the coordinator to keep `limit` of them all. The limit still
/// bounds a range denser than the sample said. Without a sampled member that
/// far (the last members, or a batch under `SAMPLE_SHARE`), the range runs
/// to the last member. A batch is the last when no sampled member ended it
/// and it has fewer than `limit` members.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", skip_all, fields(month = %evaluation.month))]
pub async fn evaluate_batch(
    conn: &mut PgConnection,
    evaluation: &EvaluationMonth,
    run: &EvaluationRun,
    limit: i64,
    thresholds: &Thresholds,
    level_up_levels: &[&str],
    now: DateTime<Utc>,
) -> Result<EvaluatedBatch, sqlx::Error> {
    let up_plain = format!("{} > {}", rank("level"), rank("previous"));
    let up_changed = format!("{} > {}", rank("ch.level"), rank("ch.previous"));
    let origin = Origin::current();
    let events = events::insert_event_sql(
        "changed",
        "account_id",
        "'level_changed'",
        "$8",
        "jsonb_build_object('previous_level', previous, 'level', level, 'effective_from', $6::timestamptz, \
             'window_points', points, 'evaluation_month', $7::date)",
        ("$10", "$11"),
    );
    // The batch's range: after the run's last account, up to the batch's.
    // Also on the update of the periods, which would otherwise read every
    // open period to join them with the batch's changes.
    let range = "account_id > $12 and account_id <= (select last from bounds)";
    let sql = format!(
        "with sample as ( \
             select account_id from member \
             where hashtext(account_id) < {SAMPLE_BELOW} and account_id > $12 \
             order by account_id limit $14 \
         ), edge as ( \
             select max(account_id) as last from sample having count(*) = $14 and $14 > 0 \
         ), batch as ( \
             select account_id from member \
             where account_id > $12 \
               and account_id <= coalesce((select last from edge), (select max(account_id) from member)) \
             order by account_id limit $13 \
         ), bounds as ( \
             select count(*) as members, max(account_id) as last from batch \
         ), window_points as ( \
             select account_id, sum(points)::bigint as points from point_entry \
             where {range} and local_date >= $1 and local_date < $2 \
             group by account_id \
         ), current_level as ( \
             select account_id, level from member_level where {range} and effective_to is null \
         ), candidates as ( \
             select coalesce(w.account_id, c.account_id) as account_id, coalesce(w.points, 0) as points, \
                    coalesce(c.level, 'silver') as previous \
             from window_points w full join current_level c on c.account_id = w.account_id \
         ), evaluated as ( \
             select account_id, points, previous, \
                    case when points >= $5 then 'diamond' \
                         when points >= $4 then 'platinum' \
                         when points >= $3 then 'gold' \
                         else 'silver' end as level \
             from candidates \
         ), changed as ( \
             select account_id, level, points, previous from evaluated where level <> previous \
         ), progress as ( \
             update level_evaluation_run \
             set last_account = coalesce((select last from bounds), last_account), \
                 members_evaluated = members_evaluated + (select members from bounds), \
                 level_changes = level_changes + (select count(*) from changed), \
                 level_ups = level_ups + (select count(*) from changed where {up_plain}) \
             where month = $7 \
             returning {RUN_COLUMNS} \
         ), closed as ( \
             update member_level l set effective_to = $6 \
             from changed ch \
             where l.account_id > $12 and l.account_id <= (select last from bounds) \
               and l.account_id = ch.account_id and l.effective_to is null \
         ), opened as ( \
             insert into member_level (account_id, effective_from, level, window_points, evaluation_month) \
             select account_id, $6, level, points, $7 from changed \
         ), rewards as ( \
             insert into member_reward (account_id, reward_key, template_id, level) \
             select ch.account_id, 'level-up:' || to_char($7::date, 'YYYY-MM'), r.template_id, ch.level \
             from changed ch join reward_template r on r.reward = 'level_up' and r.level = ch.level \
             where {up_changed} and ch.level = any ($9) \
             on conflict do nothing \
         ), events as ({events}) \
         select p.*, (select members from bounds) as batch_members, \
                exists (select 1 from edge) as bounded \
         from progress p"
    );
    #[derive(sqlx::FromRow)]
    struct Moved {
        #[sqlx(flatten)]
        run: EvaluationRun,
        batch_members: i64,
        bounded: bool,
    }
    let moved: Moved = sqlx::query_as(&sql)
        .bind(evaluation.window_start)
        .bind(evaluation.window_end)
        .bind(thresholds.gold)
        .bind(thresholds.platinum)
        .bind(thresholds.diamond)
        .bind(run.effective_from)
        .bind(evaluation.month)
        .bind(now)
        .bind(level_up_levels)
        .bind(&origin.request_id)
        .bind(&origin.caller)
        // Account ids are not empty: '' is before the first.
        .bind(run.last_account.as_deref().unwrap_or(""))
        .bind(limit)
        .bind(limit / SAMPLE_SHARE)
        .fetch_one(conn)
        .await?;
    Ok(EvaluatedBatch {
        run: moved.run,
        members: moved.batch_members,
        bounded: moved.bounded,
    })
}

/// Records the evaluation of a complete run and ends the run.
#[tracing::instrument(level = "debug", skip_all, fields(month = %month))]
pub async fn finish_evaluation(
    conn: &mut PgConnection,
    month: NaiveDate,
    now: DateTime<Utc>,
) -> Result<EvaluationRow, sqlx::Error> {
    let origin = Origin::current();
    let audit = audit::insert_admin_change_sql(
        "recorded",
        "'job.evaluate_levels'",
        "null",
        "to_jsonb(recorded) - 'finished_at'",
        "$2",
        ("$3", "$4"),
    );
    sqlx::query_as(&format!(
        "with run as ( \
             delete from level_evaluation_run where month = $1 \
             returning month, effective_from, members_evaluated, level_changes, level_ups \
         ), recorded as ( \
             insert into level_evaluation (month, effective_from, members_evaluated, level_changes, \
                                           level_ups, finished_at) \
             select month, effective_from, members_evaluated, level_changes, level_ups, $2 from run \
             returning * \
         ), audit as ({audit}) \
         select * from recorded"
    ))
    .bind(month)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_one(conn)
    .await
}

/// A period during which a member held a level.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LevelPeriodRow {
    pub level: String,
    pub effective_from: DateTime<Utc>,
    pub effective_to: Option<DateTime<Utc>>,
    pub window_points: i64,
    pub evaluation_month: Option<NaiveDate>,
}

/// The member's level period containing `at`, if any (none means Silver).
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn period_at(
    conn: &mut PgConnection,
    account_id: &AccountId,
    at: DateTime<Utc>,
) -> Result<Option<LevelPeriodRow>, sqlx::Error> {
    sqlx::query_as(
        "select level, effective_from, effective_to, window_points, evaluation_month from member_level \
         where account_id = $1 and effective_from <= $2 and (effective_to is null or effective_to > $2)",
    )
    .bind(account_id)
    .bind(at)
    .fetch_optional(conn)
    .await
}

/// When the member's latest period before `at` ended (the start of an implicit
/// Silver period), if any.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn last_period_end(
    conn: &mut PgConnection,
    account_id: &AccountId,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select max(effective_to) from member_level where account_id = $1 and effective_to <= $2",
    )
    .bind(account_id)
    .bind(at)
    .fetch_one(conn)
    .await
}

/// Up to `limit` level periods of a member, newest first, starting before
/// `before` (a period's `effective_from`, unique per member: the primary key)
/// when given.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account_id))]
pub async fn history(
    conn: &mut PgConnection,
    account_id: &AccountId,
    before: Option<DateTime<Utc>>,
    limit: u32,
) -> Result<Vec<LevelPeriodRow>, sqlx::Error> {
    sqlx::query_as(
        "select level, effective_from, effective_to, window_points, evaluation_month from member_level \
         where account_id = $1 and ($2::timestamptz is null or effective_from < $2) \
         order by effective_from desc limit $3",
    )
    .bind(account_id)
    .bind(before)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
}

/// Replaces the templates of a reward (and level, for level-up rewards).
#[tracing::instrument(level = "debug", skip_all, fields(reward))]
pub async fn set_reward_templates(
    conn: &mut PgConnection,
    reward: &str,
    level: Option<Level>,
    templates: &[TemplateId],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let level = level.map_or("", Level::as_str);
    let removed: Vec<String> = sqlx::query_scalar(
        "delete from reward_template where reward = $1 and level = $2 returning template_id",
    )
    .bind(reward)
    .bind(level)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<&str> = templates.iter().map(TemplateId::as_str).collect();
    let changed = {
        let before: std::collections::BTreeSet<&str> = removed.iter().map(String::as_str).collect();
        let after: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
        before != after
    };
    // Audited when the set changes: once per template it adds, keeps or
    // drops, so each template's audit shows the rewards that issue it (or
    // stopped issuing it). A set that stays the same records nothing.
    let origin = Origin::current();
    let audit = audit::insert_admin_change_sql(
        "(select t from unnest($3::text[] || $7::text[]) t group by t) as r (t) where $8",
        "'reward_templates.set'",
        "r.t",
        "jsonb_build_object('reward', $1::text, 'level', $2::text, 'template_ids', to_jsonb($3::text[]), \
             'previous_template_ids', to_jsonb($7::text[]))",
        "$4",
        ("$5", "$6"),
    );
    sqlx::query(&format!(
        "with set as ( \
             insert into reward_template (reward, level, template_id) select $1, $2, t from unnest($3::text[]) t \
         ), audit as ({audit}) \
         select 1"
    ))
    .bind(reward)
    .bind(level)
    .bind(&ids)
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .bind(&removed)
    .bind(changed)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every reward's templates: (reward, level, template id).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn reward_templates(conn: &mut PgConnection) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "select reward, level, template_id from reward_template order by reward, level, template_id",
    )
    .fetch_all(conn)
    .await
}

/// What a daily rewards run did.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DailyRunRow {
    pub local_date: NaiveDate,
    pub birthday_rewards: i64,
    pub anniversary_rewards: i64,
    pub finished_at: DateTime<Utc>,
}

/// The daily rewards run of a date, if it ran.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_daily_run(
    conn: &mut PgConnection,
    day: NaiveDate,
) -> Result<Option<DailyRunRow>, sqlx::Error> {
    sqlx::query_as("select * from daily_reward_run where local_date = $1")
        .bind(day)
        .fetch_optional(conn)
        .await
}

/// Which members a daily run rewards: the levels (held at the day's start) with
/// each benefit.
#[derive(Debug)]
pub struct DailyRewardLevels<'a> {
    pub day_start: DateTime<Utc>,
    pub birthday: &'a [&'a str],
    pub anniversary: &'a [&'a str],
}

/// Queues the birthday and anniversary rewards of `day` and records the run.
/// `birthday_cutoff`: a birthday counts only if set before this instant (00:00 of
/// the day before `day`); `leap_day_too`: `day` is 28 February of a common year,
/// which also celebrates 29 February.
///
/// A member's anniversary is a day of a later year with the month and day of
/// its registration's local date. The run finds them without reading every
/// member: the registrations in [`anniversary_windows`], one range of the index
/// `member_registered` per year (written out as conditions `or`ed together, so
/// that each range is an index condition of the statement itself, which Citus
/// sends to every shard as it is), then those whose local date has the day's
/// month and day. A run reads about 2.3 days of registrations per year.
#[tracing::instrument(level = "debug", skip_all, fields(day = %day))]
pub async fn queue_daily_rewards(
    conn: &mut PgConnection,
    day: NaiveDate,
    time_zone: &str,
    birthday_cutoff: DateTime<Utc>,
    leap_day_too: bool,
    levels: &DailyRewardLevels<'_>,
    now: DateTime<Utc>,
) -> Result<DailyRunRow, sqlx::Error> {
    let origin = Origin::current();
    let audit = audit::insert_admin_change_sql(
        "run",
        "'job.daily_rewards'",
        "null",
        "to_jsonb(run) - 'finished_at'",
        "$5",
        ("$9", "$10"),
    );
    // The member's level at the day's start (Silver without a period).
    let level_of_m = "coalesce((select ml.level from member_level ml where ml.account_id = m.account_id \
         and ml.effective_from <= $6 and (ml.effective_to is null or ml.effective_to > $6)), 'silver')";
    let (earliest, latest) = anniversary_windows(day, leap_day_too);
    let windows = (1..=earliest.len())
        .map(|k| format!("(m.registered_at >= $11[{k}] and m.registered_at < $12[{k}])"))
        .collect::<Vec<_>>();
    let windows = if windows.is_empty() {
        "false".to_owned()
    } else {
        windows.join(" or ")
    };
    sqlx::query_as(&format!(
        "with birthdays as ( \
             insert into member_reward (account_id, reward_key, template_id) \
             select m.account_id, 'birthday:' || extract(year from $1::date), r.template_id \
             from member m join reward_template r on r.reward = 'birthday' \
             where ((m.birthday_month = extract(month from $1::date) \
                     and m.birthday_day = extract(day from $1::date)) \
                    or ($4 and m.birthday_month = 2 and m.birthday_day = 29)) \
               and m.birthday_updated_at < $3 \
               and {level_of_m} = any ($7) \
             on conflict do nothing \
             returning 1 \
         ), anniversaries as ( \
             insert into member_reward (account_id, reward_key, template_id) \
             select m.account_id, 'anniversary:' || extract(year from $1::date), r.template_id \
             from member m join reward_template r on r.reward = 'anniversary' \
             cross join lateral (select (m.registered_at at time zone $2)::date as registered) l \
             where ({windows}) \
               and l.registered < $1::date \
               and ((extract(month from l.registered) = extract(month from $1::date) \
                     and extract(day from l.registered) = extract(day from $1::date)) \
                    or ($4 and extract(month from l.registered) = 2 and extract(day from l.registered) = 29)) \
               and {level_of_m} = any ($8) \
             on conflict do nothing \
             returning 1 \
         ), run as ( \
             insert into daily_reward_run (local_date, birthday_rewards, anniversary_rewards, finished_at) \
             select $1, (select count(*) from birthdays), (select count(*) from anniversaries), $5 \
             returning * \
         ), audit as ({audit}) \
         select * from run"
    ))
    .bind(day)
    .bind(time_zone)
    .bind(birthday_cutoff)
    .bind(leap_day_too)
    .bind(now)
    .bind(levels.day_start)
    .bind(levels.birthday)
    .bind(levels.anniversary)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .bind(earliest)
    .bind(latest)
    .fetch_one(conn)
    .await
}

/// The first local year a member can have registered in: registrations are
/// from 1970-01-01T00:00:00Z on (`RegisterMember` refuses earlier instants),
/// which is still 1969 west of UTC.
const FIRST_REGISTRATION_YEAR: i32 = 1969;

/// The ranges of registration instants that can have an anniversary on `day`
/// (with `leap_day_too`, 29 February as well), one per earlier year: from 16
/// hours before the UTC start of that year's day to 16 hours after the UTC end.
/// A local date is within 16 hours of the UTC date in every zone of the time
/// zone database, local mean times included, so the ranges hold every such
/// registration whatever the program's time zone and its clock changes.
fn anniversary_windows(day: NaiveDate, leap_day_too: bool) -> (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let margin = chrono::Duration::hours(16);
    let mut windows = (Vec::new(), Vec::new());
    for year in FIRST_REGISTRATION_YEAR..day.year() {
        let days = [
            NaiveDate::from_ymd_opt(year, day.month(), day.day()),
            NaiveDate::from_ymd_opt(year, 2, 29).filter(|_| leap_day_too),
        ];
        let mut days = days.into_iter().flatten();
        let Some(first) = days.next() else { continue };
        let last = days.last().unwrap_or(first);
        windows.0.push(first.and_time(NaiveTime::MIN).and_utc() - margin);
        windows
            .1
            .push((last + chrono::Days::new(1)).and_time(NaiveTime::MIN).and_utc() + margin);
    }
    windows
}

/// A reward owed to a member.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingReward {
    pub account_id: AccountId,
    pub reward_key: String,
    pub template_id: String,
    /// The level a level-up reward is for.
    pub level: Option<String>,
}

/// The hash ranges of the members, in order (`loyalty_member_ranges`: on
/// Citus those of the shards, else one); a job that goes through members
/// range by range reads one shard at a time.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn member_ranges(conn: &mut PgConnection) -> Result<Vec<(i32, i32)>, sqlx::Error> {
    sqlx::query_as("select lo, hi from loyalty_member_ranges()")
        .fetch_all(conn)
        .await
}

/// Some pending rewards of the members whose hash is in `range`, in hash
/// order (the index `member_reward_pending_by_hash`).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn pending_rewards(
    conn: &mut PgConnection,
    range: (i32, i32),
    limit: i64,
) -> Result<Vec<PendingReward>, sqlx::Error> {
    sqlx::query_as(
        "select account_id, reward_key, template_id, level from member_reward \
         where status = 'pending' and hashtext(account_id) between $1 and $2 \
         order by hashtext(account_id), account_id, reward_key, template_id limit $3",
    )
    .bind(range.0)
    .bind(range.1)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// What became of a pending reward: the coupon issued, or none and why.
#[derive(Debug)]
pub struct RewardOutcome {
    pub reward: PendingReward,
    /// The reward's issuance id, under which its coupon is issued.
    pub issuance_id: String,
    pub coupon_id: Option<i64>,
    pub note: String,
}

/// Records the outcomes of some rewards in one statement, with a
/// `reward_issued` event for each coupon issued; a reward no longer pending
/// (a concurrent settler recorded it) is left as it is, and so is a refusal
/// of a reward whose coupon exists (a concurrent settler issued it after
/// this one was refused; it records the coupon). Returns how many it
/// recorded. The outcomes are sorted by key first, so that two settlers'
/// records lock their rows in the same order and cannot deadlock.
#[tracing::instrument(level = "debug", skip_all, fields(rewards = outcomes.len()))]
pub async fn settle_rewards(
    conn: &mut PgConnection,
    outcomes: &mut [RewardOutcome],
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let key = |o: &RewardOutcome| {
        (
            o.reward.account_id.as_str().to_owned(),
            o.reward.reward_key.clone(),
            o.reward.template_id.clone(),
        )
    };
    outcomes.sort_by_cached_key(key);
    let origin = Origin::current();
    let column = |f: fn(&RewardOutcome) -> &str| outcomes.iter().map(f).collect::<Vec<_>>();
    let settled: i64 = sqlx::query_scalar(statement!({
        let event = events::insert_event_sql(
            "settled where coupon_id is not null",
            "account_id",
            "'reward_issued'",
            "$7",
            "jsonb_build_object('reward_key', reward_key, 'template_id', template_id, 'coupon_id', coupon_id)",
            ("$8", "$9"),
        );
        format!(
            "with outcome as ( \
                 select * from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                                      $6::text[]) \
                     as o (account_id, reward_key, template_id, coupon_id, note, issuance_id) \
             ), settled as ( \
                 update member_reward r \
                 set status = case when o.coupon_id is null then 'skipped' else 'issued' end, \
                     coupon_id = o.coupon_id, note = o.note \
                 from outcome o \
                 where r.account_id = o.account_id and r.reward_key = o.reward_key \
                   and r.template_id = o.template_id and r.status = 'pending' \
                   and (o.coupon_id is not null or not exists ( \
                       select 1 from coupon c \
                       where c.account_id = r.account_id and c.issuance_id = o.issuance_id)) \
                 returning r.account_id, r.reward_key, r.template_id, r.coupon_id \
             ), event as ({event}) \
             select count(*) from settled"
        )
    }))
    .bind(column(|o| o.reward.account_id.as_str()))
    .bind(column(|o| o.reward.reward_key.as_str()))
    .bind(column(|o| o.reward.template_id.as_str()))
    .bind(outcomes.iter().map(|o| o.coupon_id).collect::<Vec<_>>())
    .bind(column(|o| o.note.as_str()))
    .bind(column(|o| o.issuance_id.as_str()))
    .bind(now)
    .bind(&origin.request_id)
    .bind(&origin.caller)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(settled).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample's condition must be the index's predicate word for word:
    /// otherwise the sample is read through the primary key, about 256
    /// members for each sampled one, and on Citus by every shard.
    #[test]
    fn the_sample_is_the_member_sample_index_predicate() {
        let migration = include_str!("../../migrations/20261205000021_member_sample.sql");
        assert_eq!(SAMPLE_BELOW, -2_130_706_432);
        assert!(
            migration.contains(&format!("where hashtext(account_id) < {SAMPLE_BELOW};")),
            "{migration}"
        );
    }
}
