-- no-transaction
-- The evaluation's sample of the members in account id order: the members
-- whose account id's hash is among the lowest 1 in 256 (`hashtext`, Citus's
-- hash of the shard key, below -2^31 + 2^24). Each batch's range ends at a
-- sampled member, about a batch's worth of members after its start, so that
-- on Citus each shard reads its own members of the range instead of a
-- batch's worth each (src/db/levels.rs, `evaluate_batch`). On Citus these
-- members are in the shard of the lowest hashes; the index is empty on every
-- other. Built concurrently: `member` takes every registration. Without `if
-- not exists`: a build that failed leaves an invalid index, which a rerun must
-- not take for the index.
create index concurrently member_sample on member (account_id)
    where hashtext(account_id) < -2130706432;
