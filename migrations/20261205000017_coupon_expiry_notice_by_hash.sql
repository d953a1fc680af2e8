-- no-transaction
-- The coupons an expired notice may still be due for, by expiry and then by
-- the hash of their member's account id (`hashtext`, Citus's hash of the
-- shard key): an expiry notice run goes through them in that order, so that
-- the coupons of one expiry instant (every coupon of a template with a fixed
-- validity window) are split by hash into windows too. On Citus a window
-- within one instant is a stretch of one or two shards' index; the other
-- shards find none of it. Replaces `coupon_expiry_notice` (by expiry alone),
-- dropped by a later migration. Built concurrently: `coupon` takes every
-- issuance. Without `if not exists`: a build that failed leaves an invalid
-- index, which a rerun must not take for the index.
create index concurrently coupon_expiry_notice_by_hash on coupon (expires_at, (hashtext(account_id)))
    where expired_notice_at is null and status in ('valid', 'inactive', 'expired');
