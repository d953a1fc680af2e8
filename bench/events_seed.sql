-- A backlog of events for the relay benchmark, loaded by scripts/bench-events
-- into a database seeded with bench/seed.sql, before the server starts.
-- psql variables: events, per_slice, members.
--
-- Rows as the service writes them (src/db/points.rs insert_entries,
-- src/db/coupons/orders.rs change; the payload expressions of
-- src/db/events.rs insert_event_sql's callers), on many accounts: half
-- points_awarded (an order's two entries), a quarter coupon_reserved, a
-- quarter coupon_used; request ids of 32 hex digits, as the server makes up
-- for a call without x-request-id. The entries and coupons they name are not
-- in the ledger: the relay reads only the event log.
--
-- Slices as the slicer cuts them under load: every `per_slice` events commit
-- in one transaction, stamped with their slice, then the slice is cut and
-- settled in the next (the slicer groups the
-- commits of ~5 ms, and a relay batch reads at most 256 slices).

set synchronous_commit = off;
set bench.events to :'events';
set bench.per_slice to :'per_slice';
set bench.members to :'members';

do $$
declare
    total bigint := current_setting('bench.events')::bigint;
    per_slice int := greatest(current_setting('bench.per_slice')::int, 1);
    members bigint := current_setting('bench.members')::bigint;
    first bigint := 1;
    last bigint;
    slice bigint := (select max(slice_id) from event_slice);
begin
    while first <= total loop
        last := least(first + per_slice - 1, total);
        insert into event (account_id, event_type, occurred_at, request_id, caller, payload, slice_id)
        select 'm' || ((g * 2654435761) % members + 1),
               case g % 4 when 2 then 'coupon_reserved' when 3 then 'coupon_used' else 'points_awarded' end,
               now(), md5(g::text), '',
               case g % 4
                   when 2 then jsonb_build_object('coupon_id', g, 'template_id', 'bench-platform',
                       'from_status', 'valid', 'to_status', 'inactive', 'order_id', 'b-' || g,
                       'hold_until', now() + interval '30 minutes', 'action', 'reserve')
                   when 3 then jsonb_build_object('coupon_id', g - 1, 'template_id', 'bench-platform',
                       'from_status', 'inactive', 'to_status', 'used', 'order_id', 'b-' || (g - 1),
                       'hold_until', null, 'action', 'complete')
                   else jsonb_build_object('points', 6, 'entries', jsonb_build_array(
                       jsonb_build_object('entry_id', 2 * g - 1, 'source', 'order', 'reference', 'ord-' || g,
                           'points', 5, 'cap_reason', null, 'occurred_at', '2026-05-28T20:26:40Z'::timestamptz,
                           'local_date', '2026-05-28'::date, 'recorded_at', now(), 'reverses_entry_id', null),
                       jsonb_build_object('entry_id', 2 * g, 'source', 'category_variety',
                           'reference', 'ord-' || g, 'points', 1, 'cap_reason', null,
                           'occurred_at', '2026-05-28T20:26:40Z'::timestamptz, 'local_date', '2026-05-28'::date,
                           'recorded_at', now(), 'reverses_entry_id', null)))
               end,
               slice + 1
        from generate_series(first, last) g;
        commit;
        slice := slice + 1;
        insert into event_slice (slice_id, closed_at, events, stamped)
        values (slice, now(), last - first + 1, last - first + 1);
        update event_slicer set settled_through = slice;
        commit;
        first := last + 1;
    end loop;
end
$$;

vacuum analyze event, event_slice;
