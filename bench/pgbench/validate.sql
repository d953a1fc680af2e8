-- The SQL of one ValidateCoupons call whose coupon is found (src/db/coupons.rs
-- coupons_by_ids; the member is looked up only when a coupon is missing),
-- autocommit like the service.
\set m random(1, :members)
select coupon_id, account_id, template_id,
       case when status = 'valid' and expires_at <= now() then 'expired' else status end as status,
       order_id, name, issuer, seller_id, discount_kind, amount_off_minor, percent_basis_points,
       max_discount_minor, currency, min_purchase_minor, regular_price_only, valid_from, expires_at,
       source, issued_at
from coupon where account_id = 'm' || :m and coupon_id = any (array[:m]::bigint[]) order by coupon_id;
