-- Repairs the event log of a database whose pruner dropped every slice. The
-- releases from 2026-12-04 to this one did, whenever no slice was older than
-- the retention (a fresh install's first week): the floor included, after
-- which the slicer had no last slice to cut after, and nothing was delivered
-- again. The events stamped into the dropped slices get their slices back,
-- settled (their stamps are committed); the floor goes just below them, or
-- at the last settled slice when no event is stamped; the events not stamped
-- yet go in the next cut. A database with slices is left as it is.
do $$
begin
    if exists (select 1 from event_slice) then
        return;
    end if;
    insert into event_slice (slice_id, closed_at, events, stamped)
    select slice_id, now(), count(*), count(*) from event
    where slice_id is not null
    group by slice_id;
    insert into event_slice (slice_id, closed_at, events, stamped)
    select coalesce((select min(slice_id) - 1 from event_slice), (select settled_through from event_slicer)),
           now(), 0, 0;
    update event_slicer set settled_through = greatest(settled_through, (select max(slice_id) from event_slice));
end
$$;
