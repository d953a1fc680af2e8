-- The SQL of ReserveCoupons then CompleteOrder for a fresh coupon on a fresh
-- order of two lines, statement for statement as the service sends them
-- (taken from the PostgreSQL log with log_statement = all; src/domain/coupons/
-- checkout.rs reserve, orders.rs complete, src/db/coupons/): 7 and 8 round
-- trips. Each status change writes its event (coupon_reserved, coupon_used)
-- in the same statement, and each transition its caller and request id (the
-- audit); the request ids stand for the ones the server makes
-- up for calls without x-request-id (32 hex digits), the caller is empty
-- (authentication off).
select nextval('bench_seq') as c \gset
\set m (:c - 1) % :members + 1
-- ReserveCoupons
begin;
select pg_advisory_xact_lock(hashtextextended('m' || :m || '/' || 'b-' || :c, 0));
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
with change as (
    select * from unnest(array[:c]::bigint[], array['valid']::text[], array[null]::text[], array['inactive']::text[],
                         array['b-' || :c]::text[], array[now() + interval '30 minutes']::timestamptz[],
                         array['reserve']::text[], array['']::text[], array['coupon_reserved']::text[])
        as c (coupon_id, from_status, from_order, to_status, to_order, hold_until, action, note, event_type)
), moved as (
    update coupon k
    set status = c.to_status, order_id = c.to_order, hold_until = c.hold_until, updated_at = now()
    from change c
    where k.account_id = 'm' || :m and k.coupon_id = c.coupon_id and k.status = c.from_status
      and k.order_id is not distinct from c.from_order
    returning k.*, c.from_status as change_from, coalesce(c.to_order, c.from_order) as change_order,
              c.action as change_action, c.note as change_note, c.event_type as change_event
), recorded as (
    insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id, note, occurred_at,
                                   request_id, caller)
    select 'm' || :m, coupon_id, change_action, change_from, status, change_order, change_note, now(),
           md5('reserve-' || :c), ''
    from moved where change_action is not null
), events as (
    insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
    select account_id, change_event, now(), md5('reserve-' || :c), '',
           jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, 'from_status', change_from,
                              'to_status', status, 'order_id', change_order, 'hold_until', hold_until,
                              'action', change_action)
    from moved where change_event is not null
)
select m.coupon_id, m.account_id, m.template_id,
       case when (m.status = 'valid' or (m.status = 'inactive' and m.hold_until <= now())) and m.expires_at <= now() then 'expired'
            when (m.status = 'inactive' and m.hold_until <= now()) then 'valid' else m.status end as status,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.order_id end as order_id,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.hold_until end as hold_until,
       case when (m.status = 'inactive' and m.hold_until <= now()) then m.order_id end as lapsed_order,
       m.name, m.issuer, m.seller_id, m.discount_kind, m.amount_off_minor, m.percent_basis_points, m.max_discount_minor,
       m.currency, m.min_purchase_minor, m.regular_price_only, m.valid_from, m.expires_at, m.source, m.issued_at
