-- The daily run's anniversary read, the way of each release, on the database
-- scripts/bench-levels leaves (loyalty_bench_levels: registrations over
-- 2019-2025). Counts the members with an anniversary on 15 June 2026 (program
-- time zone Asia/Shanghai), three times each way:
--   every member: the local date of every registration (before 2026-12-05);
--   ranges: one range of `member_registered` per year since 1969, from 16 hours
--   before the day's UTC start to 16 hours after its end, then the same check
--   (src/db/levels.rs, queue_daily_rewards).
--
--   psql -d loyalty_bench_levels -f bench/anniversary_read.sql
\set day '2026-06-15'
\set zone 'Asia/Shanghai'
select array_agg((make_date(y, 6, 15) - interval '16 hours') at time zone 'UTC') as earliest,
       array_agg((make_date(y, 6, 16) + interval '16 hours') at time zone 'UTC') as latest
from generate_series(1969, 2025) y \gset
select string_agg(format('(registered_at >= (%L::timestamptz[])[%s] and registered_at < (%L::timestamptz[])[%s])',
                         :'earliest', k, :'latest', k), ' or ') as ranges
from generate_series(1, 57) k \gset
\timing on
\echo every member
select count(*) from member m
cross join lateral (select (m.registered_at at time zone :'zone')::date as registered) l
where l.registered < date :'day'
  and extract(month from l.registered) = 6 and extract(day from l.registered) = 15;
\g
\g
\echo ranges
select count(*) from member m
cross join lateral (select (m.registered_at at time zone :'zone')::date as registered) l
where (:ranges)
  and l.registered < date :'day'
  and extract(month from l.registered) = 6 and extract(day from l.registered) = 15;
\g
\g
