-- The SQL of a health check: none. pgbench needs a statement, so this is the
-- cheapest one; the row shows the ceiling of each path with no real work.
select 1;
