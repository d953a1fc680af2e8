-- The audit trail: which calling service (and which request) made each change.
-- Written by the statement that makes the change, like its event, but kept
-- for good: events are pruned after their retention, the audit is not.
--
-- `caller` is the name the callers file gives the authenticated service (a
-- token's line or a client certificate's name); it is empty when
-- authentication is off, and both are empty for the scheduler's own runs.
-- Rows written before this migration have nulls.

-- The ledger: every entry belongs to the earning call recorded here.
alter table earning_event add column caller text;
alter table earning_event add column request_id text;

-- Every status change of a coupon.
alter table coupon_transition add column caller text;
alter table coupon_transition add column request_id text;

-- Changes to a member's own row (registration, birthday, fraud flag), which
-- is updated in place: one row per call that changed it.
create table member_change (
    account_id text not null references member (account_id),
    member_change_id bigint generated always as identity,
    -- 'register', 'birthday', 'flag', 'unflag'
    action text not null,
    -- What the row became (the fields the action set).
    detail jsonb not null,
    caller text not null,
    request_id text not null,
    occurred_at timestamptz not null,
    primary key (account_id, member_change_id),
    constraint member_change_action check (action in ('register', 'birthday', 'flag', 'unflag'))
);

-- A checkout order's changes (it is updated in place): each reservation (a new
-- order or a newer cart revision), the completion or cancellation, each refund.
-- No foreign key, as for member_level: the statement that writes the order
-- writes this row too.
create table order_change (
    account_id text not null,
    order_change_id bigint generated always as identity,
    order_id text not null,
    -- 'reserve', 'complete', 'cancel', 'refund'
    action text not null,
    -- The revision, coupons and hold of a reservation; the refund's id and extent.
    detail jsonb not null,
    caller text not null,
    request_id text not null,
    occurred_at timestamptz not null,
    primary key (account_id, order_change_id),
    constraint order_change_action check (action in ('reserve', 'complete', 'cancel', 'refund'))
);

-- Admin calls that change no member: template changes (a template is updated
-- in place, so this is its history), claim codes, reward templates, and the
-- runs of the jobs. Small, like the templates it refers to.
create table admin_change (
    admin_change_id bigint generated always as identity primary key,
    -- 'template.create', 'template.update', 'template.pause', 'template.resume',
    -- 'template.public_code', 'template.single_use_codes', 'reward_templates.set',
    -- 'job.evaluate_levels', 'job.daily_rewards', 'job.expiry_notices'
    action text not null,
    -- The coupon template changed, when the action concerns one.
    template_id text,
    -- The template as it became, the codes' batch, the job's counts.
    detail jsonb not null,
    caller text not null,
    request_id text not null,
    occurred_at timestamptz not null
);

-- The listings read newest first: a template's changes, and all of them.
create index admin_change_template on admin_change (template_id, occurred_at, admin_change_id)
    where template_id is not null;
create index admin_change_recent on admin_change (occurred_at, admin_change_id);

