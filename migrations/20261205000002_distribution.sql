-- Scale-out on Citus (docs/scale-out.md). On plain PostgreSQL this migration
-- only creates `loyalty_distribute`, whose calls then do nothing.
--
-- Where the `citus` extension is installed (migrations run through the
-- coordinator), every table becomes one of:
-- - a *member* table: distributed by `account_id` and colocated with
--   `member`, so that one member's rows (points, coupons, orders, history)
--   live on one worker and a per-member statement routes to it;
-- - a *reference* table: small, read on every call, written by admins and
--   jobs, copied whole to every node.
--
-- Each later migration that creates a table distributes it in the same
-- migration, with one call, right after its `create table`:
--     select loyalty_distribute('new_table', 'member');
-- A database that was distributed by hand is left as it is (the helper skips a
-- table that is already distributed), so this migration may also run there.

create function loyalty_distribute(tbl regclass, kind text) returns void
language plpgsql as $$
begin
    if kind not in ('member', 'reference') then
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
    elsif tbl = 'member'::regclass then
        perform create_distributed_table(tbl, 'account_id', colocate_with => 'none');
    else
        perform create_distributed_table(tbl, 'account_id', colocate_with => 'member');
    end if;
end
$$;

comment on function loyalty_distribute(regclass, text) is
    'Distributes a table on Citus (a no-op on plain PostgreSQL): kind ''member'' '
    '(by account_id, colocated with member) or ''reference'' (copied to every node).';

-- A call's `set local statement_timeout, lock_timeout` (sent with its
-- `BEGIN`) must bound its statements on the workers too, where its locks are
-- taken: Citus passes a transaction's `set local` on to them only when asked.
do $$
begin
    if exists (select 1 from pg_extension where extname = 'citus') then
        execute format('alter database %I set citus.propagate_set_commands = local', current_database());
    end if;
end
$$;

-- Reference tables first: the member tables' foreign keys point at them.
-- `coupon_template` before the tables that reference it, `code_batch` before
-- `claim_code`.
select loyalty_distribute('coupon_template', 'reference');
select loyalty_distribute('code_batch', 'reference');
select loyalty_distribute('claim_code', 'reference');
select loyalty_distribute('coupon_template_day', 'reference');
select loyalty_distribute('reward_template', 'reference');
select loyalty_distribute('daily_reward_run', 'reference');
select loyalty_distribute('level_evaluation', 'reference');
select loyalty_distribute('event_slicer', 'reference');
select loyalty_distribute('event_slice', 'reference');
select loyalty_distribute('event_relay', 'reference');
select loyalty_distribute('admin_change', 'reference');
-- The migrations' own record, so that a server connected to a worker sees
-- which migrations the coordinator applied (it does not apply them itself).
select loyalty_distribute('_sqlx_migrations', 'reference');

-- Then `member`, and every table keyed by a member, colocated with it.
select loyalty_distribute('member', 'member');
select loyalty_distribute('member_change', 'member');
select loyalty_distribute('member_level', 'member');
select loyalty_distribute('member_template', 'member');
select loyalty_distribute('member_day_category', 'member');
select loyalty_distribute('member_reward', 'member');
select loyalty_distribute('earning_event', 'member');
select loyalty_distribute('earning_counter', 'member');
select loyalty_distribute('point_entry', 'member');
select loyalty_distribute('order_product', 'member');
select loyalty_distribute('coupon', 'member');
select loyalty_distribute('coupon_transition', 'member');
select loyalty_distribute('checkout_order', 'member');
select loyalty_distribute('checkout_order_line', 'member');
select loyalty_distribute('checkout_allocation', 'member');
select loyalty_distribute('checkout_refund', 'member');
select loyalty_distribute('checkout_refund_line', 'member');
select loyalty_distribute('checkout_clawback', 'member');
select loyalty_distribute('order_change', 'member');
select loyalty_distribute('event', 'member');
