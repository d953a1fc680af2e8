-- The events already in a slice get its number, found through the slice's
-- `txids` as the previous release read them: a cursor it handed out resumes
-- where it was. Those of the slices at or below the floor were being pruned:
-- they get the floor's, so that pruning takes them. Events not in any slice
-- yet are stamped by the next cut.
--
-- Its own migration, apart from the new columns, so that it holds row locks
-- only: calls go on inserting events meanwhile. Slices are taken in turn
-- (`event_slicer` first, as a slicer does), so that none is cut meanwhile.
--
-- On Citus the previous release's log did not work (transaction ids of
-- several nodes): nothing is stamped there; the next cut takes every event.
select 1 from event_slicer for update;

do $$
begin
    if exists (select 1 from pg_extension where extname = 'citus') then
        return;
    end if;
    update event e set slice_id = s.slice_id
    from event_slice s
    where e.txid = any (s.txids);

    update event e set slice_id = f.slice_id
    from (select slice_id, snapshot from event_slice order by slice_id limit 1) f
    where e.slice_id is null
      and e.txid < pg_snapshot_xmax(f.snapshot)
      and pg_visible_in_snapshot(e.txid, f.snapshot);
end
$$;

update event_slicer set settled_through = (select max(slice_id) from event_slice);
