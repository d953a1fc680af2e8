-- The SQL of one ClaimCoupon of the public code BENCH-HOT by a fresh member
-- (src/domain/coupons.rs claim and issue_new, src/db/coupons.rs).
select nextval('bench_seq') as m \gset
begin;
select fraud_flagged_at is not null from member where account_id = 'm' || :m for no key update;
select template_id, kind, consumed_by from claim_code where code_hash = sha256('BENCHHOT'::bytea);
select coupon_id, account_id, template_id,
       case when status = 'valid' and expires_at <= now() then 'expired' else status end as status,
       order_id, name, issuer, seller_id, discount_kind, amount_off_minor, percent_basis_points,
       max_discount_minor, currency, min_purchase_minor, regular_price_only, valid_from, expires_at,
       source, issued_at
from coupon where account_id = 'm' || :m and (claim_code_hash = sha256('BENCHHOT'::bytea) or issuance_id = null);
select template_id, name, description, issuer, seller_id, discount_kind, amount_off_minor,
       percent_basis_points, max_discount_minor, currency, min_purchase_minor, valid_from, valid_until,
       valid_days, total_stock, daily_stock, per_member_limit, allowed_levels, regular_price_only, paused,
       issued_count, created_at, updated_at
from coupon_template where template_id = 'bench-hot';
insert into member_template as t (account_id, template_id, issued_count) values ('m' || :m, 'bench-hot', 1)
on conflict (account_id, template_id) do update set issued_count = t.issued_count + 1
where t.issued_count < 1
returning issued_count;
with t as (
    update coupon_template set issued_count = issued_count + 1
    where template_id = 'bench-hot' and not paused
      and (total_stock is null or issued_count < total_stock)
      and (valid_until is null or valid_until > now())
    returning *
), c as (
    insert into coupon (account_id, template_id, status, name, issuer, seller_id, discount_kind,
        amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor,
        regular_price_only, valid_from, expires_at, source, claim_code_hash, issuance_id, issued_at, updated_at)
    select 'm' || :m, t.template_id, 'valid', t.name, t.issuer, t.seller_id, t.discount_kind,
        t.amount_off_minor, t.percent_basis_points, t.max_discount_minor, t.currency, t.min_purchase_minor,
        t.regular_price_only, coalesce(t.valid_from, now()),
        coalesce(t.valid_until, now() + t.valid_days * interval '24 hours'),
        'public_code', sha256('BENCHHOT'::bytea), null, now(), now()
    from t
    returning *
), transition as (
    insert into coupon_transition (account_id, coupon_id, action, to_status, occurred_at)
    select account_id, coupon_id, 'issue', 'valid', now() from c
)
select coupon_id, account_id, template_id, status, order_id, name, issuer, seller_id, discount_kind,
       amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor,
       regular_price_only, valid_from, expires_at, source, issued_at
from c;
commit;
