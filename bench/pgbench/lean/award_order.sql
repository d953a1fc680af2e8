-- The lean reference of award_order: the same rows change as in
-- ../award_order.sql (the earning call's record, the order's products, two
-- counters, the day's categories, two ledger entries and their
-- points_awarded event) in one statement, autocommit: the points (5 for the
-- order, 1 for a second category) are what the rules give these rows.
select nextval('bench_seq') as n \gset
\set m (:n * 2654435761) % :members + 1
\set c1 :n % 20
\set c2 (:n + 7) % 20
with m as (
    select account_id from member where account_id = 'm' || :m and fraud_flagged_at is null
), inserted as (
    insert into earning_event (account_id, kind, natural_key, content, occurred_at, created_at, request_id, caller)
    select account_id, 'order', 'ord-' || :n,
           jsonb_build_object('amount_minor', 2590, 'currency', 'USD', 'confirmed_at', '2026-05-28T20:26:40Z',
                              'products', jsonb_build_array(jsonb_build_array('sku-1', 'cat' || :c1),
                                                            jsonb_build_array('sku-2', 'cat' || :c2))),
           '2026-05-28T20:26:40Z', now(), md5('ord-' || :n), ''
    from m
    on conflict (account_id, kind, natural_key) do nothing
    returning account_id, earning_event_id
), products as (
    insert into order_product (account_id, order_id, product_id, category_id)
    select i.account_id, 'ord-' || :n, p, c
    from inserted i, unnest(array['sku-1', 'sku-2']::text[], array['cat' || :c1, 'cat' || :c2]::text[]) as t (p, c)
), orders as (
    insert into earning_counter as c (account_id, counter, period_start, demand)
    select account_id, 'order_points', '2026-05-28', 5 from inserted
    on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand
), categories as (
    insert into member_day_category (account_id, local_date, category_id)
    select i.account_id, '2026-05-28', c from inserted i, unnest(array['cat' || :c1, 'cat' || :c2]::text[]) as t (c)
    on conflict do nothing
), variety as (
    insert into earning_counter as c (account_id, counter, period_start, demand)
    select account_id, 'categories', '2026-05-28', 1 from inserted
    on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand
), e as (
    insert into point_entry (account_id, earning_event_id, source, reference, points, cap_reason, occurred_at,
                             local_date)
    select i.account_id, i.earning_event_id, s, 'ord-' || :n, p, null, '2026-05-28T20:26:40Z', '2026-05-28'
    from inserted i, unnest(array['order', 'category_variety']::text[], array[5, 1]::int[]) with ordinality as t (s, p, n)
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
