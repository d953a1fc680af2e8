-- The event log is cut by stamping (docs/decisions.md, "Events"): each event
-- gets the number of the slice it is in, written by the slicer once its
-- transaction has committed. Until now a slice was found through transaction
-- ids and snapshots, which are one node's: on Citus the events are written on
-- the workers, each with its own transaction ids, and a snapshot of the
-- coordinator says nothing about them. A stamp is data, so it holds on any
-- node and survives a shard move.
--
-- Within a slice, events go in `event_id` order: the order in which they were
-- written, as long as one node hands out the ids of a member's events. On
-- Citus an event inserted through the coordinator (a job's set-based
-- statement, a registration) would take the coordinator's id, an event
-- inserted by a delegated function the worker's; the two ranges say nothing
-- about which came first. So on Citus the node that stores the event gives its
-- id, whichever way the row came: a trigger on the shards replaces the id with
-- the next of the node's own sequence. (A no-op on plain PostgreSQL, where
-- there is one node and no trigger.)
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
-- `event_by_slice` (next migration): `(slice_id, event_id)`, which also finds
-- the events not sliced yet (nulls sort last).
alter table event add column slice_id bigint;

-- How many events the slicer stamped when it cut the slice (null for a slice
-- cut before this release, or by a replica of the previous release during a
-- rolling deploy). A slice is readable once all of them can be seen: on
-- Citus a transaction writing several workers commits on each in turn, so the
-- stamps of one cut can become visible on one worker before another.
alter table event_slice add column stamped integer;

-- Readers read the slices up to `settled_through`: the slicer moves it once it
-- has counted a slice's stamps back (`stamped`), and only in order.
alter table event_slicer add column settled_through bigint not null default 0;

-- The events already in a slice get its number. Those of slices at or below
-- the floor were being pruned: they get the floor's, so that pruning takes
-- them. Events not in any slice yet are stamped by the next cut.
update event e set slice_id = s.slice_id
from event_slice s
where e.txid = any (s.txids);

update event e set slice_id = f.slice_id
from (select slice_id, snapshot from event_slice order by slice_id limit 1) f
where e.slice_id is null
  and e.txid < pg_snapshot_xmax(f.snapshot)
  and pg_visible_in_snapshot(e.txid, f.snapshot);

update event_slicer set settled_through = (select max(slice_id) from event_slice);

-- `txid`, its index, and the slices' `snapshot` and `txids` stay for one
-- release: a replica of the previous release cuts and reads slices through
-- them during a rolling deploy, and the slicer keeps filling them. The next
-- release drops them.
