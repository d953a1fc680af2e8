-- Benchmark data, loaded by scripts/bench into a freshly migrated database.
-- psql variables: members, coupons.
--   members m1..mN; coupon c (1..coupons) belongs to member m((c - 1) % members + 1);
--   template bench-platform (5.00 off) for the seeded coupons;
--   template bench-hot with the public code BENCH-HOT (unlimited stock).

insert into member (account_id, registered_at)
select 'm' || g, '2025-01-01T00:00:00Z' from generate_series(1, :members) g;

insert into coupon_template (template_id, name, description, issuer, discount_kind, amount_off_minor,
    currency, min_purchase_minor, valid_days, per_member_limit, allowed_levels, regular_price_only)
values
    ('bench-platform', 'bench 5 off', '', 'platform', 'amount', 500, 'USD', 0, 365, 1000000, '{}', false),
    ('bench-hot', 'bench hot', '', 'platform', 'amount', 100, 'USD', 0, 30, 1, '{}', true);

-- sha256 of the code without dashes, as the service stores it.
insert into claim_code (code_hash, template_id, kind, public_code)
values (sha256('BENCHHOT'::bytea), 'bench-hot', 'public', 'BENCH-HOT');

-- Explicit ids (and the identity moved past them): on Citus a distributed
-- insert does not take the identity's values in the select's order.
insert into coupon (coupon_id, account_id, template_id, status, name, issuer, discount_kind, amount_off_minor,
    currency, min_purchase_minor, regular_price_only, valid_from, expires_at, source, issuance_id,
    issued_at, updated_at)
overriding system value
select g, 'm' || ((g - 1) % :members + 1), 'bench-platform', 'valid', 'bench 5 off', 'platform', 'amount', 500,
    'USD', 0, false, '2026-01-01T00:00:00Z', '2030-01-01T00:00:00Z', 'issuance', 'seed-' || g, now(), now()
from generate_series(1, :coupons) g
order by g;

-- (With no coupons, the sequence stays where it starts: setval refuses 0.)
select setval(pg_get_serial_sequence('coupon', 'coupon_id'), greatest(:coupons, 1), :coupons > 0) as coupon_id_from \gset

insert into template_stock (template_id, issued_count)
values ('bench-platform', :coupons), ('bench-hot', 0);

-- pgbench scripts take fresh coupons, members and order ids from it.
create sequence bench_seq;

vacuum analyze;
