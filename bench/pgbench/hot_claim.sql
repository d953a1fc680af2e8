-- The SQL of one ClaimCoupon of the public code BENCH-HOT by a fresh member
-- (src/domain/coupons/issuance.rs claim and issue_new, src/db/coupons/).
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
from coupon_template join template_stock using (template_id) where template_id = 'bench-hot';
insert into member_template as t (account_id, template_id, issued_count) values ('m' || :m, 'bench-hot', 1)
on conflict (account_id, template_id) do update set issued_count = t.issued_count + 1
where t.issued_count < 1
returning issued_count;
select loyalty_take_stock('bench-hot', current_date, now());
select coupon_id, account_id, template_id, status, order_id, name, issuer, seller_id, discount_kind,
       amount_off_minor, percent_basis_points, max_discount_minor, currency, min_purchase_minor,
       regular_price_only, valid_from, expires_at, source, issued_at
from loyalty_issue_coupon('m' || :m, 'bench-hot', 'public_code', sha256('BENCHHOT'::bytea), null, now(), '', '');
commit;
