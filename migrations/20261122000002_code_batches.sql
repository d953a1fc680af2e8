-- Batches of single-use codes, one per `GenerateSingleUseCodes` request id.
-- Codes are stored hashed only, so a retry of a request cannot be given its
-- codes again: it finds its batch here and is answered with it (no codes).
-- A small table of admin calls, like the templates it refers to.
create table code_batch (
    code_batch_id bigint generated always as identity primary key,
    -- The caller's idempotency key; twin requests meet on this unique key, and
    -- the one that waits finds the other's batch once it commits.
    request_id text not null unique,
    template_id text not null references coupon_template (template_id),
    -- How many codes the batch generated.
    code_count integer not null check (code_count > 0),
    created_at timestamptz not null
);

-- The batch a single-use code came from; null for public codes and for codes
-- generated before batches were recorded. Written in the batch's transaction.
alter table claim_code add column code_batch_id bigint references code_batch (code_batch_id);
