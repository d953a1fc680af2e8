-- no-transaction
-- The coupons an expiry notice may still be due for (see the previous
-- migration), built without blocking writes to a large coupon table.
create index concurrently if not exists coupon_expiry_notice on coupon (expires_at)
    where expired_notice_at is null and status in ('valid', 'inactive', 'expired');
