-- Coupons: templates, claim codes, coupons and their transitions, and the
-- membership level history (coupon templates may be restricted to levels).

-- The level a member holds between two instants, as set by the monthly level
-- evaluation. A member without a row for an instant is Silver.
-- No foreign keys: the rows are derived by the evaluation from the ledger (whose
-- entries already reference members) and written set-based, up to a million at
-- once; row-by-row referential triggers would double the evaluation's time.
create table member_level (
    account_id text not null,
    effective_from timestamptz not null,
    -- Null while the level is current.
    effective_to timestamptz,
    level text not null,
    -- The points of the 12-month window the level was computed from.
    window_points bigint not null,
    primary key (account_id, effective_from),
    constraint member_level_name check (level in ('silver', 'gold', 'platinum', 'diamond')),
    constraint member_level_period check (effective_to is null or effective_to > effective_from)
);

-- A small reference table (replicated on Citus), edited by admins.
create table coupon_template (
    template_id text primary key,
    name text not null,
    description text not null,
    issuer text not null,
    -- Set for a seller coupon only.
    seller_id text,
    discount_kind text not null,
    amount_off_minor bigint,
    percent_basis_points integer,
    -- Null for no maximum.
    max_discount_minor bigint,
    currency text not null,
    min_purchase_minor bigint not null,
    -- Either an absolute window, or a number of days from issuance.
    valid_from timestamptz,
    valid_until timestamptz,
    valid_days integer,
    -- Null for unlimited.
    total_stock bigint,
    daily_stock bigint,
    per_member_limit integer not null,
    -- Empty for every level.
    allowed_levels text[] not null,
    regular_price_only boolean not null,
    paused boolean not null default false,
    -- The guarded stock counter: bumped in the issuing transaction with
    -- `where total_stock is null or issued_count < total_stock`.
    issued_count bigint not null default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint coupon_template_issuer check (
        (issuer = 'platform' and seller_id is null) or (issuer = 'seller' and seller_id is not null)),
    constraint coupon_template_discount check (
        (discount_kind = 'amount' and amount_off_minor > 0 and percent_basis_points is null)
        or (discount_kind = 'percent' and amount_off_minor is null
            and percent_basis_points between 1 and 10000)),
    constraint coupon_template_validity check (
        (valid_days is null and valid_from is not null and valid_until > valid_from)
        or (valid_days > 0 and valid_from is null and valid_until is null)),
    constraint coupon_template_stock check (total_stock is null or issued_count <= total_stock),
    constraint coupon_template_limit check (per_member_limit > 0)
);

-- Coupons issued per template and program-time-zone day (daily stock).
create table coupon_template_day (
    template_id text not null references coupon_template (template_id),
    local_date date not null,
    issued_count bigint not null,
    primary key (template_id, local_date)
);

-- Coupons of a template a member received (per-member limit).
create table member_template (
    account_id text not null references member (account_id),
    template_id text not null references coupon_template (template_id),
    issued_count integer not null,
    primary key (account_id, template_id)
);

-- Claim codes. Only a hash is stored: single-use codes cannot be listed or
-- recovered; public codes keep their text for admins.
create table claim_code (
    -- sha256 of the upper-cased code.
    code_hash bytea primary key,
    template_id text not null references coupon_template (template_id),
    kind text not null,
    public_code text,
    -- For a single-use code: who consumed it. Guarded: `where consumed_by is null`.
    consumed_by text,
    consumed_at timestamptz,
    created_at timestamptz not null default now(),
    constraint claim_code_kind check (
        (kind = 'public' and public_code is not null and consumed_by is null)
        or (kind = 'single_use' and public_code is null))
);

create table coupon (
    account_id text not null references member (account_id),
    coupon_id bigint generated always as identity,
    template_id text not null references coupon_template (template_id),
    -- The stored status. A 'valid' coupon past expires_at reads as EXPIRED
    -- everywhere at once; no job has to touch it first.
    status text not null,
    -- The order an 'inactive' coupon is reserved for, or a 'used' one was used on.
    order_id text,
    -- The terms, copied from the template at issuance: a template change never
    -- changes an issued coupon, and expires_at is never extended.
    name text not null,
    issuer text not null,
    seller_id text,
    discount_kind text not null,
    amount_off_minor bigint,
    percent_basis_points integer,
    max_discount_minor bigint,
    currency text not null,
    min_purchase_minor bigint not null,
    regular_price_only boolean not null,
    valid_from timestamptz not null,
    expires_at timestamptz not null,
    source text not null,
    -- The claim code it came from (a member claims a code once).
    claim_code_hash bytea,
    -- The caller's key of a direct issuance (idempotency).
    issuance_id text,
    issued_at timestamptz not null,
    updated_at timestamptz not null,
    primary key (account_id, coupon_id),
    unique (account_id, claim_code_hash),
    unique (account_id, issuance_id),
    constraint coupon_status check (status in ('valid', 'inactive', 'used', 'expired', 'revoked')),
    constraint coupon_order check ((status in ('inactive', 'used')) = (order_id is not null)),
    constraint coupon_source check (source in ('public_code', 'single_use_code', 'issuance'))
);

-- "My coupons", newest first.
create index coupon_account_recent on coupon (account_id, coupon_id desc);
-- The coupons of an order (complete, cancel, refund).
create index coupon_account_order on coupon (account_id, order_id) where order_id is not null;

-- Every status change of a coupon, and the record that makes order transitions
-- idempotent: an action is done for (coupon, order) at most once.
create table coupon_transition (
    account_id text not null,
    coupon_transition_id bigint generated always as identity,
    coupon_id bigint not null,
    action text not null,
    from_status text,
    to_status text not null,
    order_id text,
    note text not null default '',
    occurred_at timestamptz not null,
    primary key (account_id, coupon_transition_id),
    foreign key (account_id, coupon_id) references coupon (account_id, coupon_id),
    constraint coupon_transition_action check (
        action in ('issue', 'reserve', 'complete', 'cancel', 'refund_full', 'refund_partial', 'revoke'))
);

create index coupon_transition_coupon on coupon_transition (account_id, coupon_id);
create unique index coupon_transition_order_once
    on coupon_transition (account_id, order_id, coupon_id, action)
    where action in ('complete', 'cancel', 'refund_full', 'refund_partial');
