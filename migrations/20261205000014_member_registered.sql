-- no-transaction
-- The daily rewards run finds a day's anniversaries as ranges of registration
-- instants, one per earlier year, instead of reading every member (on Citus,
-- every member of every shard, once a day). Built concurrently: `member` takes
-- every registration.
-- Without `if not exists`: a build that failed leaves an invalid index, which a
-- rerun must not take for the index.
create index concurrently member_registered on member (registered_at);
