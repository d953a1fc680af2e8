-- The event log is cut by stamping (docs/decisions.md, "Events"): each event
-- gets the number of the slice it is in, written by the slicer once its
-- transaction has committed. Until now a slice was found through transaction
-- ids and snapshots, which are one node's: on Citus the events are written on
-- the workers, each with its own transaction ids, and a snapshot of the
-- coordinator says nothing about them. A stamp is data, so it holds on any
-- node and survives a shard move.
--
-- This migration only adds columns (a brief lock on `event`); the next one
-- stamps the events already in a slice, the one after builds the index, and
-- the last drops what only the previous release used.

-- Within a slice, events go in `event_id` order: the order in which they were
-- written, as long as one node hands out the ids of a member's events. On
-- Citus an event inserted through the coordinator (a job's set-based
-- statement, a registration) would take the coordinator's id, an event
-- inserted by a delegated function the worker's; the two ranges say nothing
-- about which came first. So on Citus the node that stores the event gives its
-- id, whichever way the row came: a trigger on the shards replaces the id with
-- the next of the node's own sequence. (A no-op on plain PostgreSQL, where
-- there is one node and no trigger.) First in this migration: Citus refuses
-- to create a function after a multi-shard command in the same transaction.
do $$
begin
    if not exists (select 1 from pg_extension where extname = 'citus') then
        return;
    end if;
    create function loyalty_event_id_here() returns trigger
    language plpgsql as $f$
    begin
        new.event_id := nextval(pg_get_serial_sequence('event', 'event_id')::regclass);
        return new;
    end
    $f$;
    perform set_config('citus.enable_unsafe_triggers', 'on', true);
    create trigger event_id_here before insert on event
        for each row execute function loyalty_event_id_here();
end
$$;

-- `slice_id` is null until the event's slice is cut. Read through
-- `event_by_slice`: `(slice_id, event_id)`, which also finds the events not
-- sliced yet (nulls sort last).
alter table event add column slice_id bigint;

-- How many events the slicer stamped when it cut the slice (null for a slice
-- cut before this release). A slice is readable once all of them can be seen:
-- on Citus a transaction writing several workers commits on each in turn, so
-- the stamps of one cut can become visible on one worker before another.
alter table event_slice add column stamped integer;

-- Readers read the slices up to `settled_through`: the slicer moves it once it
-- has counted a slice's stamps back (`stamped`), and only in order. Set by the
-- next migration.
alter table event_slicer add column settled_through bigint not null default 0;
