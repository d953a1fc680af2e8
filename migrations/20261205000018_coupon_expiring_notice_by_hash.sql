-- no-transaction
-- The coupons not yet told they expire soon, by expiry and then by the hash of
-- their member's account id: the `coupon_expiring_soon` side of the previous
-- migration. Replaces `coupon_expiring_notice`, dropped by a later migration.
create index concurrently coupon_expiring_notice_by_hash on coupon (expires_at, (hashtext(account_id)))
    where expiring_notice_at is null and expired_notice_at is null and status in ('valid', 'inactive');
