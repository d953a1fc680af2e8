-- Data of the level evaluation benchmark (scripts/bench-levels), generated in SQL.
-- psql variables: members (1,000,000), entries_per_member (20).
-- Member mK earns entries of (K % 100 / 2 + 1) x (1..3) points on dates spread
-- over Sep 2025 - Oct 2026, so the first evaluation moves most members off
-- Silver (the heaviest case) and levels spread over all four.

-- Registrations spread over 2019-2025 (the daily rewards run finds each day's
-- anniversaries among them; the evaluation does not read them).
insert into member (account_id, registered_at)
select 'm' || g, timestamptz '2019-01-01T00:00:00Z' + (g % 2557) * interval '1 day' + (g % 86399) * interval '1 second'
from generate_series(1, :members) g;

-- One bonus event per member carries its entries (entries need an event).
insert into earning_event (account_id, kind, natural_key, content, occurred_at)
select 'm' || g, 'bonus', 'bench', '{}', '2025-09-01T00:00:00Z' from generate_series(1, :members) g;

-- Each member's entries name its event (on Citus, the event ids are its
-- worker's).
insert into point_entry (account_id, earning_event_id, source, reference, points, occurred_at, local_date)
select e.account_id, e.earning_event_id, 'bonus', 'bench', (m % 100 / 2 + 1) * (1 + k % 3),
       d::timestamptz + interval '12 hours', d
from earning_event e
cross join lateral (select substr(e.account_id, 2)::int as m) member_number
cross join generate_series(1, :entries_per_member) k
cross join lateral (select date '2025-09-01' + ((m * 7 + k * 31) % 425) as d) dates;

vacuum analyze;
