-- Template stock and claim codes out of the reference tables (docs/scale-out.md,
-- "Stock"). On Citus a reference table is copied to every node, so every
-- write to it is a write on every node, with two-phase commit: issuance wrote
-- `coupon_template.issued_count` and `coupon_template_day`, and a claim
-- `claim_code`, on every call. Now:
-- - `template_stock`: a template's issued count, one row per template. Its
--   row is also the template's lock: issuance takes it, and so does every
--   change of the template (`UpdateCouponTemplate`, `SetCouponTemplatePaused`),
--   so that the terms, the pause and the stock an issuance checks are those of
--   its turn.
-- - `template_stock_day`: the coupons of a template issued per local day (the
--   daily stock; replaces `coupon_template_day`).
-- - `claim_code`: distributed by its hash, so that consuming a single-use code
--   writes the one worker that holds it.
-- The stock tables are distributed by `template_id` and colocated, so that
-- taking stock (`loyalty_take_stock`) runs whole on the template's worker: an
-- issuance writes the template's worker and the member's (and the code's, for
-- a single-use code), and no other.
--
-- `coupon_template`'s check that the issued count stays within the total
-- stock goes with the column: a check cannot span two tables. The counter's
-- only writer, `loyalty_take_stock`, and the only change of the total,
-- `UpdateCouponTemplate` (`STOCK_BELOW_ISSUED`), both check it under the stock
-- row's lock.
--
-- A server of the previous release bumps `coupon_template.issued_count`,
-- dropped here: during a rolling deploy its issuance fails (INTERNAL) rather
-- than counting stock where this release does not look.

-- What is moved below stays still until this migration commits: a server of
-- the previous release issuing meanwhile waits, then fails on the dropped
-- column instead of writing rows behind the copies.
lock table coupon_template, coupon_template_day, claim_code in exclusive mode;

-- Two more kinds of distributed table: 'template' (by `template_id`,
-- colocated with `template_stock`) and 'code' (by `code_hash`).
create or replace function loyalty_distribute(tbl regclass, kind text) returns void
language plpgsql as $$
begin
    if kind not in ('member', 'reference', 'template', 'code') then
        raise exception 'loyalty_distribute: unknown kind %', kind;
    end if;
    if not exists (select 1 from pg_extension where extname = 'citus') then
        return;
    end if;
    if exists (select 1 from pg_dist_partition where logicalrelid = tbl) then
        return;
    end if;
    -- A reference table keeps its foreign keys from tables not distributed
    -- yet (they follow in this migration), without Citus turning those into
    -- coordinator-local tables on the way.
    perform set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    if kind = 'reference' then
        perform create_reference_table(tbl);
    elsif kind = 'code' then
        perform create_distributed_table(tbl, 'code_hash', colocate_with => 'none');
    elsif kind = 'template' and tbl = 'template_stock'::regclass then
        perform create_distributed_table(tbl, 'template_id', colocate_with => 'none');
    elsif kind = 'template' then
        perform create_distributed_table(tbl, 'template_id', colocate_with => 'template_stock');
    elsif tbl = 'member'::regclass then
        perform create_distributed_table(tbl, 'account_id', colocate_with => 'none');
    else
        perform create_distributed_table(tbl, 'account_id', colocate_with => 'member');
    end if;
end
$$;

comment on function loyalty_distribute(regclass, text) is
    'Distributes a table on Citus (a no-op on plain PostgreSQL): kind ''member'' '
    '(by account_id, colocated with member), ''template'' (by template_id, colocated with '
    'template_stock), ''code'' (by code_hash) or ''reference'' (copied to every node).';

-- A function's colocation is now a choice: the member's (by its first
-- argument, an account id) or a template's (its first argument, a template id).
drop function loyalty_distribute_function(regprocedure);
create function loyalty_distribute_function(fn regprocedure, colocate_with text default 'member')
returns void
language plpgsql as $$
begin
    if not exists (select 1 from pg_extension where extname = 'citus') then
        return;
    end if;
    perform create_distributed_function(fn, '$1', colocate_with => colocate_with, force_delegation => true);
end
$$;

-- On Citus a new table with a foreign key to a reference table would become
-- a coordinator-local table on its `create table`, before `loyalty_distribute`
-- could distribute it (the setting is a placeholder on plain PostgreSQL).
select set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);

