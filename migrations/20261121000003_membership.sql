-- Membership levels: monthly evaluations, reward configuration and the reward
-- outbox.

-- One row per evaluated month, written in the evaluation's own transaction, so
-- an evaluation is done entirely or not at all, and a rerun finds it.
create table level_evaluation (
    -- The first day of the evaluated month (program time zone).
    month date primary key,
    -- The 8th of the next month, 00:00 program time: when its levels take effect.
    effective_from timestamptz not null,
    members_evaluated bigint not null,
    level_changes bigint not null,
    level_ups bigint not null,
    finished_at timestamptz not null
);

-- A level period records the evaluation that started it (no foreign key, as for
-- the rest of member_level: the same statement writes both).
alter table member_level add column evaluation_month date;

-- The coupon templates each reward issues, set by admins.
create table reward_template (
    -- 'level_up' (with a level), 'birthday', 'anniversary', 'diamond_daily'.
    reward text not null,
    -- The level reached, for 'level_up'; '' otherwise.
    level text not null default '',
    template_id text not null references coupon_template (template_id),
    primary key (reward, level, template_id),
    constraint reward_template_kind check (
        (reward = 'level_up' and level in ('gold', 'platinum', 'diamond'))
        or (reward in ('birthday', 'anniversary', 'diamond_daily') and level = ''))
);

-- One row per daily rewards run (birthdays and anniversaries of a date).
create table daily_reward_run (
    local_date date primary key,
    birthday_rewards bigint not null,
    anniversary_rewards bigint not null,
    finished_at timestamptz not null
);

-- The reward outbox: every coupon a reward owes a member. Rows are written
-- set-based with the evaluation or the daily run, then issued one by one
-- (idempotently, by reward_key) until none is pending, so a crash in between
-- loses nothing and issues nothing twice.
create table member_reward (
    account_id text not null references member (account_id),
    -- 'level-up:2026-10', 'birthday:2026', 'anniversary:2026'.
    reward_key text not null,
    template_id text not null references coupon_template (template_id),
    -- The level a level-up reward is for (its template's allowed levels are
    -- checked against it, not against the level at issuance); null otherwise.
    level text,
    status text not null default 'pending',
    coupon_id bigint,
    -- Why a reward was skipped (member flagged, template paused, ...).
    note text not null default '',
    created_at timestamptz not null default now(),
    primary key (account_id, reward_key, template_id),
    constraint member_reward_status check (status in ('pending', 'issued', 'skipped'))
);

create index member_reward_pending on member_reward (created_at) where status = 'pending';
-- The current level period of each member.
create index member_level_open on member_level (account_id) where effective_to is null;
-- Birthdays and anniversaries of a date.
create index member_birthday on member (birthday_month, birthday_day) where birthday_month is not null;
