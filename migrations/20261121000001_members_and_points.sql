-- Members and the points ledger.
--
-- Every per-member table is keyed by account_id first, so the schema can be
-- distributed by account_id (Citus) without redesign: unique keys and foreign keys
-- all include account_id.

create table member (
    account_id text primary key,
    registered_at timestamptz not null,
    -- A birthday is a calendar date whose year may be unknown (null).
    birthday_year smallint,
    birthday_month smallint,
    birthday_day smallint,
    -- When the birthday was last set, changed or cleared: a birthday reward needs
    -- the birthday set at least 2 days before.
    birthday_updated_at timestamptz,
    -- Non-null while the member is flagged as fraudulent.
    fraud_flagged_at timestamptz,
    fraud_reason text,
    created_at timestamptz not null default now(),
    constraint member_birthday_complete
        check ((birthday_month is null) = (birthday_day is null)
               and (birthday_year is null or birthday_month is not null)),
    constraint member_fraud_reason_with_flag
        check ((fraud_flagged_at is null) = (fraud_reason is null))
);

-- One row per earning call's natural key: the idempotency record. A retry finds
-- the row and compares its content; the entries it created are the original result.
create table earning_event (
    account_id text not null references member (account_id),
    earning_event_id bigint generated always as identity,
    -- 'order', 'order_reversal', 'review', 'visit', 'post', 'bonus'
    kind text not null,
    -- The natural key within (account_id, kind): order id, "order/product",
    -- local date of a visit, post id, campaign id.
    natural_key text not null,
    -- The request content the key was first used with; a retry with other content
    -- is refused (ALREADY_EXISTS).
    content jsonb not null,
    occurred_at timestamptz not null,
    created_at timestamptz not null default now(),
    primary key (account_id, earning_event_id),
    unique (account_id, kind, natural_key),
    constraint earning_event_kind
        check (kind in ('order', 'order_reversal', 'review', 'visit', 'post', 'bonus'))
);

-- The append-only points ledger. Balances are sums over it.
create table point_entry (
    account_id text not null,
    point_entry_id bigint generated always as identity,
    earning_event_id bigint not null,
    source text not null,
    -- The id of what earned the points (order id, post id, ...).
    reference text not null,
    -- Positive for an award, 0 for a fully capped award, negative for a reversal.
    points integer not null,
    -- Why fewer points than the rule gives; null for a full award or a reversal.
    cap_reason text,
    -- The event's instant (for a reversal, the reversal's instant).
    occurred_at timestamptz not null,
    -- The program-time-zone date the points count for (caps, months, the
    -- 12-month window). A reversal keeps the date of the entry it reverses.
    local_date date not null,
    reverses_point_entry_id bigint,
    created_at timestamptz not null default now(),
    primary key (account_id, point_entry_id),
    foreign key (account_id, earning_event_id)
        references earning_event (account_id, earning_event_id),
    foreign key (account_id, reverses_point_entry_id)
        references point_entry (account_id, point_entry_id),
    -- An entry is compensated at most once, whatever the concurrency.
    unique (account_id, reverses_point_entry_id),
    constraint point_entry_source
        check (source in ('order', 'category_variety', 'review', 'visit', 'post', 'bonus')),
    constraint point_entry_cap_reason
        check (cap_reason in ('daily_cap', 'monthly_cap', 'below_minimum',
                              'currency_not_eligible', 'member_flagged')),
    constraint point_entry_reversal_sign
        check (reverses_point_entry_id is null or points < 0)
);

-- Balances sum a member's entries by local date; the level evaluation sums
-- everyone's by month.
create index point_entry_account_date on point_entry (account_id, local_date) include (points);
create index point_entry_event on point_entry (account_id, earning_event_id);

-- Guarded cap counters: the points a member's events asked for in a period (a
-- local day or month). The upsert that bumps a counter locks its row, so
-- concurrent events of one member and period are serialized there, and the award
-- is derived from the counter's value before and after the bump:
-- award = min(after, cap) - min(before, cap). Counting demand rather than awards
-- keeps that one statement and lets a changed cap apply cleanly.
create table earning_counter (
    account_id text not null references member (account_id),
    -- 'order_points' (per day), 'categories' (distinct categories per day),
    -- 'visit_points' (per month), 'post_points' (per month)
    counter text not null,
    -- The local day, or the first day of the local month.
    period_start date not null,
    demand bigint not null,
    primary key (account_id, counter, period_start)
);

-- The products of confirmed orders: a review earns only for one of them.
create table order_product (
    account_id text not null,
    order_id text not null,
    product_id text not null,
    category_id text not null,
    primary key (account_id, order_id, product_id),
    foreign key (account_id) references member (account_id)
);

-- The distinct categories a member bought on a local day (category variety).
create table member_day_category (
    account_id text not null references member (account_id),
    local_date date not null,
    category_id text not null,
    primary key (account_id, local_date, category_id)
);
