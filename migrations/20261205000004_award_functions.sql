-- An order award's writes as two functions (docs/scale-out.md, "One task per
-- call"). Citus runs a statement with data-modifying CTEs as one subplan per
-- CTE, each a round trip through the coordinator; a function distributed by
-- its member argument runs whole on the member's worker instead, each of its
-- single-table statements there. On plain PostgreSQL each function is one
-- round trip, as the statement it replaces was.
--
-- The functions only write: the rules (which points, which caps) stay in the
-- service, which passes what it decided as arguments. A later change to these
-- writes is a new migration with `create or replace function`.

-- Distributes a function by its first argument, the member's account id, on
-- Citus (a no-op on plain PostgreSQL): a call, even inside a transaction,
-- runs on the worker that holds the member's rows.
create function loyalty_distribute_function(fn regprocedure) returns void
language plpgsql as $$
begin
    if not exists (select 1 from pg_extension where extname = 'citus') then
        return;
    end if;
    perform create_distributed_function(fn, '$1', colocate_with => 'member', force_delegation => true);
end
$$;

-- An earning event under its natural key (any kind), with the member's fraud
-- flag: no row when the account is not a member; a null `earning_event_id`
-- when the key is taken (a retry or a conflict). A concurrent insert of the
-- same key waits here until the first commits or rolls back.
create function loyalty_record_event(
    p_account_id text,
    p_kind text,
    p_natural_key text,
    p_content jsonb,
    p_occurred_at timestamptz,
    p_now timestamptz,
    p_request_id text,
    p_caller text,
    out flagged boolean,
    out earning_event_id bigint
) returns setof record
language plpgsql as $$
begin
    select m.fraud_flagged_at is not null into flagged from member m where m.account_id = p_account_id;
    if not found then
        return;
    end if;
    insert into earning_event (account_id, kind, natural_key, content, occurred_at, created_at,
                               request_id, caller)
    values (p_account_id, p_kind, p_natural_key, p_content, p_occurred_at, p_now, p_request_id, p_caller)
    on conflict (account_id, kind, natural_key) do nothing
    returning earning_event.earning_event_id into earning_event_id;
    return next;
end
$$;
select loyalty_distribute_function(
    'loyalty_record_event(text, text, text, jsonb, timestamptz, timestamptz, text, text)');

-- A confirmed order's earning event under its natural key and, when the event
-- is new, the order's rows: the categories bought on the local day (not for a
-- flagged member), its order points on the day's order counter when eligible
-- (and the member is not flagged), the new categories on the day's category
-- counter, and its products.
--
-- No row when the account is not a member; a null `earning_event_id` when the
-- key is taken (a retry or a conflict), with nothing else written. The counts
-- come from the rows returned, never from an affected-row count.
--
-- The rows are taken in the order every order takes them: the event, the
-- order counter, the categories (sorted by the caller), the category counter,
-- the products. It is the order of the single statement this replaces, so
-- concurrent orders of a member serialize on the rows and cannot deadlock,
-- with each other or, on plain PostgreSQL, with a server of the previous
-- release (which did not run on Citus).
create function loyalty_record_order(
    p_account_id text,
    p_kind text,
    p_natural_key text,
    p_content jsonb,
    p_occurred_at timestamptz,
    p_now timestamptz,
    p_request_id text,
    p_caller text,
    p_local_date date,
    p_categories text[],
    p_order_counter text,
    p_order_points bigint,
    p_eligible boolean,
    p_category_counter text,
    p_order_id text,
    p_product_ids text[],
    p_category_ids text[],
    out flagged boolean,
    out earning_event_id bigint,
    out order_demand bigint,
    out new_categories bigint,
    out category_demand bigint
) returns setof record
language plpgsql as $$
declare
    category text;
    added boolean := false;
begin
    select e.flagged, e.earning_event_id into flagged, earning_event_id
    from loyalty_record_event(p_account_id, p_kind, p_natural_key, p_content, p_occurred_at, p_now,
                              p_request_id, p_caller) e;
    if not found then
        return;
    end if;
    new_categories := 0;
    if earning_event_id is null then
        return next;
        return;
    end if;
    if p_eligible and not flagged then
        insert into earning_counter as c (account_id, counter, period_start, demand)
        values (p_account_id, p_order_counter, p_local_date, p_order_points)
        on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand
        returning c.demand into order_demand;
    end if;
    -- One single-row statement per category and product: each routes to the
    -- member's shard on Citus, and each category's `returning` says whether
    -- it was new.
    if not flagged then
        foreach category in array p_categories loop
            insert into member_day_category (account_id, local_date, category_id)
            values (p_account_id, p_local_date, category)
            on conflict do nothing
            returning true into added;
            if added then
                new_categories := new_categories + 1;
            end if;
            added := false;
        end loop;
    end if;
    if new_categories > 0 then
        insert into earning_counter as c (account_id, counter, period_start, demand)
        values (p_account_id, p_category_counter, p_local_date, new_categories)
        on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand
        returning c.demand into category_demand;
    end if;
    for i in 1 .. coalesce(array_length(p_product_ids, 1), 0) loop
        insert into order_product (account_id, order_id, product_id, category_id)
        values (p_account_id, p_order_id, p_product_ids[i], p_category_ids[i]);
    end loop;
    return next;
