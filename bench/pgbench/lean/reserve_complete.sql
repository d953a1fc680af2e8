-- The lean reference of reserve_complete: the same rows change as in
-- ../reserve_complete.sql (a coupon VALID → INACTIVE → USED, its two
-- transitions and two events, the checkout order with its lines and
-- allocations, then completed, with its two audit rows), with the fewest statements: read what pricing
-- needs (the member's flag and the coupon's terms, locked), then one write
-- statement per transition. The order's exclusivity comes from its primary key
-- in the reserving statement, not from an advisory lock.
select nextval('bench_seq') as c \gset
\set m (:c - 1) % :members + 1
-- ReserveCoupons: 1 read, 1 write
begin;
select m.fraud_flagged_at is not null as flagged, k.coupon_id, k.status, k.order_id, k.hold_until, k.discount_kind,
       k.amount_off_minor, k.percent_basis_points, k.max_discount_minor, k.currency, k.min_purchase_minor,
       k.regular_price_only, k.seller_id, k.issuer, k.valid_from, k.expires_at
from member m join coupon k on k.account_id = m.account_id
where m.account_id = 'm' || :m and k.coupon_id = :c
for update of k;
with header as (
    insert into checkout_order (account_id, order_id, status, cart_revision, content_digest, currency, coupon_ids,
                                hold_until, created_at, updated_at)
    values ('m' || :m, 'b-' || :c, 'open', 0, sha256(('b-' || :c)::bytea), 'USD', array[:c]::bigint[],
            now() + interval '30 minutes', now(), now())
    returning order_id
), audit as (
    insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller)
    values ('m' || :m, 'b-' || :c, 'reserve',
            jsonb_build_object('cart_revision', 0, 'coupon_ids', jsonb_build_array(:c::bigint),
                               'hold_until', now() + interval '30 minutes'), now(), md5('reserve-' || :c), '')
), moved as (
    update coupon k
    set status = 'inactive', order_id = 'b-' || :c, hold_until = now() + interval '30 minutes', updated_at = now()
    from header
    where k.account_id = 'm' || :m and k.coupon_id = :c and k.status = 'valid'
    returning k.account_id, k.coupon_id, k.template_id, k.hold_until
), recorded as (
    insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id, note, occurred_at,
                                   request_id, caller)
    select account_id, coupon_id, 'reserve', 'valid', 'inactive', 'b-' || :c, '', now(), md5('reserve-' || :c), ''
    from moved
), events as (
    insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
    select account_id, 'coupon_reserved', now(), md5('reserve-' || :c), '',
           jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, 'from_status', 'valid',
                              'to_status', 'inactive', 'order_id', 'b-' || :c, 'hold_until', hold_until,
                              'action', 'reserve')
    from moved
), lines as (
    insert into checkout_order_line (account_id, order_id, line_id, position, seller_id, product_id, category_id,
                                     unit_price_minor, quantity, sale_price)
    select 'm' || :m, order_id, l.* from header,
           unnest(array['l1', 'l2']::text[], array[0, 1]::int[], array['s1', 's2']::text[],
                  array['p-l1', 'p-l2']::text[], array['c1', 'c1']::text[], array[2500, 1333]::bigint[],
                  array[1, 1]::int[], array[false, false]::bool[]) as l
    returning line_id
)
insert into checkout_allocation (account_id, order_id, coupon_id, line_id, discount_minor)
select 'm' || :m, 'b-' || :c, a.coupon_id, a.line_id, a.discount
from unnest(array[:c, :c]::bigint[], array['l1', 'l2']::text[], array[326, 174]::bigint[]) as a (coupon_id, line_id, discount)
join lines using (line_id)
where exists (select from moved);
commit;
-- CompleteOrder: 1 write (autocommit), answering the order's lines
with closed as (
    update checkout_order set status = 'completed', updated_at = now()
    where account_id = 'm' || :m and order_id = 'b-' || :c and status = 'open'
    returning account_id, order_id, coupon_ids
), audit as (
    insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller)
    select account_id, order_id, 'complete', '{}'::jsonb, now(), md5('complete-' || :c), '' from closed
), moved as (
    update coupon k
    set status = 'used', hold_until = null, updated_at = now()
    from closed
    where k.account_id = closed.account_id and k.coupon_id = any (closed.coupon_ids) and k.status = 'inactive'
      and k.order_id = closed.order_id
    returning k.account_id, k.coupon_id, k.template_id, k.order_id
), recorded as (
    insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id, note, occurred_at,
                                   request_id, caller)
    select account_id, coupon_id, 'complete', 'inactive', 'used', order_id, '', now(), md5('complete-' || :c), ''
    from moved
), events as (
    insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
    select account_id, 'coupon_used', now(), md5('complete-' || :c), '',
           jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, 'from_status', 'inactive',
                              'to_status', 'used', 'order_id', order_id, 'hold_until', null, 'action', 'complete')
    from moved
)
select l.line_id, l.seller_id, l.product_id, l.category_id, l.unit_price_minor, l.quantity, l.sale_price,
       array_remove(array_agg(a.coupon_id order by a.coupon_id), null) as coupon_ids,
       array_remove(array_agg(a.discount_minor order by a.coupon_id), null) as discounts
from closed c join checkout_order_line l on l.account_id = c.account_id and l.order_id = c.order_id
left join checkout_allocation a on a.account_id = l.account_id and a.order_id = l.order_id and a.line_id = l.line_id
group by l.account_id, l.order_id, l.line_id, l.position order by l.position;
