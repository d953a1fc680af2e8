-- The monthly evaluation runs in batches of members, one transaction each
-- (docs/decisions.md): a run in progress keeps here how far it has got, so
-- that a crash or a deadline keeps the batches done and the next call goes on
-- from there. The row goes when the run finishes, in the transaction that
-- records the evaluation in `level_evaluation`. One run at a time: the batches
-- take the `levels` row of `job_lock`.
--
-- (`job_lock` also has a row per other job that takes turns, inserted by its
-- first run: 'expiry_notices'.)
create table level_evaluation_run (
    -- The first day of the month being evaluated.
    month date primary key,
    effective_from timestamptz not null,
    -- Where the run has got to: members go in account id order, and the run
    -- has evaluated those up to this one (null before the first batch).
    last_account text,
    members_evaluated bigint not null default 0,
    level_changes bigint not null default 0,
    level_ups bigint not null default 0,
    started_at timestamptz not null
);
select loyalty_distribute('level_evaluation_run', 'reference');

-- The hash ranges of the members, in order: on Citus those of the `member`
-- shards (a member is in the shard whose range holds hashtext(account_id),
-- Citus's hash of a text key); on PostgreSQL, or while `member` has no shards,
-- one range of every hash. A job that goes through members range by range
-- (the reward settlement) reads one shard at a time; read at each run, so
-- that a shard split is followed. The ranges cover every hash either way.
create or replace function loyalty_member_ranges(out lo int, out hi int) returns setof record
language plpgsql stable as $$
begin
    if exists (select 1 from pg_extension where extname = 'citus') then
        -- Dynamic: `pg_dist_shard` exists only with the extension.
        return query execute
            'select shardminvalue::int, shardmaxvalue::int from pg_dist_shard
             where logicalrelid = ''member''::regclass order by 1';
        if found then
            return;
        end if;
    end if;
    return query select (-2147483648)::int, 2147483647;
end
$$;