end
$$;
select loyalty_distribute_function(
    'loyalty_record_order(text, text, text, jsonb, timestamptz, timestamptz, text, text, date, text[], '
    'text, bigint, boolean, text, text, text[], text[])');

-- An entry as the payload of a points event lists it (`entries[]`).
create function loyalty_entry_json(entry point_entry) returns jsonb
language sql immutable as $$
    select jsonb_build_object(
        'entry_id', entry.point_entry_id, 'source', entry.source, 'reference', entry.reference,
        'points', entry.points, 'cap_reason', entry.cap_reason, 'occurred_at', entry.occurred_at,
        'local_date', entry.local_date, 'recorded_at', entry.created_at,
        'reverses_entry_id', entry.reverses_point_entry_id)
$$;

-- The event of the entries one call appended (`entries`, each
-- `loyalty_entry_json`): none when it appended nothing.
create function loyalty_insert_points_event(
    p_account_id text,
    p_event_type text,
    p_now timestamptz,
    p_request_id text,
    p_caller text,
    p_points bigint,
    p_entries jsonb
) returns void
language plpgsql as $$
begin
    if jsonb_array_length(p_entries) > 0 then
        insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
        values (p_account_id, p_event_type, p_now, p_request_id, p_caller,
                jsonb_build_object('points', p_points, 'entries', p_entries));
    end if;
end
$$;

-- Appends the entries of one new earning event (the arrays, one element per
-- entry, in ledger order) with their `points_awarded` event, and returns them.
-- The event's payload is the one `src/db/points.rs` builds for every points
-- event: the sum, and each entry as it was written.
create function loyalty_award_entries(
    p_account_id text,
    p_earning_event_id bigint,
    p_sources text[],
    p_references text[],
    p_points integer[],
    p_cap_reasons text[],
    p_occurred_at timestamptz[],
    p_local_dates date[],
    p_now timestamptz,
    p_request_id text,
    p_caller text
) returns setof point_entry
language plpgsql as $$
declare
    entry point_entry;
    total bigint := 0;
    payload_entries jsonb := '[]';
begin
    for i in 1 .. coalesce(array_length(p_sources, 1), 0) loop
        insert into point_entry (account_id, earning_event_id, source, reference, points, cap_reason,
                                 occurred_at, local_date)
        values (p_account_id, p_earning_event_id, p_sources[i], p_references[i], p_points[i],
                p_cap_reasons[i], p_occurred_at[i], p_local_dates[i])
        returning * into entry;
        total := total + entry.points;
        payload_entries := payload_entries || loyalty_entry_json(entry);
        return next entry;
    end loop;
    perform loyalty_insert_points_event(p_account_id, 'points_awarded', p_now, p_request_id, p_caller, total,
        payload_entries);
end
$$;
select loyalty_distribute_function(
    'loyalty_award_entries(text, bigint, text[], text[], integer[], text[], timestamptz[], date[], '
    'timestamptz, text, text)');

-- Appends, for a reversal event, the compensating entry of every positive
-- entry of the order's event (in ledger order), each keeping the local date
-- of the entry it reverses, with their `points_reversed` event; returns them.
-- A function, as the award is, so that a member's entries are all made on
-- the node that holds the member (on Citus, ids come from that node's range).
create function loyalty_reverse_entries(
    p_account_id text,
    p_reversal_event_id bigint,
    p_order_event_id bigint,
    p_reversed_at timestamptz,
    p_now timestamptz,
    p_request_id text,
    p_caller text
) returns setof point_entry
language plpgsql as $$
declare
    ids bigint[];
    sources text[];
    refs text[];
    points integer[];
    dates date[];
    entry point_entry;
    total bigint := 0;
    payload_entries jsonb := '[]';
begin
    -- Read first, as arrays of columns, then written one by one: Citus 13.2
    -- neither keeps a cursor over a distributed table nor aggregates its whole
    -- rows (it gives them the shard's row type) inside a delegated call.
    select array_agg(e.point_entry_id order by e.point_entry_id), array_agg(e.source order by e.point_entry_id),
           array_agg(e.reference order by e.point_entry_id), array_agg(e.points order by e.point_entry_id),
           array_agg(e.local_date order by e.point_entry_id)
    into ids, sources, refs, points, dates
    from point_entry e
    where e.account_id = p_account_id and e.earning_event_id = p_order_event_id and e.points > 0;
    for i in 1 .. coalesce(array_length(ids, 1), 0) loop
        insert into point_entry (account_id, earning_event_id, source, reference, points, occurred_at,
                                 local_date, reverses_point_entry_id)
        values (p_account_id, p_reversal_event_id, sources[i], refs[i], -points[i], p_reversed_at, dates[i],
                ids[i])
        returning * into entry;
        total := total + entry.points;
        payload_entries := payload_entries || loyalty_entry_json(entry);
        return next entry;
    end loop;
    perform loyalty_insert_points_event(p_account_id, 'points_reversed', p_now, p_request_id, p_caller, total,
        payload_entries);
end
$$;
select loyalty_distribute_function(
    'loyalty_reverse_entries(text, bigint, bigint, timestamptz, timestamptz, text, text)');
