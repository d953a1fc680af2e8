-- no-transaction
-- The event log read in order (`slice_id`, then `event_id`), pruned from the
-- bottom, and the events not yet stamped (`slice_id` null, last) found by the
-- slicer in id order. Built concurrently: `event` takes every change's insert.
-- Without `if not exists`: a build that failed leaves an invalid index, which a
-- rerun must not take for the index.
create index concurrently event_by_slice on event (slice_id, event_id);
