-- no-transaction
-- The coupons not yet told they expire soon, by expiry: what an expiry notice
-- run reads for `coupon_expiring_soon`. `coupon_expiry_notice` holds them too,
-- but also every coupon already told, until its expiry: a run read those again
-- at every batch before it reached the coupons still to tell. A coupon leaves
-- this index once told. Built concurrently: `coupon` takes every issuance.
-- Without `if not exists`: a build that failed leaves an invalid index, which a
-- rerun must not take for the index.
create index concurrently coupon_expiring_notice on coupon (expires_at)
    where expiring_notice_at is null and expired_notice_at is null and status in ('valid', 'inactive');
