-- no-transaction
-- Superseded by `coupon_expiring_notice_by_hash`.
drop index concurrently if exists coupon_expiring_notice;
