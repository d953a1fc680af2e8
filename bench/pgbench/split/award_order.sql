-- An experiment for docs/scale-out.md, not part of scripts/bench: the rows of
-- ../lean/award_order.sql (event payloads left empty), written by one
-- single-table statement each inside a transaction, instead of one statement
-- with a data-modifying CTE per table. On Citus each of these statements is
-- one task on the member's worker; the CTEs are not.
--   pgbench -n -c 16 -j 2 -T 10 -D members=100000 -f bench/pgbench/split/award_order.sql loyalty_bench
-- (on a database scripts/bench seeded; a worker needs its own bench_seq).
select nextval('bench_seq') as n \gset
\set m (:n * 2654435761) % :members + 1
\set c1 :n % 20
\set c2 (:n + 7) % 20
begin;
select account_id from member where account_id = 'm' || :m and fraud_flagged_at is null for share;
insert into earning_event (account_id, kind, natural_key, content, occurred_at, created_at, request_id, caller)
values ('m' || :m, 'order', 'ord-' || :n, '{}'::jsonb, '2026-05-28T20:26:40Z', now(), md5('ord-' || :n), '')
on conflict (account_id, kind, natural_key) do nothing returning earning_event_id as eid \gset
insert into order_product (account_id, order_id, product_id, category_id)
values ('m' || :m, 'ord-' || :n, 'sku-1', 'cat' || :c1), ('m' || :m, 'ord-' || :n, 'sku-2', 'cat' || :c2);
insert into earning_counter as c (account_id, counter, period_start, demand)
values ('m' || :m, 'order_points', '2026-05-28', 5)
on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand returning demand;
insert into member_day_category (account_id, local_date, category_id)
values ('m' || :m, '2026-05-28', 'cat' || :c1), ('m' || :m, '2026-05-28', 'cat' || :c2) on conflict do nothing returning category_id;
insert into earning_counter as c (account_id, counter, period_start, demand)
values ('m' || :m, 'categories', '2026-05-28', 1)
on conflict (account_id, counter, period_start) do update set demand = c.demand + excluded.demand returning demand;
insert into point_entry (account_id, earning_event_id, source, reference, points, cap_reason, occurred_at, local_date)
values ('m' || :m, :eid, 'order', 'ord-' || :n, 5, null, '2026-05-28T20:26:40Z', '2026-05-28'),
       ('m' || :m, :eid, 'category_variety', 'ord-' || :n, 1, null, '2026-05-28T20:26:40Z', '2026-05-28') returning point_entry_id;
insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
values ('m' || :m, 'points_awarded', now(), md5('ord-' || :n), '', '{}'::jsonb);
commit;
