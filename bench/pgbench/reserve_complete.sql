-- The SQL of ReserveCoupons then CompleteOrder for a fresh coupon
-- (src/domain/coupons.rs reserve and complete, src/db/coupons.rs).
select nextval('bench_seq') as c \gset
\set m (:c - 1) % :members + 1
begin;
select pg_advisory_xact_lock(hashtextextended('m' || :m || '/' || 'b-' || :c, 0));
select fraud_flagged_at is not null from member where account_id = 'm' || :m;
select coupon_id, account_id, template_id,
       case when status = 'valid' and expires_at <= now() then 'expired' else status end as status,
       order_id, name, issuer, seller_id, discount_kind, amount_off_minor, percent_basis_points,
       max_discount_minor, currency, min_purchase_minor, regular_price_only, valid_from, expires_at,
       source, issued_at
from coupon where account_id = 'm' || :m
  and (coupon_id = any (array[:c]::bigint[]) or (order_id = 'b-' || :c and status = 'inactive'))
order by coupon_id for update;
select distinct action from coupon_transition where account_id = 'm' || :m and order_id = 'b-' || :c;
with moved as (
    update coupon set status = 'inactive', order_id = 'b-' || :c, updated_at = now()
    where account_id = 'm' || :m and coupon_id = any (array[:c]::bigint[]) and status = 'valid'
      and valid_from <= now() and expires_at > now()
    returning *
), transition as (
    insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id, occurred_at)
    select 'm' || :m, coupon_id, 'reserve', 'valid', 'inactive', 'b-' || :c, now() from moved
)
select coupon_id, account_id, template_id,
       case when status = 'valid' and expires_at <= now() then 'expired' else status end as status,
       order_id, name, issuer, seller_id, discount_kind, amount_off_minor, percent_basis_points,
       max_discount_minor, currency, min_purchase_minor, regular_price_only, valid_from, expires_at,
       source, issued_at
from moved order by coupon_id;
commit;
begin;
select fraud_flagged_at is not null from member where account_id = 'm' || :m;
select pg_advisory_xact_lock(hashtextextended('m' || :m || '/' || 'b-' || :c, 0));
select distinct action from coupon_transition where account_id = 'm' || :m and order_id = 'b-' || :c;
with moved as (
    update coupon set status = 'used', updated_at = now()
    where account_id = 'm' || :m and order_id = 'b-' || :c and status = 'inactive'
    returning coupon_id
)
insert into coupon_transition (account_id, coupon_id, action, from_status, to_status, order_id, occurred_at)
select 'm' || :m, coupon_id, 'complete', 'inactive', 'used', 'b-' || :c, now() from moved;
select c.coupon_id, c.account_id, c.template_id,
       case when c.status = 'valid' and c.expires_at <= now() then 'expired' else c.status end as status,
       c.order_id, c.name, c.issuer, c.seller_id, c.discount_kind, c.amount_off_minor, c.percent_basis_points,
       c.max_discount_minor, c.currency, c.min_purchase_minor, c.regular_price_only, c.valid_from, c.expires_at,
       c.source, c.issued_at
from coupon c where c.account_id = 'm' || :m and exists (
    select 1 from coupon_transition t
    where t.account_id = c.account_id and t.coupon_id = c.coupon_id
      and t.order_id = 'b-' || :c and t.action = any (array['complete']))
order by c.coupon_id;
commit;