create table template_stock (
    template_id text primary key references coupon_template (template_id),
    -- The guarded stock counter: bumped by `loyalty_take_stock` only while
    -- below the template's `total_stock`.
    issued_count bigint not null default 0 check (issued_count >= 0)
);
select loyalty_distribute('template_stock', 'template');
insert into template_stock (template_id, issued_count)
select template_id, issued_count from coupon_template;

create table template_stock_day (
    template_id text not null references template_stock (template_id),
    local_date date not null,
    issued_count bigint not null check (issued_count > 0),
    primary key (template_id, local_date)
);
select loyalty_distribute('template_stock_day', 'template');
insert into template_stock_day (template_id, local_date, issued_count)
select template_id, local_date, issued_count from coupon_template_day;

drop table coupon_template_day;

-- Citus sends some commands on a reference table to the workers as the text
-- they came in, which here is the whole migration, several commands in one,
-- and the workers refuse that: such commands go one at a time, through
-- `execute`.
do $$
begin
    -- Also drops the check `coupon_template_stock`, which
    -- `loyalty_take_stock` now keeps.
    execute 'alter table coupon_template drop column issued_count';
end
$$;

-- A reference table cannot become a distributed one in place (not without
-- undistributing the tables its foreign keys point at): a new table takes the
-- rows and the name. (Citus cannot rename a distributed table's constraints,
-- so the old table gives up its names first.)
do $$
begin
    execute 'alter index claim_code_pkey rename to claim_code_old_pkey';
    execute 'alter table claim_code rename to claim_code_old';
end
$$;
create table claim_code (
    -- sha256 of the upper-cased code.
    code_hash bytea not null,
    template_id text not null references coupon_template (template_id),
    kind text not null,
    public_code text,
    -- For a single-use code: who consumed it. Guarded: `where consumed_by is null`.
    consumed_by text,
    consumed_at timestamptz,
    created_at timestamptz not null default now(),
    code_batch_id bigint references code_batch (code_batch_id),
    constraint claim_code_pkey primary key (code_hash),
    constraint claim_code_kind check (
        (kind = 'public' and public_code is not null and consumed_by is null)
        or (kind = 'single_use' and public_code is null))
);
select loyalty_distribute('claim_code', 'code');
insert into claim_code (code_hash, template_id, kind, public_code, consumed_by, consumed_at, created_at,
                        code_batch_id)
select code_hash, template_id, kind, public_code, consumed_by, consumed_at, created_at, code_batch_id
from claim_code_old;
drop table claim_code_old;

-- Takes one coupon of a template's stock for an issuance at `p_now`, on the
-- program-time-zone day `p_local_date`. Locks the template's stock row
-- first; the template is then read as it stands after that lock (each
-- statement of a function reads a new snapshot), so that a change of the
-- template (which takes the same lock) is wholly before or after. Checks, in
-- the order of the refusals: paused, ended, the total stock, the day's stock;
-- then counts the coupon on the day (when the template has a daily stock) and
-- in the total. `outcome` is 'taken', or why not, having written nothing:
-- 'not_found', 'paused', 'ended', 'out_of_stock', 'daily_stock_exhausted'.
-- `terms_at`: the `updated_at` of the terms it checked, which the coupon's
-- issuance must find too (`loyalty_issue_coupon`).
create function loyalty_take_stock(
    p_template_id text,
    p_local_date date,
    p_now timestamptz,
    out outcome text,
    out terms_at timestamptz
) returns record
language plpgsql as $$
declare
    issued bigint;
    is_paused boolean;
    total bigint;
    daily bigint;
    ends_at timestamptz;
    day_count bigint;
