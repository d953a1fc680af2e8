-- no-transaction
-- Pending rewards are settled one hash range at a time
-- (`loyalty_member_ranges`, previous migration), in the order of
-- (hashtext(account_id), account_id): on Citus a pass reads one shard's
-- pending rewards, and the other shards answer from an empty stretch of this
-- index. Replaces `member_reward_pending`
-- (by creation time), dropped by the next migration.
-- Without `if not exists`: a build that failed leaves an invalid index, which
-- a rerun must not take for the index (the next migration drops the old one).
create index concurrently member_reward_pending_by_hash
    on member_reward ((hashtext(account_id)), account_id, reward_key, template_id)
    where status = 'pending';
