-- no-transaction
-- The members in the evaluation's order (see the previous migration), built
-- without blocking registrations on a large member table.
create index concurrently if not exists member_hash_order on member ((hashtext(account_id)), account_id);
