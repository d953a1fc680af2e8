-- The SQL of one RecordConfirmedOrder of a fresh order by a random member, two
-- products (src/domain/points/mod.rs record_order, src/db/points.rs), the
-- entries written with their points_awarded event in one statement. The
-- request id stands for the one the server makes up for a call without
-- x-request-id (32 hex digits); the caller is empty (authentication off).
select nextval('bench_seq') as n \gset
\set m (:n * 2654435761) % :members + 1
\set c1 :n % 20
\set c2 (:n + 7) % 20
begin;
with m as (
    select fraud_flagged_at is not null as flagged from member where account_id = 'm' || :m
), inserted as (
    insert into earning_event (account_id, kind, natural_key, content, occurred_at, created_at, request_id, caller)
    select 'm' || :m, 'order', 'ord-' || :n,
           jsonb_build_object('amount_minor', 2590, 'currency', 'USD', 'confirmed_at', '2026-05-28T20:26:40Z',
                              'products', jsonb_build_array(jsonb_build_array('sku-1', 'cat' || :c1),
                                                            jsonb_build_array('sku-2', 'cat' || :c2))),
           '2026-05-28T20:26:40Z', now(), md5('ord-' || :n), ''
    from m
    on conflict (account_id, kind, natural_key) do nothing
    returning earning_event_id
)
select m.flagged, (select earning_event_id from inserted) as earning_event_id from m \gset event_
insert into order_product (account_id, order_id, product_id, category_id)
select 'm' || :m, 'ord-' || :n, p, c
from unnest(array['sku-1', 'sku-2']::text[], array['cat' || :c1, 'cat' || :c2]::text[]) as t (p, c);
insert into earning_counter as c (account_id, counter, period_start, demand)
values ('m' || :m, 'order_points', '2026-05-28', 5)
on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand
returning demand;
insert into member_day_category (account_id, local_date, category_id)
select 'm' || :m, '2026-05-28', c
from unnest(array['cat' || :c1, 'cat' || :c2]::text[]) with ordinality as t (c, n) order by n
on conflict do nothing;
insert into earning_counter as c (account_id, counter, period_start, demand)
values ('m' || :m, 'categories', '2026-05-28', 1)
on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand
returning demand;
with e as (
    insert into point_entry (account_id, earning_event_id, source, reference, points, cap_reason, occurred_at,
                             local_date)
    select 'm' || :m, :event_earning_event_id, s, r, p, c, o, d
    from unnest(array['order', 'category_variety']::text[], array['ord-' || :n, 'ord-' || :n]::text[],
                array[5, 1]::int[], array[null, null]::text[],
                array['2026-05-28T20:26:40Z', '2026-05-28T20:26:40Z']::timestamptz[],
                array['2026-05-28', '2026-05-28']::date[])
         with ordinality as t (s, r, p, c, o, d, n)
    order by n
    returning *
), event as (
    insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
    select account_id, 'points_awarded', now(), md5('ord-' || :n), '',
           jsonb_build_object('points', sum(points), 'entries',
               jsonb_agg(jsonb_build_object('entry_id', point_entry_id, 'source', source, 'reference', reference,
                   'points', points, 'cap_reason', cap_reason, 'occurred_at', occurred_at, 'local_date', local_date,
                   'recorded_at', created_at, 'reverses_entry_id', reverses_point_entry_id) order by point_entry_id))
    from e group by account_id
)
select point_entry_id, account_id, source, reference, points, cap_reason, occurred_at, local_date, created_at,
       reverses_point_entry_id
from e order by point_entry_id;
commit;
