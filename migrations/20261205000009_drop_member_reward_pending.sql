-- no-transaction
-- Superseded by `member_reward_pending_by_hash` (previous migration).
drop index concurrently if exists member_reward_pending;
