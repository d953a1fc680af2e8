-- The SQL of ReserveCoupons then CompleteOrder for a fresh coupon on a fresh
-- order of two lines, statement for statement as the service sends them
-- (src/domain/coupons/checkout.rs reserve, orders.rs complete,
-- src/db/coupons/): 7 round trips each, BEGIN and COMMIT included. The
-- writes are function calls
-- (migrations/20261205000005_checkout_functions.sql): the order's turn, the
-- coupons' guarded status changes with their transitions and events
-- (coupon_reserved, coupon_used), the order with its cart and history, and
-- the completion with its history and the cart read back. The request ids
-- stand for the ones the server makes up for calls without x-request-id (32
-- hex digits), the caller is empty (authentication off).
select nextval('bench_seq') as c \gset
\set m (:c - 1) % :members + 1
-- ReserveCoupons
begin;
select loyalty_lock_order('m' || :m, 'b-' || :c);
select m.fraud_flagged_at is not null as flagged, o.order_id is not null as found, o.status as state,
       o.cart_revision, o.content_digest, o.currency, o.coupon_ids, o.hold_until, o.created_at, o.updated_at
from member m left join checkout_order o on o.account_id = m.account_id and o.order_id = 'b-' || :c
where m.account_id = 'm' || :m for share of m;
select coupon_id, account_id, template_id,
       case when (status = 'valid' or (status = 'inactive' and hold_until <= now())) and expires_at <= now() then 'expired'
            when (status = 'inactive' and hold_until <= now()) then 'valid' else status end as status,
       case when (status = 'inactive' and hold_until <= now()) then null else order_id end as order_id,
       case when (status = 'inactive' and hold_until <= now()) then null else hold_until end as hold_until,
       case when (status = 'inactive' and hold_until <= now()) then order_id end as lapsed_order,
       name, issuer, seller_id, discount_kind, amount_off_minor, percent_basis_points, max_discount_minor,
       currency, min_purchase_minor, regular_price_only, valid_from, expires_at, source, issued_at
from coupon where account_id = 'm' || :m
  and (coupon_id = any (array[:c]::bigint[]) or (order_id = 'b-' || :c and status = 'inactive'))
order by coupon_id for update;
select m.coupon_id, m.account_id, m.template_id,
       case when (m.status = 'valid' or (m.status = 'inactive' and m.hold_until <= now())) and m.expires_at <= now() then 'expired'
            when (m.status = 'inactive' and m.hold_until <= now()) then 'valid' else m.status end as status,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.order_id end as order_id,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.hold_until end as hold_until,
       case when (m.status = 'inactive' and m.hold_until <= now()) then m.order_id end as lapsed_order,
       m.name, m.issuer, m.seller_id, m.discount_kind, m.amount_off_minor, m.percent_basis_points, m.max_discount_minor,
       m.currency, m.min_purchase_minor, m.regular_price_only, m.valid_from, m.expires_at, m.source, m.issued_at
from loyalty_change_coupons('m' || :m, array[:c]::bigint[], array['valid'], array[null]::text[], array['inactive'],
    array['b-' || :c], array[now() + interval '30 minutes'], array['reserve'], array[''], now(), array['coupon_reserved'],
    md5('reserve-' || :c), '') m
order by m.coupon_id;
select loyalty_put_order('m' || :m, 'b-' || :c, array['l1', 'l2'], array[0, 1], array['s1', 's2'],
    array['p-l1', 'p-l2'], array['c1', 'c1'], array[2500, 1333]::bigint[], array[1, 1], array[false, false],
    array[:c, :c]::bigint[], array['l1', 'l2'], array[326, 174]::bigint[], 'open', 0, sha256(('b-' || :c)::bytea),
    'USD', array[:c]::bigint[], now() + interval '30 minutes', now(), now(), md5('reserve-' || :c), '');
commit;
-- CompleteOrder
begin;
select loyalty_lock_order('m' || :m, 'b-' || :c);
select status as state, cart_revision, content_digest, currency, coupon_ids, hold_until, created_at, updated_at
from checkout_order where account_id = 'm' || :m and order_id = 'b-' || :c;
select coupon_id, account_id, template_id,
       case when (status = 'valid' or (status = 'inactive' and hold_until <= now())) and expires_at <= now() then 'expired'
            when (status = 'inactive' and hold_until <= now()) then 'valid' else status end as status,
       case when (status = 'inactive' and hold_until <= now()) then null else order_id end as order_id,
       case when (status = 'inactive' and hold_until <= now()) then null else hold_until end as hold_until,
       case when (status = 'inactive' and hold_until <= now()) then order_id end as lapsed_order,
       name, issuer, seller_id, discount_kind, amount_off_minor, percent_basis_points, max_discount_minor,
       currency, min_purchase_minor, regular_price_only, valid_from, expires_at, source, issued_at
from coupon where account_id = 'm' || :m
  and (coupon_id = any (array[:c]::bigint[]) or (order_id = 'b-' || :c and status = 'inactive'))
order by coupon_id for update;
select m.coupon_id, m.account_id, m.template_id,
       case when (m.status = 'valid' or (m.status = 'inactive' and m.hold_until <= now())) and m.expires_at <= now() then 'expired'
            when (m.status = 'inactive' and m.hold_until <= now()) then 'valid' else m.status end as status,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.order_id end as order_id,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.hold_until end as hold_until,
       case when (m.status = 'inactive' and m.hold_until <= now()) then m.order_id end as lapsed_order,
       m.name, m.issuer, m.seller_id, m.discount_kind, m.amount_off_minor, m.percent_basis_points, m.max_discount_minor,
       m.currency, m.min_purchase_minor, m.regular_price_only, m.valid_from, m.expires_at, m.source, m.issued_at
from loyalty_change_coupons('m' || :m, array[:c]::bigint[], array['inactive'], array['b-' || :c], array['used'],
    array['b-' || :c], array[null]::timestamptz[], array['complete'], array[''], now(), array['coupon_used'],
    md5('complete-' || :c), '') m
order by m.coupon_id;
select * from loyalty_set_order_state('m' || :m, 'b-' || :c, 'completed', now(), md5('complete-' || :c), '');
commit;
