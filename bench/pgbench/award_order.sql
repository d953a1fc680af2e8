-- The SQL of one RecordConfirmedOrder of a fresh order by a random member, two
-- products (src/domain/points/mod.rs record_order, src/db/points.rs): the
-- order's rows, then its entries with their points_awarded event, each one
-- function call (migrations/20261205000004_award_functions.sql). The
-- request id stands for the one the server makes up for a call without
-- x-request-id (32 hex digits); the caller is empty (authentication off).
select nextval('bench_seq') as n \gset
\set m (:n * 2654435761) % :members + 1
\set c1 :n % 20
\set c2 (:n + 7) % 20
begin;
select flagged, earning_event_id, order_demand, new_categories, category_demand
from loyalty_record_order('m' || :m, 'order', 'ord-' || :n,
    jsonb_build_object('amount_minor', 2590, 'currency', 'USD', 'confirmed_at', '2026-05-28T20:26:40Z',
                       'products', jsonb_build_array(jsonb_build_array('sku-1', 'cat' || :c1),
                                                     jsonb_build_array('sku-2', 'cat' || :c2))),
    '2026-05-28T20:26:40Z', now(), md5('ord-' || :n), '', '2026-05-28',
    array['cat' || :c1, 'cat' || :c2], 'order_points', 5, true, 'categories', 'ord-' || :n,
    array['sku-1', 'sku-2'], array['cat' || :c1, 'cat' || :c2]) \gset event_
select point_entry_id, account_id, source, reference, points, cap_reason, occurred_at, local_date, created_at,
       reverses_point_entry_id
from loyalty_award_entries('m' || :m, :event_earning_event_id, array['order', 'category_variety'],
    array['ord-' || :n, 'ord-' || :n], array[5, 1], array[null, null]::text[],
    array['2026-05-28T20:26:40Z', '2026-05-28T20:26:40Z']::timestamptz[], array['2026-05-28', '2026-05-28']::date[],
    now(), md5('ord-' || :n), '');
commit;
