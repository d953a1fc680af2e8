-- no-transaction
-- Superseded by `coupon_expiry_notice_by_hash`.
drop index concurrently if exists coupon_expiry_notice;