begin
    select s.issued_count into issued from template_stock s where s.template_id = p_template_id for update;
    if not found then
        outcome := 'not_found';
        return;
    end if;
    select t.paused, t.total_stock, t.daily_stock, t.valid_until, t.updated_at
    into is_paused, total, daily, ends_at, terms_at
    from coupon_template t where t.template_id = p_template_id;
    if is_paused then
        outcome := 'paused';
    elsif ends_at is not null and ends_at <= p_now then
        outcome := 'ended';
    elsif total is not null and issued >= total then
        outcome := 'out_of_stock';
    elsif daily is not null and daily <= 0 then
        outcome := 'daily_stock_exhausted';
    end if;
    if outcome is not null then
        return;
    end if;
    if daily is not null then
        insert into template_stock_day as d (template_id, local_date, issued_count)
        values (p_template_id, p_local_date, 1)
        on conflict (template_id, local_date) do update set issued_count = d.issued_count + 1
        where d.issued_count < daily
        returning d.issued_count into day_count;
        if day_count is null then
            outcome := 'daily_stock_exhausted';
            return;
        end if;
    end if;
    update template_stock s set issued_count = s.issued_count + 1 where s.template_id = p_template_id;
    outcome := 'taken';
end
$$;
select loyalty_distribute_function('loyalty_take_stock(text, date, timestamptz)', 'template_stock');

-- Issues a coupon of the template to the member, copying the template's
-- terms, with its `issue` transition and its `coupon_issued` event; returns
-- it. No row when the template does not exist. Stock is taken before, in the
-- same transaction (`loyalty_take_stock`), which returned `p_terms_at`: terms
-- of another instant here mean the template changed in between, which on
-- plain PostgreSQL the stock row's lock prevents, but on Citus a change
-- commits on each node in turn, and the member's worker may not show it yet.
-- The issuance is then refused as a serialization failure (40001), which the
-- service retries.
create function loyalty_issue_coupon(
    p_account_id text,
    p_template_id text,
    p_terms_at timestamptz,
    p_source text,
    p_claim_code_hash bytea,
    p_issuance_id text,
    p_now timestamptz,
    p_request_id text,
    p_caller text
) returns setof coupon
language plpgsql as $$
declare
    t_name text;
    t_issuer text;
    t_seller_id text;
    t_discount_kind text;
    t_amount_off_minor bigint;
    t_percent_basis_points integer;
    t_max_discount_minor bigint;
    t_currency text;
    t_min_purchase_minor bigint;
    t_regular_price_only boolean;
    t_valid_from timestamptz;
    t_expires_at timestamptz;
    t_updated_at timestamptz;
    issued coupon;
begin
    select t.name, t.issuer, t.seller_id, t.discount_kind, t.amount_off_minor, t.percent_basis_points,
           t.max_discount_minor, t.currency, t.min_purchase_minor, t.regular_price_only,
           coalesce(t.valid_from, p_now), coalesce(t.valid_until, p_now + t.valid_days * interval '24 hours'),
           t.updated_at
    into t_name, t_issuer, t_seller_id, t_discount_kind, t_amount_off_minor, t_percent_basis_points,
         t_max_discount_minor, t_currency, t_min_purchase_minor, t_regular_price_only, t_valid_from,
         t_expires_at, t_updated_at
    from coupon_template t where t.template_id = p_template_id;
    if not found then
        return;
    end if;
    if t_updated_at is distinct from p_terms_at then
        raise exception 'template % changed while this issuance took its stock', p_template_id
            using errcode = '40001';
    end if;
    insert into coupon (account_id, template_id, status, name, issuer, seller_id, discount_kind,
        amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor,
        regular_price_only, valid_from, expires_at, source, claim_code_hash, issuance_id, issued_at, updated_at)
    values (p_account_id, p_template_id, 'valid', t_name, t_issuer, t_seller_id, t_discount_kind,
        t_amount_off_minor, t_percent_basis_points, t_max_discount_minor, t_currency, t_min_purchase_minor,
        t_regular_price_only, t_valid_from, t_expires_at, p_source, p_claim_code_hash, p_issuance_id, p_now,
        p_now)
    returning * into issued;
    insert into coupon_transition (account_id, coupon_id, action, to_status, occurred_at, request_id, caller)
    values (p_account_id, issued.coupon_id, 'issue', 'valid', p_now, p_request_id, p_caller);
    insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
    values (p_account_id, 'coupon_issued', p_now, p_request_id, p_caller,
            jsonb_build_object('coupon_id', issued.coupon_id, 'template_id', p_template_id, 'source', p_source,
                               'valid_from', t_valid_from, 'expires_at', t_expires_at));
    return next issued;
end
$$;
select loyalty_distribute_function(
    'loyalty_issue_coupon(text, text, timestamptz, text, bytea, text, timestamptz, text, text)');