from moved m order by m.coupon_id;
with header as (
    insert into checkout_order (account_id, order_id, status, cart_revision, content_digest, currency, coupon_ids,
                                hold_until, created_at, updated_at)
    values ('m' || :m, 'b-' || :c, 'open', 0, sha256(('b-' || :c)::bytea), 'USD', array[:c]::bigint[],
            now() + interval '30 minutes', now(), now())
    on conflict (account_id, order_id) do update
    set status = excluded.status, cart_revision = excluded.cart_revision, content_digest = excluded.content_digest,
        currency = excluded.currency, coupon_ids = excluded.coupon_ids, hold_until = excluded.hold_until,
        updated_at = excluded.updated_at
    returning account_id, order_id, cart_revision, coupon_ids, hold_until
), audit as (
    insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller)
    select account_id, order_id, 'reserve',
           jsonb_build_object('cart_revision', cart_revision, 'coupon_ids', to_jsonb(coupon_ids),
                              'hold_until', hold_until), now(), md5('reserve-' || :c), ''
    from header
), lines as (
    insert into checkout_order_line (account_id, order_id, line_id, position, seller_id, product_id, category_id,
                                     unit_price_minor, quantity, sale_price)
    select 'm' || :m, 'b-' || :c, * from unnest(array['l1', 'l2']::text[], array[0, 1]::int[], array['s1', 's2']::text[],
                                                array['p-l1', 'p-l2']::text[], array['c1', 'c1']::text[],
                                                array[2500, 1333]::bigint[], array[1, 1]::int[], array[false, false]::bool[])
    returning line_id
)
insert into checkout_allocation (account_id, order_id, coupon_id, line_id, discount_minor)
select 'm' || :m, 'b-' || :c, a.coupon_id, a.line_id, a.discount
from unnest(array[:c, :c]::bigint[], array['l1', 'l2']::text[], array[326, 174]::bigint[]) as a (coupon_id, line_id, discount)
join lines using (line_id);
commit;
-- CompleteOrder
begin;
select pg_advisory_xact_lock(hashtextextended('m' || :m || '/' || 'b-' || :c, 0));
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
with change as (
    select * from unnest(array[:c]::bigint[], array['inactive']::text[], array['b-' || :c]::text[], array['used']::text[],
                         array['b-' || :c]::text[], array[null]::timestamptz[],
                         array['complete']::text[], array['']::text[], array['coupon_used']::text[])
        as c (coupon_id, from_status, from_order, to_status, to_order, hold_until, action, note, event_type)
), moved as (
    update coupon k
    set status = c.to_status, order_id = c.to_order, hold_until = c.hold_until, updated_at = now()
    from change c
    where k.account_id = 'm' || :m and k.coupon_id = c.coupon_id and k.status = c.from_status
      and k.order_id is not distinct from c.from_order
    returning k.*, c.from_status as change_from, coalesce(c.to_order, c.from_order) as change_order,
              c.action as change_action, c.note as change_note, c.event_type as change_event
), recorded as (
    insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id, note, occurred_at,
                                   request_id, caller)
    select 'm' || :m, coupon_id, change_action, change_from, status, change_order, change_note, now(),
           md5('complete-' || :c), ''
    from moved where change_action is not null
), events as (
    insert into event (account_id, event_type, occurred_at, request_id, caller, payload)
    select account_id, change_event, now(), md5('complete-' || :c), '',
           jsonb_build_object('coupon_id', coupon_id, 'template_id', template_id, 'from_status', change_from,
                              'to_status', status, 'order_id', change_order, 'hold_until', hold_until,
                              'action', change_action)
    from moved where change_event is not null
)
select m.coupon_id, m.account_id, m.template_id,
       case when (m.status = 'valid' or (m.status = 'inactive' and m.hold_until <= now())) and m.expires_at <= now() then 'expired'
            when (m.status = 'inactive' and m.hold_until <= now()) then 'valid' else m.status end as status,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.order_id end as order_id,
       case when (m.status = 'inactive' and m.hold_until <= now()) then null else m.hold_until end as hold_until,
       case when (m.status = 'inactive' and m.hold_until <= now()) then m.order_id end as lapsed_order,
       m.name, m.issuer, m.seller_id, m.discount_kind, m.amount_off_minor, m.percent_basis_points, m.max_discount_minor,
       m.currency, m.min_purchase_minor, m.regular_price_only, m.valid_from, m.expires_at, m.source, m.issued_at
from moved m order by m.coupon_id;
with changed as (
    update checkout_order set status = 'completed', updated_at = now()
    where account_id = 'm' || :m and order_id = 'b-' || :c and status <> 'completed'
    returning account_id, order_id, status
), audit as (
    insert into order_change (account_id, order_id, action, detail, occurred_at, request_id, caller)
    select account_id, order_id, case status when 'completed' then 'complete' else 'cancel' end, '{}'::jsonb,
           now(), md5('complete-' || :c), ''
    from changed
)
select 1;
select l.line_id, l.seller_id, l.product_id, l.category_id, l.unit_price_minor, l.quantity, l.sale_price,
       array_remove(array_agg(a.coupon_id order by a.coupon_id), null) as coupon_ids,
       array_remove(array_agg(a.discount_minor order by a.coupon_id), null) as discounts
from checkout_order_line l left join checkout_allocation a using (account_id, order_id, line_id)
where l.account_id = 'm' || :m and l.order_id = 'b-' || :c
group by l.account_id, l.order_id, l.line_id order by l.position;
commit;
