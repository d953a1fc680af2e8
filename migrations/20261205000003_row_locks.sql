-- The turns that advisory locks kept become row locks (docs/scale-out.md): an
-- advisory lock lives on the node the session is connected to, so on Citus,
-- with servers connected to different nodes, it would not exclude. A row lock
-- is the row's, on whichever node holds it.

-- One row per checkout order whose calls took turns: the reservation,
-- completion, cancellation and refunds of one order upsert its row first and
-- hold its lock until they commit. Kept, like the order itself.
create table order_lock (
    account_id text not null,
    order_id text not null,
    primary key (account_id, order_id)
);
select loyalty_distribute('order_lock', 'member');

-- One row per kind of job that runs one at a time across replicas.
create table job_lock (
    -- 'levels': the monthly evaluation and the daily rewards.
    job text primary key
);
insert into job_lock (job) values ('levels');
select loyalty_distribute('job_lock', 'reference');
