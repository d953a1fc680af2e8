-- An experiment for docs/scale-out.md, not part of scripts/bench: the least a
-- member's call costs, one transaction with one read of one member's row.
-- On Citus it measures what every call pays for passing through the
-- coordinator (or a worker's distributed planner) before any work.
--   pgbench -n -M prepared -c 16 -j 2 -T 10 -D members=100000 -f bench/pgbench/split/one_read.sql loyalty_bench
-- (on a database scripts/bench seeded).
\set m random(1, :members)
begin;
select fraud_flagged_at is not null from member where account_id = 'm' || :m;
commit;
